"""The queue of records and its state machine (``core.stored.RecordState``).

``pending`` -> ``sending`` -> ``sent`` | ``rejected``, plus ``held`` (kept, never sent, until
``release_held`` completes it). A ``rejected`` row becomes ``sent`` by ``resolve`` once a corrected
copy was accepted some other way. A row left in ``sending`` by a crash returns to ``pending`` when the
uploader starts (``requeue_interrupted``), so delivery is at-least-once. Every change is an event of
the audit chain (``agent.outbox.chain``), written in the same transaction.

What the database reveals without the key: counts, times, states, sizes, attempt ids and the
non-personal ``meta``. Names, ID numbers and photos are sealed (``agent.outbox.sealing``); a card
number can be looked up through a keyed blind index only.
"""

from __future__ import annotations

import builtins
import dataclasses
import datetime as dt
import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict

from agent.config import StorageSettings
from agent.outbox import chain, rotation
from agent.outbox.db import Database
from agent.outbox.keys import DataKey
from agent.outbox.sealing import (
    KeyRing,
    open_payload,
    open_wlt,
    seal_payload,
    seal_wlt,
)
from core.clock import Clock
from core.errors import CryptoError, KeyFileError, OutboxCorrupt, OutboxError
from core.outcome import OutcomeKind
from core.records import Payload
from core.stored import RecordState

log = logging.getLogger(__name__)

PENDING, SENDING, SENT, REJECTED, HELD = (
    RecordState.PENDING,
    RecordState.SENDING,
    RecordState.SENT,
    RecordState.REJECTED,
    RecordState.HELD,
)
SIMULATED_HELD_REASON = "simulated record: not sent to a production platform"
"""Why a record from a fake driver is held when ``[platform] environment = "production"``."""
LOCAL_OUTCOME = "local"
"""The outcome of an attempt refused here, not by the platform: its sealed data no longer opens."""
INTERRUPTED_OUTCOME = "interrupted"
"""The outcome of an attempt the process stopped during."""
_RETRY_LATER = (OutcomeKind.RETRYABLE, OutcomeKind.BLOCKED, OutcomeKind.CLOCK, OutcomeKind.UNREGISTERED)

Meta = dict[str, Any]
"""A row's non-personal meta as stored (JSON; ``core.stored.RecordMeta`` names its keys). Older rows
may hold keys since renamed, so it is read as the JSON it is."""

HeldCompleter = Callable[[Payload, bytes | None, Meta], Payload | None]
"""``complete(payload, raw_wlt, meta)`` of ``release_held``: the completed payload, or None to keep it held."""


@dataclasses.dataclass(frozen=True)
class Row:
    """One outbox row without its sealed payload: everything here is safe to show."""

    id: int
    state: RecordState
    created_at: float
    updated_at: float | None
    attempts: int
    next_attempt_at: float
    last_error: str | None
    last_outcome: str | None
    request_id: str | None
    """The hmpt-portal-request-id of the last attempt that got an answer."""
    sent_at: float | None
    simulated: bool
    held_reason: str | None
    meta: Meta
    bytes: int
    has_photos: bool
    photos_erased_at: float | None
    idempotency_key: str | None = None


@dataclasses.dataclass(frozen=True)
class Claim:
    """A record taken for one upload attempt (state ``sending``)."""

    id: int
    attempt: int
    attempt_row: int
    started_at: float


@dataclasses.dataclass(frozen=True)
class Attempt:
    record_id: int
    attempt: int
    request_id: str | None
    started_at: float
    finished_at: float | None
    outcome: str | None
    http_status: int | None
    exception_code: str | None
    message: str | None


class OutboxStats(TypedDict):
    """``Outbox.stats()``: counts per state, sizes and the times status pages show (epoch seconds)."""

    pending: int
    sending: int
    sent: int
    rejected: int
    held: int
    total: int
    oldest_pending_age_s: float | None
    bytes: int
    """Sealed data held."""
    max_bytes: int
    over_budget: bool
    last_sent_at: float | None
    held_simulated: int
    """Held with ``SIMULATED_HELD_REASON``."""
    oldest_unsent_at: float | None
    """The oldest rejected or held record's creation."""
    unsealable: int
    """Rejected here, not by the platform: their sealed data no longer opens."""


