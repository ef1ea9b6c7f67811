"""The process the durability tests kill: it captures (enqueues) and uploads at the same time.

Run as ``python -m tests.test_durability_worker zygote``: a single-threaded process that imports
everything once, then forks one worker per command read from stdin, so each of the many kill
cycles costs a fork instead of an interpreter start. Commands (one JSON object per line):

    {"config": PATH, "start": N, "count": M, "seed": S, "log": PATH}

The zygote answers ``<pid>`` on stdout. The worker opens the outbox, runs the uploader in a thread
against the configured platform, and enqueues records ``start .. start+count-1`` at small random
intervals. After each ``enqueue`` returns it appends ``<n> <id>`` to ``log`` (one ``write`` of a
short line to an ``O_APPEND`` file: a line is there whole or not at all). When done it appends
``done`` and keeps uploading until killed. Exited children are reaped by the kernel
(SIGCHLD ignored), so the test sees a killed worker's pid disappear.

No tests here: pytest collects the module but finds none.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time


def _worker(cmd: dict) -> None:
    from agent.config import load_config
    from agent.delivery import Uploader
    from agent.outbox import Outbox
    from agent.uplink.client import PlatformClient
    from tests.test_outbox_support import record

    settings = load_config(cmd["config"], validate_drivers=False)
    rng = random.Random(cmd["seed"])
    log_fd = os.open(cmd["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    outbox = Outbox.open(settings.storage)
    uploader = Uploader(outbox, PlatformClient, settings.platform, settings.uploader, settings.device)
    stop = threading.Event()
    threading.Thread(target=uploader.run, args=(stop,), daemon=True).start()
    for n in range(cmd["start"], cmd["start"] + cmd["count"]):
        record_id = outbox.enqueue(record(n))
        os.write(log_fd, f"{n} {record_id}\n".encode())
        time.sleep(rng.uniform(0.0, 0.01))
    os.write(log_fd, b"done\n")
    stop.wait()


def zygote() -> None:
    # Import once, before any thread exists, so forks are cheap and safe.
    import agent.config
    import agent.outbox
    import agent.uplink.client  # noqa: F401
    import core.records  # noqa: F401
    import tests.test_outbox_support  # noqa: F401

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                _worker(cmd)
            except BaseException as exc:  # visible in the test's failure output
                sys.stderr.write(f"worker failed: {type(exc).__name__}: {exc}\n")
            finally:
                os._exit(1)
        sys.stdout.write(f"{pid}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    if sys.argv[1:] == ["zygote"]:
        zygote()
    else:
        sys.exit("usage: python -m tests.test_durability_worker zygote")
