"""The promises, proven against the real mock platform on loopback:

- kill -9 of a real process that captures and uploads, at random moments, 50 times: every record
  whose commit returned is delivered, and only records in flight at a kill may arrive twice;
- the platform down for a whole run, then up: everything is delivered, never faster than the cap;
- a disk that fills (a small tmpfs, as root): integrity ok, nothing sent lost, capture resumes once
  space is freed.

(A corrupted or truncated database file is covered in test_outbox.py.)
"""

from __future__ import annotations

import base64
import collections
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import mock_platform
from agent.audit.verify import verify_outbox
from agent.config import Settings, load_config
from agent.delivery import Uploader
from agent.outbox import Outbox
from agent.uplink.client import PlatformClient
from core.errors import StorageFull
from core.records import natural_key
from tests.test_outbox_support import jpeg, record, write_config
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
KILLS = 50


# -- the mock platform ---------------------------------------------------------------------------


class Platform:
    """The real mock platform (uvicorn in a thread, its own SQLite file) with this agent's credentials."""

    def __init__(self, tmp_path: Path) -> None:
        config = mock_platform.MockPlatformConfig(
            org_app_id="APP0001", org_app_secret="0123456789abcdef", ticket="ESB-TICKET-1"
        )
        self.mock = mock_platform.MockPlatform(config, tmp_path / "mock-platform.db").start()
        self.url = self.mock.url

    def delivered(self) -> collections.Counter[tuple[str, str, str]]:
        """How many times each natural key was accepted."""
        return self.mock.delivered()

    def request_times(self) -> list[float]:
        """Arrival times (seconds) of every request, registration included."""
        return self.mock.request_times()

    def down(self, down: bool) -> None:
        self.mock.set_faults(down=down)

    def stop(self) -> None:
        self.mock.stop()


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    p = Platform(tmp_path)
    yield p
    p.stop()


def _settings(tmp_path: Path, platform: Platform, **kw: Any) -> Settings:
    cfg = write_config(tmp_path / "fvagent.toml", url=platform.url, state_dir=tmp_path / "state", **kw)
    return load_config(cfg, validate_drivers=False)


# -- kill -9 ---------------------------------------------------------------------------------------


