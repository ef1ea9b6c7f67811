"""The durable outbox: every verification is committed here (SQLite, WAL, synchronous=FULL) before
anyone is told it is done, sealed with SM4-GCM under the local data key.

``Outbox`` composes the parts, one concern each: ``db`` (the file: opening, pragmas, schema upgrade,
quarantine of a damaged file, transactions, the background checkpoint), ``sealing`` (the one way a
payload is sealed), ``queue`` (the records and their state machine, ``core.stored.RecordState``),
``settings_store`` (registration and pause state). The rejected-records export uses the facade;
retention and the audit export, which need the queue's own queries and the file's free pages, use
``outbox.queue`` and ``outbox.db`` (never a private attribute). docs/outbox.md is the guide.

One ``Outbox`` is safe to share between threads. Other processes (the CLI while the daemon runs) open
the same file: WAL lets them read while the daemon writes.
"""

from __future__ import annotations

import builtins
import datetime as dt
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from agent.config import StorageSettings
from agent.outbox import chain, rotation
from agent.outbox.db import DB_NAME, Database, damaged_copies, open_readonly, open_writable, rename_aside
from agent.outbox.handovers import Handover, Handovers
from agent.outbox.keys import DataKey, key_for_check, load_key
from agent.outbox.queue import (
    SIMULATED_HELD_REASON,
    Attempt,
    Claim,
    HeldCompleter,
    OutboxStats,
    Queue,
    Row,
    Rows,
)
from agent.outbox.reserve import Reserve
from agent.outbox.sealing import KeyRing
from agent.outbox.settings_store import RegistrationState, SettingsStore
from core.clock import Clock
from core.errors import KeyFileError
from core.outcome import OutcomeKind
from core.records import Payload
from core.stored import RecordState

if TYPE_CHECKING:
    from agent.outbox.retention import HousekeepingResult
    from agent.outbox.watermark import Watermark

__all__ = [
    "DB_NAME",
    "SIMULATED_HELD_REASON",
    "Attempt",
    "Claim",
    "Handover",
    "Outbox",
    "OutboxStats",
    "Row",
    "damaged_copies",
    "rename_aside",
]

log = logging.getLogger(__name__)


