"""`fvagent outbox rotate-key`: a new outbox data key for new records; the old one is kept (retired)
so the records sealed under it stay readable until retention purges them. The service must be stopped.
"""

from __future__ import annotations

import argparse

from agent.cli import add_config_arg, config_path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    outbox = sub.add_parser("outbox", help="the outbox's data key", description="Manage the outbox's data key.")
    osub = outbox.add_subparsers(dest="outbox_command", metavar="ACTION")
    outbox.set_defaults(func=lambda args: (outbox.print_help(), 2)[1])
    rotate = osub.add_parser("rotate-key", help="new records under a new key; old ones stay readable (service stopped)",
                             description="Make a new outbox data key. New records are sealed under it; the old "
                                         "key is kept in <key file>.retired for the records sealed under it, until "
                                         "retention purges them. Stop the service first; back up both files after.")
    add_config_arg(rotate)
    rotate.set_defaults(func=cmd_rotate_key)


def cmd_rotate_key(args: argparse.Namespace) -> int:
    from agent.config import load_config
    from agent.outbox.keys import key_path
    from agent.outbox.rotation import retired_path, rotate_key

    storage = load_config(config_path(args), validate_drivers=False).storage
    done = rotate_key(storage)
    print(f"outbox key rotated: {done.old_id} -> {done.new_id}; {done.records_under_old} record(s) stay under "
          f"{done.old_id} until purged. Back up {key_path(storage)} and {retired_path(storage)} now.")
    return 0
