"""The audit chain of the outbox: every commit and every state change, linked by SM3, its head signed.

Each row of the ``chain`` table is one event: ``seq`` (1, 2, 3 ...), the record it concerns, its
``kind``, its time and a JSON ``body``. Its ``digest`` is SM3 over the previous event's digest and
all of these, so no event can be changed, removed or put in another place without breaking every
later link. The newest (``seq``, ``digest``) is the head, kept in ``meta`` with an HMAC-SM3 under a
key derived from the outbox key, and again, with its own HMAC, in the small file ``outbox.head`` in
the state directory, written after each commit: a cut tail, or an older copy of the database put
back, leaves the database behind that file.

A record's commit event carries SM3 of its sealed data, the seal identity (nonce, tag, length) of
its sealed photos and WLT, and SM3 of its fixed columns (uid, time, meta, index, idempotency key);
later events say what changed. Replaying the events gives what every row must hold now, so a row
changed, added or deleted with sqlite3 shows as a difference. docs/outbox.md says what this proves
and what it does not.

Purging old rows (retention) appends a ``purged`` event per row; the events older than the oldest
row still present are then deleted and summed up in a checkpoint (``meta`` ``chain.checkpoint``,
HMAC-SM3 signed), where the walk starts.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hmac
import json
import logging
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agent.crypto import GCM_NONCE, GCM_TAG, hmac_sm3, sm3
from core.records import JsonObject

log = logging.getLogger(__name__)

HEAD_FILE = "outbox.head"
GENESIS = bytes(32)
START_CHECK_EVENTS = 1000
"""The daemon checks this many of the newest events at start (the whole chain: ``fvagent audit verify``)."""
UPGRADE_NOTE = "chained from upgrade"
_KEY_LABEL = b"fvagent:audit-chain:v1"
_RESULT_KINDS = {
    "accepted": "sent",
    "rejected": "rejected",
    "local": "rejected",
    "retryable": "deferred",
    "blocked": "deferred",
    "clock": "deferred",
    "unregistered": "deferred",
}


# Any: a checkpoint is JSON read back from the meta table (json.loads returns Any) and its fields are
# read by name wherever it is used; its MAC (mac_ok_checkpoint) is what vouches for it.
Checkpoint = dict[str, Any]
"""The chain's checkpoint: what was purged (``seq``, ``digest``, ``events``, ``records``, ...) and its MAC."""


def chain_key(outbox_key: bytes) -> bytes:
    """The HMAC-SM3 key of the chain head, derived from the outbox data key."""
    return hmac_sm3(outbox_key, _KEY_LABEL)


def canonical(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)


def event_digest(prev: bytes, seq: int, record_id: int | None, kind: str, at: float, body: str) -> bytes:
    head = f"fvagent-chain/1\n{seq}\n{'' if record_id is None else record_id}\n{kind}\n{float(at)!r}\n"
    return sm3(prev + head.encode("ascii") + body.encode("utf-8"))


def blob_seal_id(conn: sqlite3.Connection, column: str, record_id: int, size: int | None) -> str | None:
    """What names one sealed blob of ``payloads.<column>``: its length, nonce and GCM tag (the tag
    authenticates the rest). Only its first and last bytes are read: the
    photos stay on disk (a commit does not read back what it wrote, a verify of 10,000 records takes
    seconds)."""
    if size is None:
        return None
    with conn.blobopen("payloads", column, record_id, readonly=True) as blob:
        nonce = blob.read(GCM_NONCE)
        blob.seek(-GCM_TAG, 2)
        tag = blob.read(GCM_TAG)
    return f"{size}:{nonce.hex()}:{tag.hex()}"


def fixed_digest(
    uid: str,
    created_at: float,
    simulated: object,
    idempotency_key: str | None,
    card_index: bytes | None,
    meta: str | None,
) -> str:
    """SM3 of the columns a record keeps from its commit to its purge."""
    return sm3(
        canonical(
            [
                uid,
                float(created_at),
                int(bool(simulated)),
                idempotency_key,
                bytes(card_index).hex() if card_index is not None else None,
                meta,
            ]
        ).encode("utf-8")
    ).hex()


def _mac(ckey: bytes, what: str, seq: int, digest: bytes) -> str:
    return hmac_sm3(ckey, f"fvagent-chain-{what}/1\n{seq}\n".encode("ascii") + digest).hex()


def mac_ok(ckey: bytes, what: str, seq: int, digest: bytes, mac: object) -> bool:
    return isinstance(mac, str) and hmac.compare_digest(_mac(ckey, what, seq, digest), mac)


@dataclasses.dataclass(frozen=True)
class Head:
    seq: int
    digest: bytes
    mac: str

    def doc(self) -> JsonObject:
        return {"seq": self.seq, "digest": self.digest.hex(), "mac": self.mac}