class Zygote:
    """tests/test_durability_worker.py as a process that forks one capturing+uploading worker per call."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.test_durability_worker", "zygote"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"
        self.pids: list[int] = []

    def spawn(self, **cmd: Any) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        pid = int(self.proc.stdout.readline())
        self.pids.append(pid)
        return pid

    def close(self) -> None:
        for pid in self.pids:  # a failed test must not leave workers behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(10)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _committed(log: Path) -> dict[int, int]:
    """Record number -> outbox id, for every enqueue that returned before the kill."""
    out = {}
    for line in log.read_text().splitlines():
        if line != "done":
            n, record_id = line.split()
            out[int(n)] = int(record_id)
    return out


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing(tmp_path: Path, platform: Platform) -> None:
    settings = _settings(tmp_path, platform, max_rps=500, concurrency=4)
    cfg = tmp_path / "fvagent.toml"
    rng = random.Random(20240611)
    zygote = Zygote()
    committed: dict[int, int] = {}  # record number -> id
    in_flight: set[tuple[str, str, str]] = set()  # natural keys in `sending` at some kill
    next_n = 0
    try:
        for cycle in range(KILLS):
            log = tmp_path / f"cycle-{cycle}.log"
            count = rng.randint(5, 25)
            pid = zygote.spawn(config=str(cfg), start=next_n, count=count, seed=cycle, log=str(log))
            next_n += count
            time.sleep(rng.uniform(0.02, 0.35))  # the random moment (not a synchronisation)
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not _alive(pid), 10, f"worker {pid} to die")
            if log.exists():
                committed.update(_committed(log))
            # After every kill: the file is sound, every committed record is stored whole, and
            # nothing arrived twice except what was on the wire at a kill.
            with Outbox.open(settings.storage, check=True) as box:
                for row in box.list("sending", limit=100):
                    in_flight.add(natural_key(box.payload(row.id)))  # type: ignore[arg-type]
                for n, record_id in committed.items():
                    row = box.get(record_id)
                    assert row is not None, f"cycle {cycle}: committed record {n} (id {record_id}) is gone"
                    if n % 7 == 0 or row.state != "sent":
                        assert box.payload(record_id) == record(n)
                # The audit chain is written in each change's own transaction: a kill never parts them.
                report = verify_outbox(box)
                assert report.ok, f"cycle {cycle}: {report.summary()}"
            twice = {k for k, c in platform.delivered().items() if c > 1}
            assert twice <= in_flight, f"cycle {cycle}: duplicates not in flight at a kill: {twice - in_flight}"
        # Finally let one worker run to the end: everything committed gets delivered.
        log = tmp_path / "final.log"
        pid = zygote.spawn(config=str(cfg), start=next_n, count=1, seed=999, log=str(log))
        expected = {natural_key(record(n)) for n in committed}
        wait_for(lambda: expected <= set(platform.delivered()), 60, "every committed record to be delivered")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not _alive(pid), 10, "the last worker to die")
    finally:
        zygote.close()
    delivered = platform.delivered()
    assert len(committed) > KILLS  # the kills landed while records were being captured
    twice = {k for k, c in delivered.items() if c > 1}
    assert twice <= in_flight
    with Outbox.open(settings.storage) as box:
        assert box.integrity_check() == ["ok"]
        stats = box.stats()
        assert stats["rejected"] == 0 and stats["held"] == 0


# -- the platform down for a whole run --------------------------------------------------------------


def test_platform_down_then_up_delivers_everything_within_the_rate_cap(tmp_path: Path, platform: Platform) -> None:
    cap = 8.0
    settings = _settings(tmp_path, platform, max_rps=cap, concurrency=4, backoff_initial_s=0.1, backoff_max_s=0.4)
    platform.down(True)
    box = Outbox.open(settings.storage)
    uploader = Uploader(box, PlatformClient, settings.platform, settings.uploader, settings.device)
    stop = threading.Event()
    thread = threading.Thread(target=uploader.run, args=(stop,))
    thread.start()
    try:
        ids = [box.enqueue(record(n)) for n in range(24)]
        wait_for(lambda: uploader.snapshot()["state"] == "backoff", 10, "the uploader to back off")
        time.sleep(1.5)  # a whole "run" of outage: the uploader keeps probing, politely
        assert sum(platform.delivered().values()) == 0 and box.stats()["sent"] == 0
        probes = len(platform.request_times())
        assert probes <= 1.5 * cap  # not a retry storm: backoff plus one probe at a time
        platform.down(False)
        wait_for(lambda: box.stats()["sent"] == len(ids), 30, "the backlog to drain")
    finally:
        stop.set()
        thread.join(30)
        box.close()
    assert set(platform.delivered()) == {natural_key(record(n)) for n in range(24)}
    times = sorted(platform.request_times())
    worst = max(sum(1 for u in times[i:] if u < t + 1.0) for i, t in enumerate(times))
    assert worst <= cap, f"{worst} requests within one second (cap {cap})"


# -- the disk fills ---------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (the disk-full test)")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_keeps_everything_and_capture_resumes(tmp_path: Path, platform: Platform, small_disk: Path) -> None:
    cfg = write_config(tmp_path / "fvagent.toml", url=platform.url, state_dir=small_disk / "state")
    settings = load_config(cfg, validate_drivers=False)
    filler = small_disk / "filler"
    filler.write_bytes(os.urandom(600_000))  # freed later, as a technician would free space
    photo = base64.b64encode(jpeg(1, size=300)).decode()
    box = Outbox.open(settings.storage)
    uploader = Uploader(box, PlatformClient, settings.platform, settings.uploader, settings.device)
    try:
        sent = [box.enqueue(record(n, photo_b64=photo)) for n in range(3)]
        uploader.drain_once()
        assert all(box.get(i).state == "sent" for i in sent)  # type: ignore[union-attr]
        stored = list(sent)
        with pytest.raises(StorageFull, match="disk is full") as info:
            for n in range(3, 200):
                stored.append(box.enqueue(record(n, photo_b64=photo)))
        assert "free disk space" in (info.value.hint or "")
        assert len(stored) > 3
        assert box.integrity_check() == ["ok"]
        assert all(box.get(i).state == "sent" for i in sent)  # type: ignore[union-attr]
        for n, record_id in enumerate(stored):
            assert box.payload(record_id)["cardNo"] == record(n)["cardNo"]  # type: ignore[index]
        with pytest.raises(StorageFull):
            box.enqueue(record(500, photo_b64=photo))
        filler.unlink()
        resumed = box.enqueue(record(501, photo_b64=photo))
        assert box.get(resumed).state == "pending"  # type: ignore[union-attr]
        deadline = time.monotonic() + 30
        while box.stats()["pending"] and time.monotonic() < deadline:
            uploader.drain_once()
            time.sleep(0.02)
        assert box.stats()["pending"] == 0 and box.integrity_check() == ["ok"]
    finally:
        uploader.close()
        box.close()
    delivered = platform.delivered()
    expected = {natural_key(record(n)) for n in range(len(stored))} | {natural_key(record(501))}
    assert expected <= set(delivered)
