"""The daemon in-process: verifications committed before they are reported, delivered, degraded
hardware, held records, reload, stop within 10 s, status.

The card reader is a scripted ``CardReader`` defined here (the test hands it cards); the camera is
the registered ``fake`` driver over images made from the public-domain astronaut portrait; the
platform answers through ``httpx.MockTransport``; the outbox is a real SQLite file.
"""

from __future__ import annotations

import base64
import collections
import itertools
import json
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from agent.config import load_config
from agent.events import VERIFICATION
from agent.service import samples
from agent.service.notify import Notifier
from agent.service.service import CARD_RETRY_PAUSE_S, Heartbeat, Service
from agent.service.verification import HELD_INVALID, HELD_NO_DECODER, Verifier
from agent.status import collect_status, format_status
from core.errors import CardReadError, DeviceNotFound
from core.privacy import mask_name
from drivers.base import CardReader, CardReaderSettings, DriverSettings
from drivers.card_reader.simulator import SYNTHETIC_WLT
from tests.test_card_wlt import SHIM as WLT_SHIM
from tests.waiting import wait_for

pytest.importorskip("skimage", reason="the sample face comes from scikit-image (the demo extra)")

NOW_MS = int(time.time() * 1000)


class ScriptedReader(CardReader):
    """A card reader the test drives: ``present(card)`` puts a card in the field; ``unplug()`` /
    ``replug()`` make it vanish and come back."""

    Settings: ClassVar[type[DriverSettings]] = CardReaderSettings
    simulated: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__(CardReaderSettings(poll_interval_s=0.02), name="scripted")
        self.cards: collections.deque[Any] = collections.deque()
        self.gone = False
        self.failing_reads = 0
        self.failed_at: list[float] = []

    def present(self, card: Any) -> None:
        self.cards.append(card)

    def unplug(self) -> None:
        self.gone = True

    def replug(self) -> None:
        self.gone = False

    def _open(self) -> None:
        if self.gone:
            raise DeviceNotFound("scripted reader unplugged", device="scripted")

    def _close(self) -> None:
        pass

    def _poll_card(self) -> Any:
        if self.gone:
            raise DeviceNotFound("scripted reader unplugged", device="scripted")
        if self.failing_reads:
            self.failing_reads -= 1
            self.failed_at.append(time.monotonic())
            raise CardReadError("scripted read failed", device="scripted")
        return self.cards.popleft() if self.cards else None


