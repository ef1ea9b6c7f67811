"""The outbox's small key-value store: the registration state and the uploader's pause state, kept in
the database's ``meta`` table so they survive a restart and travel with a backup."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict, cast

from agent.outbox.db import Database


class RegistrationState(TypedDict, total=False):
    """The last device registration attempt, as the uploader stored it."""

    registered: bool
    """False until one was accepted (and again after a refusal)."""
    at: float | None
    """When the accepted registration was made (epoch seconds)."""
    last_attempt_at: float
    outcome: str | None
    """The ``OutcomeKind`` value of the last attempt."""
    request_id: str | None
    message: str
    machine_code: str
    fingerprint: str
    """Keyed digest of the [device] settings registered: a change registers again."""


class SettingsStore:
    """Named JSON values in the ``meta`` table: ``registration`` and ``state.<name>``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def registration_state(self) -> RegistrationState:
        """The last registration attempt; ``registered`` is False until one was accepted."""
        with self._db.read("read the registration state") as conn:
            state = self._db.meta_get(conn, "registration")
        if not isinstance(state, dict):
            return RegistrationState(registered=False, at=None, outcome=None, message="not registered yet")
        return cast(RegistrationState, state)  # written by set_registration_state: its keys

    def set_registration_state(self, state: Mapping[str, object]) -> None:
        with self._db.write("store the registration state", drain=True) as conn:
            self._db.meta_set(conn, "registration", dict(state))

    def get_state(self, name: str) -> object:
        """A small JSON value the uploader keeps across restarts (e.g. ``blocked``), or ``None``."""
        with self._db.read("read the outbox state") as conn:
            return self._db.meta_get(conn, f"state.{name}")

    def set_state(self, name: str, value: object) -> None:
        """Store a JSON value under ``name``; ``None`` removes it."""
        with self._db.write("store the outbox state", drain=True) as conn:
            self._db.meta_set(conn, f"state.{name}", value)
