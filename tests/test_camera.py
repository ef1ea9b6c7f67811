"""Camera drivers: the contract every camera keeps, the fake's frames and faults, and the OpenCV
camera over a real cv2.VideoCapture reading an MJPG video written here."""

from __future__ import annotations

import functools
import http.server
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.errors import ConfigError, DeviceNotFound, DeviceTimeout, DriverError
from drivers import registry
from drivers.base import Camera
from tests.waiting import wait_for

cv2 = pytest.importorskip("cv2")


def grey_images(tmp_path: Path, levels: list[int], size: tuple[int, int] = (64, 48)) -> list[str]:
    paths = []
    for i, level in enumerate(levels):
        path = tmp_path / f"frame{i}.png"
        Image.new("RGB", size, (level, level, level)).save(path)
        paths.append(str(path))
    return paths


def write_video(path: Path, levels: list[int], size: tuple[int, int] = (160, 120)) -> Path:
    """An MJPG .avi whose frame i is a flat grey of levels[i] (MJPG keeps flat greys within a few levels)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, size)
    assert writer.isOpened(), "this OpenCV build cannot write MJPG"
    for level in levels:
        writer.write(np.full((size[1], size[0], 3), level, dtype=np.uint8))
    writer.release()
    return path


def level(frame: np.ndarray) -> int:
    return round(float(frame.mean()))


LEVELS = [20 + 10 * i for i in range(12)]


# -- the contract, for every registered camera ------------------------------------------------------


@pytest.fixture(params=["fake", "opencv"])
def any_camera(request: pytest.FixtureRequest, tmp_path: Path) -> Camera:
    if request.param == "fake":
        options: dict[str, Any] = {"images": grey_images(tmp_path, [50, 100]), "fps": 0}
    else:
        options = {"device": str(write_video(tmp_path / "v.avi", LEVELS)), "warmup_frames": 0}
    camera = registry.create("camera", request.param, options)
    assert isinstance(camera, Camera)
    return camera


def test_registry_lists_both_cameras() -> None:
    assert {"fake", "opencv"} <= set(registry.available("camera"))


def test_camera_contract(any_camera: Camera) -> None:
    assert "closed" in repr(any_camera)
    with pytest.raises(DriverError, match="not open"):
        any_camera.read_frame(0.5)
    with any_camera as cam:
        assert "open" in repr(cam) and cam.describe() in repr(cam)
        frame = cam.read_frame(2.0)
        assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
        assert cam.probe().ok
    assert not any_camera.is_open
    any_camera.close()  # idempotent


def test_unknown_camera_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        registry.validate_settings("camera", "fake", {"imagez": []})
    assert any(path == "imagez" for path, _ in info.value.problems)
    with pytest.raises(ConfigError, match="images or video"):
        registry.validate_settings("camera", "fake", {"images": ["a.jpg"], "video": "b.avi"})
    with pytest.raises(ConfigError):
        registry.validate_settings("camera", "opencv", {"fourcc": "MJPEG"})
    with pytest.raises(ConfigError) as info:  # the backoff curve's rule, said where the setting is
        registry.validate_settings("camera", "opencv", {"reopen_backoff_initial_s": 5, "reopen_backoff_max_s": 2})
    assert any(path == "reopen_backoff_max_s" for path, _ in info.value.problems), info.value.problems


# -- fake camera --------------------------------------------------------------------------------


def test_fake_plays_images_in_order_and_loops(tmp_path: Path) -> None:
    cam = registry.create("camera", "fake", {"images": grey_images(tmp_path, [10, 60, 110]), "fps": 0})
    with cam:
        assert [level(cam.read_frame(1.0)) for _ in range(7)] == [10, 60, 110, 10, 60, 110, 10]
        assert cam.simulated
        assert "SIMULATED" in cam.probe().detail


def test_fake_expands_a_folder_and_centres_on_a_canvas(tmp_path: Path) -> None:
    grey_images(tmp_path, [200], size=(1000, 100))
    cam = registry.create("camera", "fake", {"images": [str(tmp_path)], "fps": 0, "frame_size": [640, 480]})
    with cam:
        frame = cam.read_frame(1.0)
    assert frame.shape == (480, 640, 3)
    assert frame[240, 320, 0] == 200  # the image, scaled down to 640 wide, centred
    assert frame[5, 5, 0] == 128  # the grey canvas around it


def test_fake_without_loop_runs_dry(tmp_path: Path) -> None:
    cam = registry.create("camera", "fake", {"images": grey_images(tmp_path, [10]), "fps": 0, "loop": False})
    with cam:
        cam.read_frame(1.0)
        t0 = time.monotonic()
        with pytest.raises(DeviceTimeout):
            cam.read_frame(0.2)
        assert 0.15 <= time.monotonic() - t0 < 2.0


def test_fake_paces_frames_at_its_fps(tmp_path: Path) -> None:
    cam = registry.create("camera", "fake", {"images": grey_images(tmp_path, [10]), "fps": 20})
    with cam:
        t0 = time.monotonic()
        for _ in range(5):
            cam.read_frame(1.0)
        assert time.monotonic() - t0 >= 4 * 0.05 * 0.9  # four intervals at least between five frames


def test_fake_plays_a_video_file(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.avi", [40, 140, 240])
    cam = registry.create("camera", "fake", {"video": str(video), "fps": 0})
    with cam:
        got = [level(cam.read_frame(1.0)) for _ in range(4)]
    assert [abs(g - want) <= 4 for g, want in zip(got, [40, 140, 240, 40])] == [True] * 4


def test_fake_missing_image_says_which(tmp_path: Path) -> None:
    cam = registry.create("camera", "fake", {"images": [str(tmp_path / "nope.jpg")]})
    with pytest.raises(DeviceNotFound, match="nope.jpg"):
        cam.open()
    assert not cam.is_open


def test_fake_fault_no_frames_times_out(tmp_path: Path) -> None:
    cam = registry.create("camera", "fake", {"fault": "no_frames"})
    with cam:
        t0 = time.monotonic()
        with pytest.raises(DeviceTimeout):
            cam.read_frame(0.2)
        assert time.monotonic() - t0 < 2.0


def test_fake_fault_black_frames_after_n(tmp_path: Path) -> None:
    cam = registry.create(
        "camera",
        "fake",
        {"images": grey_images(tmp_path, [90]), "fps": 0, "fault": "black_frames", "fault_after_frames": 2},
    )
    with cam:
        assert [level(cam.read_frame(1.0)) for _ in range(4)] == [90, 90, 0, 0]


def test_fake_fault_disappears_and_comes_back(tmp_path: Path) -> None:
    cam = registry.create(
        "camera",
        "fake",
        {
            "images": grey_images(tmp_path, [90]),
            "fps": 0,
            "fault": "disappears",
            "fault_after_frames": 2,
            "reappear_after_s": 0.3,
        },
    )
    with cam:
        cam.read_frame(1.0)
        cam.read_frame(1.0)
        with pytest.raises(DeviceNotFound, match="disappeared"):
            cam.read_frame(1.0)
        with pytest.raises(DeviceNotFound):  # still gone
            cam.read_frame(1.0)

        def back() -> bool:
            try:
                return level(cam.read_frame(1.0)) == 90
            except DeviceNotFound:
                return False

        wait_for(back, timeout_s=5.0)


def test_fake_that_disappeared_cannot_be_reopened(tmp_path: Path) -> None:
    cam = registry.create("camera", "fake", {"fault": "disappears", "fps": 0})
    cam.open()
    with pytest.raises(DeviceNotFound):
        cam.read_frame(1.0)
    cam.close()
    with pytest.raises(DeviceNotFound):
        cam.open()


# -- OpenCV camera over a real VideoCapture ----------------------------------------------------


def test_opencv_device_setting_forms() -> None:
    settings = registry.validate_settings("camera", "opencv", {"device": "2"})
    assert settings.device == 2
    assert registry.validate_settings("camera", "opencv", {"device": "/dev/video0"}).device == "/dev/video0"
    assert registry.validate_settings("camera", "opencv", {"device": "rtsp://10.0.0.5/stream"}).device.startswith(
        "rtsp"
    )
    with pytest.raises(ConfigError):
        registry.validate_settings("camera", "opencv", {"device": -1})


def test_opencv_stream_password_never_shows() -> None:
    cam = registry.create("camera", "opencv", {"device": "rtsp://admin:s3cret@10.0.0.5:554/live"})
    assert "s3cret" not in repr(cam) and "admin:***@10.0.0.5:554" in cam.describe()


def test_opencv_warmup_frames_are_dropped(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.avi", LEVELS)
    cam = registry.create("camera", "opencv", {"device": str(video), "warmup_frames": 3})
    with cam:
        assert abs(level(cam.read_frame(2.0)) - LEVELS[3]) <= 4
        assert "160x120" in cam.probe().detail


def test_opencv_missing_device_is_device_not_found(tmp_path: Path) -> None:
    cam = registry.create("camera", "opencv", {"device": str(tmp_path / "no-such.avi")})
    with pytest.raises(DeviceNotFound) as info:
        cam.open()
    assert "video" in (info.value.hint or "")
    assert not cam.is_open
    assert not cam.probe().ok


def test_opencv_reopens_transparently_at_end_of_stream(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.avi", LEVELS[:4])
    cam = registry.create("camera", "opencv", {"device": str(video), "warmup_frames": 0})
    with cam:
        got = [level(cam.read_frame(2.0)) for _ in range(6)]
        assert cam.reopens == 1
    assert [abs(g - w) <= 4 for g, w in zip(got, LEVELS[:4] + LEVELS[:2])] == [True] * 6


def test_opencv_unplugged_raises_then_reconnects_with_backoff(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    video = write_video(tmp_path / "v.avi", LEVELS[:2])
    hidden = tmp_path / "unplugged.avi"
    cam = registry.create(
        "camera",
        "opencv",
        {"device": str(video), "warmup_frames": 0, "reopen_backoff_initial_s": 0.2, "reopen_backoff_max_s": 0.4},
    )
    caplog.set_level(logging.INFO, logger="drivers.camera.opencv")
    with cam:
        cam.read_frame(2.0)
        cam.read_frame(2.0)
        video.rename(hidden)  # "unplug": the end of the stream comes and the device is gone
        with pytest.raises(DeviceNotFound):
            cam.read_frame(2.0)
        t0 = time.monotonic()
        with pytest.raises(DeviceNotFound, match="next reopen attempt"):
            cam.read_frame(2.0)  # within the backoff: fails at once, does not block the caller
        assert time.monotonic() - t0 < 0.5
        hidden.rename(video)  # "replug"

        def frame_again() -> bool:
            try:
                return abs(level(cam.read_frame(2.0)) - LEVELS[0]) <= 4
            except DeviceNotFound:
                return False

        wait_for(frame_again, timeout_s=5.0)
        assert cam.is_open
    lost = [r for r in caplog.records if "camera lost" in r.getMessage()]
    assert len(lost) == 1  # logged once, not once per attempt
    assert any("reopened" in r.getMessage() for r in caplog.records)


def announced_wait_s(cam: Camera) -> float:
    """Read once within the backoff and return the wait the driver announces before its next attempt."""
    with pytest.raises(DeviceNotFound, match="next reopen attempt") as info:
        cam.read_frame(1.0)
    return float(re.search(r"in ([0-9.]+) s", str(info.value)).group(1))  # type: ignore[union-attr]


def test_opencv_backoff_doubles_up_to_its_maximum(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.avi", LEVELS[:2])
    cam = registry.create(
        "camera",
        "opencv",
        {"device": str(video), "warmup_frames": 0, "reopen_backoff_initial_s": 0.2, "reopen_backoff_max_s": 0.5},
    )
    with cam:
        cam.read_frame(2.0)
        video.unlink()  # unplugged for good
        cam.read_frame(2.0)
        with pytest.raises(DeviceNotFound, match="cannot open"):
            cam.read_frame(2.0)  # end of stream, the reopen at once fails: the backoff starts
        waits = [announced_wait_s(cam)]
        for _ in range(3):

            def attempted() -> bool:  # a real reopen attempt says "cannot open", a wait says when
                try:
                    cam.read_frame(1.0)
                except DeviceNotFound as exc:
                    return "cannot open" in str(exc)
                raise AssertionError("the unplugged camera gave a frame")

            wait_for(attempted, timeout_s=5.0, interval_s=0.01)
            waits.append(announced_wait_s(cam))
        assert cam.is_open and cam.reopens == 0
    assert waits == pytest.approx([0.2, 0.4, 0.5, 0.5], abs=0.1)  # doubled, then capped (not 0.8)


@pytest.fixture
def http_video(tmp_path: Path) -> Iterator[str]:
    """The URL of an MJPG video served over HTTP on loopback (a stream source, as an IP camera is)."""
    write_video(tmp_path / "v.avi", LEVELS)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v.avi"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5.0)


def test_opencv_reads_a_stream_url(http_video: str) -> None:
    # a URL goes through the stream branch (FFmpeg open/read timeouts), as an rtsp:// camera does
    cam = registry.create(
        "camera", "opencv", {"device": http_video, "warmup_frames": 2, "open_timeout_s": 5, "read_timeout_s": 5}
    )
    with cam:
        assert abs(level(cam.read_frame(2.0)) - LEVELS[2]) <= 4


def test_opencv_unreachable_rtsp_url_is_device_not_found() -> None:
    with socket.socket() as sock:  # a loopback port with nothing listening once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cam = registry.create(
        "camera", "opencv", {"device": f"rtsp://admin:s3cret@127.0.0.1:{port}/live", "open_timeout_s": 2}
    )
    t0 = time.monotonic()
    with pytest.raises(DeviceNotFound) as info:
        cam.open()
    assert time.monotonic() - t0 < 5.0
    assert "stream URL" in (info.value.hint or "") and "s3cret" not in str(info.value)
    assert not cam.is_open
