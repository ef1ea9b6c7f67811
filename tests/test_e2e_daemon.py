"""End to end: the real `fvagent run` process under a fake systemd.

The test binds a real AF_UNIX datagram socket and hands it to the daemon as $NOTIFY_SOCKET (with
WATCHDOG_USEC), runs `fvagent run` as a subprocess with the fake card reader cycling through the
sample cards, the fake camera over frames of the public-domain astronaut portrait, and the mock
platform on loopback, and checks: READY=1, STATUS= lines, WATCHDOG=1 pings, delivery of the
verifications to the mock platform, a SIGHUP reload (and a refused one), that a stalled loop stops
the watchdog pings (through the test-only $FVAGENT_TEST_STALL_FILE hook) and that they resume,
and a clean SIGTERM (exit 0 within 10 s).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.service import samples
from agent.service.demo import write_sample_cards, _fake_reader_options

pytest.importorskip("skimage", reason="the sample face comes from scikit-image (the demo extra)")
mock_platform = pytest.importorskip("agent.mock_platform", reason="the mock platform (issue 2) is not there yet")
pytest.importorskip("drivers.card_reader.fake", reason="the fake card reader (issue 4) is not there yet")

ROOT = Path(__file__).resolve().parents[1]
WATCHDOG_S = 1.0


class NotifyListener:
    """The fake systemd: collects (time, {field: value}) for every datagram on the socket."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="fve")  # AF_UNIX paths are short: not pytest's tmp_path
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self.lock:
                self.messages.append((time.monotonic(), fields))

    def having(self, key: str, since: float = 0.0) -> list[tuple[float, dict[str, str]]]:
        with self.lock:
            return [(t, m) for t, m in self.messages if key in m and t >= since]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture
def notify() -> Iterator[NotifyListener]:
    listener = NotifyListener()
    yield listener
    listener.close()


def _start_mock(tmp_path: Path) -> Any:
    from agent.service.demo import _Platform

    platform = _Platform(tmp_path)
    platform.start()
    return platform


def _config(tmp_path: Path, platform_url: str, *, operator: str = "演示护士") -> dict[str, Any]:
    from agent.service.demo import demo_config

    images = samples.write_images(tmp_path / "faces")
    card_dir = tmp_path / "cards"
    write_sample_cards(card_dir, images["card"])
    doc = demo_config(tmp_path, platform_url, images, card_dir=card_dir)
    doc["device"]["operator"] = operator
    doc["card_reader"].update(_fake_reader_options(card_dir))
    doc["face"]["capture_timeout_s"] = 1.5
    doc["logging"] = {"level": "INFO", "journald": "off"}
    return doc


@pytest.mark.slow
def test_fvagent_run_under_a_fake_systemd(tmp_path: Path, notify: NotifyListener) -> None:
    platform = _start_mock(tmp_path)
    config = tmp_path / "fvagent.toml"
    doc = _config(tmp_path, platform.url)
    config.write_text(samples.toml_text(doc), encoding="utf-8")
    config.chmod(0o600)
    stall = tmp_path / "stall"
    env = {**os.environ, "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6)),
           "FVAGENT_TEST_STALL_FILE": str(stall), "FVAGENT_TEST_HEARTBEAT_S": "4",
           "PYTHONPATH": str(ROOT)}
    env.pop("WATCHDOG_PID", None)
    log = open(tmp_path / "daemon.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        # READY=1 once the outbox and drivers are up, from the main pid.
        t_ready, ready = wait_for(lambda: notify.having("READY"), 60, "READY=1")[0]
        assert ready["READY"] == "1" and ready["MAINPID"] == str(proc.pid)
        assert "queue" in ready.get("STATUS", "")
        # Watchdog pings about every WATCHDOG_S / 2 while every loop is alive.
        wait_for(lambda: len(notify.having("WATCHDOG", since=t_ready)) >= 3, 15, "three WATCHDOG=1")
        # Verifications reach the mock platform; STATUS= follows them.
        wait_for(lambda: len(platform.delivered()) >= 2, 60, "two deliveries to the mock platform")
        wait_for(lambda: any("verified" in m["STATUS"] and not m["STATUS"].endswith(" 0 verified")
                             for _, m in notify.having("STATUS")), 15, "a STATUS line counting verifications")

        # SIGHUP: a good config is applied (RELOADING=1, then READY=1 again) ...
        config.write_text(samples.toml_text(_config(tmp_path, platform.url, operator="夜班护士")), encoding="utf-8")
        t_hup = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: notify.having("RELOADING", since=t_hup), 15, "RELOADING=1")
        wait_for(lambda: notify.having("READY", since=t_hup), 15, "READY=1 after the reload")
        # ... a bad one is refused and the daemon keeps running on the old one.
        config.write_text("[device]\nmachine_code = 1\n", encoding="utf-8")
        t_bad = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: notify.having("READY", since=t_bad), 15, "READY=1 after the refused reload")
        assert proc.poll() is None
        wait_for(lambda: "reload refused" in (tmp_path / "daemon.log").read_text(), 10, "the refusal in the log")
        delivered = len(platform.delivered())
        wait_for(lambda: len(platform.delivered()) > delivered, 60, "more deliveries after the refused reload")

        # A stalled verification loop stops the watchdog pings; they resume when it moves again.
        stall.touch()
        gap = 3 * WATCHDOG_S

        def pings_stopped() -> bool:
            pings = notify.having("WATCHDOG")
            return bool(pings) and time.monotonic() - pings[-1][0] > gap
        wait_for(pings_stopped, 30, f"no WATCHDOG=1 for {gap} s while the loop is stalled")
        assert proc.poll() is None
        t_unstall = time.monotonic()
        stall.unlink()
        wait_for(lambda: notify.having("WATCHDOG", since=t_unstall), 15, "WATCHDOG=1 again after the stall")

        # SIGTERM: exit 0 within 10 s, STOPPING=1 sent.
        t_term = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - t_term < 10
        assert notify.having("STOPPING", since=t_term)
        text = (tmp_path / "daemon.log").read_text()
        for person in samples.PEOPLE:  # nothing personal in the log
            assert person.card_no not in text and person.name not in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        log.close()
        platform.stop()