Rows = list[Row]
"""Rows as the listing methods return them (named here: ``Queue.list`` hides the builtin in the class)."""
RecordIds = list[int]

_ROW_COLUMNS = (
    "r.id, r.state, r.created_at, r.updated_at, r.attempts, r.next_attempt_at, r.last_error, "
    "r.last_outcome, r.request_id, r.sent_at, r.simulated, r.held_reason, r.meta, r.bytes, "
    "p.photos IS NOT NULL, r.photos_erased_at, r.idempotency_key"
)
_ROW_FROM = "records r LEFT JOIN payloads p ON p.record_id = r.id"
_UNSENT = f"('{PENDING}', '{SENDING}', '{HELD}')"
_WITH_PHOTOS = (
    f"SELECT r.id FROM records r JOIN payloads p ON p.record_id = r.id WHERE r.state = '{SENT}' "
    "AND (p.photos IS NOT NULL OR p.raw_wlt IS NOT NULL)"
)


def _meta(text: str | None) -> Meta:
    try:
        meta = json.loads(text) if text else {}
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _row(t: Sequence[Any]) -> Row:
    return Row(
        id=t[0],
        state=RecordState(t[1]),
        created_at=t[2],
        updated_at=t[3],
        attempts=t[4],
        next_attempt_at=t[5],
        last_error=t[6],
        last_outcome=t[7],
        request_id=t[8],
        sent_at=t[9],
        simulated=bool(t[10]),
        held_reason=t[11],
        meta=_meta(t[12]),
        bytes=t[13],
        has_photos=bool(t[14]),
        photos_erased_at=t[15],
        idempotency_key=t[16],
    )


