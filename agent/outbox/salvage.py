"""Salvage: copy every record that can still be read, and opened with its key, from a damaged (or
set-aside) outbox file into the open outbox, with its state, attempts and id kept.

The source file is never written: it is copied (with its -wal) into a temporary directory beside
the destination and read there, one record at a time, so one unreadable page loses the records on
that page and nothing else. A record counts as salvaged only when its sealed blobs open with the
key (the AEAD tag proves they are the bytes that were written); one whose row or blobs are
unreadable is listed by id as lost. ``sending`` becomes ``pending`` (delivery is at-least-once,
as after any crash). A record whose ``uid`` is already in the destination is skipped (salvaged
before); one whose id is taken by another record gets a new id, reported as renumbered.

``source_key`` (``fvagent outbox merge``): the source was sealed under another key; its blobs are
opened with it and sealed again under the destination's key, and the card index is rebuilt.

Used by the daemon when it finds its outbox damaged at start (``agent.outbox.recovery``), and by
``fvagent outbox salvage FILE`` / ``fvagent outbox merge FILE``. Replaces ``sqlite3 .recover``,
which the sqlite3 of Debian 12 and Ubuntu 22.04 cannot run (built without ``sqlite_dbpage``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from agent.outbox import chain
from agent.outbox.keys import DataKey
from agent.outbox.queue import INTERRUPTED_OUTCOME
from agent.outbox.sealing import aad
from agent.outbox.store import Outbox
from core.errors import CryptoError, KeyFileError, OutboxError, StorageFull
from core.stored import RecordState

log = logging.getLogger(__name__)

PROBE_LIMIT = 1_000_000
"""When not even the id list of a damaged file reads, ids up to the highest known are probed one by one."""


@dataclasses.dataclass(frozen=True)
class SalvageReport:
    """What one salvage did; ids are the source's ids."""

    source: Path
    salvaged: list[int]
    lost: list[int]
    already_present: list[int]
    renumbered: dict[int, int]
    pending: int
    """How many salvaged records still wait to be sent (pending, held)."""

    def summary(self) -> str:
        text = f"{len(self.salvaged)} record(s) salvaged ({self.pending} to send), {len(self.lost)} lost"
        if self.lost:
            text += " (ids " + _ids_text(self.lost) + ")"
        if self.already_present:
            text += f", {len(self.already_present)} already present"
        if self.renumbered:
            text += ", renumbered " + ", ".join(f"{a}->{b}" for a, b in sorted(self.renumbered.items())[:20])
        return text


def _ids_text(ids: list[int], limit: int = 50) -> str:
    shown = ", ".join(map(str, ids[:limit]))
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})").fetchall()]


def _record_ids(conn: sqlite3.Connection) -> list[int]:
    """Every id in the source's records table; probes id by id when the table does not scan."""
    try:
        return [int(r[0]) for r in conn.execute("SELECT id FROM records ORDER BY id").fetchall()]
    except sqlite3.DatabaseError as exc:
        log.warning("salvage: the record list does not read (%s); looking the ids up one by one", exc)
    upper = 0
    for sql in ("SELECT seq FROM sqlite_sequence WHERE name = 'records'", "SELECT MAX(id) FROM records"):
        try:
            t = conn.execute(sql).fetchone()
            upper = max(upper, int(t[0] or 0) if t else 0)
        except sqlite3.DatabaseError:
            continue
    ids = []
    for record_id in range(1, min(upper, PROBE_LIMIT) + 1 if upper else PROBE_LIMIT + 1):
        try:
            if conn.execute("SELECT 1 FROM records WHERE id = ?", (record_id,)).fetchone():
                ids.append(record_id)
        except sqlite3.DatabaseError:
            ids.append(record_id)  # unreadable where it should be: reported lost if the row does not read
    return ids


def _copy_source(source: Path, workdir: Path) -> Path:
    copy = workdir / "source.db"
    shutil.copyfile(source, copy)
    wal = source.with_name(source.name + "-wal")
    if wal.exists():
        shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
    return copy


