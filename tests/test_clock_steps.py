"""Clock steps: the wall clock 400 days ahead while uploads fail, then set right (as NTP does when
the network returns). Every retry must happen within ``uploader.backoff_max_s`` of the clock being
back, proven twice: through the clock injected into the outbox and the uploader, and through a
real process whose wall clock is stepped by an LD_PRELOAD shim built here with cc (the monotonic
clock, as on a real machine, does not step).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agent import mock_platform
from agent.config import load_config
from agent.outbox import Outbox
from tests.test_outbox_support import (
    platform,  # noqa: F401  (the fixture)
    record,
    write_config,
)
from tests.test_uploader import env  # noqa: F401  (the fixture)
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
AHEAD_S = 400 * 86400.0


def test_retries_after_the_clock_steps_back_happen_within_backoff_max(env: object) -> None:
    e = env  # type: ignore[assignment]
    now = [time.time() + AHEAD_S]
    # the platform's replies carry the same clock: this test is about stored retry times; learning
    # the platform's offset from its replies is tests/test_uplink_trust.py's
    e.platform.clock = lambda: now[0]
    box = Outbox.open(e.settings.storage, clock=lambda: now[0])
    up = e.uploader(clock=lambda: now[0])
    up.outbox = box
    ids = [box.enqueue(record(n)) for n in range(3)]
    e.platform.rule = lambda req, body: httpx.Response(502) if "/first" in req.url.path else None
    for _ in range(6):  # failures recorded while the clock is 400 days ahead (probed one at a time)
        up.drain_once()
        now[0] += e.settings.uploader.backoff_max_s
    # Tried ones retry 400 days ahead, untried ones were due at their capture, 400 days ahead too.
    assert sum(box.get(i).attempts for i in ids) >= 3  # type: ignore[union-attr]
    assert min(box.get(i).next_attempt_at for i in ids) > time.time() + AHEAD_S - 3600  # type: ignore[union-attr]

    now[0] = time.time()  # the clock is set right
    e.platform.rule = None
    backoff_max = e.settings.uploader.backoff_max_s
    up.drain_once()  # the uploader's own backoff (set 400 days ahead) is now at most backoff_max away
    now[0] += backoff_max
    for _ in range(len(ids) + 1):  # probing one record at a time after failures
        up.drain_once()
    assert [box.get(i).state for i in ids] == ["sent"] * 3  # type: ignore[union-attr]
    box.close()


def test_a_clock_stepping_forward_never_holds_a_retry_back(env: object) -> None:
    e = env  # type: ignore[assignment]
    now = [time.time()]
    e.platform.clock = lambda: now[0]  # as above: the replies follow the same clock
    box = Outbox.open(e.settings.storage, clock=lambda: now[0])
    up = e.uploader(clock=lambda: now[0])
    up.outbox = box
    rid = box.enqueue(record(1))
    e.platform.rule = lambda req, body: httpx.Response(502) if "/first" in req.url.path else None
    up.drain_once()
    e.platform.rule = None
    now[0] += AHEAD_S
    up.drain_once()
    assert box.get(rid).state == "sent"  # type: ignore[union-attr]
    box.close()


# -- a real process under a stepped wall clock ----------------------------------------------------

_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

/* The wall clock (CLOCK_REALTIME, gettimeofday, time) shifted by the seconds written in the file
   $STEP_CLOCK_FILE, re-read every 50 ms of monotonic time; the monotonic clock is left alone. */
static int (*real_clock_gettime)(clockid_t, struct timespec *);
static volatile double offset_s;
static volatile long next_read_ms;

static void refresh(void) {
    struct timespec mono;
    real_clock_gettime(CLOCK_MONOTONIC, &mono);
    long ms = mono.tv_sec * 1000L + mono.tv_nsec / 1000000L;
    if (ms < next_read_ms) return;
    next_read_ms = ms + 50;
    const char *path = getenv("STEP_CLOCK_FILE");
    FILE *f = path ? fopen(path, "r") : NULL;
    double value;
    if (f) {
        if (fscanf(f, "%lf", &value) == 1) offset_s = value;
        fclose(f);
    }
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    if (!real_clock_gettime) real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real_clock_gettime(id, ts);
    if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
        refresh();
        double t = ts->tv_sec + ts->tv_nsec / 1e9 + offset_s;
        ts->tv_sec = (time_t)t;
        ts->tv_nsec = (long)((t - (double)ts->tv_sec) * 1e9);
    }
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    (void)tz;
    clock_gettime(CLOCK_REALTIME, &ts);
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = ts.tv_nsec / 1000;
    return 0;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}
"""

_WORKER = """
import signal, sys, threading, time
from agent.config import load_config
from agent.outbox import Outbox
from agent.delivery import Uploader
from agent.uplink.client import PlatformClient
from tests.test_outbox_support import record
settings = load_config(sys.argv[1], validate_drivers=False)
box = Outbox.open(settings.storage)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
uploader = threading.Thread(target=Uploader(box, PlatformClient, settings.platform, settings.uploader,
                                            settings.device).run, args=(stop,))
uploader.start()
print("running", flush=True)
for line in sys.stdin:  # "enqueue N T": capture N verifications once the wall clock is past T
    _, count, after = line.split()
    deadline = time.monotonic() + 10
    while time.time() < float(after) and time.monotonic() < deadline:
        stop.wait(0.01)
    for n in range(int(count)):
        box.enqueue(record(n))
    print("committed", flush=True)
uploader.join()
box.close()
"""


