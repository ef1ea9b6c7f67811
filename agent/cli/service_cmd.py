"""`fvagent run | status | doctor | verify-once | demo`: the daemon and the technician's tools.

Exit codes: `run` 0 on a clean stop (SIGTERM), 2 on a bad config or when another `fvagent run` holds
the state directory ("already running (pid N)"), 1 when the outbox cannot open;
`status` 0 while the daemon runs, 3 when it does not (as `systemctl status`); `doctor` 0 when no
check failed, 1 otherwise; `verify-once` 0 when a verification was committed, 1 otherwise;
`demo` 0 only when every captured record was delivered.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from agent.cli import Subparsers, add_command, config_path, invocation, load_settings, print_error

EXIT_NOT_RUNNING = 3


def register(sub: Subparsers) -> None:
    add_command(sub, "run", cmd_run)

    status = add_command(sub, "status", cmd_status)
    status.add_argument("--json", action="store_true", help="print the status document as JSON")

    add_command(sub, "doctor", cmd_doctor)

    once = add_command(sub, "verify-once", cmd_verify_once)
    once.add_argument("--timeout", type=float, default=60.0, metavar="S", help="seconds to wait for a card (60)")
    once.add_argument("--force", action="store_true", help="run even though the daemon seems to be running")

    demo = add_command(sub, "demo", cmd_demo, config=False)
    demo.add_argument(
        "--write-config",
        metavar="FILE",
        help="write the configuration the demo runs with to FILE and exit (reuse it with fvagent run --config FILE)",
    )
    demo.add_argument("--count", type=int, default=36, help="verifications to run (36)")
    demo.add_argument("--dir", metavar="DIR", help="keep the demo's files here instead of a temporary directory")


def cmd_run(args: argparse.Namespace) -> int:
    """run the agent in the foreground (what systemd runs)

    Run the daemon in the foreground: the verification, upload and housekeeping loops and the local API. SIGTERM
    stops it cleanly, SIGHUP reloads the configuration. Speaks the systemd notify protocol when $NOTIFY_SOCKET
    is set.
    """
    from agent.config import load_config
    from agent.logsetup import setup_logging
    from agent.service.runlock import AlreadyRunning, DaemonLock
    from agent.service.service import Service

    setup_logging(None)  # until the config says otherwise
    path = config_path(args)
    settings = load_config(path)
    setup_logging(settings.logging)
    try:
        lock = DaemonLock(settings.storage.dir)
        lock.acquire()  # before any driver or the outbox is opened
    except AlreadyRunning as exc:
        print_error(str(exc), exc.hint)
        return 2
    try:
        code = Service(settings, config_path=path).run()
    finally:
        lock.release()
    _exit_if_threads_linger(code)
    return code


def _exit_if_threads_linger(code: int) -> None:
    """After a stop, a thread still inside a call nothing can interrupt (a DNS lookup) would keep
    the interpreter from exiting past systemd's TimeoutStopSec: exit without waiting for it. The
    outbox is already committed (SQLite, synchronous=FULL), so nothing is lost."""
    import logging
    import os
    import threading

    lingering = [
        t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()
    ]
    if lingering:
        logging.getLogger(__name__).warning("stopped; not waiting for thread(s) still busy: %s", ", ".join(lingering))
        logging.shutdown()
        os._exit(code)


def cmd_status(args: argparse.Namespace) -> int:
    """queue, platform, hardware and the daemon's state

    Print the queue by state, last success and error, registration, platform reachability and hardware state.
    Works whether the daemon runs or not. Exit 0 while it runs, 3 when it does not.
    """
    from agent.status import collect_status, format_status

    status = collect_status(load_settings(args))
    if args.json:
        print(json.dumps(status.to_json(), ensure_ascii=False, indent=2))
    else:
        print(format_status(status))
    return 0 if status.running else EXIT_NOT_RUNNING


def cmd_doctor(args: argparse.Namespace) -> int:
    """check config, hardware, face model, platform, clock and disk

    Run every check and print one line each: OK, WARN or FAIL with the fix. Exit 1 when any check fails.
    """
    import logging

    from agent.logsetup import setup_logging
    from agent.service.doctor import FAIL, run_checks

    setup_logging(None)
    logging.getLogger().setLevel(logging.ERROR)  # the report is the output, not the drivers' chatter
    checks = run_checks(config_path(args), on_check=lambda c: print(c.line(), flush=True))
    failed = sum(1 for c in checks if c.level == FAIL)
    warned = sum(1 for c in checks if c.level == "WARN")
    print(f"{len(checks)} checks: {failed} failed, {warned} warning(s)")
    return 1 if failed else 0


def cmd_verify_once(args: argparse.Namespace) -> int:
    """one real verification through the configured drivers

    Wait for a card on the configured reader, run one verification (camera, face score), commit it to the outbox
    and print the result (masked). For installers; stop the service first, it holds the devices.
    """
    from agent.config import load_config
    from agent.logsetup import setup_logging
    from agent.service.service import Service
    from agent.status import daemon_status, read_live_status

    setup_logging(None)
    settings = load_config(config_path(args))
    setup_logging(settings.logging)
    daemon = daemon_status(read_live_status(settings.storage.dir), time.time())
    if daemon.running and not args.force:
        print_error(
            f"the daemon is running ({daemon.detail}) and holds the reader and camera",
            "systemctl stop fvagent, run verify-once, then systemctl start fvagent (or pass --force)",
        )
        return 1
    service = Service(settings, config_path=config_path(args), start_local_api=False)
    done = service.verify_once(args.timeout)
    if done is None:
        print(f"no card within {args.timeout:.0f} s (reader: {service.reader_state()})", file=sys.stderr)
        return 1
    print(json.dumps(done.summary(), ensure_ascii=False, indent=2))
    if done.outbox_id is None:
        return 1
    print(
        f"committed as outbox record {done.outbox_id}; the service uploads it when it runs "
        f"(fvagent queue show {done.outbox_id})"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """the whole agent against a local mock platform, with an outage

    Start the mock platform and the agent with the fake reader and camera over sample cards (synthetic
    identities, a public-domain face), run a few dozen verifications, take the platform down and bring it back,
    then print the table. Exit 0 only when every captured record was delivered.
    """
    from agent.service.demo import run_demo, write_demo_config

    if args.write_config:
        path = write_demo_config(args.write_config, workdir=args.dir)
        print(f"wrote the demo configuration to {path}")
        print(
            f"run it with: {invocation()} run --config {path}  (start the mock platform it names first: "
            "see the comment at the top of the file)"
        )
        return 0
    return run_demo(count=args.count, workdir=args.dir)
