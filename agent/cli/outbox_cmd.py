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

from agent.cli import Subparsers, add_command, add_group, load_settings, open_outbox


def register(sub: Subparsers) -> None:
    """back it up, rotate its key, salvage a damaged copy, merge one set aside for its key

    Back up the outbox; rotate its data key; recover records from a damaged outbox copy or one set aside
    because its key was missing; acknowledge the damage alerts.
    """
    osub = add_group(sub, "outbox", "ACTION", register)
    backup = add_command(osub, "backup", cmd_backup)
    backup.add_argument("dest", metavar="DEST", type=Path, help="a new or empty directory")

    add_command(osub, "rotate-key", cmd_rotate_key)

    salvage = add_command(osub, "salvage", cmd_salvage)
    salvage.add_argument("file", metavar="FILE", type=Path, help="the damaged outbox copy")

    merge = add_command(osub, "merge", cmd_merge)
    merge.add_argument("old", metavar="OLD", type=Path, help="the outbox copy set aside")
    merge.add_argument("--key", metavar="KEYFILE", type=Path, help="its key file (default: the configured key)")

    add_command(osub, "ack-damage", cmd_ack_damage)


def cmd_backup(args: argparse.Namespace) -> int:
    """copy the outbox and its data key into the new directory DEST (safe while the daemon runs)

    Copy the outbox database through SQLite's online backup API and its data key (0600) into DEST, then open the
    copy with the key to check it. Keep the two files together and private: the key opens every record. Restore:
    docs/operations.md.
    """
    from agent.outbox.backup import backup

    done = backup(load_settings(args).storage, args.dest)
    print(f"backed up {done.records} record(s) to {done.database}, key ({done.key_source}) to {done.key}")
    return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    """new records under a new key; old ones stay readable (service stopped)

    Make a new outbox data key. New records are sealed under it; the old key is kept in <key file>.retired for
    the records sealed under it, until retention purges them. Stop the service first; back up both files after.
    """
    from agent.outbox.keys import key_path
    from agent.outbox.rotation import retired_path, rotate_key

    storage = load_settings(args).storage
    done = rotate_key(storage)
    print(
        f"outbox key rotated: {done.old_id} -> {done.new_id}; {done.records_under_old} record(s) stay under "
        f"{done.old_id} until purged. Back up {key_path(storage)} and {retired_path(storage)} now."
    )
    return 0


def cmd_salvage(args: argparse.Namespace) -> int:
    """copy every readable record of a damaged copy into the outbox

    Copy every record of FILE (a damaged outbox copy, e.g. outbox.db.damaged-<time>) that can still be read and
    opened with the key into the outbox, with its state, attempts and id. FILE is never written.
    """
    from agent.outbox.salvage import salvage

    with open_outbox(load_settings(args)) as outbox:
        report = salvage(args.file, outbox)
    print(f"{args.file}: {report.summary()}")
    return 1 if report.lost else 0


def cmd_merge(args: argparse.Namespace) -> int:
    """bring in the records of an outbox set aside because its key was missing

    Bring the records of OLD (outbox.db.awaiting-key-<time>) into the outbox, sealed again under its key. OLD is
    opened with the configured key ([storage] key_file) or the one given with --key, and kept as
    outbox.db.merged-<time> afterwards.
    """
    from agent.outbox.keys import load_key
    from agent.outbox.recovery import merge

    settings = load_settings(args)
    storage = settings.storage
    key_storage = storage if args.key is None else storage.model_copy(update={"key_file": args.key})
    key = load_key(key_storage, may_create=False)
    with open_outbox(settings) as outbox:
        report = merge(outbox, args.old, key)
    print(f"{args.old}: {report.summary()}")
    return 1 if report.lost else 0


def cmd_ack_damage(args: argparse.Namespace) -> int:
    """take note of the damage / missing-records alerts (clears them)"""
    from agent.outbox import incidents

    with open_outbox(load_settings(args)) as outbox:
        dropped = incidents.acknowledge(outbox)
        waiting = [i for i in incidents.current(outbox) if i.get("kind") == "key"]
    if not dropped:
        print("no damage alert to acknowledge")
    for incident in dropped:
        print(f"acknowledged: {incident.get('alert')}")
    for incident in waiting:
        print(f"still open (merge it when its key is back): {incident.get('alert')}")
    return 0