class Queue:
    """The records: capture, reading, the uploader's side, operator actions and retention's erasures.

    ``on_enqueued(record_id)`` is called after each capture commits (the watermark counts it);
    ``on_deleted(count)`` after retention deleted rows; ``wakeup`` is set when a record becomes due.
    """

    def __init__(
        self,
        db: Database,
        keys: KeyRing,
        storage: StorageSettings,
        clock: Clock,
        *,
        wakeup: threading.Event,
        on_enqueued: Callable[[int], None] | None = None,
        on_deleted: Callable[[int], None] | None = None,
    ) -> None:
        self._db = db
        self._keys = keys
        self._storage = storage
        self._clock = clock
        self._wakeup = wakeup
        self.on_enqueued = on_enqueued
        self.on_deleted = on_deleted

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
        """Commit one verification and return its id; durable (fsynced) before this returns.

        ``payload`` is the spec-named body (validated by the caller, unless ``held_reason`` says why
        it is held); ``meta`` non-personal facts shown on status pages; ``raw_wlt`` the card's WLT
        photo kept (sealed) for a held record; ``idempotency_key``: a repeat returns the first id.
        Raises ``StorageFull`` when the disk is full (nothing stored is changed), ``OutboxError``.
        """
        if not isinstance(payload, dict):
            raise TypeError(f"payload must be a dict, not {type(payload).__name__}")
        now = self._clock()
        uid = uuid.uuid4().hex
        key = self._keys.current
        sealed = seal_payload(key, uid, payload)
        sealed_wlt = seal_wlt(key, uid, raw_wlt) if raw_wlt else None
        size = sealed.size + len(sealed_wlt or b"")
        meta_text = json.dumps(dict(meta or {}), ensure_ascii=False, default=str)
        state = HELD if held_reason else PENDING
        if self._db.reserve is not None:
            self._db.reserve.before_capture()
        with self._db.write("store the verification") as conn:
            if idempotency_key is not None:
                found = conn.execute("SELECT id FROM records WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
                if found is not None:
                    return int(found[0])
            cur = conn.execute(
                "INSERT INTO records (uid, created_at, updated_at, state, attempts, next_attempt_at, bytes, simulated,"
                " held_reason, idempotency_key, card_index, meta) VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?)",
                (
                    uid,
                    now,
                    now,
                    state,
                    now,
                    size,
                    int(bool(simulated)),
                    held_reason,
                    idempotency_key,
                    sealed.card_index,
                    meta_text,
                ),
            )
            record_id = int(cur.lastrowid or 0)
            conn.execute(
                "INSERT INTO payloads (record_id, data, photos, raw_wlt) VALUES (?, ?, ?, ?)",
                (record_id, sealed.data, sealed.photos, sealed_wlt),
            )
            self._db.chained(chain.on_commit(conn, self._keys.chain_key, record_id))
        if self.on_enqueued is not None:
            self.on_enqueued(record_id)
        self._wakeup.set()
        return record_id

    # -- reading -----------------------------------------------------------------------------------
    def id_for_key(self, idempotency_key: str) -> int | None:
        """The id of the record committed with ``idempotency_key``, or None."""
        with self._db.read("look up an idempotency key") as conn:
            found = conn.execute("SELECT id FROM records WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
        return int(found[0]) if found is not None else None

    def get(self, record_id: int) -> Row | None:
        """The row ``record_id`` (no personal data), or ``None``."""
        with self._db.read("read the outbox") as conn:
            t = conn.execute(f"SELECT {_ROW_COLUMNS} FROM {_ROW_FROM} WHERE r.id = ?", (int(record_id),)).fetchone()
        return _row(t) if t else None

    def payload(self, record_id: int, *, photos: bool = True) -> Payload | None:
        """The decrypted payload of ``record_id`` (without photos once retention erased them, or when
        ``photos`` is false: listings need no photo), or ``None``.

        Raises ``OutboxCorrupt`` when the sealed data does not open (altered on disk).
        """
        with self._db.read("read the outbox") as conn:
            t = conn.execute(
                f"SELECT r.uid, p.data, {'p.photos' if photos else 'NULL'}, r.key_id FROM records r "
                "JOIN payloads p ON p.record_id = r.id WHERE r.id = ?",
                (int(record_id),),
            ).fetchone()
        if t is None:
            return None
        uid, data, sealed_photos, key_id = t
        key = self.sealed_under(key_id, record_id)
        try:
            return open_payload(key, uid, data, sealed_photos)
        except (CryptoError, ValueError) as exc:
            raise OutboxCorrupt(
                f"record {record_id}: its sealed data does not open (altered on disk)", record_id=record_id
            ) from exc

    def raw_wlt(self, record_id: int) -> bytes | None:
        """The sealed WLT photo kept with a held record, decrypted; ``None`` when there is none."""
        with self._db.read("read the outbox") as conn:
            t = conn.execute(
                "SELECT r.uid, p.raw_wlt, r.key_id FROM records r JOIN payloads p ON p.record_id = r.id WHERE r.id = ?",
                (int(record_id),),
            ).fetchone()
        if t is None or t[1] is None:
            return None
        try:
            return open_wlt(self.sealed_under(t[2], record_id), t[0], t[1])
        except CryptoError as exc:
            raise OutboxCorrupt(f"record {record_id}: its sealed WLT photo does not open", record_id=record_id) from exc

    def sealed_under(self, key_id: str | None, record_id: int) -> DataKey:
        """The key a record is sealed under: the current one, or a retired one (after a rotation)."""
        if key_id is None:
            return self._keys.current
        key = self._keys.retired.get(key_id)
        if key is None:
            raise KeyFileError(
                f"record {record_id} is sealed under the retired key {key_id}, which is not in "
                f"{rotation.retired_path(self._storage)}",
                hint="restore that file from your backup",
            )
        return key

    def find(
        self,
        card_no: str | None = None,
        since: dt.datetime | None = None,
        limit: int = 50,
        *,
        before_id: int | None = None,
    ) -> Rows:
        """Rows newest first, of one card number when given (through the blind index), created at or
        after ``since`` (a naive datetime is local time), with ids below ``before_id`` (to page on)."""
        where: list[str] = []
        args: list[object] = []
        if before_id is not None:
            where.append("r.id < ?")
            args.append(int(before_id))
        if card_no:
            keys = self._keys.all()  # records sealed before a rotation are indexed under their key
            where.append(f"r.card_index IN ({','.join('?' * len(keys))})")
            args.extend(key.card_index(card_no) for key in keys)
        if since is not None:
            where.append("r.created_at >= ?")
            args.append(since.timestamp())
        sql = f"SELECT {_ROW_COLUMNS} FROM {_ROW_FROM}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY r.id DESC LIMIT ?"
        with self._db.read("search the outbox") as conn:
            return [_row(t) for t in conn.execute(sql, (*args, max(1, int(limit)))).fetchall()]

    def list(self, state: RecordState | str | None = None, limit: int = 50) -> Rows:
        """Rows newest first, of one state when given (a ``RecordState`` or its value)."""
        args: tuple[object, ...] = ()
        sql = f"SELECT {_ROW_COLUMNS} FROM {_ROW_FROM}"
        if state is not None:
            try:
                wanted = RecordState(state)
            except ValueError:
                raise OutboxError(
                    f"unknown state {state!r}", hint="one of " + ", ".join(s.value for s in RecordState)
                ) from None
            sql += " WHERE r.state = ?"
            args = (wanted,)
        sql += " ORDER BY r.id DESC LIMIT ?"
        with self._db.read("list the outbox") as conn:
            return [_row(t) for t in conn.execute(sql, (*args, max(1, int(limit)))).fetchall()]

    def created_between(self, since: float, until: float | None) -> Rows:
        """Rows created in [``since``, ``until``) (epoch seconds; ``until`` None: up to now), oldest first."""
        sql = f"SELECT {_ROW_COLUMNS} FROM {_ROW_FROM} WHERE r.created_at >= ?"
        args: builtins.list[object] = [since]
        if until is not None:
            sql += " AND r.created_at < ?"
            args.append(until)
        with self._db.read("read the outbox") as conn:
            return [_row(t) for t in conn.execute(sql + " ORDER BY r.id", args).fetchall()]

    def attempts(self, record_id: int) -> builtins.list[Attempt]:
        """Every upload attempt of ``record_id``, first to last, with its request id."""
        with self._db.read("read the attempts") as conn:
            rows = conn.execute(
                "SELECT record_id, attempt, request_id, started_at, finished_at, outcome, http_status,"
                " exception_code, message FROM attempts WHERE record_id = ? ORDER BY attempt, id",
                (int(record_id),),
            ).fetchall()
        return [Attempt(*r) for r in rows]

    def stats(self) -> OutboxStats:
        """Counts per state and the sizes and times of ``OutboxStats``."""
        with self._db.read("count the outbox") as conn:
            counts = {str(s): int(n) for s, n in conn.execute("SELECT state, COUNT(*) FROM records GROUP BY state")}
            (simulated,) = conn.execute(
                "SELECT COUNT(*) FROM records WHERE state = ? AND held_reason = ?", (HELD, SIMULATED_HELD_REASON)
            ).fetchone()
            (oldest,) = conn.execute(
                "SELECT MIN(created_at) FROM records WHERE state IN (?, ?)", (PENDING, SENDING)
            ).fetchone()
            (size,) = conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM records").fetchone()
            (last_sent,) = conn.execute("SELECT MAX(sent_at) FROM records WHERE state = ?", (SENT,)).fetchone()
            (oldest_unsent,) = conn.execute(
                "SELECT MIN(created_at) FROM records WHERE state IN (?, ?)", (REJECTED, HELD)
            ).fetchone()
            (unsealable,) = conn.execute(
                "SELECT COUNT(*) FROM records WHERE state = ? AND last_outcome = ?", (REJECTED, LOCAL_OUTCOME)
            ).fetchone()
        return OutboxStats(
            pending=counts.get(PENDING, 0),
            sending=counts.get(SENDING, 0),
            sent=counts.get(SENT, 0),
            rejected=counts.get(REJECTED, 0),
            held=counts.get(HELD, 0),
            total=sum(counts.values()),
            oldest_pending_age_s=round(max(0.0, self._clock() - oldest), 1) if oldest is not None else None,
            bytes=int(size),
            max_bytes=int(self._storage.max_bytes),
            over_budget=int(size) > self._storage.max_bytes,
            last_sent_at=last_sent,
            held_simulated=int(simulated),
            oldest_unsent_at=oldest_unsent,
            unsealable=int(unsealable),
        )

    def count_unsent(self, *, source: str) -> int:
        """Records from ``source`` (``meta.source``: ``reader``, ``local_api``) not yet sent or rejected."""
        with self._db.read("count the unsent records") as conn:
            (n,) = conn.execute(
                f"SELECT COUNT(*) FROM records WHERE state IN {_UNSENT} AND json_extract(meta, '$.source') = ?",
                (source,),
            ).fetchone()
        return int(n)

    def next_due_at(self) -> float | None:
        """When the earliest pending record becomes due (epoch seconds), or ``None``."""
        with self._db.read("read the outbox") as conn:
            t = conn.execute("SELECT MIN(next_attempt_at) FROM records WHERE state = ?", (PENDING,)).fetchone()
        return float(t[0]) if t and t[0] is not None else None

    def hold_simulated(self) -> int:
        """Hold every pending simulated record with ``SIMULATED_HELD_REASON``: a production platform
        must never get one, whenever it was captured. Returns how many."""
        now = self._clock()
        with self._db.write("hold the simulated records") as conn:
            ids = [
                int(i) for (i,) in conn.execute("SELECT id FROM records WHERE simulated = 1 AND state = ?", (PENDING,))
            ]
            conn.executemany(
                "UPDATE records SET state = ?, held_reason = ?, updated_at = ? WHERE id = ?",
                [(HELD, SIMULATED_HELD_REASON, now, i) for i in ids],
            )
            self._db.chained(chain.on_held(conn, self._keys.chain_key, ids, now, SIMULATED_HELD_REASON))
        return len(ids)

    # -- held records ------------------------------------------------------------------------------
    def release_held(self, complete: HeldCompleter, *, limit: int = 100) -> int:
        """Offer each held record (oldest first) to ``complete(payload, raw_wlt, meta)``, ``meta`` being
        the row's stored meta (its guards: ``face_result_pending``, ``camera_placeholder``); a returned
        payload replaces the stored one and the record becomes pending; ``None`` keeps it held. An
        exception from ``complete`` keeps that record held (logged). Returns how many were released."""
        released = 0
        for row in reversed(self.list(HELD, limit=limit)):
            if row.held_reason == SIMULATED_HELD_REASON:
                continue  # a complete photo does not make a simulated record real
            payload = self.payload(row.id)
            if payload is None:
                continue
            try:
                done = complete(payload, self.raw_wlt(row.id), dict(row.meta))
            except Exception:
                log.warning("record %d stays held: completing it failed", row.id, exc_info=True)
                continue
            if done is None:
                continue
            if self._replace_held_payload(row.id, done):
                released += 1
        if released:
            self._wakeup.set()
        return released

    def _replace_held_payload(self, record_id: int, payload: Payload) -> bool:
        now = self._clock()
        with self._db.read("read the outbox") as conn:
            t = conn.execute("SELECT uid FROM records WHERE id = ?", (record_id,)).fetchone()
        if t is None:
            return False
        sealed = seal_payload(self._keys.current, t[0], payload)
        with self._db.write("update the held record") as conn:
            n = conn.execute(
                "UPDATE records SET state = ?, held_reason = NULL, next_attempt_at = ?,"
                " updated_at = ?, card_index = ?, bytes = ?, key_id = NULL WHERE id = ? AND state = ?",
                (PENDING, now, now, sealed.card_index, sealed.size, record_id, HELD),
            ).rowcount
            if n:
                conn.execute(
                    "UPDATE payloads SET data = ?, photos = ?, raw_wlt = NULL WHERE record_id = ?",
                    (sealed.data, sealed.photos, record_id),
                )
                self._db.chained(chain.on_released(conn, self._keys.chain_key, record_id, now))
        return bool(n)

    # -- the uploader's side -----------------------------------------------------------------------
    def requeue_interrupted(self) -> int:
        """Rows left in ``sending`` by a crash go back to ``pending``; their unfinished attempts are
        marked ``interrupted``. Only the uploader calls this, at its start. Returns how many."""
        now = self._clock()
        with self._db.write("requeue interrupted records", drain=True) as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM records WHERE state = ?", (SENDING,))]
            self._db.chained(chain.on_requeued(conn, self._keys.chain_key, ids, now, INTERRUPTED_OUTCOME))
            n = conn.execute(
                "UPDATE records SET state = ?, next_attempt_at = ?, updated_at = ?, last_outcome = ? WHERE state = ?",
                (PENDING, now, now, INTERRUPTED_OUTCOME, SENDING),
            ).rowcount
            conn.execute(
                "UPDATE attempts SET outcome = ?, finished_at = ?,"
                " message = 'the process stopped during this attempt' WHERE outcome IS NULL",
                (INTERRUPTED_OUTCOME, now),
            )
        if n:
            log.warning(
                "%d record(s) were being sent when fvagent stopped; they are queued again "
                "(the platform may receive them twice)",
                n,
            )
        return int(n)

    def claim(self, limit: int, now: float | None = None, *, max_wait_s: float | None = None) -> builtins.list[Claim]:
        """Take up to ``limit`` due pending records, oldest first, into ``sending`` (one attempt each).

        ``max_wait_s`` (the uploader's ``backoff_max_s``): no retry is ever set further ahead than
        this, so one that is was set while the wall clock was wrong (it stepped back since): it is
        due now, and a clock step never delays a retry by more than the longest backoff."""
        now = self._clock() if now is None else now
        with self._db.write("claim records to send", drain=True) as conn:
            if max_wait_s is not None:
                conn.execute(
                    "UPDATE records SET next_attempt_at = ? WHERE state = ? AND next_attempt_at > ?",
                    (now, PENDING, now + max_wait_s),
                )
            ids = [
                int(r[0])
                for r in conn.execute(
                    "SELECT id FROM records WHERE state = ? AND next_attempt_at <= ? ORDER BY id LIMIT ?",
                    (PENDING, now, int(limit)),
                ).fetchall()
            ]
            claims = []
            for record_id in ids:
                conn.execute(
                    "UPDATE records SET state = ?, attempts = attempts + 1, updated_at = ? WHERE id = ?",
                    (SENDING, now, record_id),
                )
                attempt = conn.execute("SELECT attempts FROM records WHERE id = ?", (record_id,)).fetchone()[0]
                cur = conn.execute(
                    "INSERT INTO attempts (record_id, attempt, started_at) VALUES (?, ?, ?)", (record_id, attempt, now)
                )
                claims.append(Claim(record_id, int(attempt), int(cur.lastrowid or 0), now))
                self._db.chained(chain.on_attempt(conn, self._keys.chain_key, record_id, int(attempt), now))
        return claims

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
        """Record the end of one attempt. ``outcome``: ``accepted`` (-> sent), ``rejected`` or
        ``local`` (-> rejected), ``retryable``, ``blocked``, ``clock`` or ``unregistered`` (-> pending, due at
        ``next_attempt_at``): an ``OutcomeKind`` or ``LOCAL_OUTCOME``."""
        now = self._clock() if now is None else now
        outcome = str(outcome)
        with self._db.write("record the upload result", drain=True) as conn:
            conn.execute(
                "UPDATE attempts SET request_id = ?, finished_at = ?, outcome = ?, http_status = ?,"
                " exception_code = ?, message = ? WHERE id = ?",
                (request_id, now, outcome, http_status, exception_code, message[:500], claim.attempt_row),
            )
            cur = self._settle(conn, claim, outcome, message, request_id, next_attempt_at, now)
            if cur.rowcount:
                self._db.chained(
                    chain.on_result(
                        conn,
                        self._keys.chain_key,
                        claim.id,
                        claim.attempt,
                        outcome,
                        now,
                        request_id=request_id,
                        return_time_ms=return_time_ms,
                        http_status=http_status,
                        exception_code=exception_code,
                        message=message,
                    )
                )

    @staticmethod
    def _settle(
        conn: sqlite3.Connection,
        claim: Claim,
        outcome: str,
        message: str,
        request_id: str | None,
        next_attempt_at: float | None,
        now: float,
    ) -> sqlite3.Cursor:
        """Move the claimed record to the state ``outcome`` leads to."""
        if outcome == OutcomeKind.ACCEPTED:
            return conn.execute(
                "UPDATE records SET state = ?, sent_at = ?, updated_at = ?, request_id = ?,"
                " last_outcome = ?, last_error = NULL WHERE id = ? AND state = ?",
                (SENT, now, now, request_id, outcome, claim.id, SENDING),
            )
        if outcome in (OutcomeKind.REJECTED, LOCAL_OUTCOME):
            return conn.execute(
                "UPDATE records SET state = ?, updated_at = ?, request_id = ?,"
                " last_outcome = ?, last_error = ? WHERE id = ? AND state = ?",
                (REJECTED, now, request_id, outcome, message[:500], claim.id, SENDING),
            )
        if outcome in _RETRY_LATER:
            return conn.execute(
                "UPDATE records SET state = ?, next_attempt_at = ?, updated_at = ?,"
                " request_id = COALESCE(?, request_id), last_outcome = ?, last_error = ?"
                " WHERE id = ? AND state = ?",
                (
                    PENDING,
                    now if next_attempt_at is None else next_attempt_at,
                    now,
                    request_id,
                    outcome,
                    message[:500],
                    claim.id,
                    SENDING,
                ),
            )
        raise ValueError(f"unknown outcome {outcome!r}")

    def release(self, claim: Claim) -> None:
        """Give a claimed record back untried (the uploader was paused or stopped): its attempt is undone."""
        with self._db.write("release a claimed record", drain=True) as conn:
            conn.execute("DELETE FROM attempts WHERE id = ?", (claim.attempt_row,))
            if conn.execute(
                "UPDATE records SET state = ?, attempts = attempts - 1 WHERE id = ? AND state = ?",
                (PENDING, claim.id, SENDING),
            ).rowcount:
                self._db.chained(chain.on_attempt_undone(conn, self._keys.chain_key, claim.id, self._clock()))

    # -- operator actions --------------------------------------------------------------------------
    def retry(self, record_id: int) -> None:
        """Send ``record_id`` again as soon as possible: a rejected or waiting (pending) record.

        Raises ``OutboxError`` for an unknown id, a sent or held record, or one being sent now.
        """
        now = self._clock()
        with self._db.write("retry the record") as conn:
            t = conn.execute("SELECT state FROM records WHERE id = ?", (int(record_id),)).fetchone()
            if t is None:
                raise OutboxError(f"no record with id {record_id}", record_id=record_id)
            state = RecordState(t[0])
            if state not in (REJECTED, PENDING):
                why = {
                    SENT: "it was already accepted by the platform",
                    SENDING: "it is being sent right now",
                    HELD: "it is held (see its held reason); it is released when complete",
                }[state]
                raise OutboxError(f"record {record_id} cannot be retried: {why}", record_id=record_id)
            conn.execute(
                "UPDATE records SET state = ?, next_attempt_at = ?, updated_at = ? WHERE id = ?",
                (PENDING, now, now, int(record_id)),
            )
            self._db.chained(chain.on_requeued(conn, self._keys.chain_key, [int(record_id)], now, "operator"))
        self._wakeup.set()

    def retry_rejected(self) -> int:
        """Queue every rejected record again; returns how many."""
        now = self._clock()
        with self._db.write("retry the rejected records") as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM records WHERE state = ?", (REJECTED,))]
            self._db.chained(chain.on_requeued(conn, self._keys.chain_key, ids, now, "operator"))
            n = conn.execute(
                "UPDATE records SET state = ?, next_attempt_at = ?, updated_at = ? WHERE state = ?",
                (PENDING, now, now, REJECTED),
            ).rowcount
        self._wakeup.set()
        return int(n)

    def resolve(self, record_id: int, *, request_id: str, message: str) -> None:
        """Mark a rejected record ``sent``: a corrected copy of it was accepted by the platform some
        other way (``fvagent upload-file``, or by hand), under ``request_id``.

        The record then counts as any sent record (retention erases its photos, ``retry --rejected``
        leaves it alone). One attempts row records the delivery, with ``request_id`` and ``message``.
        Raises ``OutboxError`` for an empty request id, an unknown id, or a record that is not rejected.
        """
        request_id = request_id.strip()
        if not request_id:
            raise OutboxError(
                f"record {record_id} cannot be marked sent without the accepted request id",
                record_id=record_id,
                hint="give the requestId that `fvagent upload-file` printed for the accepted record",
            )
        now = self._clock()
        with self._db.write("mark the record sent") as conn:
            t = conn.execute("SELECT state, attempts FROM records WHERE id = ?", (int(record_id),)).fetchone()
            if t is None:
                raise OutboxError(f"no record with id {record_id}", record_id=record_id)
            state, attempts = RecordState(t[0]), int(t[1])
            if state != REJECTED:
                why = {
                    SENT: "it was already accepted by the platform",
                    SENDING: "it is being sent right now",
                    PENDING: "it is queued to be sent (not rejected); if it is rejected again, resolve it then",
                    HELD: "it is held (see its held reason) and was never sent",
                }[state]
                raise OutboxError(f"record {record_id} cannot be marked sent: {why}", record_id=record_id)
            # Counted as one more attempt, so `attempts` keeps matching the attempts rows.
            conn.execute(
                "INSERT INTO attempts (record_id, attempt, request_id, started_at, finished_at, outcome,"
                " message) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (int(record_id), attempts + 1, request_id, now, now, OutcomeKind.ACCEPTED, message[:500]),
            )
            conn.execute(
                "UPDATE records SET state = ?, attempts = attempts + 1, sent_at = ?, updated_at = ?,"
                " request_id = ?, last_outcome = ?, last_error = NULL WHERE id = ?",
                (SENT, now, now, request_id, OutcomeKind.ACCEPTED, int(record_id)),
            )
            self._db.chained(chain.on_resolved(conn, self._keys.chain_key, int(record_id), now, request_id, message))

    # -- retention's side --------------------------------------------------------------------------
    def last_created_at(self) -> float | None:
        """When the newest record was captured (epoch seconds), or None for an empty outbox."""
        with self._db.read("read the outbox") as conn:
            t = conn.execute("SELECT created_at FROM records ORDER BY id DESC LIMIT 1").fetchone()
        return float(t[0]) if t is not None else None

    def last_sent_at(self) -> float | None:
        """When the latest delivery was recorded (epoch seconds), or None."""
        with self._db.read("read the outbox") as conn:
            t = conn.execute("SELECT MAX(sent_at) FROM records WHERE state = ?", (SENT,)).fetchone()
        return float(t[0]) if t is not None and t[0] is not None else None

    def sent_with_photos(self, limit: int, *, sent_before: float | None = None) -> RecordIds:
        """Ids of sent records still holding photos (or a WLT), earliest sent first."""
        sql, args = _WITH_PHOTOS, builtins.list[object]()
        if sent_before is not None:
            sql += " AND r.sent_at < ?"
            args.append(sent_before)
        with self._db.read("read the outbox") as conn:
            return [int(r[0]) for r in conn.execute(sql + " ORDER BY r.sent_at LIMIT ?", (*args, int(limit)))]

    def sent(self, limit: int, *, sent_before: float | None = None) -> RecordIds:
        """Ids of sent records, earliest sent first."""
        sql, args = "SELECT id FROM records WHERE state = ?", builtins.list[object]([SENT])
        if sent_before is not None:
            sql += " AND sent_at < ?"
            args.append(sent_before)
        with self._db.read("read the outbox") as conn:
            return [int(r[0]) for r in conn.execute(sql + " ORDER BY sent_at LIMIT ?", (*args, int(limit)))]

    def held_bytes(self) -> int:
        """Sealed bytes the outbox holds (the size budget counts these)."""
        with self._db.read("measure the outbox") as conn:
            return int(conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM records").fetchone()[0])

    def erase_photos(self, record_ids: Sequence[int], now: float) -> None:
        """Erase the photos and kept WLT of these records (one drain write); the chain notes it."""
        ids = [int(i) for i in record_ids]
        marks = ",".join("?" * len(ids))
        with self._db.write("erase photos of sent records", drain=True) as conn:
            conn.execute(f"UPDATE payloads SET photos = NULL, raw_wlt = NULL WHERE record_id IN ({marks})", ids)
            conn.execute(
                f"UPDATE records SET photos_erased_at = ?, bytes = (SELECT length(data) FROM payloads "
                f"WHERE payloads.record_id = records.id) WHERE id IN ({marks})",
                (now, *ids),
            )
            self._db.chained(chain.on_photos_erased(conn, self._keys.chain_key, ids, now))

    def delete_sent(self, record_ids: Sequence[int], now: float) -> int:
        """Delete these records, their payloads and attempts (one drain write); only sent ones go.
        Returns how many rows were deleted."""
        ids = [int(i) for i in record_ids]
        marks = ",".join("?" * len(ids))
        with self._db.write("delete old sent records", drain=True) as conn:
            conn.execute(f"DELETE FROM attempts WHERE record_id IN ({marks})", ids)
            conn.execute(f"DELETE FROM payloads WHERE record_id IN ({marks})", ids)
            deleted = int(
                conn.execute(f"DELETE FROM records WHERE id IN ({marks}) AND state = ?", (*ids, SENT)).rowcount
            )
            self._db.chained(chain.on_purged(conn, self._keys.chain_key, ids, now))
        if self.on_deleted is not None:
            self.on_deleted(deleted)
        return deleted
