"""`fvagent outbox ...`: the outbox's data key, and recovery of what a damaged file or a lost key
left behind.

    fvagent outbox backup DEST           a consistent copy of the outbox and its key, safe while the daemon runs
    fvagent outbox rotate-key            new records under a new key; old ones stay readable (service stopped)
    fvagent outbox salvage FILE          copy every readable record of a damaged outbox copy into the outbox
    fvagent outbox merge OLD [--key K]   bring in an outbox set aside for its key, once the key is back
    fvagent outbox ack-damage            take note of the damage and missing-records alerts (clears them)

rotate-key keeps the old key (retired) so the records sealed under it stay readable until retention
purges them. salvage, merge and ack-damage write to the outbox and work while the service runs (it
picks the records up at once). docs/outbox.md, "Damage and recovery", is the guide.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.cli import add_config_arg, config_path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    outbox = sub.add_parser(
        "outbox",
        help="back it up, rotate its key, salvage a damaged copy, merge one set aside for its key",
        description="Back up the outbox; rotate its data key; recover records from a damaged outbox copy "
        "or one set aside because its key was missing; acknowledge the damage alerts.",
    )
    osub = outbox.add_subparsers(dest="outbox_command", metavar="ACTION")
    outbox.set_defaults(func=lambda args: (outbox.print_help(), 2)[1])
    backup = osub.add_parser(
        "backup",
        help="copy the outbox and its data key into the new directory DEST (safe while the daemon runs)",
        description="Copy the outbox database through SQLite's online backup API and its data key (0600) into "
        "DEST, then open the copy with the key to check it. Keep the two files together and "
        "private: the key opens every record. Restore: docs/operations.md.",
    )
    add_config_arg(backup)
    backup.add_argument("dest", metavar="DEST", type=Path, help="a new or empty directory")
    backup.set_defaults(func=cmd_backup)

    rotate = osub.add_parser(
        "rotate-key",
        help="new records under a new key; old ones stay readable (service stopped)",
        description="Make a new outbox data key. New records are sealed under it; the old "
        "key is kept in <key file>.retired for the records sealed under it, until "
        "retention purges them. Stop the service first; back up both files after.",
    )
    add_config_arg(rotate)
    rotate.set_defaults(func=cmd_rotate_key)

    salvage = osub.add_parser(
        "salvage",
        help="copy every readable record of a damaged copy into the outbox",
        description="Copy every record of FILE (a damaged outbox copy, e.g. "
        "outbox.db.damaged-<time>) that can still be read and opened with the key "
        "into the outbox, with its state, attempts and id. FILE is never written.",
    )
    add_config_arg(salvage)
    salvage.add_argument("file", metavar="FILE", type=Path, help="the damaged outbox copy")
    salvage.set_defaults(func=cmd_salvage)

    merge = osub.add_parser(
        "merge",
        help="bring in the records of an outbox set aside because its key was missing",
        description="Bring the records of OLD (outbox.db.awaiting-key-<time>) into the outbox, "
        "sealed again under its key. OLD is opened with the configured key "
        "([storage] key_file) or the one given with --key, and kept as "
        "outbox.db.merged-<time> afterwards.",
    )
    add_config_arg(merge)
    merge.add_argument("old", metavar="OLD", type=Path, help="the outbox copy set aside")
    merge.add_argument("--key", metavar="KEYFILE", type=Path, help="its key file (default: the configured key)")
    merge.set_defaults(func=cmd_merge)

    ack = osub.add_parser("ack-damage", help="take note of the damage / missing-records alerts (clears them)")
    add_config_arg(ack)
    ack.set_defaults(func=cmd_ack_damage)


def _settings(args: argparse.Namespace) -> Any:
    from agent.config import load_config

    return load_config(config_path(args), validate_drivers=False)


def cmd_backup(args: argparse.Namespace) -> int:
    from agent.outbox.backup import backup

    done = backup(_settings(args).storage, args.dest)
    print(f"backed up {done.records} record(s) to {done.database}, key ({done.key_source}) to {done.key}")
    return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    from agent.outbox.keys import key_path
    from agent.outbox.rotation import retired_path, rotate_key

    storage = _settings(args).storage
    done = rotate_key(storage)
    print(
        f"outbox key rotated: {done.old_id} -> {done.new_id}; {done.records_under_old} record(s) stay under "
        f"{done.old_id} until purged. Back up {key_path(storage)} and {retired_path(storage)} now."
    )
    return 0


def cmd_salvage(args: argparse.Namespace) -> int:
    from agent.outbox import Outbox
    from agent.outbox.salvage import salvage

    with Outbox.open(_settings(args).storage, create=False) as outbox:
        report = salvage(args.file, outbox)
    print(f"{args.file}: {report.summary()}")
    return 1 if report.lost else 0


def cmd_merge(args: argparse.Namespace) -> int:
    from agent.outbox import Outbox
    from agent.outbox.keys import load_key
    from agent.outbox.recovery import merge

    storage = _settings(args).storage
    key_storage = storage if args.key is None else storage.model_copy(update={"key_file": args.key})
    key = load_key(key_storage, may_create=False)
    with Outbox.open(storage, create=False) as outbox:
        report = merge(outbox, args.old, key)
    print(f"{args.old}: {report.summary()}")
    return 1 if report.lost else 0


def cmd_ack_damage(args: argparse.Namespace) -> int:
    from agent.outbox import Outbox, incidents

    with Outbox.open(_settings(args).storage, create=False) as outbox:
        dropped = incidents.acknowledge(outbox)
        waiting = [i for i in incidents.current(outbox) if i.get("kind") == "key"]
    if not dropped:
        print("no damage alert to acknowledge")
    for incident in dropped:
        print(f"acknowledged: {incident.get('alert')}")
    for incident in waiting:
        print(f"still open (merge it when its key is back): {incident.get('alert')}")
    return 0
