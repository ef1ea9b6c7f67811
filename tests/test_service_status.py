"""The typed status and the shared card read: ``Status``/``LiveStatus`` and their JSON, the platform
state from the uploader's snapshot, the page's platform text, and ``read_card`` as both the
verification loop and ``fvagent verify-once`` use it."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.localapi.backend import PLATFORM_TEXT, _page_platform
from agent.service import samples
from agent.service.hardware import DriverSlot
from agent.service.service import Service
from agent.service.supervision import CARD_RETRY_PAUSE_S, NO_READER_PAUSE_S, read_card
from agent.status import (
    DaemonState,
    LiveStatus,
    LoopView,
    Part,
    PartState,
    PlatformState,
    PlatformView,
    build_status,
    daemon_status,
    platform_view,
    read_live_status,
    status_path,
    write_status_file,
)
from core.errors import DeviceTimeout
from tests.test_service import ScriptedReader, config_doc, images, write_config  # noqa: F401 (fixture)

pytest.importorskip("skimage", reason="the sample face comes from scikit-image (the demo extra)")


def live(**changes: Any) -> LiveStatus:
    now = time.time()
    fields: dict[str, Any] = {
        "pid": os.getpid(),
        "state": DaemonState.RUNNING,
        "started_at": now - 60,
        "updated_at": now,
        "config": "fvagent.toml",
        "platform": PlatformView(PlatformState.OK, reachable=True, checked_at="2026-01-01T08:00:00+08:00"),
        "uploader": {"state": "idle", "last_success": {"at": "2026-01-01T08:00:00+08:00", "id": 3}},
        "hardware": {
            "card_reader": Part(PartState.OK, "scripted", since=now - 60, simulated=True),
            "camera": Part(PartState.FAULT, "unplugged; retrying in 4 s", since=now - 5, failures=2),
            "face_engine": Part(PartState.OFF, "relay mode: the terminal scores"),
            "wlt_decoder": Part(PartState.OFF, "none configured"),
        },
        "last_verification": {"id": 3, "result": 1},
        "verifications": 3,
        "local_api_url": None,
        "local_api_error": None,
        "loops": {"verification": LoopView(True, 0.2)},
        "alerts": ("stalled loop(s): uploader",),
    }
    fields.update(changes)
    return LiveStatus(**fields)


def test_the_status_file_reads_back_as_the_live_status_written(tmp_path: Path) -> None:
    written = live()
    write_status_file(status_path(tmp_path), written.to_json())
    assert read_live_status(tmp_path) == written


def test_a_status_file_from_another_version_reads_as_unknown_not_as_an_error(tmp_path: Path) -> None:
    path = status_path(tmp_path)
    write_status_file(path, {"pid": "x", "state": "dancing", "hardware": {"camera": {"state": "melted"}}})
    read = read_live_status(tmp_path)
    assert read is not None and read.state is DaemonState.UNKNOWN and read.pid == 0
    assert read.hardware["camera"].state is PartState.UNKNOWN and read.platform.state is PlatformState.UNKNOWN
    assert daemon_status(read, time.time()).running is False


def test_a_daemon_whose_status_is_old_is_not_responding() -> None:
    stale = daemon_status(live(updated_at=time.time() - 60), time.time())
    assert stale.running is False and "not responding" in stale.detail
    assert daemon_status(live(state=DaemonState.STOPPED), time.time()).running is False
    assert daemon_status(live(), time.time()).running is True


@pytest.mark.parametrize(
    ("snapshot", "enabled", "state", "reachable"),
    [
        ({}, True, PlatformState.UNKNOWN, None),
        ({"last_success": {"at": 10.0}}, True, PlatformState.OK, True),
        ({"last_success": {"at": 10.0}, "last_error": {"at": 20.0, "outcome": "retryable"}}, True, "down", False),
        ({"last_success": {"at": 30.0}, "last_error": {"at": 20.0, "outcome": "retryable"}}, True, "ok", True),
        ({"last_error": {"at": 20.0, "outcome": "rejected"}}, True, PlatformState.OK, True),  # it answered
        ({"registration": {"last_attempt_at": 5.0, "outcome": "retryable"}}, True, PlatformState.DOWN, False),
        ({"blocked": True, "blocked_reason": "bad key", "last_success": {"at": 1.0}}, True, "blocked", True),
        ({"last_success": {"at": 10.0}}, False, PlatformState.DISABLED, True),
    ],
)
def test_platform_state_from_the_uploaders_snapshot(
    snapshot: dict[str, Any], enabled: bool, state: str, reachable: bool | None
) -> None:
    view = platform_view(snapshot, enabled=enabled)
    assert view.state == state and view.reachable is reachable


def test_the_page_says_unknown_while_no_daemon_runs() -> None:
    assert _page_platform(PlatformState.NOT_RUNNING) is PlatformState.UNKNOWN
    assert set(PLATFORM_TEXT) == set(PlatformState) - {PlatformState.NOT_RUNNING}


def test_one_status_gives_the_json_the_status_line_and_the_text(tmp_path: Path, images: dict[str, Any]) -> None:
    settings = load_config(write_config(tmp_path / "c.toml", config_doc(tmp_path, images)), validate_drivers=False)
    status = build_status(settings, live=live())
    doc = status.to_json()
    assert doc["daemon"]["running"] is True and doc["platform"]["state"] == "ok"
    assert doc["hardware"]["camera"] == status.hardware["camera"].to_json()
    assert "stalled loop(s): uploader" in doc["alerts"] and any(a.startswith("camera:") for a in doc["alerts"])
    # relay mode: no face engine in the line
    assert status.line() == "queue 0, last upload 08:00:00, platform ok, reader ok, camera fault, 3 verified"

    gone = build_status(settings, live=live(pid=2**22 + 1))  # no such process
    assert gone.platform.state is PlatformState.NOT_RUNNING and gone.verifications == 0
    assert gone.to_json()["hardware"]["card_reader"] == {"state": "unknown", "detail": "daemon not running"}


# --------------------------------------------------------------------------------------------------
# read_card: the one card read of the loop and of verify-once


class RaisingReader(ScriptedReader):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def _poll_card(self) -> Any:
        raise self.error


def slot_over(reader: ScriptedReader) -> DriverSlot[Any]:
    return DriverSlot("card_reader", lambda: reader, label="card reader (scripted)")


def test_a_card_that_cannot_be_read_pauses_and_leaves_the_reader_healthy() -> None:
    reader = ScriptedReader()
    reader.failing_reads = 1
    slot, pauses = slot_over(reader), []
    assert read_card(slot, 0.1, pauses.append) is None
    assert pauses == [CARD_RETRY_PAUSE_S] and slot.healthy


@pytest.mark.parametrize("error", [DeviceTimeout("no answer", device="scripted"), RuntimeError("driver bug")])
def test_a_reader_that_fails_is_a_fault_of_its_slot_never_an_exception(error: BaseException) -> None:
    slot, pauses = slot_over(RaisingReader(error)), []
    assert read_card(slot, 0.1, pauses.append) is None
    assert not slot.healthy and pauses == []
    assert read_card(slot, 0.1, pauses.append) is None  # not due to reopen yet: a pause, no read
    assert pauses == [NO_READER_PAUSE_S]


def test_verify_once_reads_past_a_bad_read_as_the_loop_does(tmp_path: Path, images: dict[str, Any]) -> None:
    path = write_config(tmp_path / "c.toml", config_doc(tmp_path, images))
    settings = load_config(path, validate_drivers=False)
    reader = ScriptedReader()
    reader.failing_reads = 1
    reader.present(
        samples.sample_card(samples.PEOPLE[1], samples.card_photo_jpeg(), terminal_score=0.95, terminal_result=1)
    )
    done = Service(settings, config_path=path, reader=reader, start_local_api=False).verify_once(5.0)
    assert done is not None and done.outbox_id == 1 and len(reader.failed_at) == 1