@pytest.fixture
def shim(tmp_path: Path) -> Path:
    cc = shutil.which("cc")
    if cc is None:
        pytest.fail("cc is missing: run `make setup-test` (deploy/system-deps.sh installs gcc)")
    source = tmp_path / "stepclock.c"
    source.write_text(_SHIM)
    lib = tmp_path / "stepclock.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(lib), str(source), "-ldl"], check=True)
    return lib


def test_a_real_process_400_days_ahead_then_set_right_retries_within_backoff_max(
    tmp_path: Path, shim: Path, platform: mock_platform.MockPlatform
) -> None:
    backoff_max = 2.0
    cfg = write_config(
        tmp_path / "fvagent.toml",
        url=platform.url,
        state_dir=tmp_path / "state",
        backoff_initial_s=0.5,
        backoff_max_s=backoff_max,
    )
    settings = load_config(cfg, validate_drivers=False)
    step = tmp_path / "clock-offset"
    env = {**os.environ, "LD_PRELOAD": str(shim), "STEP_CLOCK_FILE": str(step)}
    step.write_text("0\n")
    proc = subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(cfg)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None and proc.stdout.readline().strip() == "running"

        def registered() -> bool:
            with Outbox.open(settings.storage, readonly=True) as box:
                return bool(box.registration_state().get("registered"))

        wait_for(registered, 20, "the device to register while the clock is right")
        step.write_text(f"{AHEAD_S}\n")  # the clock jumps 400 days ahead and the network goes down
        platform.set_faults(down=True)
        proc.stdin.write(f"enqueue 5 {time.time() + AHEAD_S - 3600}\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "committed"

        def failed() -> bool:  # the failing platform is probed one record at a time, oldest first
            with Outbox.open(settings.storage, readonly=True) as box:
                rows = box.list("pending", limit=10)
                tried = [r for r in rows if r.attempts >= 2 and r.next_attempt_at > time.time() + AHEAD_S - 3600]
                return len(rows) == 5 and len(tried) >= 2

        with Outbox.open(settings.storage, readonly=True) as box:
            assert min(r.created_at for r in box.list(limit=10)) > time.time() + AHEAD_S - 3600, "the clock shim works"
        wait_for(failed, 40, "records to fail, with their retry times 400 days ahead")

        step.write_text("0\n")  # NTP sets the clock right ...
        platform.set_faults(down=False)  # ... as the network comes back
        back_at = time.monotonic()

        def all_sent() -> bool:
            with Outbox.open(settings.storage, readonly=True) as box:
                return box.stats()["sent"] == 5

        wait_for(all_sent, backoff_max * 5 + 10, "every record to be delivered after the clock was set right")
        took = time.monotonic() - back_at
        # One backoff_max for the clamped retry times, plus the probing of a platform that was failing
        # (one record at a time, each at most one more backoff) and the uploader's poll.
        assert took < backoff_max * 3 + 2, f"retries came {took:.1f} s after the clock was back"
        assert sum(platform.delivered().values()) == 5
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # the worker's main thread reads it
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- housekeeping and a clock that jumped ahead -----------------------------------------------------


def test_housekeeping_erases_nothing_by_a_clock_far_past_what_the_outbox_has_seen(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import main as cli_main
    from agent.outbox import housekeeping

    cfg = write_config(
        tmp_path / "fvagent.toml",
        state_dir=tmp_path / "state",
        storage_extra="keep_sent_days = 7\nkeep_sent_rows_days = 30",
    )
    settings = load_config(cfg, validate_drivers=False)
    now = [time.time()]
    with Outbox.open(settings.storage, clock=lambda: now[0]) as box:
        rid = box.enqueue(record(1))
        box.finish(box.claim(1)[0], "accepted", message="ok", request_id="r")
        up = 3600.0  # the machine booted an hour ago; the clock now says 400 days later
        result = housekeeping(box, now[0] + AHEAD_S, uptime_s=up)
        assert result["photos_erased"] == 0 and result["rows_deleted"] == 0
        assert "past the latest time the outbox has seen" in result["alert"]
        assert box.get(rid).has_photos  # type: ignore[union-attr]
    cli_main(["status", "-c", str(cfg)])
    assert "no photo is erased" in capsys.readouterr().out
    with Outbox.open(settings.storage, clock=lambda: now[0]) as box:
        # Eight days of real uptime later, the clock is plausible: the photos go, and the alert with them.
        result = housekeeping(box, now[0] + 8 * 86400, uptime_s=8 * 86400 + up)
        assert result["photos_erased"] == 1 and result["alert"] is None
    cli_main(["status", "-c", str(cfg)])
    assert "no photo is erased" not in capsys.readouterr().out