class Outbox:
    """The outbox. Build it with ``Outbox.open(storage_settings)``; ``close()`` when done."""

    def __init__(self, db: Database, storage: StorageSettings, keys: KeyRing, clock: Clock) -> None:
        self.db = db
        """The file and its transactions (``agent.outbox.db``), for the outbox's own modules."""
        self.storage = storage
        self.keys = keys
        """The current key and those retired by a rotation."""
        self.clock = clock
        """The outbox's wall clock (epoch seconds): every stored time comes from it."""
        self.wakeup = threading.Event()
        """Set after every enqueue and retry, so an idle uploader starts at once."""
        self.watermark: Watermark | None = None
        """The ``agent.outbox.watermark.Watermark`` kept while open for writing."""
        db.chain_key = keys.chain_key
        self.queue = Queue(
            db,
            keys,
            storage,
            clock,
            wakeup=self.wakeup,
            on_enqueued=self._note_enqueued,
            on_deleted=self._note_deleted,
        )
        self.settings_store = SettingsStore(db)
        self.handover_marks = Handovers(db, keys, clock)

    def __repr__(self) -> str:
        return f"Outbox(path={str(self.path)!r}, key={self.keys.current.source!r})"

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self.db.path

    @property
    def readonly(self) -> bool:
        """Opened by a read-only command: nothing here writes, moves or checkpoints the file."""
        return self.db.readonly

    @property
    def reserve(self) -> Reserve | None:
        """The drain's disk reserve (``agent.outbox.reserve``), kept while open for writing."""
        return self.db.reserve

    @property
    def key_source(self) -> str:
        return self.keys.current.source

    @property
    def key_warning(self) -> str | None:
        """A problem with the key that must be fixed but does not stop the outbox (its file mode)."""
        return self.keys.current.warning

    # -- opening -----------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        storage: StorageSettings,
        *,
        check: bool = False,
        create: bool = True,
        clock: Clock = time.time,
        readonly: bool = False,
    ) -> Outbox:
        """Open (or create) the outbox in ``storage.dir``.

        Creates the state directory (0700) and, on first start, the 0600 key file; reads the key
        from the systemd credential ``outbox_key`` when one is given; runs the schema migrations.
        ``check`` runs ``PRAGMA quick_check`` too (it reads the whole file: the daemon does it at
        start, the CLI does not). ``create=False`` (the CLI) raises ``OutboxError`` instead of
        creating a missing outbox, so a command run as root never makes files the service cannot use.

        Raises ``KeyFileError`` for a missing, malformed or wrong key (found with the sealed check
        value: nothing is written); ``OutboxCorrupt`` for a damaged database file, which is renamed
        ``outbox.db.damaged-<UTC time>`` (its -wal beside it) and never overwritten, so the next
        open starts a new, empty outbox (``OutboxQuarantined.kept_as`` says where it is); ``StorageFull``
        when the disk has no room; ``OutboxError`` for anything else (permissions, a newer schema).

        ``readonly`` (status, doctor, the listing commands): the file is opened read-only, never
        migrated, moved or checkpointed; a damaged file raises ``OutboxCorrupt`` and stays where it is.
        """
        if readonly:
            return cls._open_readonly(storage, clock)

        def keys_of(conn: sqlite3.Connection, path: Path) -> KeyRing:
            return KeyRing(_key_for(conn, storage, path), rotation.load_retired(storage))

        db, keys = open_writable(storage, check=check, create=create, prepare=keys_of)
        outbox = cls(db, storage, keys, clock)
        outbox._chain_upgrade()
        from agent.outbox import watermark

        watermark.check_at_open(outbox)
        db.reserve = Reserve(Path(storage.dir), fold_wal=db.fold_wal)
        db.reserve.ensure()
        return outbox

    @classmethod
    def _open_readonly(cls, storage: StorageSettings, clock: Clock) -> Outbox:
        def key_of(conn: sqlite3.Connection, path: Path) -> DataKey:
            stored = conn.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
            if stored is None:
                return load_key(storage, may_create=False)
            return key_for_check(storage, bytes(stored[0]), path)

        db, key = open_readonly(storage, prepare=key_of)
        try:
            retired = rotation.load_retired(storage)  # records sealed before a rotation stay readable
        except BaseException:
            db.close()
            raise
        return cls(db, storage, KeyRing(key, retired), clock)

    def _chain_upgrade(self) -> None:
        """Chain the rows an older fvagent wrote (once, at the first open after the upgrade)."""
        with self.db.read("read the outbox") as conn:
            if conn.execute("SELECT NOT EXISTS(SELECT 1 FROM meta WHERE key = 'chain.upgrade')").fetchone()[0]:
                return
        with self.db.write("chain the existing records") as conn:
            n = chain.upgrade(conn, self.keys.chain_key, self.clock())
            conn.execute("DELETE FROM meta WHERE key = 'chain.upgrade'")
            self.db.chained(chain.read_head(conn))
        log.warning("audit chain built for %d record(s) written before it existed (marked %r)", n, chain.UPGRADE_NOTE)

    def close(self) -> None:
        """Close the database; idempotent."""
        if self.db.close() and self.watermark is not None:
            self.watermark.close()

    def _note_enqueued(self, record_id: int) -> None:
        if self.watermark is not None:
            self.watermark.note(record_id, 1)

    def _note_deleted(self, count: int) -> None:
        if self.watermark is not None:
            self.watermark.note(None, -count)

    # -- capture -----------------------------------------------------------------------------------
    def enqueue(
        self,
        payload: Payload,
        *,
        simulated: bool = False,
        held_reason: str | None = None,
        raw_wlt: bytes | None = None,
        idempotency_key: str | None = None,
        meta: Mapping[str, object] | None = None,
    ) -> int:
        """Commit one verification and return its id (see ``Queue.enqueue``)."""
        return self.queue.enqueue(
            payload,
            simulated=simulated,
            held_reason=held_reason,
            raw_wlt=raw_wlt,
            idempotency_key=idempotency_key,
            meta=meta,
        )

    # -- reading -----------------------------------------------------------------------------------
    def id_for_key(self, idempotency_key: str) -> int | None:
        return self.queue.id_for_key(idempotency_key)

    def get(self, record_id: int) -> Row | None:
        return self.queue.get(record_id)

    def payload(self, record_id: int, *, photos: bool = True) -> Payload | None:
        return self.queue.payload(record_id, photos=photos)

    def raw_wlt(self, record_id: int) -> bytes | None:
        return self.queue.raw_wlt(record_id)

    def find(
        self,
        card_no: str | None = None,
        since: dt.datetime | None = None,
        limit: int = 50,
        *,
        before_id: int | None = None,
    ) -> Rows:
        return self.queue.find(card_no, since, limit, before_id=before_id)

    def list(self, state: RecordState | str | None = None, limit: int = 50) -> Rows:
        return self.queue.list(state, limit)

    def created_between(self, since: float, until: float | None) -> Rows:
        return self.queue.created_between(since, until)

    def attempts(self, record_id: int) -> builtins.list[Attempt]:
        return self.queue.attempts(record_id)

    def stats(self) -> OutboxStats:
        return self.queue.stats()

    def count_unsent(self, *, source: str) -> int:
        return self.queue.count_unsent(source=source)

    def next_due_at(self) -> float | None:
        return self.queue.next_due_at()

    def hold_simulated(self) -> int:
        return self.queue.hold_simulated()

    # -- held records and the uploader's side ------------------------------------------------------
    def release_held(self, complete: HeldCompleter, *, limit: int = 100) -> int:
        return self.queue.release_held(complete, limit=limit)

    def requeue_interrupted(self) -> int:
        return self.queue.requeue_interrupted()

    def claim(self, limit: int, now: float | None = None, *, max_wait_s: float | None = None) -> builtins.list[Claim]:
        return self.queue.claim(limit, now, max_wait_s=max_wait_s)

    def finish(
        self,
        claim: Claim,
        outcome: OutcomeKind | str,
        *,
        message: str,
        request_id: str | None = None,
        http_status: int | None = None,
        exception_code: str | None = None,
        next_attempt_at: float | None = None,
        now: float | None = None,
        return_time_ms: int | None = None,
    ) -> None:
        self.queue.finish(
            claim,
            outcome,
            message=message,
            request_id=request_id,
            http_status=http_status,
            exception_code=exception_code,
            next_attempt_at=next_attempt_at,
            now=now,
            return_time_ms=return_time_ms,
        )

    def release(self, claim: Claim) -> None:
        self.queue.release(claim)

    # -- operator actions --------------------------------------------------------------------------
    def retry(self, record_id: int) -> None:
        self.queue.retry(record_id)

    def retry_rejected(self) -> int:
        return self.queue.retry_rejected()

    def resolve(self, record_id: int, *, request_id: str, message: str) -> None:
        self.queue.resolve(record_id, request_id=request_id, message=message)

    def mark_handed_over(self, record_id: int, operator: str) -> Handover:
        return self.handover_marks.mark_handed_over(record_id, operator)

    def handovers(self, record_ids: Iterable[int]) -> dict[int, Handover]:
        return self.handover_marks.handovers(record_ids)

    def export_rejected(self, path: str | os.PathLike[str]) -> int:
        """See ``agent.outbox.rejected_export.export_rejected``."""
        from agent.outbox.rejected_export import export_rejected

        return export_rejected(self, path)

    # -- registration and pause state --------------------------------------------------------------
    def registration_state(self) -> RegistrationState:
        return self.settings_store.registration_state()

    def set_registration_state(self, state: Mapping[str, object]) -> None:
        self.settings_store.set_registration_state(state)

    def get_state(self, name: str) -> object:
        return self.settings_store.get_state(name)

    def set_state(self, name: str, value: object) -> None:
        self.settings_store.set_state(name, value)

    def fingerprint(self, data: bytes) -> str:
        """A keyed digest of configuration data (see ``DataKey.fingerprint``)."""
        return self.keys.current.fingerprint(data)

    # -- the file ----------------------------------------------------------------------------------
    def housekeeping(self, now: float | None = None, *, uptime_s: float | None = None) -> HousekeepingResult:
        """Apply retention and the size budget; see ``agent.outbox.retention.housekeeping``."""
        from agent.outbox.retention import housekeeping

        return housekeeping(self, now, uptime_s=uptime_s)

    def fold_wal(self) -> bool:
        return self.db.fold_wal()

    def integrity_check(self) -> builtins.list[str]:
        return self.db.integrity_check()


def _key_for(conn: sqlite3.Connection, storage: StorageSettings, path: Path) -> DataKey:
    """The key that opens this file: checked against its stored check value, or (a new file) the key
    file's, whose check value is stored now."""
    stored = conn.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
    if stored is not None:
        return key_for_check(storage, bytes(stored[0]), path)
    has_rows = conn.execute("SELECT EXISTS(SELECT 1 FROM records)").fetchone()[0]
    if has_rows:
        raise KeyFileError(
            f"the outbox {path} holds records but no key check value",
            hint="the file was altered; keep it and ask for support",
        )
    key = load_key(storage, may_create=True)
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('key_check', ?)", (key.check_value(),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    stored = conn.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
    if not key.matches(bytes(stored[0])):  # another process stored its key's check value first
        raise KeyFileError(
            f"the outbox {path} was just initialised with a different key",
            hint="two fvagent processes use different key files: make them agree",
        )
    return key
