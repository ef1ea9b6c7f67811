"""`fvagent queue ...`: look into the outbox and act on it, also while the daemon runs.

    fvagent queue stats [--json]         count per state (pending, sending, sent, rejected, held) and total
    fvagent queue ls [--state S] [-n N]  rows, newest first (no personal data)
    fvagent queue ls --result 0,2 [--since DATE] [--json]
                                         the follow-up list: failed / not verified, masked, hand-over marks
    fvagent queue show ID                one record, masked, with every upload attempt
    fvagent queue retry ID | --rejected  send again (a rejected record after the hospital fixed the cause)
    fvagent queue export --rejected FILE the rejected records in full (JSON Lines, 0600), to fix and resend
    fvagent queue resolve ID --request-id RID
                                         mark a rejected record sent: its corrected copy was accepted as RID

Only ``[storage]`` of the configuration is used. WAL and a busy timeout let these commands read and
write the database while the service is uploading from it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agent.cli import Subparsers, add_command, add_group, load_settings, masked_identity, open_outbox
from core.clock import CHINA_TZ
from core.stored import RecordState

if TYPE_CHECKING:
    from agent.outbox import Attempt, Outbox, Row

STATES = tuple(state.value for state in RecordState)


def register(sub: Subparsers) -> None:
    """inspect and act on the outbox (works while the service runs)

    Inspect the local outbox and act on it. Works while the service runs.
    """
    qsub = add_group(sub, "queue", "ACTION", register)
    stats = add_command(qsub, "stats", cmd_stats)
    stats.add_argument("--json", action="store_true", help="print a JSON object (count per state and total)")

    ls = add_command(qsub, "ls", cmd_ls)
    ls.add_argument("--state", choices=STATES, help="only records in this state")
    ls.add_argument("-n", "--limit", type=int, default=50, help="at most this many (default 50)")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.add_argument(
        "--result",
        type=_results,
        metavar="R[,R]",
        help="the follow-up list instead: verifications with faceResult R (0 failed, 2 not verified; "
        "e.g. 0,2), with time, masked identity, reason, hand-over mark and upload state",
    )
    ls.add_argument(
        "--since",
        type=_since,
        metavar="DATE",
        help="with --result: only those since DATE (yyyy-mm-dd, or yyyy-mm-dd HH:MM:SS; China time)",
    )

    show = add_command(qsub, "show", cmd_show)
    show.add_argument("id", type=int, help="the record's id (from `fvagent queue ls`)")
    show.add_argument("--json", action="store_true", help="print JSON")

    retry = add_command(qsub, "retry", cmd_retry)
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("id", type=int, nargs="?", help="the record's id")
    which.add_argument("--rejected", action="store_true", help="every rejected record")

    export = add_command(qsub, "export", cmd_export)
    export.add_argument("--rejected", action="store_true", required=True, help="export the rejected records")
    export.add_argument("file", metavar="FILE", help="new file to write (JSON Lines, mode 0600; never overwritten)")

    resolve = add_command(qsub, "resolve", cmd_resolve)
    resolve.add_argument("id", type=int, help="the rejected record's id (from `fvagent queue ls --state rejected`)")
    resolve.add_argument(
        "--request-id",
        required=True,
        metavar="RID",
        help="the requestId under which the platform accepted the corrected record",
    )


def _open(args: argparse.Namespace, *, readonly: bool = False) -> Outbox:
    """The configured outbox; ``readonly`` for the commands that only look (never moves or writes it)."""
    return open_outbox(load_settings(args), readonly=readonly)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(float(epoch), CHINA_TZ).strftime("%Y-%m-%d %H:%M:%S")


def cmd_stats(args: argparse.Namespace) -> int:
    """count of records per state"""
    with _open(args, readonly=True) as outbox:
        stats = outbox.stats()
    if args.json:
        print(json.dumps(stats, ensure_ascii=False))
        return 0
    counts: Mapping[str, object] = stats  # read by the state's name, which STATES holds
    for state in STATES:
        print(f"{state:9} {counts[state]}")
    print(f"{'total':9} {stats['total']}")
    if stats.get("oldest_pending_age_s") is not None:
        print(f"oldest unsent: {stats['oldest_pending_age_s']:.0f} s old")
    print(
        f"size:     {stats['bytes'] / 2**20:.1f} MiB of {stats['max_bytes'] / 2**20:.0f} MiB (storage.max_bytes)"
        + ("  OVER BUDGET: unsent records are never evicted" if stats["over_budget"] else "")
    )
    return 0


def _row_doc(row: Row) -> dict[str, Any]:
    return {
        "id": row.id,
        "state": row.state,
        "created_at": _when(row.created_at),
        "attempts": row.attempts,
        "next_attempt_at": _when(row.next_attempt_at) if row.state == RecordState.PENDING else None,
        "sent_at": _when(row.sent_at) if row.sent_at else None,
        "last_outcome": row.last_outcome,
        "last_error": row.last_error,
        "request_id": row.request_id,
        "held_reason": row.held_reason,
        "simulated": row.simulated,
        "photos": row.has_photos,
        "meta": row.meta,
    }


def _results(text: str) -> tuple[int, ...]:
    values = [v.strip() for v in text.split(",")]
    if not values or any(v not in ("0", "1", "2") for v in values):
        raise argparse.ArgumentTypeError(
            f"{text!r}: faceResult values are 0 (failed), 1 (passed), 2 (not verified), e.g. --result 0 or --result 0,2"
        )
    return tuple(sorted({int(v) for v in values}))


def _since(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: use yyyy-mm-dd, e.g. 2026-12-01") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=CHINA_TZ)


def cmd_ls(args: argparse.Namespace) -> int:
    """list records, newest first (no personal data)"""
    if args.result is not None or args.since is not None:
        return _ls_follow_ups(args)
    with _open(args, readonly=True) as outbox:
        rows = outbox.list(args.state, limit=args.limit)
    if args.json:
        print(json.dumps([_row_doc(r) for r in rows], ensure_ascii=False))
        return 0
    if not rows:
        print("no records" + (f" in state {args.state}" if args.state else ""))
        return 0
    print(f"{'ID':>7}  {'STATE':9} {'CREATED':19}  {'TRIES':>5}  DETAIL")
    for r in rows:
        detail = r.last_error or r.held_reason or (f"sent {_when(r.sent_at)}" if r.sent_at else "")
        flag = " [simulated]" if r.simulated else ""
        print(f"{r.id:>7}  {r.state:9} {_when(r.created_at)}  {r.attempts:>5}  {(detail or '')[:90]}{flag}")
    return 0


def _ls_follow_ups(args: argparse.Namespace) -> int:
    """`queue ls --result R [--since DATE]`: the follow-up list the desk shows the police (masked)."""
    from agent.localapi.followup import follow_ups
    from core.errors import ConfigError

    if args.result is None:
        raise ConfigError("--since goes with --result", hint="e.g. fvagent queue ls --result 0,2 --since 2026-12-01")
    if args.state is not None:
        raise ConfigError(
            "--state and --result cannot be combined",
            hint="the follow-up list shows each record's upload state already",
        )
    settings = load_settings(args)
    with open_outbox(settings, readonly=True) as outbox:
        items = follow_ups(
            outbox, threshold=settings.face.threshold, results=args.result, since=args.since, limit=args.limit
        )
    if args.json:
        print(json.dumps(items, ensure_ascii=False))
        return 0
    if not items:
        print(
            "no verifications with faceResult "
            + ",".join(map(str, args.result))
            + (f" since {args.since:%Y-%m-%d %H:%M}" if args.since else "")
        )
        return 0
    print(f"{'ID':>7}  {'VERIFIED':19}  RESULT  NAME    CARD                {'HANDED OVER':26} UPLOAD  REASON")
    for it in items:
        mark = it["handover"]
        handed = f"{mark['at'][5:16]} {mark['operator']}" if isinstance(mark, dict) else "未移交"
        flag = " [simulated]" if it["simulated"] else ""
        print(
            f"{it['id']:>7}  {it['verifyTime']:19}  {it['resultText']:6}  {it['name']:6}  {it['cardNo']:18}  "
            f"{handed:26} {it['stateText']:6}  {it['reason'] or ''}{flag}"
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """one record, personal data masked, with its upload attempts"""
    from core.errors import OutboxError
    from core.privacy import mask_record

    with _open(args, readonly=True) as outbox:
        row = outbox.get(args.id)
        if row is None:
            raise OutboxError(f"no record with id {args.id}", hint="see `fvagent queue ls`")
        payload = outbox.payload(args.id) or {}
        # annotated: Outbox's own method named list shadows the builtin in the store's annotations
        attempts: list[Attempt] = outbox.attempts(args.id)
    record = mask_record(payload)
    photos = {
        k: f"{len(payload[k]) * 3 // 4} bytes" for k in ("headImg", "cameraImg", "fingerCollectImg") if payload.get(k)
    }
    doc = _row_doc(row)
    doc["record"] = record
    doc["photos"] = photos or ("erased after upload (retention)" if row.photos_erased_at else "none")
    doc["attempts_log"] = [
        {
            "attempt": a.attempt,
            "request_id": a.request_id,
            "started_at": _when(a.started_at),
            "outcome": a.outcome,
            "http_status": a.http_status,
            "exception_code": a.exception_code,
            "message": a.message,
        }
        for a in attempts
    ]
    if args.json:
        print(json.dumps(doc, ensure_ascii=False))
        return 0
    for key in (
        "id",
        "state",
        "created_at",
        "attempts",
        "next_attempt_at",
        "sent_at",
        "last_outcome",
        "last_error",
        "request_id",
        "held_reason",
        "simulated",
        "photos",
        "meta",
    ):
        if doc.get(key) not in (None, "", {}):
            print(f"{key + ':':17} {doc[key]}")
    offset = row.meta.get("clock_offset_s")
    if isinstance(offset, int | float):
        print(
            f"{'clock:':17} verifyTime {record.get('verifyTime', '?')} is the local clock's, which was "
            f"{abs(offset):.0f} s {'behind' if offset > 0 else 'ahead of'} the platform's"
        )
    print("record (masked):")
    for key, value in record.items():
        print(f"  {key + ':':19} {value}")
    if doc["attempts_log"]:
        print("attempts:")
        for a in doc["attempts_log"]:
            print(
                f"  #{a['attempt']} {a['started_at']} {a['outcome'] or 'in progress'} requestId "
                f"{a['request_id'] or '-'}" + (f": {a['message']}" if a["message"] else "")
            )
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    """send a record again now (ID, or every rejected one)"""
    with _open(args) as outbox:
        if args.rejected:
            n = outbox.retry_rejected()
            print(f"{n} rejected record(s) queued again")
        else:
            outbox.retry(args.id)
            print(f"record {args.id} queued again")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """write the rejected records in full to FILE (to fix and resend)"""
    with _open(args, readonly=True) as outbox:
        n = outbox.export_rejected(args.file)
    if n == 0:
        print(f"no rejected records: {args.file} was not created")
        return 0
    print(f"{n} rejected record(s) written to {args.file} (full personal data: handle it as such, delete it when done)")
    return 0


RESOLVED_BY_HAND = "resent corrected by hand; marked sent with `fvagent queue resolve`"


def cmd_resolve(args: argparse.Namespace) -> int:
    """mark a rejected record sent: its corrected copy was accepted under REQUEST_ID

    Mark a rejected record sent, because a corrected copy of it was accepted by the platform some other way
    (upload-file marks it by itself unless the fix changed machineCode, cardNo or verifyTime). Status then stops
    alerting and `queue retry --rejected` no longer sends the uncorrected record.
    """
    from core.errors import OutboxCorrupt

    with _open(args) as outbox:
        outbox.resolve(args.id, request_id=args.request_id, message=RESOLVED_BY_HAND)
        try:
            payload = outbox.payload(args.id) or {}
        except OutboxCorrupt:  # the state changed; only the masked summary below is lost
            payload = {}
    print(f"record {args.id} marked sent (requestId {args.request_id.strip()})" + _masked_summary(payload))
    return 0


def _masked_summary(payload: dict[str, Any]) -> str:
    return f": {masked_identity(payload)}" if payload else ""
