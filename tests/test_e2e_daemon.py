"""End to end: the real `fvagent run` process under a fake systemd.

The test binds a real AF_UNIX datagram socket and hands it to the daemon as $NOTIFY_SOCKET (with
WATCHDOG_USEC), runs `fvagent run` as a subprocess with the fake card reader cycling through the
sample cards, the fake camera over frames of the public-domain astronaut portrait, and the mock
platform on loopback, and checks: READY=1, STATUS= lines, WATCHDOG=1 pings, delivery of the
verifications to the mock platform, a SIGHUP reload (and a refused one), that a stalled loop stops
the watchdog pings (through the test-only $FVAGENT_TEST_STALL_FILE hook) and that they resume,
and a clean SIGTERM (exit 0 within 10 s).

The card reader is a fake driver installed the way a vendor adds one: a package on the daemon's
PYTHONPATH whose entry point (group ``fvagent.card_readers``) names it. It yields one card per JSON
file dropped into its directory, so the test decides when a card is tapped.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.service import samples
from tests.waiting import wait_for

pytest.importorskip("skimage", reason="the sample face comes from scikit-image (the demo extra)")

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


PLUGIN = '''
"""A fake card reader for the end-to-end test: one card per JSON file dropped into `drop_dir`."""
import datetime as dt
import json
from pathlib import Path
from typing import ClassVar

from core.card import IdCard
from drivers.base import CardReader, CardReaderSettings, DriverSettings


class DropSettings(CardReaderSettings):
    drop_dir: str
    poll_interval_s: float = 0.05


class DropReader(CardReader):
    Settings: ClassVar[type[DriverSettings]] = DropSettings
    simulated: ClassVar[bool] = True

    def describe(self):
        return f"drop reader at {self.settings.drop_dir}"

    def _open(self):
        Path(self.settings.drop_dir).mkdir(parents=True, exist_ok=True)

    def _close(self):
        pass

    def _poll_card(self):
        for path in sorted(Path(self.settings.drop_dir).glob("*.json")):
            doc = json.loads(path.read_text(encoding="utf-8"))
            path.unlink()
            date = dt.date.fromisoformat
            return IdCard(card_type="0", name=doc["name"], sex_code="2", birth_date=date(doc["birth"]),
                          card_no=doc["card_no"], valid_from=date(doc["valid_from"]),
                          valid_to=date(doc["valid_to"]) if doc["valid_to"] else None,
                          nation_code=doc["nation_code"], address=doc["address"], authority=doc["authority"],
                          photo_jpeg=Path(doc["photo"]).read_bytes(), simulated=True)
        return None
'''


def _install_plugin(root: Path) -> Path:
    """A 'vendor package' with the drop reader, found through its entry point."""
    root.mkdir(parents=True)
    (root / "fvagent_e2e_reader.py").write_text(PLUGIN, encoding="utf-8")
    dist = root / "fvagent_e2e_reader-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fvagent-e2e-reader\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[fvagent.card_readers]\ndrop = fvagent_e2e_reader:DropReader\n")
    return root


def _tap(drop: Path, person: samples.Person, photo: Path, n: int) -> None:
    doc = {
        "name": person.name,
        "birth": person.birth.isoformat(),
        "card_no": person.card_no,
        "valid_from": person.valid_from.isoformat(),
        "valid_to": person.valid_to.isoformat() if person.valid_to else None,
        "nation_code": person.nation_code,
        "address": person.address,
        "authority": person.authority,
        "photo": str(photo),
    }
    tmp = drop / f".{n:04d}.tmp"
    tmp.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    tmp.rename(drop / f"{n:04d}.json")  # appears whole


def _config(tmp_path: Path, platform: dict[str, Any], *, operator: str = "演示护士") -> dict[str, Any]:
    from agent.service.demo import demo_config

    images = samples.write_images(tmp_path / "faces")
    doc = demo_config(tmp_path, platform, images)
    doc["device"]["operator"] = operator
    doc["card_reader"] = {"driver": "drop", "drop_dir": str(tmp_path / "drop")}
    doc["face"]["capture_timeout_s"] = 1.5
    doc["logging"] = {"level": "INFO", "journald": "off"}
    return doc


@pytest.mark.slow
def test_fvagent_run_under_a_fake_systemd(tmp_path: Path, notify: NotifyListener) -> None:
    platform = _start_mock(tmp_path)
    config = tmp_path / "fvagent.toml"
    doc = _config(tmp_path, platform.section())
    config.write_text(samples.toml_text(doc), encoding="utf-8")
    config.chmod(0o600)
    stall = tmp_path / "stall"
    plugin = _install_plugin(tmp_path / "plugin")
    drop, photo = tmp_path / "drop", tmp_path / "faces" / "card-photo.jpg"
    drop.mkdir()
    env = {
        **os.environ,
        "NOTIFY_SOCKET": notify.path,
        "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6)),
        "FVAGENT_TEST_STALL_FILE": str(stall),
        "FVAGENT_TEST_HEARTBEAT_S": "4",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(plugin)]),
    }
    env.pop("WATCHDOG_PID", None)
    log = open(tmp_path / "daemon.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        # READY=1 once the outbox and drivers are up, from the main pid.
        t_ready, ready = wait_for(lambda: notify.having("READY"), 60, "READY=1")[0]
        assert ready["READY"] == "1" and ready["MAINPID"] == str(proc.pid)
        assert "queue" in ready.get("STATUS", "")
        # Watchdog pings about every WATCHDOG_S / 2 while every loop is alive.
        wait_for(lambda: len(notify.having("WATCHDOG", since=t_ready)) >= 3, 15, "three WATCHDOG=1")
        # Verifications reach the mock platform; STATUS= follows them.
        for n, person in enumerate(samples.PEOPLE[:3]):
            _tap(drop, person, photo, n)
        wait_for(lambda: len(platform.delivered()) >= 3, 60, "three deliveries to the mock platform")
        delivered_keys = {key[1] for key in platform.delivered()}  # (machineCode, cardNo, verifyTime)
        assert {p.card_no for p in samples.PEOPLE[:3]} <= delivered_keys
        wait_for(
            lambda: any(
                "verified" in m["STATUS"] and not m["STATUS"].endswith(" 0 verified")
                for _, m in notify.having("STATUS")
            ),
            15,
            "a STATUS line counting verifications",
        )
        # STATUS= carries the queue depth, the last upload and the hardware's state.
        status_line = re.compile(
            r"^queue 0, last upload \d\d:\d\d:\d\d, platform ok, reader ok, camera ok, "
            r"face ok, \d+ verified$"
        )
        wait_for(
            lambda: any(status_line.match(m["STATUS"]) for _, m in notify.having("STATUS")),
            15,
            "a STATUS line with an empty queue, the last upload's time and every device ok",
        )

        # SIGHUP: a good config is applied (RELOADING=1, then READY=1 again) ...
        config.write_text(
            samples.toml_text(_config(tmp_path, platform.section(), operator="夜班护士")), encoding="utf-8"
        )
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
        _tap(drop, samples.PEOPLE[3], photo, 10)
        wait_for(lambda: len(platform.delivered()) > delivered, 60, "a delivery after the refused reload")

        # A stalled verification loop stops the watchdog pings; they resume when it moves again.
        stall.touch()
        gap = 3 * WATCHDOG_S

        def pings_stopped() -> bool:
            pings = notify.having("WATCHDOG")
            return bool(pings) and time.monotonic() - pings[-1][0] > gap

        wait_for(pings_stopped, 30, f"no WATCHDOG=1 for {gap} s while the loop is stalled")
        assert proc.poll() is None
        # A card tapped now stays unread, and the pings stay off (a bounded check of a negative).
        t_tap = time.monotonic()
        _tap(drop, samples.PEOPLE[4], photo, 20)
        time.sleep(2 * WATCHDOG_S)
        assert list(drop.glob("*.json")), "the stalled loop read a card"
        assert not notify.having("WATCHDOG", since=t_tap)
        t_unstall = time.monotonic()
        stall.unlink()
        wait_for(lambda: notify.having("WATCHDOG", since=t_unstall), 15, "WATCHDOG=1 again after the stall")
        wait_for(
            lambda: samples.PEOPLE[4].card_no in {k[1] for k in platform.delivered()},
            60,
            "the card tapped during the stall delivered",
        )

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


@pytest.mark.slow
def test_sigterm_during_a_verification_records_it_and_exits_0(tmp_path: Path, notify: NotifyListener) -> None:
    """A real SIGTERM while a face capture is in progress (the camera gives no frame, the capture
    would last 30 s): the verification is cut short and committed, the process exits 0 within 10 s."""
    from agent.config import load_config
    from agent.outbox import Outbox

    platform = _start_mock(tmp_path)
    config = tmp_path / "fvagent.toml"
    doc = _config(tmp_path, platform.section())
    doc["face"]["capture_timeout_s"] = 30.0
    doc["camera"]["fault"] = "no_frames"
    config.write_text(samples.toml_text(doc), encoding="utf-8")
    config.chmod(0o600)
    plugin = _install_plugin(tmp_path / "plugin")
    drop, photo = tmp_path / "drop", tmp_path / "faces" / "card-photo.jpg"
    drop.mkdir()
    env = {**os.environ, "NOTIFY_SOCKET": notify.path, "PYTHONPATH": os.pathsep.join([str(ROOT), str(plugin)])}
    for name in ("WATCHDOG_USEC", "WATCHDOG_PID", "FVAGENT_TEST_STALL_FILE", "FVAGENT_TEST_HEARTBEAT_S"):
        env.pop(name, None)
    log_path = tmp_path / "daemon.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(lambda: notify.having("READY"), 60, "READY=1")
            person = samples.PEOPLE[1]
            _tap(drop, person, photo, 1)
            wait_for(lambda: not list(drop.glob("*.json")), 15, "the reader to take the card")
            # The capture has begun and would run for 30 s: stop the service in the middle of it.
            t_term = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0, log_path.read_text()[-3000:]
            assert time.monotonic() - t_term < 10
            assert notify.having("STOPPING", since=t_term)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            platform.stop()
    settings = load_config(config, validate_drivers=False)
    with Outbox.open(settings.storage) as outbox:
        assert outbox.stats()["total"] == 1
        row = outbox.list(None, limit=1)[0]
        assert "cut short" in row.meta["reason"], row.meta
        payload = outbox.payload(row.id)
    assert payload["cardNo"] == person.card_no and payload["faceResult"] == 2 and payload["faceScore"] == 0
    text = log_path.read_text()
    assert "fvagent stopped" in text and person.card_no not in text and person.name not in text
