"""Power cuts under the outbox: a writer process on tests/powercut_fs.py is killed at a random moment
and every unsynced write is dropped, again and again; after each cut every acknowledged record
(its enqueue returned) must be there, whole, and every acknowledged result (sent) must still be sent.

    python -m tests.powercut worker STATE_DIR LOG FIRST_N    (the writer; runs until killed)

``run_cuts`` drives it: tests/test_powercut.py (short form) and bench/powercut.py (long form).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from agent.config import StorageSettings
from agent.outbox import Outbox
from tests.test_outbox_support import record
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def mounted(backing: Path, mount: Path) -> Iterator[Path]:
    """tests/powercut_fs.py mounted at ``mount`` over ``backing`` while the block runs."""
    backing.mkdir(parents=True, exist_ok=True)
    mount.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.powercut_fs", str(backing), str(mount)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: os.path.ismount(mount) or proc.poll() is not None, 20, "the power-cut file system to mount")
        if proc.poll() is not None:
            raise RuntimeError(f"the power-cut file system did not mount: {proc.stderr.read() if proc.stderr else ''}")
        yield mount
    finally:
        subprocess.run(["fusermount3", "-u", str(mount)], check=False, capture_output=True)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def cut(mount: Path) -> None:
    """The power goes: the file system drops everything not synced."""
    with open(mount / ".powercut", "w") as fh:
        fh.write("cut")


@dataclasses.dataclass
class Result:
    cuts: int = 0
    acknowledged: int = 0
    acknowledged_sent: int = 0
    lost: int = 0
    not_sent: int = 0
    damaged: int = 0
    wall_s: float = 0.0


def _read_log(log: Path) -> tuple[dict[int, int], set[int]]:
    committed: dict[int, int] = {}
    sent: set[int] = set()
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue  # a line cut by the kill: its record was acknowledged only if the line is whole
        if parts[0] == "sent":
            sent.add(int(parts[1]))
        else:
            committed[int(parts[0])] = int(parts[1])
    return committed, sent


def run_cuts(cuts: int, workdir: Path, *, seed: int = 20261202, max_run_s: float = 1.0) -> Result:
    """``cuts`` cycles of: start the writer, let it run a random while, kill it, cut the power, check."""
    rng = random.Random(seed)
    result = Result()
    started = time.monotonic()
    with mounted(workdir / "backing", workdir / "mnt") as mount:
        storage = StorageSettings(dir=mount / "state")
        committed: dict[int, int] = {}
        sent: set[int] = set()
        next_n = 0
        for cycle in range(cuts):
            log = workdir / f"cycle-{cycle}.log"
            log.touch()
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.powercut", "worker", str(storage.dir), str(log), str(next_n)], cwd=ROOT
            )
            try:
                wait_for(lambda: log.stat().st_size > 0 or proc.poll() is not None, 60, "the writer's first commit")
                # A random moment to die: a kill-and-cut is a point in time, not a condition to wait for.
                time.sleep(rng.uniform(0.0, max_run_s))
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
            cut(mount)
            result.cuts += 1
            new, new_sent = _read_log(log)
            committed.update(new)
            sent |= new_sent
            next_n = max(committed, default=-1) + 1
            with Outbox.open(storage, check=True) as box:
                for n, record_id in committed.items():
                    try:
                        payload = box.payload(record_id)
                    except Exception:
                        payload = None
                    if payload is None or payload.get("cardNo") != record(n)["cardNo"]:
                        result.lost += 1
                for record_id in sent:
                    row = box.get(record_id)
                    if row is None or row.state != "sent":
                        result.not_sent += 1
            result.damaged += len(list(storage.dir.glob("outbox.db.damaged-*")))
            if result.lost or result.not_sent or result.damaged:
                break
        result.acknowledged = len(committed)
        result.acknowledged_sent = len(sent)
    result.wall_s = round(time.monotonic() - started, 1)
    shutil.rmtree(workdir / "backing", ignore_errors=True)
    return result


def worker(state_dir: str, log_path: str, first_n: str) -> None:
    """Capture records as fast as the outbox takes them; every fourth, take one and mark it sent."""
    box = Outbox.open(StorageSettings(dir=Path(state_dir)), check=True)
    box.requeue_interrupted()
    with open(log_path, "a", buffering=1) as log:
        n = int(first_n)
        while True:
            record_id = box.enqueue(record(n))
            log.write(f"{n} {record_id}\n")
            if n % 4 == 3:
                for claim in box.claim(1):
                    box.finish(claim, "accepted", message="ok", request_id=f"req-{claim.id}")
                    log.write(f"sent {claim.id}\n")
            n += 1


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "worker":
        worker(*sys.argv[2:])
    else:
        sys.exit("usage: python -m tests.powercut worker STATE_DIR LOG FIRST_N")