def read_meta_json(conn: sqlite3.Connection, key: str) -> object:
    """A JSON value of the ``meta`` table, or ``None`` when absent or unreadable."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    if row is None or row[0] is None:
        return None
    try:
        return json.loads(bytes(row[0]).decode("utf-8"))
    except ValueError:
        return None


def _meta_put(conn: sqlite3.Connection, key: str, value: object) -> None:
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, canonical(value).encode("utf-8")))


def _head_from(doc: object) -> Head | None:
    if not isinstance(doc, dict):
        return None
    try:
        return Head(int(doc["seq"]), bytes.fromhex(doc["digest"]), str(doc.get("mac") or ""))
    except (KeyError, TypeError, ValueError):
        return None


def read_head(conn: sqlite3.Connection) -> Head | None:
    return _head_from(read_meta_json(conn, "chain.head"))


def read_checkpoint(conn: sqlite3.Connection) -> Checkpoint | None:
    doc = read_meta_json(conn, "chain.checkpoint")
    return doc if isinstance(doc, dict) else None


# -- writing -----------------------------------------------------------------------------------------
def append(
    conn: sqlite3.Connection, ckey: bytes, kind: str, record_id: int | None, at: float, body: JsonObject
) -> Head:
    """Append one event inside the caller's write transaction and move the signed head to it.

    A stored head whose signature does not check is extended with an empty signature, never signed
    again: signing it would launder whatever changed it (``audit verify`` keeps reporting it)."""
    head = read_head(conn)
    if head is None:
        checkpoint = read_checkpoint(conn)
        seq, prev, valid = 0, GENESIS, True
        if checkpoint is not None:  # every event was purged: continue after the checkpoint
            seq, prev = int(checkpoint["seq"]), bytes.fromhex(checkpoint["digest"])
        last = conn.execute("SELECT seq, digest FROM chain ORDER BY seq DESC LIMIT 1").fetchone()
        if last is not None:  # events but no head: removed outside the agent; capture goes on, unsigned
            seq, prev, valid = int(last[0]), bytes(last[1]), False
            log.error("the outbox's audit chain head is missing; run `fvagent audit verify`")
    else:
        seq, prev = head.seq, head.digest
        valid = mac_ok(ckey, "head", head.seq, head.digest, head.mac)
        if not valid:
            log.error("the outbox's audit chain head does not check; run `fvagent audit verify`")
    text = canonical(body)
    seq += 1
    digest = event_digest(prev, seq, record_id, kind, at, text)
    conn.execute(
        "INSERT INTO chain (seq, record_id, kind, at, body, digest) VALUES (?, ?, ?, ?, ?, ?)",
        (seq, record_id, kind, at, text, digest),
    )
    new = Head(seq, digest, _mac(ckey, "head", seq, digest) if valid else "")
    _meta_put(conn, "chain.head", new.doc())
    return new


def commit_body(conn: sqlite3.Connection, record_id: int, *, upgrade: bool = False) -> tuple[float, JsonObject]:
    """(created_at, body) of a record's commit event, read from the row just written."""
    t = conn.execute(
        "SELECT r.uid, r.created_at, r.simulated, r.idempotency_key, r.card_index, r.meta, r.state, "
        "r.held_reason, p.data, length(p.photos), length(p.raw_wlt), r.attempts, r.request_id, r.sent_at, "
        "r.photos_erased_at FROM records r LEFT JOIN payloads p ON p.record_id = r.id WHERE r.id = ?",
        (record_id,),
    ).fetchone()
    body: JsonObject = {
        "fixed": fixed_digest(t[0], t[1], t[2], t[3], t[4], t[5]),
        "state": t[6],
        "held_reason": t[7],
        "data": sm3(bytes(t[8])).hex() if t[8] is not None else None,
        "photos": blob_seal_id(conn, "photos", record_id, t[9]),
        "wlt": blob_seal_id(conn, "raw_wlt", record_id, t[10]),
    }
    if upgrade:
        body.update(note=UPGRADE_NOTE, attempts=t[11], request_id=t[12], sent_at=t[13], photos_erased_at=t[14])
    return float(t[1]), body


def on_commit(conn: sqlite3.Connection, ckey: bytes, record_id: int) -> Head:
    """A verification was committed (pending or held)."""
    at, body = commit_body(conn, record_id)
    head = append(conn, ckey, "committed", record_id, at, body)
    conn.execute("UPDATE records SET chain_seq = ? WHERE id = ?", (head.seq, record_id))
    return head


def on_attempt(conn: sqlite3.Connection, ckey: bytes, record_id: int, attempt: int, at: float) -> Head:
    return append(conn, ckey, "attempt", record_id, at, {"attempt": int(attempt)})