class Platform:
    """MockTransport handler: accepts everything, or fails with a connection error while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.uploads: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        body = json.loads(request.content)
        if request.url.path.endswith("/verification/pregnant_woman/first"):
            with self.lock:
                self.uploads.append(body)
        return httpx.Response(
            200,
            json={
                "code": 200,
                "msg": "成功",
                "exceptionCode": "00000",
                "requestId": request.headers["hmpt-portal-request-id"],
                "returnTime": int(time.time() * 1000),
                "data": None,
            },
        )


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return samples.write_images(tmp_path_factory.mktemp("faces"))


def config_doc(tmp_path: Path, images: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "device": {
            "machine_code": "TEST-0001",
            "device_no": "0001",
            "manufacturer": "测试厂商",
            "model": "T-1",
            "purchase_date": "2024-06-01",
            "dept_id": "0601",
            "dept_name": "妇产科",
            "register_user": "测试员",
            "operator": "测试",
        },
        "platform": {
            "base_url": "http://127.0.0.1:9/api",
            "org_app_id": "APP",
            "org_app_secret": "0123456789abcdef",
            "timeout_s": 2.0,
            "auth": {"kind": "static", "ticket": "T"},
            "environment": "test",
            "allow_plain_http": True,
        },
        "storage": {"dir": str(tmp_path / "state")},
        "uploader": {"backoff_initial_s": 0.05, "backoff_max_s": 0.2, "poll_interval_s": 0.05, "max_rps": 200.0},
        "card_reader": {"driver": "fake"},
        "camera": {"driver": "fake", "images": [str(p) for p in images["live"]], "fps": 0},
        "face": {"mode": "relay", "capture_timeout_s": 3.0},
        "local_api": {"enabled": False},
    }
    for name, values in sections.items():
        doc[name] = {**doc.get(name, {}), **values}
    return doc


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(samples.toml_text(doc), encoding="utf-8")
    path.chmod(0o600)
    return path


PRIVATE_NAMES = [person.name for person in samples.PEOPLE] + ["张" * 11]
"""Every name a test here reads from a card (the sample people, the over-long name)."""


def assert_logs_hold_no_personal_data(records: list[logging.LogRecord]) -> None:
    """No card number or name, unmasked, in any message or traceback (checked before the masking
    filter of agent.logsetup, which only catches numbers: the code must mask them itself)."""
    text = "\n".join(f"{r.getMessage()}\n{r.exc_text or ''}" for r in records)
    for person in samples.PEOPLE:
        assert person.card_no not in text, f"unmasked card number of {mask_name(person.name)} in the log"
    for name in PRIVATE_NAMES:
        assert name not in text, f"unmasked name {mask_name(name)} in the log"


@pytest.fixture
def run_service(
    tmp_path: Path, images: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> Iterator[Callable[..., tuple[Service, ScriptedReader, Platform]]]:
    caplog.set_level(logging.DEBUG)  # every daemon path of every test here: nothing personal logged
    started: list[Service] = []

    def start(doc: dict[str, Any] | None = None, **kw: Any) -> tuple[Service, ScriptedReader, Platform]:
        path = write_config(tmp_path / "fvagent.toml", doc or config_doc(tmp_path, images))
        settings = load_config(path, validate_drivers=False)
        reader, platform = ScriptedReader(), Platform()
        service = Service(
            settings,
            config_path=path,
            reader=reader,
            transport=httpx.MockTransport(platform),
            notifier=Notifier(backend="socket", environ={}),
            **kw,
        )
        service.start()
        started.append(service)
        return service, reader, platform

    yield start
    for service in started:
        if service._state != "stopped":
            service.stop()
    assert_logs_hold_no_personal_data(
        [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    )  # records: teardown's


def card(i: int = 0, *, photo: bytes | None = None, **kw: Any) -> Any:
    person = samples.PEOPLE[i]
    return samples.sample_card(person, photo if photo is not None else samples.card_photo_jpeg(), **kw)


# --------------------------------------------------------------------------------------------------


def test_relay_verification_is_committed_announced_and_delivered(run_service: Any) -> None:
    service, reader, platform = run_service()
    sub = service.events.subscribe()
    reader.present(card(0, terminal_score=0.91, terminal_result=1))
    event = wait_for(lambda: sub.get(0.1), what="the verification event")
    assert event.kind == VERIFICATION
    data = event.data
    assert data["result"] == 1 and data["score"] == 0.91 and data["reason"] is None
    person = samples.PEOPLE[0]
    assert data["cardNo"] == person.card_no[:4] + "*" * 10 + person.card_no[-4:]
    assert person.name not in json.dumps(data, ensure_ascii=False)
    row = service.outbox.get(data["id"])
    assert row is not None and row.simulated  # committed before the event, marked as fake data
    wait_for(lambda: platform.uploads, what="the upload")
    sent = platform.uploads[0]
    assert sent["cardNo"] == person.card_no and sent["faceScore"] == 0.91 and sent["faceResult"] == 1
    assert sent["operationUser"] == "测试" and sent["machineCode"] == "TEST-0001"
    assert base64.b64decode(sent["cameraImg"])[:2] == b"\xff\xd8"  # one camera frame for cameraImg
    wait_for(lambda: service.outbox.stats()["sent"] == 1, what="state sent")
    status = service.status()
    doc = status.to_json()
    assert doc["daemon"]["running"] and doc["queue"]["sent"] == 1
    assert doc["platform"]["reachable"] is True and doc["platform"]["state"] == "ok"
    assert doc["hardware"]["card_reader"]["state"] == "ok" and doc["hardware"]["face_engine"]["state"] == "off"
    assert doc["last_verification"]["id"] == data["id"]
    text = format_status(status)
    assert "daemon:       running" in text and "1 sent" in text and person.card_no not in text


def test_operator_from_the_desk_is_stamped(run_service: Any) -> None:
    service, reader, platform = run_service()
    service.operator.set("李护士")
    reader.present(card(1, terminal_score=0.5, terminal_result=0))
    wait_for(lambda: platform.uploads, what="the upload")
    assert platform.uploads[0]["operationUser"] == "李护士"
    assert platform.uploads[0]["faceResult"] == 0


def test_compute_mode_scores_and_a_camera_without_face_gives_result_2(
    run_service: Any, tmp_path: Path, images: dict[str, Any]
) -> None:
    doc = config_doc(tmp_path, images, face={"mode": "compute", "capture_timeout_s": 1.5})
    service, reader, platform = run_service(doc)
    reader.present(card(0))
    wait_for(lambda: len(platform.uploads) == 1, what="first upload")
    assert platform.uploads[0]["faceResult"] == 1 and platform.uploads[0]["faceScore"] >= 0.9

    # SIGHUP's work: the camera now sees no face.
    doc["camera"]["images"] = [str(images["no_face"])]
    write_config(tmp_path / "fvagent.toml", doc)
    assert service.reload()
    reader.present(card(5))
    wait_for(lambda: len(platform.uploads) == 2, what="second upload")
    second = platform.uploads[1]
    assert second["faceResult"] == 2 and second["faceScore"] == 0
    row = service.outbox.get(service.last_verification.outbox_id)
    assert "no usable frame" in row.meta["reason"] and "no face" in row.meta["reason"]


def test_a_bad_config_on_reload_keeps_the_running_one(
    run_service: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service, reader, platform = run_service()
    before = service.settings
    (tmp_path / "fvagent.toml").write_text("[device]\nmachine_code = 5\n", encoding="utf-8")
    assert service.reload() is False
    assert service.settings is before
    assert any("reload refused" in r.getMessage() for r in caplog.records)
    assert any("last reload refused" in a for a in service.status().alerts)
    reader.present(card(2, terminal_score=0.8, terminal_result=1))
    wait_for(lambda: platform.uploads, what="an upload after the refused reload")


def test_failed_card_reads_pause_the_loop_instead_of_spinning(run_service: Any) -> None:
    # A driver that raises CardReadError on every poll (a vendor bug, a card the SAM cannot read)
    # must not turn the verification loop into a busy loop that floods the log.
    service, reader, platform = run_service()
    reader.failing_reads = 3
    wait_for(lambda: len(reader.failed_at) == 3, what="three failed reads", timeout_s=10)
    gaps = [b - a for a, b in zip(reader.failed_at, reader.failed_at[1:])]
    assert min(gaps) >= CARD_RETRY_PAUSE_S * 0.9, gaps
    reader.present(card(4, terminal_score=0.8, terminal_result=1))  # then the card reads, and goes up
    wait_for(lambda: platform.uploads, what="upload after the failed reads")


def test_a_hung_upload_loop_is_a_stalled_loop(run_service: Any) -> None:
    # The uploader's thread stays alive while its loop hangs (here: a lock that never comes); the
    # watchdog must see that, not just a live thread.
    service, reader, platform = run_service(heartbeat_max_age_s=1.0)
    hang = threading.Event()
    service.uploader._flush_unrecorded = lambda: hang.wait() and False
    try:
        wait_for(lambda: "uploader" in service.stale_loops(), what="the hung uploader reported stale")
        assert service._uploader_thread.alive
        assert any("uploader" in a for a in service.status().alerts)
    finally:
        hang.set()
    wait_for(lambda: "uploader" not in service.stale_loops(), what="the uploader beating again")


def test_unplugged_reader_degrades_and_recovers(run_service: Any) -> None:
    service, reader, platform = run_service()
    reader.unplug()
    wait_for(lambda: service.status().hardware["card_reader"].state == "fault", what="reader fault")
    doc = service.status().to_json()
    assert "unplugged" in doc["hardware"]["card_reader"]["detail"]
    assert any(a.startswith("card_reader:") for a in doc["alerts"])
    assert "reader fault" in service.status_line()
    reader.replug()
    wait_for(lambda: service.reader_slot.healthy and service.reader_slot.opens >= 2, what="reader reopened")
    reader.present(card(3, terminal_score=0.77, terminal_result=1))
    wait_for(lambda: platform.uploads, what="upload after recovery")
    assert all(loop.thread.is_alive() for loop in service._loops.values())


def test_camera_gone_still_records_result_2_with_a_placeholder(
    run_service: Any, tmp_path: Path, images: dict[str, Any]
) -> None:
    doc = config_doc(
        tmp_path, images, face={"mode": "compute"}, camera={"fault": "disappears", "fault_after_frames": 0}
    )
    service, reader, platform = run_service(doc)
    reader.present(card(0))
    wait_for(lambda: platform.uploads, what="upload")
    sent = platform.uploads[0]
    assert sent["faceResult"] == 2
    row = service.outbox.get(service.last_verification.outbox_id)
    assert row.meta.get("camera_placeholder") is True
    assert service.status().hardware["camera"].state == "fault"


def test_platform_outage_queues_then_drains(run_service: Any) -> None:
    service, reader, platform = run_service()
    platform.down = True
    for i in range(3):
        reader.present(card(i, terminal_score=0.9, terminal_result=1))
    wait_for(
        lambda: (
            service.outbox.stats()["pending"] + service.outbox.stats()["sending"] == 3 and service.verifications == 3
        ),
        what="three queued",
    )
    wait_for(lambda: service.status().platform.state == "down", what="platform down in status")
    platform.down = False
    wait_for(lambda: service.outbox.stats()["sent"] == 3, what="drained", timeout_s=20)
    assert len({u["cardNo"] for u in platform.uploads}) == 3


def test_card_without_decoded_photo_is_held_then_released(
    run_service: Any, tmp_path: Path, images: dict[str, Any]
) -> None:
    doc = config_doc(tmp_path, images, face={"mode": "compute"})
    service, reader, platform = run_service(doc)
    wlt = b"WLT" + bytes(1021)
    reader.present(card(1, photo=b"", photo_wlt=wlt))
    row = wait_for(lambda: service.outbox.list("held", limit=1), what="held row")[0]
    assert row.held_reason == HELD_NO_DECODER
    assert service.outbox.raw_wlt(row.id) == wlt
    assert "headImg" not in service.outbox.payload(row.id)
    assert service.status().to_json()["queue"]["held"] == 1
    assert not platform.uploads

    # A decoder arrives (here a stand-in that returns the card photo): the record is completed,
    # scored against the stored live photo, and sent.
    photo = images["card"].read_bytes()
    service.verifier.decoder = lambda data: photo if data == wlt else b""
    assert service.release_held() == 1
    wait_for(lambda: platform.uploads, what="upload of the released record")
    sent = platform.uploads[0]
    assert base64.b64decode(sent["headImg"])[:2] == b"\xff\xd8"
    assert sent["faceResult"] == 1


def test_a_reload_that_names_a_wlt_decoder_releases_the_held_records(
    run_service: Any, tmp_path: Path, images: dict[str, Any]
) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "the test setup installs a C compiler (deploy/system-deps.sh test)"
    (tmp_path / "shim.c").write_text(WLT_SHIM)
    decoder = tmp_path / "libshim.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(decoder), str(tmp_path / "shim.c")], check=True)
    doc = config_doc(tmp_path, images)  # relay: the terminal's score, so the shim's picture needs no face
    service, reader, platform = run_service(doc)
    reader.present(card(1, photo=b"", photo_wlt=SYNTHETIC_WLT, terminal_score=0.9, terminal_result=1))
    wait_for(lambda: service.outbox.list("held", limit=1), what="held row")
    assert not platform.uploads

    # The technician adds the vendor's library to the config and reloads (SIGHUP): nothing else.
    doc["card_reader"] = {**doc["card_reader"], "wlt_decoder": str(decoder)}
    write_config(tmp_path / "fvagent.toml", doc)
    assert service.reload() is True
    wait_for(lambda: platform.uploads, what="upload of the released record", timeout_s=15)
    assert service.outbox.stats()["held"] == 0
    assert base64.b64decode(platform.uploads[0]["headImg"])[:3] == b"\xff\xd8\xff"


def test_card_data_breaking_the_spec_is_kept_held(run_service: Any) -> None:
    service, reader, platform = run_service()
    reader.present(card(0, name="张" * 11, terminal_score=0.9, terminal_result=1))
    row = wait_for(lambda: service.outbox.list("held", limit=1), what="held row")[0]
    assert row.held_reason.startswith(HELD_INVALID) and "realName" in row.held_reason
    held = service.outbox.payload(row.id)
    assert held["realName"] == "张" * 11  # kept as read, for a technician
    # mapped like a valid record (core.records.verification_fields): only the rules were not met
    assert held["sexName"] and held["nationalName"] and held["certTimeoutStatus"] in (0, 1)


def test_stop_cuts_a_capture_short_and_still_records(run_service: Any, tmp_path: Path, images: dict[str, Any]) -> None:
    doc = config_doc(
        tmp_path, images, face={"mode": "compute", "capture_timeout_s": 30.0}, camera={"fault": "no_frames"}
    )
    service, reader, platform = run_service(doc)
    reader.present(card(0))
    wait_for(lambda: not reader.cards, what="card taken")
    time.sleep(0.3)  # let the capture begin (it would last 30 s)
    started = time.monotonic()
    service.stop()
    assert time.monotonic() - started < 10
    assert service.verifications == 1
    assert "cut short" in service.last_verification.reason
    from agent.outbox import Outbox

    with Outbox.open(service.settings.storage) as outbox:
        assert outbox.stats()["total"] == 1
        row = outbox.get(service.last_verification.outbox_id)
        assert row is not None and row.meta["reason_code"] == "capture_stopped"  # the page says the stop was why


def test_status_without_daemon_says_so(tmp_path: Path, images: dict[str, Any]) -> None:
    settings = load_config(write_config(tmp_path / "c.toml", config_doc(tmp_path, images)), validate_drivers=False)
    doc = collect_status(settings).to_json()
    assert doc["daemon"]["running"] is False and "daemon not running" in doc["daemon"]["detail"]
    assert doc["hardware"]["card_reader"]["detail"] == "daemon not running"
    assert doc["queue"]["total"] == 0 and "error" not in doc["queue"]
    assert doc["alerts"][0].startswith("daemon not running")


def test_status_file_reports_a_stopped_daemon(run_service: Any, tmp_path: Path) -> None:
    service, reader, platform = run_service()
    settings = service.settings
    assert collect_status(settings).running is True  # from the status file, another reader
    service.stop()
    doc = collect_status(settings).to_json()
    assert doc["daemon"]["running"] is False and doc["daemon"]["state"] == "stopped"


def test_local_api_status_is_the_status_document(run_service: Any, tmp_path: Path, images: dict[str, Any]) -> None:
    doc = config_doc(tmp_path, images, local_api={"enabled": True, "listen": "127.0.0.1:0"})
    service, reader, platform = run_service(doc)
    reader.present(card(4, terminal_score=0.93, terminal_result=1))
    wait_for(lambda: service.verifications == 1, what="verification")
    body = httpx.get(service.local_api.url + "/v1/status", timeout=5).json()
    assert body["daemon"]["running"] is True
    assert set(body) >= {"queue", "platform", "hardware", "last_verification", "alerts"}
    assert body["last_verification"]["id"] is not None


def test_heartbeat_freshness() -> None:
    now = [100.0]
    hb = Heartbeat("x", 5.0, clock=lambda: now[0])
    assert hb.fresh
    now[0] += 6
    assert not hb.fresh
    hb.beat()
    assert hb.fresh and hb.age_s == 0


def test_verifier_reports_a_failing_outbox_without_raising(tmp_path: Path, images: dict[str, Any]) -> None:
    from core.errors import StorageFull

    class FullOutbox:
        def enqueue(self, *a: Any, **kw: Any) -> int:
            raise StorageFull("disk full")

    settings = load_config(write_config(tmp_path / "c.toml", config_doc(tmp_path, images)), validate_drivers=False)
    verifier = Verifier(settings, FullOutbox(), camera=lambda: None, engine=lambda: None, operator=lambda: "x")
    done = verifier.verify(card(0, terminal_score=0.9, terminal_result=1))
    assert done.outbox_id is None and "disk full" in (done.error or "")


def test_face_engine_unavailable_still_records_result_2(
    run_service: Any, tmp_path: Path, images: dict[str, Any]
) -> None:
    doc = config_doc(tmp_path, images, face={"mode": "compute", "engine": "no-such-engine"})
    service, reader, platform = run_service(doc)
    assert all(loop.thread.is_alive() for loop in service._loops.values())  # degraded, not crashed
    engine = service.status().to_json()["hardware"]["face_engine"]
    assert engine["state"] == "fault" and "no-such-engine" in engine["detail"]
    assert "face fault" in service.status_line()
    reader.present(card(0))
    wait_for(lambda: platform.uploads, what="the upload of the unscored verification")
    sent = platform.uploads[0]
    assert sent["faceResult"] == 2 and sent["faceScore"] == 0
    assert base64.b64decode(sent["cameraImg"])[:2] == b"\xff\xd8"  # a real frame, not the placeholder
    row = service.outbox.get(service.last_verification.outbox_id)
    assert row.meta["reason"].startswith("face engine unavailable") and not row.meta.get("camera_placeholder")


class FlakyDriver:
    """A driver whose ``open()`` fails while ``broken``; counts the attempts."""

    simulated = False  # as every Driver says

    def __init__(self) -> None:
        self.broken = True
        self.is_open = False
        self.attempts = 0

    def open(self) -> None:
        self.attempts += 1
        if self.broken:
            raise DeviceNotFound("flaky device unplugged", device="flaky")
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    def describe(self) -> str:
        return "flaky device"


def test_driver_slot_reopens_with_doubling_backoff_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    from agent.service.hardware import DriverSlot

    now = [1000.0]
    driver = FlakyDriver()
    slot = DriverSlot(
        "camera", lambda: driver, label="camera (flaky)", clock=lambda: now[0], backoff_initial_s=1.0, backoff_max_s=4.0
    )
    caplog.set_level(logging.DEBUG, logger="agent.service.hardware")
    assert slot.get() is None and driver.attempts == 1  # the first open fails
    state = slot.state()
    assert state.state == "fault" and "unplugged" in (state.detail or "")
    tried_at = [now[0]]
    while len(tried_at) < 6:  # poll as the loop does; a try happens only when due
        now[0] += 0.5
        attempts = driver.attempts
        assert slot.get() is None
        if driver.attempts > attempts:
            tried_at.append(now[0])
    delays = [b - a for a, b in itertools.pairwise(tried_at)]
    assert delays == [1.0, 2.0, 4.0, 4.0, 4.0]  # doubling from 1 s, capped
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "camera (flaky) unavailable" in warnings[0].getMessage()

    driver.broken = False
    now[0] += 4.0
    assert slot.get() is driver and slot.healthy and slot.state().state == "ok"
    assert any("recovered" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    # a fault in use starts a new episode at the initial delay, with one new warning
    slot.fault(OSError("read failed"))
    assert not driver.is_open and slot.get() is None
    now[0] += 1.0
    assert slot.get() is driver
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


def test_a_local_clock_far_from_the_platforms_is_an_alert_and_kept_beside_each_verification(run_service: Any) -> None:
    service, reader, platform = run_service()
    wait_for(lambda: platform.uploads == [] and service.uploader is not None, what="the uploader")
    now = time.time()
    # the platform said 时间戳过期 with its time: 400 days behind ours
    service.uploader.platform_clock.observe(now - 400 * 86400, now, now, expired=True)
    alerts = service.status().alerts
    assert any("max_clock_offset_s" in a and "timedatectl" in a for a in alerts), alerts
    assert service._housekeeping_now() < time.time() - 399 * 86400  # retention never erases by the clock ahead
    reader.present(card(0, terminal_score=0.91, terminal_result=1))
    wait_for(lambda: service.last_verification is not None, what="the verification")
    row = service.outbox.get(service.last_verification.outbox_id)
    assert row.meta["clock_offset_s"] == pytest.approx(-400 * 86400, abs=5)
