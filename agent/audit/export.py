"""Audit exports: what the terminal recorded, and what became of it, signed with the device's SM2 key.

An export is JSON Lines:

1. ``{"type": "header", ...}``: format, machine code, the period, masked or full, the chain head and
   the result of a full chain check at export time, the public key;
2. one ``{"type": "record", ...}`` per verification created in the period, oldest first: its row
   (state, attempts, request id, times, meta), the record (masked unless full) and every event of
   it in the chain, each with its exact ``body`` text, the previous event's digest and its own, so
   anyone can recompute each digest with SM3;
3. ``{"type": "signature", ...}``: the number of lines before it, SM3 of their bytes, and an
   SM2-with-SM3 signature of that digest by the device's key.

``verify_export`` checks all of it with only the public key.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes

from agent.audit import signing
from agent.audit.verify import verify_outbox
from agent.files import create_export_file
from agent.outbox import chain
from core.errors import AuditError, OutboxCorrupt
from core.privacy import mask_record
from core.records import JsonObject

if TYPE_CHECKING:
    from agent.outbox.store import Outbox, Row

FORMAT = "fvagent-audit-export/1"


def _signed_message(digest_hex: str) -> bytes:
    return f"{FORMAT}\n{digest_hex}".encode("ascii")


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else dt.datetime.fromtimestamp(float(epoch)).astimezone().isoformat()


class _Writer:
    """Lines written and hashed (SM3) as they go: an export with photos never sits in memory."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self._hash = hashes.Hash(hashes.SM3())
        self.lines = 0

    def write(self, doc: Mapping[str, object]) -> None:
        data = (json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        self._fh.write(data)
        self._hash.update(data)
        self.lines += 1

    def digest(self) -> str:
        return self._hash.finalize().hex()


def export(
    outbox: Outbox,
    path: str | os.PathLike[str],
    *,
    since: dt.datetime,
    until: dt.datetime | None,
    full: bool,
    machine_code: str,
    key: signing.SigningKey,
) -> int:
    """Write the export of records created in [``since``, ``until``) to ``path`` (new file, 0600).
    Returns how many records it holds."""
    target = Path(path)
    check = verify_outbox(outbox)
    fd = create_export_file(target, AuditError)
    count = 0
    with os.fdopen(fd, "wb") as fh:
        out = _Writer(fh)
        with outbox.db.snapshot("export the audit") as conn:  # the head and the rows of one moment
            head = chain.read_head(conn)
            checkpoint = chain.read_checkpoint(conn)
            rows = outbox.created_between(since.timestamp(), until.timestamp() if until is not None else None)
        out.write(
            {
                "type": "header",
                "format": FORMAT,
                "machineCode": machine_code,
                "createdAt": _iso(outbox.clock()),
                "since": since.isoformat(),
                "until": until.isoformat() if until else None,
                "full": full,
                "chainHead": {"seq": head.seq, "digest": head.digest.hex()} if head else None,
                "chainCheck": check.summary(),
                "publicKey": key.public_key,
            }
        )
        for row in rows:
            out.write(_record_line(outbox, row, full, checkpoint))
            count += 1
        digest, lines = out.digest(), out.lines
        fh.write(
            (
                json.dumps(
                    {
                        "type": "signature",
                        "algorithm": signing.ALGORITHM,
                        "lines": lines,
                        "sm3": digest,
                        "publicKey": key.public_key,
                        "signature": key.sign(_signed_message(digest)),
                    }
                )
                + "\n"
            ).encode("utf-8")
        )
        fh.flush()
        os.fsync(fh.fileno())
    return count


def _record_line(outbox: Outbox, row: Row, full: bool, checkpoint: dict[str, Any] | None) -> dict[str, Any]:
    record_id = row.id
    doc: dict[str, Any] = {
        "type": "record",
        "id": record_id,
        "createdAt": _iso(row.created_at),
        "state": str(row.state),
        "attempts": row.attempts,
        "requestId": row.request_id,
        "sentAt": _iso(row.sent_at),
        "simulated": row.simulated,
        "meta": row.meta,
        "photosErasedAt": _iso(row.photos_erased_at),
    }
    try:
        payload = outbox.payload(record_id) or {}
        doc["record"] = payload if full else mask_record(payload)
    except OutboxCorrupt as exc:
        doc["record"], doc["error"] = None, exc.message
    events = []
    with outbox.db.read("export the audit") as conn:
        for seq, kind, at, body, digest in conn.execute(
            "SELECT seq, kind, at, body, digest FROM chain WHERE record_id = ? ORDER BY seq", (record_id,)
        ):
            before = conn.execute("SELECT digest FROM chain WHERE seq = ?", (seq - 1,)).fetchone()
            if before is not None:
                prev = bytes(before[0])
            elif checkpoint is not None and int(checkpoint["seq"]) == seq - 1:
                prev = bytes.fromhex(checkpoint["digest"])
            else:
                prev = chain.GENESIS
            events.append(
                {
                    "seq": seq,
                    "kind": kind,
                    "at": at,
                    "atIso": _iso(at),
                    "body": body,
                    "prev": prev.hex(),
                    "digest": bytes(digest).hex(),
                }
            )
    doc["events"] = events
    return doc


def verify_export(path: str | os.PathLike[str], public_key: str) -> JsonObject:
    """Check an export's signature under ``public_key`` and every event digest in it. Returns
    ``{"records", "events", "machineCode", "createdAt", "chainCheck"}``; raises ``AuditError`` naming
    the first problem."""
    expected_key = signing.parse_public_key(public_key)
    source = Path(path)
    digest = hashes.Hash(hashes.SM3())
    header: dict[str, Any] | None = None
    signature: dict[str, Any] | None = None
    lines = records = events = 0
    try:
        fh = open(source, "rb")  # noqa: SIM115 (the with-block below closes it; an open error has its own message)
    except OSError as exc:
        raise AuditError(f"cannot read {source}: {exc.strerror}") from exc
    with fh:
        for number, raw in enumerate(fh, 1):
            if signature is not None:
                raise AuditError(f"{source}: line {number} comes after the signature line: added after signing")
            try:
                doc = json.loads(raw)
            except ValueError as exc:
                raise AuditError(f"{source}: line {number} is not JSON: the file was cut or altered") from exc
            if not isinstance(doc, dict):
                raise AuditError(f"{source}: line {number} is not a JSON object")
            if doc.get("type") == "signature":
                signature = doc
                continue
            digest.update(raw)
            lines += 1
            if number == 1:
                if doc.get("type") != "header" or doc.get("format") != FORMAT:
                    raise AuditError(f"{source} is not an fvagent audit export ({FORMAT})")
                header = doc
            elif doc.get("type") == "record":
                records += 1
                events += _check_events(source, number, doc)
    if header is None:
        raise AuditError(f"{source} is empty")
    if signature is None:
        raise AuditError(f"{source} has no signature line: the file was cut")
    if signature.get("lines") != lines:
        raise AuditError(
            f"{source}: {lines} lines before the signature, the signature covers "
            f"{signature.get('lines')}: lines were removed or added"
        )
    computed = digest.finalize().hex()
    if not hmac.compare_digest(computed, str(signature.get("sm3", ""))):
        raise AuditError(f"{source}: the lines do not match the signed SM3 digest: the file was altered")
    if str(signature.get("publicKey", "")).lower() != expected_key:
        raise AuditError(
            f"{source} was signed by another key than the one given",
            hint="use the public key the hospital filed for this terminal (`fvagent audit pubkey`)",
        )
    if not signing.verify(expected_key, _signed_message(computed), str(signature.get("signature", ""))):
        raise AuditError(f"{source}: the SM2 signature does not check: the file was altered or not signed by this key")
    return {
        "records": records,
        "events": events,
        "machineCode": header.get("machineCode"),
        "createdAt": header.get("createdAt"),
        "chainCheck": header.get("chainCheck"),
    }


def _check_events(source: Path, number: int, doc: dict[str, Any]) -> int:
    record_id = doc.get("id")
    for event in doc.get("events") or []:
        try:
            computed = chain.event_digest(
                bytes.fromhex(event["prev"]),
                int(event["seq"]),
                record_id,
                str(event["kind"]),
                float(event["at"]),
                str(event["body"]),
            )
            good = computed.hex() == event["digest"]
        except (KeyError, TypeError, ValueError):
            good = False
        if not good:
            raise AuditError(
                f"{source}: line {number}, record {record_id}: event {event.get('seq')} does not match its digest"
            )
    return len(doc.get("events") or [])


def parse_when(text: str, *, end: bool = False) -> dt.datetime:
    """A date (``2026-12-01``: local midnight; with ``end``, the midnight after it) or an ISO date-time."""
    try:
        if len(text) == 10:
            day = dt.datetime.combine(dt.date.fromisoformat(text), dt.time())
            return day + dt.timedelta(days=1) if end else day
        return dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise AuditError(
            f"{text!r} is not a date (YYYY-MM-DD) or an ISO date-time",
            hint="for example --since 2026-12-01 --until 2026-12-31",
        ) from exc