def on_result(
    conn: sqlite3.Connection,
    ckey: bytes,
    record_id: int,
    attempt: int,
    outcome: str,
    at: float,
    *,
    request_id: str | None,
    return_time_ms: int | None,
    http_status: int | None,
    exception_code: str | None,
    message: str,
) -> Head:
    """The end of an attempt: sent (with the platform's requestId and returnTime), rejected (with the
    reason) or deferred (a retry later)."""
    return append(
        conn,
        ckey,
        _RESULT_KINDS[outcome],
        record_id,
        at,
        {
            "attempt": int(attempt),
            "outcome": outcome,
            "request_id": request_id,
            "return_time_ms": return_time_ms,
            "http_status": http_status,
            "exception_code": exception_code,
            "message": message[:500],
        },
    )


def on_attempt_undone(conn: sqlite3.Connection, ckey: bytes, record_id: int, at: float) -> Head:
    return append(conn, ckey, "attempt_undone", record_id, at, {})


def on_requeued(conn: sqlite3.Connection, ckey: bytes, record_ids: Iterable[int], at: float, why: str) -> Head | None:
    """Records put back to pending: by an operator's retry, or after a crash (``why``)."""
    head = None
    for record_id in record_ids:
        head = append(conn, ckey, "requeued", int(record_id), at, {"why": why})
    return head


def on_held(conn: sqlite3.Connection, ckey: bytes, record_ids: Iterable[int], at: float, reason: str) -> Head | None:
    """Pending records held after their commit (a simulated record once the platform is production)."""
    head = None
    for record_id in record_ids:
        head = append(conn, ckey, "held", int(record_id), at, {"reason": reason})
    return head


def on_handover(conn: sqlite3.Connection, ckey: bytes, record_id: int, at: float, sealed_operator: bytes) -> Head:
    """The desk marked a failed verification as handed over to the police (the record is unchanged)."""
    return append(conn, ckey, "handover", record_id, at, {"operator": sm3(sealed_operator).hex()})


def on_released(conn: sqlite3.Connection, ckey: bytes, record_id: int, at: float) -> Head:
    """A held record was completed: new sealed payload, now pending."""
    t = conn.execute(
        "SELECT data, length(photos), length(raw_wlt) FROM payloads WHERE record_id = ?", (record_id,)
    ).fetchone()
    return append(
        conn,
        ckey,
        "released",
        record_id,
        at,
        {
            "data": sm3(bytes(t[0])).hex(),
            "photos": blob_seal_id(conn, "photos", record_id, t[1]),
            "wlt": blob_seal_id(conn, "raw_wlt", record_id, t[2]),
        },
    )


def on_resolved(
    conn: sqlite3.Connection, ckey: bytes, record_id: int, at: float, request_id: str, message: str
) -> Head:
    return append(conn, ckey, "resolved", record_id, at, {"request_id": request_id, "message": message[:500]})


def on_photos_erased(conn: sqlite3.Connection, ckey: bytes, record_ids: Iterable[int], at: float) -> Head | None:
    head = None
    for record_id in record_ids:
        head = append(conn, ckey, "photos_erased", int(record_id), at, {})
    return head


def on_purged(conn: sqlite3.Connection, ckey: bytes, record_ids: Iterable[int], at: float) -> Head | None:
    """Rows deleted by retention; then the events no row needs any more become the checkpoint."""
    head = None
    for record_id in record_ids:
        head = append(conn, ckey, "purged", int(record_id), at, {})
    _prune(conn, ckey, at)
    return head


def _prune(conn: sqlite3.Connection, ckey: bytes, at: float) -> None:
    (oldest,) = conn.execute("SELECT MIN(chain_seq) FROM records").fetchone()
    head = read_head(conn)
    if head is None:
        return
    # Keep the last event always: it is the head the next append links to.
    cut = min(int(oldest) - 1 if oldest is not None else head.seq, head.seq - 1)
    checkpoint = read_checkpoint(conn) or {"seq": 0, "records": 0, "events": 0, "last_record_id": 0}
    if cut <= int(checkpoint["seq"]):
        return
    (digest,) = conn.execute("SELECT digest FROM chain WHERE seq = ?", (cut,)).fetchone()
    events, records, last_id = conn.execute(
        "SELECT COUNT(*), SUM(kind IN ('committed', 'upgraded')), MAX(CASE WHEN kind IN ('committed', 'upgraded') "
        "THEN record_id END) FROM chain WHERE seq <= ?",
        (cut,),
    ).fetchone()
    new = {
        "seq": cut,
        "digest": bytes(digest).hex(),
        "events": int(checkpoint["events"]) + int(events),
        "records": int(checkpoint["records"]) + int(records or 0),
        "last_record_id": max(int(checkpoint["last_record_id"]), int(last_id or 0)),
        "at": at,
    }
    new["mac"] = checkpoint_mac(ckey, new)
    conn.execute("DELETE FROM chain WHERE seq <= ?", (cut,))
    _meta_put(conn, "chain.checkpoint", new)


