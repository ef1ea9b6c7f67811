"""`fvagent register`, `fvagent upload-file RECORD.json` and `fvagent probe`: the platform by hand.

`register` and `upload-file` send one request now and print the outcome class, our requestId, the
one the platform echoed and its message. When `upload-file` is accepted, the rejected outbox records
it corrects (same machineCode, cardNo and verifyTime) are marked sent. Exit codes (for scripts):

    0 accepted   3 rejected (fix the record)   4 blocked (fix the configuration)
    5 retryable (network or platform trouble: try again later)   6 the platform is switched off
    1 the record or another input is bad (nothing sent)   2 the configuration file is bad

`probe` sends nothing: it prints, for one sample payload, the request headers and body under the
default conventions and then under each alternative of each open convention, so a technician can
find the combination that reproduces the platform's own sample.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.cli import Subparsers, add_command, load_settings, masked_identity, open_outbox
from core.stored import RecordState

if TYPE_CHECKING:
    from agent.config import Settings
    from agent.outbox import Outbox
    from core.outcome import Outcome

EXIT_CODES = {"accepted": 0, "rejected": 3, "blocked": 4, "retryable": 5, "clock": 5, "unregistered": 5}
EXIT_DISABLED = 6


def register(sub: Subparsers) -> None:
    add_command(sub, "register", cmd_register)

    up = add_command(sub, "upload-file", cmd_upload_file)
    up.add_argument("record", metavar="RECORD.json", help="the verification record, spec field names")

    probe = add_command(sub, "probe", cmd_probe)
    probe.add_argument(
        "--payload",
        metavar="FILE",
        help="JSON object to use as the sample (default: this device's registration payload)",
    )
    probe.add_argument(
        "--at",
        metavar="EPOCH_S",
        type=float,
        default=None,
        help="the instant to sign, epoch seconds (default: now); use the platform sample's time",
    )
    probe.add_argument("--request-id", default=None, help="request id to show (default: a fresh one)")
    probe.add_argument("--full", action="store_true", help="print long values whole, not shortened")
    probe.add_argument(
        "--all",
        action="store_true",
        help="also print every combination: the signature under each (time format, key encoding, "
        "output) and the data under each (key mode, padding, encoding, ensure_ascii); "
        "grep it for the platform's sample value",
    )


# --------------------------------------------------------------------------------------------------


def _switched_off(settings: Settings) -> bool:
    if settings.platform.enabled:
        return False
    print(
        f"fvagent: the platform is switched off ([platform] enabled = false in {settings.source}): nothing was sent.",
        file=sys.stderr,
    )
    print(
        "fvagent: hint: set [platform] enabled = true to send; the service keeps queueing meanwhile.", file=sys.stderr
    )
    return True


def _send(settings: Settings, what: str, payload: dict[str, Any]) -> Outcome:
    """Send one request now, print the outcome, and return it (an ``Outcome``)."""
    from agent import crypto
    from agent.uplink.client import PlatformClient

    crypto.self_test()
    with PlatformClient(settings.platform) as client:
        send = client.register_device if what == "register" else client.upload_verification
        outcome = send(payload)
        if outcome.kind.value == "clock":  # the client learnt the platform's time from that reply
            print(f"note:       timestamp expired; sending again with the platform's time ({outcome.message})")
            outcome = send(payload)
    echoed = outcome.platform_request_id
    print(f"outcome:    {outcome.kind.value}")
    print(
        f"requestId:  {outcome.request_id}"
        + (f" (platform echoed {echoed})" if echoed and echoed != outcome.request_id else "")
    )
    print(f"message:    {outcome.message}")
    details = [f"HTTP {outcome.http_status}" if outcome.http_status is not None else "no HTTP reply"]
    if outcome.code is not None:
        details.append(f"code {outcome.code}")
    if outcome.exception_code is not None:
        details.append(f"exceptionCode {outcome.exception_code}")
    if outcome.retry_after_s is not None:
        details.append(f"retry after {outcome.retry_after_s:.0f} s")
    print(f"details:    {', '.join(details)}")
    advice = {
        "rejected": "the platform refused this record: correct it and send it again",
        "blocked": "the configuration is wrong ([platform], [platform.auth], [platform.conventions]); "
        "`fvagent probe` shows the alternatives",
        "retryable": "network or platform trouble: try again later",
        "clock": "the local clock is far off and the platform kept refusing our time: fix it "
        "(timedatectl set-ntp true)",
        "unregistered": "the platform does not know this device as registered and enabled: "
        "run `fvagent register`, then send again",
    }.get(outcome.kind.value)
    if advice:
        print(f"next:       {advice}")
    return outcome


def cmd_register(args: argparse.Namespace) -> int:
    """register this device with the platform now (POST /machine/info)

    Send this device's registration ([device] settings) to the platform and print the outcome. Exit 0 only when
    accepted (B2301, already registered, counts as accepted).
    """
    from core.records import registration_payload

    settings = load_settings(args)
    if _switched_off(settings):
        return EXIT_DISABLED
    payload = registration_payload(settings.device)
    print(
        f"registering machineCode {payload['machineCode']} (deviceNo {payload['deviceNo']}) "
        f"at {settings.platform.base_url}"
    )
    return EXIT_CODES[_send(settings, "register", payload).kind.value]


def _read_json(path_text: str) -> Any:
    from core.errors import RecordError

    path = Path(path_text)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise RecordError(f"record file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordError(f"cannot read record file {path}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        hint = "the file must hold one JSON object with the platform's field names"
        if exc.msg == "Extra data":  # e.g. a whole `fvagent queue export` file: one record per line
            hint = (
                "the file holds more than one JSON value; put one record in a file of its own "
                "(for an export file: jq -c '.record' FILE, one line per record)"
            )
        raise RecordError(
            f"record file {path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", hint=hint
        ) from None


def cmd_upload_file(args: argparse.Namespace) -> int:
    """validate one verification record (JSON) and send it

    Validate one verification record given as JSON with the platform's field names, then send it (how a
    corrected rejected record is resent). Once accepted, rejected outbox records with the same machineCode,
    cardNo and verifyTime are marked sent. Exit 0 only when accepted.
    """
    from core.errors import RecordError
    from core.records import parse_verification

    settings = load_settings(args)
    data = _read_json(args.record)
    if not isinstance(data, dict):
        raise RecordError(
            f"record file {args.record} holds a JSON {type(data).__name__}, not an object",
            hint="the file must hold one JSON object with the platform's field names",
        )
    if isinstance(data.get("record"), dict) and "id" in data:
        raise RecordError(
            f"record file {args.record} holds a line of `fvagent queue export` (outbox record "
            f"{data['id']}), not the record itself",
            hint="send its \"record\" object: jq -c '.record' the line into a file, fix it, and "
            "give that file to upload-file",
        )
    record = parse_verification(data, long_term_end=settings.platform.conventions.long_term_end_date)
    payload = record.to_payload()
    print(f"record valid: {masked_identity(payload)}")
    if _switched_off(settings):
        return EXIT_DISABLED
    outcome = _send(settings, "upload", payload)
    if outcome.kind.value == "accepted":
        _resolve_rejected_originals(settings, payload, outcome.request_id)
    return EXIT_CODES[outcome.kind.value]


RESENT_BY_UPLOAD_FILE = "resent corrected by hand with `fvagent upload-file`; accepted"


def _resolve_rejected_originals(settings: Settings, payload: dict[str, Any], request_id: str) -> None:
    """Mark sent the rejected outbox records this accepted upload corrects: those with the same
    natural key (machineCode, cardNo, verifyTime). The upload is already accepted, so nothing here
    may fail it: an outbox that cannot be read gets a warning and the exit code stays 0."""
    from agent.outbox.store import DB_NAME
    from core.errors import FvagentError

    try:
        if not (Path(settings.storage.dir) / DB_NAME).exists():  # never create the outbox from here
            return
        with open_outbox(settings) as outbox:
            resolved, failed, left = _resolve_matches(outbox, payload, request_id)
    except (FvagentError, OSError) as exc:
        print(
            f"fvagent: warning: the upload was accepted, but the outbox could not be checked for the rejected "
            f"original: {exc}",
            file=sys.stderr,
        )
        print(
            f"fvagent: hint: once it opens, mark the original sent: fvagent queue resolve ID --request-id {request_id}",
            file=sys.stderr,
        )
        return
    for record_id, error in failed:
        print(
            f"fvagent: warning: outbox record {record_id} has the same key but was not marked sent: {error}",
            file=sys.stderr,
        )
    if resolved:
        print(
            f"outbox:     rejected record(s) {', '.join(map(str, resolved))} marked sent (same machineCode, "
            f"cardNo and verifyTime; requestId {request_id})"
        )
    elif left and not failed:
        print(
            f"outbox:     {left} rejected record(s) remain, none with this record's machineCode, cardNo and "
            f"verifyTime; if one is this record, mark it sent: fvagent queue resolve ID --request-id {request_id}"
        )


def _resolve_matches(
    outbox: Outbox, payload: dict[str, Any], request_id: str
) -> tuple[list[int], list[tuple[int, str]], int]:
    """(ids marked sent, [(id, why not)] for matches that could not be, rejected records left)."""
    from core.errors import OutboxCorrupt, OutboxError
    from core.records import natural_key

    key = natural_key(payload)
    resolved: list[int] = []
    failed: list[tuple[int, str]] = []
    candidates = [
        row for row in outbox.find(card_no=payload["cardNo"], limit=1_000_000) if row.state == RecordState.REJECTED
    ]
    for row in reversed(candidates):  # oldest first
        try:
            original = outbox.payload(row.id)
            if original is None or natural_key(original) != key:
                continue
        except (OutboxCorrupt, KeyError):  # unreadable or incomplete: cannot be this record
            continue
        try:
            outbox.resolve(row.id, request_id=request_id, message=RESENT_BY_UPLOAD_FILE)
        except OutboxError as exc:  # e.g. `queue retry` took it back to pending meanwhile
            failed.append((row.id, exc.message))
            continue
        resolved.append(row.id)
    return resolved, failed, int(outbox.stats()["rejected"])


# --------------------------------------------------------------------------------------------------
# probe

_ALTERNATIVES: dict[str, tuple[str | bool, ...]] = {
    "send_time_format": ("epoch_ms", "epoch_s", "yyyyMMddHHmmss", "yyyy-MM-dd HH:mm:ss"),
    "sign_key_encoding": ("utf8", "hex"),
    "sign_output": ("hex", "hex_upper", "base64"),
    "sm4_key_mode": ("auto", "raw16", "hex32", "first16", "sm3_trunc16", "nhsa_derive"),
    "padding": ("pkcs7", "none"),
    "cipher_encoding": ("base64", "hex_lower", "hex_upper"),
    "json_ensure_ascii": (False, True),
}
_AFFECTS = {
    "send_time_format": ("time", "sign"),
    "sign_key_encoding": ("sign",),
    "sign_output": ("sign",),
    "sm4_key_mode": ("data",),
    "padding": ("data",),
    "cipher_encoding": ("data",),
    "json_ensure_ascii": ("body", "data"),
}


def cmd_probe(args: argparse.Namespace) -> int:
    """print the request under every open convention (sends nothing)

    Print, for a sample payload, the headers and body under the default conventions and under each alternative
    of each open convention, to match against the platform's own sample. Sends nothing.
    """
    from agent.uplink.conventions import Conventions
    from core.records import registration_payload

    settings = load_settings(args)
    platform = settings.platform
    if args.payload:
        payload = _read_json(args.payload)
        source = args.payload
    else:
        payload = registration_payload(settings.device)
        source = "this device's registration payload ([device])"
    at = args.at if args.at is not None else time.time()
    request_id = args.request_id or uuid.uuid4().hex
    secret = platform.org_app_secret.get_secret_value()
    configured = platform.conventions
    shorten = (lambda s: s) if args.full else _shorten

    def render(overrides: Mapping[str, object]) -> dict[str, str]:
        conv = Conventions(configured.model_copy(update=overrides), platform.org_app_id, secret)
        out: dict[str, str] = {}
        t = conv.send_time(at)
        out["time"] = t
        out["sign"] = _try(lambda: conv.sign(t))
        out["body"] = conv.dumps(payload).decode("utf-8")
        out["data"] = _try(lambda: conv.encrypt_data(conv.dumps(payload)))
        return out

    print(f"# fvagent probe: nothing is sent. Sample: {source}")
    print(f"# orgAppId {platform.org_app_id}; instant {at:.3f} (epoch s); encrypt = {str(platform.encrypt).lower()}")
    print(
        f"# responses: response_encrypted = {configured.response_encrypted!r}, "
        f"verify_response_sign = {configured.verify_response_sign!r}"
    )
    print()
    print("## configured conventions" + ("" if configured == type(configured)() else " (differ from the defaults)"))
    for name in _ALTERNATIVES:
        print(f"   {name} = {getattr(configured, name)!r}")
    base = render({})
    auth_shown = f"(from [platform.auth] kind = {platform.auth.kind!r}, not shown)"
    print()
    path = (
        "/verification/pregnant_woman/first" if isinstance(payload, dict) and "cardNo" in payload else "/machine/info"
    )
    print(f"POST {platform.base_url}{path}")
    print(f"hmpt-portal-sign: {base['sign']}")
    print(f"hmpt-portal-time: {base['time']}")
    print(f"hmpt-portal-request-id: {request_id}")
    print(f"hmpt-portal-org-app-id: {platform.org_app_id}")
    print(f"Authorization: {auth_shown}")
    print()
    print(f"body (plain):     {shorten(base['body'])}")
    print(f"body (encrypted): {shorten(json.dumps({'data': base['data']}))}")
    for name, values in _ALTERNATIVES.items():
        current = getattr(configured, name)
        ordered = [current] + [v for v in values if v != current]
        print()
        print(f"## {name}  (changes {', '.join(_AFFECTS[name])}; first line = configured)")
        for value in ordered:
            shown = render({name: value})
            parts = [f"{field}={shorten(shown[field])}" for field in _AFFECTS[name]]
            print(f"   {value!r:<24} " + "\n   {:<24} ".format("").join(parts))
    if args.all:
        _print_all_combinations(render, shorten)
    return 0


def _print_all_combinations(render: Callable[[dict[str, Any]], dict[str, str]], shorten: Callable[[str], str]) -> None:
    """Signatures depend only on the time format, key encoding and output; the data only on the key
    rule, padding, encoding and JSON escaping: two tables cover every combination."""
    import itertools

    print()
    print("## every signature: send_time_format | sign_key_encoding | sign_output | time | sign")
    for fmt, key_enc, out in itertools.product(
        *(_ALTERNATIVES[n] for n in ("send_time_format", "sign_key_encoding", "sign_output"))
    ):
        r = render({"send_time_format": fmt, "sign_key_encoding": key_enc, "sign_output": out})
        print(f"   {fmt} | {key_enc} | {out} | {r['time']} | {r['sign']}")
    print()
    print("## every data: sm4_key_mode | padding | cipher_encoding | json_ensure_ascii | data")
    for mode, pad, enc, ascii_ in itertools.product(
        *(_ALTERNATIVES[n] for n in ("sm4_key_mode", "padding", "cipher_encoding", "json_ensure_ascii"))
    ):
        r = render({"sm4_key_mode": mode, "padding": pad, "cipher_encoding": enc, "json_ensure_ascii": ascii_})
        print(f"   {mode} | {pad} | {enc} | {str(ascii_).lower()} | {shorten(r['data'])}")


def _try(fn: Callable[[], object]) -> str:
    from core.errors import CryptoError

    try:
        return str(fn())
    except CryptoError as exc:
        return f"(not possible: {exc.message})"


def _shorten(text: str, limit: int = 96) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} chars; --full shows all)"
