"""Issue 16.7: SIGTERM ends `fvagent run` within the unit's TimeoutStopSec whatever a request is
doing, and the record whose upload was cut off is delivered after the restart.

A real `fvagent run` process uploads a queued record to a forged platform that trickles its reply
one byte a second (with a whole-request deadline longer than the test, so only the stop can end
it); SIGTERM comes mid-reply.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.outbox import Outbox
from tests.forged_platform import (
    ForgedPlatform,
    envelope,
    genuine,
    http_reply,
    signed_headers,
)
from tests.test_outbox_support import record
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "fvagent.service"


def _timeout_stop_s() -> float:
    match = re.search(r"^TimeoutStopSec=(\d+)", UNIT.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, "deploy/fvagent.service sets TimeoutStopSec"
    return float(match.group(1))


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def test_sigterm_during_a_trickling_reply_exits_within_timeout_stop_sec_and_the_record_is_retried(
    tmp_path: Path,
) -> None:
    from tests.forged_platform import agent_config

    budget = _timeout_stop_s()
    with ForgedPlatform() as platform:
        platform.upload = lambda req: (http_reply(200, envelope(req.request_id), signed_headers()), 1.0)
        config = tmp_path / "fvagent.toml"
        settings = agent_config(
            config,
            url=platform.url,
            state_dir=tmp_path / "state",
            timeout_s=120.0,
            extra="""
[face]
mode = "relay"

[local_api]
enabled = false

[logging]
journald = "off"
""",
        )
        config.chmod(0o600)
        with Outbox.open(settings.storage) as outbox:
            record_id = outbox.enqueue(record(1))
        log = tmp_path / "daemon.log"
        proc = _start(config, log)
        try:
            wait_for(lambda: platform.uploads(), 60, "the upload to reach the platform")
            time.sleep(1.5)  # a few bytes of the reply are in: the request is mid-read
            stopped_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(budget + 10)
            except subprocess.TimeoutExpired:
                rc = None
            took = time.monotonic() - stopped_at
            assert rc is not None and took < budget, (
                f"still running {took:.0f} s after SIGTERM (TimeoutStopSec={budget:.0f}); log:\n{log.read_text()}"
            )
            assert rc == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        with Outbox.open(settings.storage) as outbox:
            assert outbox.get(record_id).state != "sent"
        # The platform answers properly again: the restarted daemon delivers the record.
        platform.upload = genuine
        proc = _start(config, log)
        try:

            def sent() -> bool:
                with Outbox.open(settings.storage) as outbox:
                    return outbox.get(record_id).state == "sent"

            wait_for(sent, 60, "the record to be delivered after the restart", interval_s=0.5)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(budget + 10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert len(platform.uploads()) >= 2
