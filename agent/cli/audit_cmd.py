"""`fvagent audit ...`: prove what the outbox recorded (docs/outbox.md, the audit chain).

    fvagent audit verify [--config PATH]          walk the whole chain: OK with counts, or the first broken link
    fvagent audit export --since DATE [--until DATE] [--full] FILE
                                                  records and their events, JSON Lines signed with SM2
    fvagent audit pubkey                          the device's public key (the hospital files it once)
    fvagent audit verify-export FILE --pubkey KEY check an export anywhere, without the outbox key

Exit 0 when everything checks, 1 when something does not (the message names it).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from agent.cli import Subparsers, add_command, add_group, load_settings, open_outbox

if TYPE_CHECKING:
    from agent.config import Settings

FULL_TOKEN_ENV = "FVAGENT_FULL_DATA_TOKEN"


def register(sub: Subparsers) -> None:
    """verify the outbox's audit chain; signed exports for the hospital

    Verify the outbox's tamper-evident audit chain and make signed exports.
    """
    asub = add_group(sub, "audit", "ACTION", register)
    add_command(asub, "verify", cmd_verify)

    export = add_command(asub, "export", cmd_export)
    export.add_argument("--since", required=True, metavar="DATE", help="first day (YYYY-MM-DD, local) or ISO time")
    export.add_argument("--until", metavar="DATE", help="last day, included (default: up to now)")
    export.add_argument("--full", action="store_true", help="unmasked records with photos (root or the token)")
    export.add_argument("file", metavar="FILE", help="new file to write (never overwritten)")

    add_command(asub, "pubkey", cmd_pubkey)

    check = add_command(asub, "verify-export", cmd_verify_export, config=False)
    check.add_argument("file", metavar="FILE", help="the export")
    check.add_argument(
        "--pubkey", required=True, metavar="KEY", help="the public key (130 hex characters) or a file holding it"
    )


def cmd_verify(args: argparse.Namespace) -> int:
    """walk the whole chain; exit 1 at the first broken link"""
    from agent.audit.verify import verify_outbox

    with open_outbox(load_settings(args), readonly=True) as outbox:  # it only looks
        report = verify_outbox(outbox)
    print(report.summary())
    for problem in report.problems[1:20]:
        print(f"  also: {problem}")
    return 0 if report.ok else 1


def _may_see_full(settings: Settings) -> bool:
    import hmac

    if os.geteuid() == 0:
        return True
    given = os.environ.get(FULL_TOKEN_ENV)
    token = settings.local_api.full_data_token
    return bool(given and token is not None and hmac.compare_digest(given.encode(), token.get_secret_value().encode()))


def cmd_export(args: argparse.Namespace) -> int:
    """records created in a period and their events, signed (JSON Lines, 0600)

    Write the verifications created in [--since, --until] with every event of each and the chain digests, ending
    in a line signed with the device's SM2 key. Personal data is masked unless --full, which needs root or
    $FVAGENT_FULL_DATA_TOKEN set to [local_api] full_data_token.
    """
    from agent.audit import signing
    from agent.audit.export import export, parse_when
    from core.errors import AuditError

    settings = load_settings(args)
    if args.full and not _may_see_full(settings):
        raise AuditError(
            "--full exports personal data and photos: it needs root or the full-data token",
            hint=f"run it as root, or set {FULL_TOKEN_ENV} to [local_api] full_data_token; "
            "or leave out --full for a masked export",
        )
    since = parse_when(args.since)
    until = parse_when(args.until, end=True) if args.until else None
    key = signing.load(settings.storage.dir)
    with open_outbox(settings, readonly=True) as outbox:
        n = export(
            outbox,
            args.file,
            since=since,
            until=until,
            full=args.full,
            machine_code=settings.device.machine_code,
            key=key,
        )
    print(
        f"{n} record(s) written to {args.file}, signed ({'FULL personal data' if args.full else 'masked'}); "
        f"check it with: fvagent audit verify-export {args.file} --pubkey <the terminal's public key>"
    )
    return 0


def cmd_pubkey(args: argparse.Namespace) -> int:
    """print the device's SM2 public key (130 hex characters)"""
    from agent.audit import signing

    print(signing.load(load_settings(args).storage.dir).public_key)
    return 0


def cmd_verify_export(args: argparse.Namespace) -> int:
    """check an export's signature and digests with the public key

    Check an export on any machine: no configuration and no outbox key needed, only the public key the hospital
    filed for the terminal.
    """
    from agent.audit.export import verify_export

    key = args.pubkey
    if len(key.strip()) != 130 and Path(key).is_file():
        key = Path(key).read_text(encoding="ascii").strip()
    result = verify_export(args.file, key)
    print(
        f"OK: {result['records']} record(s) and {result['events']} event(s), signed by terminal "
        f"{result['machineCode']} at {result['createdAt']}; its chain at export: {result['chainCheck']}"
    )
    return 0