def checkpoint_mac(ckey: bytes, cp: Checkpoint) -> str:
    summary = canonical([cp["events"], cp["records"], cp["last_record_id"], cp["at"]]).encode("utf-8")
    return _mac(ckey, "checkpoint", int(cp["seq"]), bytes.fromhex(cp["digest"]) + summary)


def mac_ok_checkpoint(ckey: bytes, cp: Checkpoint) -> bool:
    return hmac.compare_digest(checkpoint_mac(ckey, cp), str(cp.get("mac") or ""))


def upgrade(conn: sqlite3.Connection, ckey: bytes, at: float) -> int:
    """Chain the rows an older fvagent wrote (no commit event yet), each marked "chained from
    upgrade" with its state as found. Inside the caller's transaction, once: the migration to
    schema 3 marks that it is due. Returns how many."""
    ids = [int(r[0]) for r in conn.execute("SELECT id FROM records WHERE chain_seq IS NULL ORDER BY id")]
    for record_id in ids:
        created, body = commit_body(conn, record_id, upgrade=True)
        head = append(conn, ckey, "upgraded", record_id, created, body)
        conn.execute("UPDATE records SET chain_seq = ? WHERE id = ?", (head.seq, record_id))
    return len(ids)


def resign(conn: sqlite3.Connection, old_ckey: bytes, new_ckey: bytes) -> None:
    """Move the head and checkpoint signatures to a new key (key rotation); both must check under the old."""
    head = read_head(conn)
    if head is not None:
        if not mac_ok(old_ckey, "head", head.seq, head.digest, head.mac):
            raise ValueError("the audit chain head does not check under the current key")
        _meta_put(conn, "chain.head", Head(head.seq, head.digest, _mac(new_ckey, "head", head.seq, head.digest)).doc())
    cp = read_checkpoint(conn)
    if cp is not None:
        if not mac_ok_checkpoint(old_ckey, cp):
            raise ValueError("the audit chain checkpoint does not check under the current key")
        cp["mac"] = checkpoint_mac(new_ckey, cp)
        _meta_put(conn, "chain.checkpoint", cp)


# -- the head file -------------------------------------------------------------------------------------
def head_file(storage_dir: Path | str) -> Path:
    return Path(storage_dir) / HEAD_FILE


_SLOT_BYTES = 256
_SLOT_OFFSETS = (0, 4096)  # two pages apart: a write torn by a power cut damages one slot only


def read_head_file(path: Path, ckey: bytes | None = None) -> Head | None:
    """The head in ``outbox.head``: of its two slots, the newest that parses (and, given ``ckey``,
    whose signature checks, when one does). ``None`` when there is no file; ``seq`` -1 when neither
    slot can be read."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        return Head(-1, b"", "")
    heads = []
    for offset in _SLOT_OFFSETS:
        try:
            head = _head_from(json.loads(data[offset : offset + _SLOT_BYTES].decode("ascii").strip()))
        except (UnicodeDecodeError, ValueError):
            head = None
        if head is not None:
            heads.append(head)
    if ckey is not None and (signed := [h for h in heads if mac_ok(ckey, "file", h.seq, h.digest, h.mac)]):
        heads = signed
    return max(heads, key=lambda h: h.seq) if heads else Head(-1, b"", "")


def write_head_file(path: Path, head: Head, ckey: bytes, lock_fd: int, *, force: bool = False) -> None:
    """Write the head beside the database, never backwards: two processes may commit in turn, and
    the file keeps the larger. ``lock_fd`` serialises writers (a byte-range lock on the outbox lock
    file, apart from its whole-file flock). ``force`` (a key rotation) writes both slots and syncs.

    Written in place into one of two slots (by ``seq``'s parity), with no fsync: a rename per commit
    cost a millisecond under the outbox lock, and an fsync doubled enqueue's. After a power cut the
    file may lag the database, which verify allows; a torn slot leaves the other one."""
    signed = Head(head.seq, head.digest, _mac(ckey, "file", head.seq, head.digest))
    text = canonical(signed.doc()).encode("ascii")
    record = text + b" " * (_SLOT_BYTES - 1 - len(text)) + b"\n"
    fcntl.lockf(lock_fd, fcntl.LOCK_EX, 1, 1)
    try:
        if not force:
            current = read_head_file(path, ckey)
            if current is not None and current.seq >= head.seq:
                return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            for offset in _SLOT_OFFSETS if force else (_SLOT_OFFSETS[head.seq % 2],):
                os.pwrite(fd, record, offset)
            if force:
                os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        fcntl.lockf(lock_fd, fcntl.LOCK_UN, 1, 1)
