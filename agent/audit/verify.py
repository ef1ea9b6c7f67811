"""Walking the audit chain: ``verify_chain`` (all of it, ``fvagent audit verify``) and ``verify_tail``
(the newest events only, the daemon's check at start).

The walk recomputes every link, checks the head's signature against the last event, compares the
database with the head file (``outbox.head``), then replays the events of each record and compares
the result with its row. Problems come in that order, the first broken link first.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.crypto import sm3
from agent.outbox import chain
from core.stored import RecordState

if TYPE_CHECKING:
    from agent.outbox.store import Outbox

_COMMITS = ("committed", "upgraded", "salvaged")
_COMPARED = ("state", "attempts", "request_id", "sent_at", "photos_erased_at", "held_reason")
_FROM: dict[str, tuple[RecordState, ...]] = {
    "attempt": (RecordState.PENDING,),
    "sent": (RecordState.SENDING,),
    "rejected": (RecordState.SENDING,),
    "deferred": (RecordState.SENDING,),
    "attempt_undone": (RecordState.SENDING,),
    "held": (RecordState.PENDING,),
    "released": (RecordState.HELD,),
    "resolved": (RecordState.REJECTED,),
    "photos_erased": (RecordState.SENT,),
    "purged": (RecordState.SENT,),
}
"""The state each event starts from: the agent writes it only then, so any other means the row's
state was changed by hand before the agent acted on it."""


@dataclasses.dataclass
class Report:
    """What a walk found. ``problems`` is empty when everything checks."""

    problems: list[str] = dataclasses.field(default_factory=list)
    records: int = 0
    upgraded: int = 0
    events: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    purged_records: int = 0
    purged_events: int = 0
    partial: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if not self.ok:
            more = f" ({len(self.problems) - 1} more problem(s) after it)" if len(self.problems) > 1 else ""
            return f"BROKEN: {self.problems[0]}{more}"
        span = f" (seq {self.first_seq}..{self.last_seq})" if self.events else ""
        if self.partial:
            return f"OK: the newest {self.events} events{span} link up to the signed head"
        upgraded = f", {self.upgraded} of them chained from upgrade" if self.upgraded else ""
        purged = (
            (f"; {self.purged_records} purged record(s) and {self.purged_events} event(s) in the signed checkpoint")
            if self.purged_events
            else ""
        )
        return f"OK: {self.records} record(s){upgraded}, {self.events} event(s){span}{purged}; head signed"


def _begin(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN")  # one snapshot for the whole walk while the daemon keeps writing


def _end(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _start(conn: sqlite3.Connection, ckey: bytes, report: Report) -> tuple[int, bytes, int]:
    """(seq before the first event, its digest, last purged record id) from the checkpoint, if any."""
    cp = chain.read_checkpoint(conn)
    if cp is None:
        return 0, chain.GENESIS, 0
    try:
        seq, digest = int(cp["seq"]), bytes.fromhex(cp["digest"])
        good = chain.mac_ok_checkpoint(ckey, cp)
    except (KeyError, TypeError, ValueError):
        report.problems.append("the audit checkpoint is unreadable: altered outside the agent")
        return 0, chain.GENESIS, 0
    if not good:
        report.problems.append(
            "the audit checkpoint's signature does not check: altered outside the agent "
            "(or the outbox key is not the one it was signed with)"
        )
    report.purged_records, report.purged_events = int(cp.get("records", 0)), int(cp.get("events", 0))
    return seq, digest, int(cp.get("last_record_id", 0))


def _link(report: Report, expected_seq: int, prev: bytes, row: tuple[Any, ...]) -> bytes:
    seq, record_id, kind, at, body, digest = row
    if seq > expected_seq:
        span = f"event {expected_seq}" if seq == expected_seq + 1 else f"events {expected_seq}..{seq - 1}"
        report.problems.append(f"{span} missing: deleted from the chain outside the agent")
    computed = chain.event_digest(prev, seq, record_id, kind, at, body)
    if bytes(digest) != computed:
        report.problems.append(f"event {seq} ({kind}, record {record_id}) altered: its digest does not match")
    return bytes(digest)


def _check_head(
    conn: sqlite3.Connection,
    ckey: bytes,
    report: Report,
    last_seq: int,
    last_digest: bytes,
    file_head: chain.Head | None,
    file_name: str,
) -> None:
    head = chain.read_head(conn)
    if head is None:
        if last_seq:
            report.problems.append("the signed chain head is missing from the database: removed outside the agent")
        if file_head is not None and file_head.seq > 0:
            report.problems.append(
                f"the database has no chain but {file_name} says {file_head.seq} events: "
                "an older copy of the outbox was put back, or the chain was deleted"
            )
        return
    if not chain.mac_ok(ckey, "head", head.seq, head.digest, head.mac):
        report.problems.append(
            "the chain head's signature does not check: the chain was rewritten outside the "
            "agent (or the outbox key is not the one it was signed with)"
        )
    if head.seq > last_seq:
        span = f"event {head.seq}" if head.seq == last_seq + 1 else f"events {last_seq + 1}..{head.seq}"
        report.problems.append(
            f"tail truncated: {span} missing (the signed head is at {head.seq}, the chain ends at {last_seq})"
        )
    elif head.seq < last_seq:
        report.problems.append(f"events {head.seq + 1}..{last_seq} come after the signed head: added outside the agent")
    elif head.digest != last_digest:
        report.problems.append(f"event {head.seq} is not the one the head was signed on: altered outside the agent")
    if file_head is None:
        report.problems.append(
            f"the head file {file_name} is missing: deleted, or the outbox was copied here without it"
        )
    elif file_head.seq < 0:
        report.problems.append(f"the head file {file_name} is unreadable")
    elif not chain.mac_ok(ckey, "file", file_head.seq, file_head.digest, file_head.mac):
        report.problems.append(f"the head file {file_name}'s signature does not check: altered outside the agent")
    elif file_head.seq > head.seq:
        report.problems.append(
            f"the outbox is behind its head file ({head.seq} events in the database, "
            f"{file_head.seq} in {file_name}): an older copy of the database was put back, "
            "or its tail was cut"
        )
    else:
        row = conn.execute("SELECT digest FROM chain WHERE seq = ?", (file_head.seq,)).fetchone()
        if row is not None and bytes(row[0]) != file_head.digest:
            report.problems.append(
                f"event {file_head.seq} differs from the one {file_name} recorded: the chain was rewritten since"
            )


def _read_file_head(storage_dir: Path, ckey: bytes) -> tuple[chain.Head | None, str]:
    path = chain.head_file(storage_dir)
    return chain.read_head_file(path, ckey), path.name


def verify_chain(conn: sqlite3.Connection, outbox_key: bytes, storage_dir: Path) -> Report:
    """Walk the whole chain and compare every row with its events."""
    ckey = chain.chain_key(outbox_key)
    report = Report()
    file_head, file_name = _read_file_head(storage_dir, ckey)  # before the snapshot: the file may only lag it
    _begin(conn)
    try:
        seq, prev, last_purged_id = _start(conn, ckey, report)
        report.first_seq = seq + 1
        expected: dict[int, dict[str, Any]] = {}
        for row in conn.execute("SELECT seq, record_id, kind, at, body, digest FROM chain ORDER BY seq"):
            prev = _link(report, seq + 1, prev, row)
            seq = int(row[0])
            report.events += 1
            _replay(report, expected, row, last_purged_id)
        report.last_seq = seq
        _check_head(conn, ckey, report, seq, prev, file_head, file_name)
        _compare_rows(conn, report, expected)
    finally:
        _end(conn)
    return report


def verify_tail(
    conn: sqlite3.Connection, outbox_key: bytes, storage_dir: Path, events: int = chain.START_CHECK_EVENTS
) -> Report:
    """Check the links of the newest ``events`` events, the signed head and the head file (bounded time)."""
    ckey = chain.chain_key(outbox_key)
    report = Report(partial=True)
    file_head, file_name = _read_file_head(storage_dir, ckey)
    _begin(conn)
    try:
        rows = conn.execute(
            "SELECT seq, record_id, kind, at, body, digest FROM chain ORDER BY seq DESC LIMIT ?", (int(events),)
        ).fetchall()[::-1]
        seq, prev = 0, chain.GENESIS
        if rows:
            before = conn.execute(
                "SELECT seq, digest FROM chain WHERE seq < ? ORDER BY seq DESC LIMIT 1", (rows[0][0],)
            ).fetchone()
            if before is not None:
                seq, prev = int(before[0]), bytes(before[1])
            else:
                seq, prev, _ = _start(conn, ckey, report)
        else:
            seq, prev, _ = _start(conn, ckey, report)
        report.first_seq = seq + 1
        for row in rows:
            prev = _link(report, seq + 1, prev, row)
            seq = int(row[0])
            report.events += 1
        report.last_seq = seq
        _check_head(conn, ckey, report, seq, prev, file_head, file_name)
    finally:
        _end(conn)
    return report


def _shown(value: object) -> str:
    """``repr`` for a problem line; a state shows as its stored text (``'sent'``)."""
    return repr(value.value if isinstance(value, RecordState) else value)


def _replay(report: Report, expected: dict[int, dict[str, Any]], row: tuple[Any, ...], last_purged_id: int) -> None:
    seq, record_id, kind, at, text, _ = row
    if record_id is None:
        return
    try:
        body = json.loads(text)
    except ValueError:
        return  # its digest check already failed or will: the body is unchanged text otherwise
    if kind in _COMMITS:
        if record_id in expected:
            report.problems.append(f"event {seq}: record {record_id} committed a second time")
        exp = {
            "state": body.get("state"),
            "attempts": body.get("attempts", 0),
            "request_id": body.get("request_id"),
            "sent_at": body.get("sent_at"),
            "photos_erased_at": body.get("photos_erased_at"),
            "held_reason": body.get("held_reason"),
            "data": body.get("data"),
            "photos": body.get("photos"),
            "wlt": body.get("wlt"),
            "fixed": body.get("fixed"),
            "purged": False,
            "upgraded": kind == "upgraded",
            # attempt number -> (outcome, request id); unknown for rows chained at the upgrade or salvaged
            "tries": None if kind != "committed" else {},
        }
        expected[record_id] = exp
        return
    found = expected.get(record_id)
    if found is None:
        if record_id > last_purged_id:
            report.problems.append(f"event {seq} ({kind}) concerns record {record_id}, which was never committed")
        return  # a record whose commit is summed up in the checkpoint
    exp = found
    allowed: tuple[RecordState, ...] | None = _FROM.get(kind)
    if kind == "requeued":
        allowed = (
            (RecordState.SENDING,) if body.get("why") == "interrupted" else (RecordState.REJECTED, RecordState.PENDING)
        )
    if allowed is not None and exp["state"] not in allowed and not exp["purged"]:
        report.problems.append(
            f"event {seq} ({kind}) found record {record_id} {_shown(exp['state'])} by its events, "
            f"not {' or '.join(map(_shown, allowed))}: its state was changed outside the agent "
            "before the agent acted on it"
        )
    tries = exp["tries"]
    if tries is not None:
        _replay_attempts(tries, kind, body, exp["attempts"])
    if kind == "attempt":
        exp.update(state=RecordState.SENDING, attempts=exp["attempts"] + 1)
    elif kind == "sent":
        exp.update(state=RecordState.SENT, request_id=body.get("request_id"), sent_at=at)
    elif kind == "rejected":
        exp.update(state=RecordState.REJECTED, request_id=body.get("request_id"))
    elif kind == "deferred":
        exp.update(state=RecordState.PENDING, request_id=body.get("request_id") or exp["request_id"])
    elif kind == "attempt_undone":
        exp.update(state=RecordState.PENDING, attempts=exp["attempts"] - 1)
    elif kind == "requeued":
        exp.update(state=RecordState.PENDING)
    elif kind == "held":
        exp.update(state=RecordState.HELD, held_reason=body.get("reason"))
    elif kind == "released":
        exp.update(
            state=RecordState.PENDING,
            held_reason=None,
            data=body.get("data"),
            photos=body.get("photos"),
            wlt=body.get("wlt"),
        )
    elif kind == "resolved":
        exp.update(state=RecordState.SENT, attempts=exp["attempts"] + 1, request_id=body.get("request_id"), sent_at=at)
    elif kind == "photos_erased":
        exp.update(photos=None, wlt=None, photos_erased_at=at)
    elif kind == "purged":
        exp["purged"] = True


def _replay_attempts(tries: dict[int, tuple[Any, Any]], kind: str, body: dict[str, Any], attempts: int) -> None:
    """What the ``attempts`` table must hold for one record, event by event."""
    if kind == "attempt":
        tries[int(body.get("attempt", attempts + 1))] = (None, None)
    elif kind in ("sent", "rejected", "deferred"):
        tries[int(body.get("attempt", attempts))] = (body.get("outcome"), body.get("request_id"))
    elif kind == "attempt_undone":
        tries.pop(attempts, None)
    elif kind == "requeued" and body.get("why") == "interrupted":
        for number, (outcome, request_id) in tries.items():
            if outcome is None:
                tries[number] = ("interrupted", request_id)
    elif kind == "resolved":
        tries[attempts + 1] = ("accepted", body.get("request_id"))


def _compare_rows(conn: sqlite3.Connection, report: Report, expected: dict[int, dict[str, Any]]) -> None:
    seen: set[int] = set()
    tries: dict[int, dict[int, tuple[Any, Any]]] = {}
    for record_id, attempt, outcome, request_id in conn.execute(
        "SELECT record_id, attempt, outcome, request_id FROM attempts ORDER BY id"
    ):
        tries.setdefault(int(record_id), {})[int(attempt)] = (outcome, request_id)
    rows = conn.execute(
        "SELECT r.id, r.state, r.attempts, r.request_id, r.sent_at, r.photos_erased_at, r.held_reason, r.uid, "
        "r.created_at, r.simulated, r.idempotency_key, r.card_index, r.meta, p.data, length(p.photos), "
        "length(p.raw_wlt) FROM records r LEFT JOIN payloads p ON p.record_id = r.id ORDER BY r.id"
    ).fetchall()
    for t in rows:
        record_id = int(t[0])
        seen.add(record_id)
        exp = expected.get(record_id)
        if exp is None or exp["purged"]:
            how = "it has no commit event" if exp is None else "its events say it was purged"
            report.problems.append(f"record {record_id} was not put there by the agent: {how}")
            continue
        report.records += 1
        report.upgraded += bool(exp["upgraded"])
        actual = dict(zip(_COMPARED, t[1:7], strict=True))
        for name in _COMPARED:
            if actual[name] != exp[name]:
                what = "state changed outside the agent" if name == "state" else "changed outside the agent"
                report.problems.append(
                    f"record {record_id}: {name} is {_shown(actual[name])} in the database but "
                    f"{_shown(exp[name])} by its events: {what}"
                )
        if chain.fixed_digest(t[7], t[8], t[9], t[10], t[11], t[12]) != exp["fixed"]:
            report.problems.append(
                f"record {record_id} altered: its time, meta (face result, score), card index or "
                "idempotency key differ from what was committed"
            )
        if exp["tries"] is not None and tries.get(record_id, {}) != exp["tries"]:
            actual_tries = tries.get(record_id, {})
            number = min(n for n in set(actual_tries) | set(exp["tries"]) if actual_tries.get(n) != exp["tries"].get(n))
            report.problems.append(
                f"record {record_id}: upload attempt {number} is {actual_tries.get(number)} in the "
                f"database but {exp['tries'].get(number)} by its events (outcome, requestId): "
                "changed outside the agent"
            )
        sealed = {
            "data": sm3(bytes(t[13])).hex() if t[13] is not None else None,
            "photos": chain.blob_seal_id(conn, "photos", record_id, t[14]),
            "wlt": chain.blob_seal_id(conn, "raw_wlt", record_id, t[15]),
        }
        for part, value in sealed.items():
            if value != exp[part]:
                report.problems.append(f"record {record_id} altered: its sealed {part} is not the one committed")
    for record_id, exp in expected.items():
        if record_id not in seen and not exp["purged"]:
            report.problems.append(
                f"record {record_id} missing: deleted outside the agent (its events say {exp['state']})"
            )


def verify_outbox(outbox: Outbox, *, full: bool = True) -> Report:
    """``verify_chain`` (or ``verify_tail`` when not ``full``) on an open ``Outbox``."""
    with outbox.db.read("verify the audit chain") as conn:
        if full:
            return verify_chain(conn, outbox.keys.current.key, Path(outbox.storage.dir))
        return verify_tail(conn, outbox.keys.current.key, Path(outbox.storage.dir))