def salvage(source: str | Path, into: Outbox, *, source_key: DataKey | None = None) -> SalvageReport:
    """Copy what can be read from ``source`` into ``into``; see the module docstring.

    Raises ``OutboxError`` when ``source`` is not there or not an outbox at all, ``KeyFileError``
    when its key check value shows another key than the one given (or the destination's)."""
    source = Path(source)
    if not source.is_file():
        raise OutboxError(f"{source} is not a file", hint="give the path of a damaged or set-aside outbox copy")
    key = source_key or into.keys.current
    try:
        with tempfile.TemporaryDirectory(prefix=".salvage-", dir=into.path.parent) as tmp:
            copy = _copy_source(source, Path(tmp))
            conn = sqlite3.connect(copy, isolation_level=None)
            try:
                return _salvage(conn, source, key, into, reseal=source_key is not None)
            finally:
                conn.close()
    except OSError as exc:
        if isinstance(exc, StorageFull):
            raise
        raise OutboxError(
            f"cannot salvage {source}: {exc}", hint="free disk space beside the outbox and retry"
        ) from exc


def _salvage(conn: sqlite3.Connection, source: Path, key: DataKey, into: Outbox, *, reseal: bool) -> SalvageReport:
    try:
        check = conn.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc) or "no such table" in str(exc):
            raise OutboxError(f"{source} is not an fvagent outbox ({exc})") from exc
        check = None  # the meta page is damaged: each blob's tag still proves the key
    if check is not None and not key.matches(bytes(check[0])):
        raise KeyFileError(
            f"{source} was sealed under another data key than {key.source}",
            hint="give its original key: fvagent outbox merge FILE --key KEYFILE",
        )
    with into.db.read("read the outbox") as dest:
        # chain_seq is the record's place in the new outbox's chain, set by its "salvaged" event
        record_cols = [c for c in _columns(conn, "records") if c in set(_columns(dest, "records")) and c != "chain_seq"]
        payload_cols = [c for c in _columns(conn, "payloads") if c in set(_columns(dest, "payloads"))]
        attempt_cols = [c for c in _columns(conn, "attempts") if c in set(_columns(dest, "attempts")) and c != "id"]
    salvaged: list[int] = []
    lost: list[int] = []
    present: list[int] = []
    renumbered: dict[int, int] = {}
    taken: list[tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]] = []
    pending = 0
    for record_id in _record_ids(conn):
        try:
            row = conn.execute(f"SELECT {', '.join(record_cols)} FROM records WHERE id = ?", (record_id,)).fetchone()
            blobs = conn.execute(
                f"SELECT {', '.join(payload_cols)} FROM payloads WHERE record_id = ?", (record_id,)
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            log.warning("salvage: record %d does not read: %s", record_id, exc)
            lost.append(record_id)
            continue
        if row is None:
            continue  # a probed id that was never there (or deleted by retention)
        record = dict(zip(record_cols, row, strict=True))
        payload = dict(zip(payload_cols, blobs, strict=True)) if blobs is not None else None
        if payload is None or not _opens(key, record, payload, into if reseal else None):
            log.warning("salvage: record %d: its sealed data is missing or does not open", record_id)
            lost.append(record_id)
            continue
        try:
            attempts = [
                dict(zip(attempt_cols, t, strict=True))
                for t in conn.execute(
                    f"SELECT {', '.join(attempt_cols)} FROM attempts WHERE record_id = ? ORDER BY attempt, id",
                    (record_id,),
                ).fetchall()
            ]
        except sqlite3.DatabaseError:
            attempts = []  # the record itself is whole: its attempt history is what was lost
            log.warning("salvage: record %d: its attempts do not read; the record is kept without them", record_id)
        if record.get("state") == RecordState.SENDING:
            record["state"], record["last_outcome"] = RecordState.PENDING, INTERRUPTED_OUTCOME
        new_id = _insert(into, record, payload, attempts, renumber=False, source=source)
        if new_id == _TAKEN:
            taken.append((record, payload, attempts))
            continue
        if new_id is None:
            present.append(record_id)
            continue
        salvaged.append(record_id)
        pending += record.get("state") in (RecordState.PENDING, RecordState.HELD)
    # Records whose id is used by another record get new ids last, so they take no id another keeps.
    for record, payload, attempts in taken:
        new_id = _insert(into, record, payload, attempts, renumber=True, source=source)
        if new_id is None:
            present.append(record["id"])
            continue
        renumbered[record["id"]] = new_id
        salvaged.append(record["id"])
        pending += record.get("state") in (RecordState.PENDING, RecordState.HELD)
    salvaged.sort()
    if salvaged and into.watermark is not None:
        into.watermark.note(max([renumbered.get(i, i) for i in salvaged]), len(salvaged))
    if salvaged:
        into.wakeup.set()
    report = SalvageReport(source, salvaged, lost, present, renumbered, pending)
    log.warning("salvage of %s: %s", source, report.summary())
    return report


def _opens(key: DataKey, record: dict[str, Any], payload: dict[str, Any], reseal_into: Outbox | None) -> bool:
    """True when every sealed blob opens; with ``reseal_into`` they are sealed again under its key
    (in place in ``payload``) and the card index rebuilt."""
    uid = record.get("uid")
    if not isinstance(uid, str) or payload.get("data") is None:
        return False
    try:
        for part, column in (("data", "data"), ("photos", "photos"), ("wlt", "raw_wlt")):
            blob = payload.get(column)
            if blob is None:
                continue
            plain = key.open(bytes(blob), aad(uid, part))
            if reseal_into is not None:
                payload[column] = reseal_into.keys.current.seal(plain, aad(uid, part))
                if part == "data":
                    card_no = json.loads(plain).get("cardNo")
                    record["card_index"] = (
                        reseal_into.keys.current.card_index(card_no) if isinstance(card_no, str) and card_no else None
                    )
    except (CryptoError, ValueError):
        return False
    return True


_TAKEN = -1


def _insert(
    into: Outbox,
    record: dict[str, Any],
    payload: dict[str, Any],
    attempts: list[dict[str, Any]],
    *,
    renumber: bool,
    source: Path,
) -> int | None:
    """Insert one salvaged record under its id; None when its uid is there already. When the id is
    used by another record: ``_TAKEN``, or with ``renumber`` a new id. The record enters the audit
    chain with a ``salvaged`` event that names ``source`` and the state it was found in."""
    original_id = record.get("id")
    with into.db.write("store a salvaged record") as conn:
        if conn.execute("SELECT 1 FROM records WHERE uid = ?", (record["uid"],)).fetchone():
            return None
        if conn.execute("SELECT 1 FROM records WHERE id = ?", (record["id"],)).fetchone():
            if not renumber:
                return _TAKEN
            record = {k: v for k, v in record.items() if k != "id"}
        key = record.get("idempotency_key")
        if key is not None and conn.execute("SELECT 1 FROM records WHERE idempotency_key = ?", (key,)).fetchone():
            record = {**record, "idempotency_key": None}  # the same capture was committed again meanwhile
        cols = list(record)
        cur = conn.execute(
            f"INSERT INTO records ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", [record[c] for c in cols]
        )
        new_id = int(cur.lastrowid or 0)
        body = {**payload, "record_id": new_id}
        conn.execute(
            f"INSERT INTO payloads ({', '.join(body)}) VALUES ({', '.join('?' * len(body))})", list(body.values())
        )
        for attempt in attempts:
            row = {**attempt, "record_id": new_id}
            conn.execute(
                f"INSERT INTO attempts ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values())
            )
        at, event = chain.commit_body(conn, new_id, upgrade=True)
        event.update(note=f"salvaged from {source.name}", salvaged_id=original_id)
        head = chain.append(conn, into.keys.chain_key, "salvaged", new_id, at, event)
        conn.execute("UPDATE records SET chain_seq = ? WHERE id = ?", (head.seq, new_id))
        into.db.chained(head)
    return new_id
