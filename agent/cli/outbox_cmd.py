"""`fvagent outbox backup DEST`: a consistent copy of the outbox and its key while the daemon runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.cli import add_config_arg, config_path


def register(sub: Any) -> None:
    outbox = sub.add_parser("outbox", help="the outbox file itself: backup")
    osub = outbox.add_subparsers(dest="outbox_command", metavar="ACTION", required=True)
    backup = osub.add_parser(
        "backup", help="copy the outbox and its data key into the new directory DEST (safe while the daemon runs)",
        description="Copy the outbox database through SQLite's online backup API and its data key (0600) into "
                    "DEST, then open the copy with the key to check it. Keep the two files together and "
                    "private: the key opens every record. Restore: docs/operations.md.")
    add_config_arg(backup)
    backup.add_argument("dest", metavar="DEST", type=Path, help="a new or empty directory")
    backup.set_defaults(func=cmd_backup)


def cmd_backup(args: argparse.Namespace) -> int:
    from agent.config import load_config
    from agent.outbox.backup import backup

    settings = load_config(config_path(args), validate_drivers=False)
    done = backup(settings.storage, args.dest)
    print(f"backed up {done.records} record(s) to {done.database}, key ({done.key_source}) to {done.key}")
    return 0
