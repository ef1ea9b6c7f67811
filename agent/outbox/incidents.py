"""Incidents: things that happened to the outbox that a technician must see until they acknowledge
them (a damaged file salvaged, records missing at start, an outbox waiting for its key).

They are kept in the outbox itself (``meta`` key ``state.incidents``), so ``fvagent status`` and
``fvagent doctor`` show them from any process, across restarts, until ``fvagent outbox ack-damage``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from core.records import JsonObject

if TYPE_CHECKING:
    from agent.outbox.store import Outbox

STATE_NAME = "incidents"
KINDS = ("damaged", "missing", "key")


def record(outbox: Outbox, kind: str, alert: str, **details: object) -> None:
    """Add one incident; ``alert`` is the one line status and doctor print."""
    if kind not in KINDS:
        raise ValueError(f"unknown incident kind {kind!r}")
    found = current(outbox)
    found.append({"kind": kind, "at": time.time(), "alert": alert, **details})
    outbox.set_state(STATE_NAME, found)


def current(outbox: Outbox) -> list[JsonObject]:
    value = outbox.get_state(STATE_NAME)
    return [i for i in value if isinstance(i, dict)] if isinstance(value, list) else []


def alerts(outbox: Outbox) -> list[str]:
    """The one-line alerts of the incidents not yet acknowledged, oldest first."""
    return [str(i.get("alert")) for i in current(outbox)]


def acknowledge(outbox: Outbox, kinds: tuple[str, ...] = ("damaged", "missing")) -> list[JsonObject]:
    """Drop the incidents of ``kinds`` (those a technician can only take note of) and return them.
    An outbox waiting for its key stays an incident until it is merged."""
    found = current(outbox)
    dropped = [i for i in found if i.get("kind") in kinds]
    outbox.set_state(STATE_NAME, [i for i in found if i.get("kind") not in kinds] or None)
    return dropped
