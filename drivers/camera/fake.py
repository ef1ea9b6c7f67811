"""The fake camera: a real, registered driver that plays image files or a video file in a loop.

Chosen by name (``[camera] driver = "fake"``), never as an automatic fallback. It is ``simulated``:
it logs a warning when opened, and everything recorded from it is marked as simulated.

Faults are declared in its settings, so fault tests need no special code:

- ``fault = "no_frames"``: the camera opens but never delivers a frame (``read_frame`` raises
  ``DeviceTimeout`` after its timeout).
- ``fault = "black_frames"``: after ``fault_after_frames`` good frames, every frame is black.
- ``fault = "disappears"``: after ``fault_after_frames`` good frames the camera is unplugged:
  ``read_frame`` and ``open`` raise ``DeviceNotFound``; with ``reappear_after_s`` it comes back that
  many seconds later (as a replugged USB camera does) and plays from its first frame again.

With neither ``images`` nor ``video`` it plays a mid-grey 640x480 frame with a little noise (no face).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from core.errors import DeviceNotFound, DriverError
from core.images import ImageError, decode_image
from drivers.base import Camera, DriverSettings, ProbeResult

if TYPE_CHECKING:
    from core.images import Frame

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
MAX_VIDEO_FRAMES = 900
"""A fake video is held in memory: longer files are cut here (a minute at 15 fps)."""


class FakeCameraSettings(DriverSettings):
    """[camera] options of the fake camera."""

    images: list[str] = Field(default_factory=list)
    """Image files (JPEG/PNG/BMP) or folders of them, played in order, one frame each."""
    video: str | None = None
    """A video file played frame by frame (instead of images)."""
    loop: bool = True
    """Start again at the first frame after the last; false: no more frames (read_frame times out)."""
    fps: float = Field(default=15.0, ge=0, le=240)
    """Frames per second delivered; 0 delivers each frame as soon as it is asked for."""
    frame_size: tuple[int, int] | None = None
    """[width, height]: centre each image on a grey canvas of this size (scaled down to fit)."""
    fault: Literal["none", "no_frames", "black_frames", "disappears"] = "none"
    """The fault to play: see the module documentation."""
    fault_after_frames: int = Field(default=0, ge=0)
    """Good frames delivered before black_frames or disappears starts."""
    reappear_after_s: float | None = Field(default=None, gt=0)
    """disappears: the camera comes back this many seconds after it vanished (default: never)."""

    @field_validator("frame_size")
    @classmethod
    def _size(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and (v[0] < 16 or v[1] < 16 or v[0] > 8192 or v[1] > 8192):
            raise ValueError("frame_size must be [width, height] between 16 and 8192")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> FakeCameraSettings:
        if self.images and self.video:
            raise ValueError("give images or video, not both")
        return self


class FakeCamera(Camera):
    """Plays images or a video as camera frames; see the module documentation for faults."""

    Settings: ClassVar[type[DriverSettings]] = FakeCameraSettings
    simulated: ClassVar[bool] = True

    def __init__(self, settings: DriverSettings | None = None, *, name: str | None = None) -> None:
        super().__init__(settings, name=name or "fake")
        self.settings: FakeCameraSettings
        self._frames: list[np.ndarray] = []
        self._index = 0
        self._next_due = 0.0
        self._gone_since: float | None = None
        self._closed = threading.Event()
        self.frames_served = 0
        """Frames delivered since the last open (for assertions)."""
        self.opens = 0
        """Successful opens so far (for assertions)."""

    def describe(self) -> str:
        s = self.settings
        if s.video:
            source = f"video {Path(s.video).name}"
        elif s.images:
            source = f"{len(s.images)} image path(s)"
        else:
            source = "grey frames"
        fault = "" if s.fault == "none" else f", fault {s.fault}"
        return f"fake camera ({source}{fault})"

    # -- lifecycle ------------------------------------------------------------------------------
    def _open(self) -> None:
        if self._gone_since is not None and not self._back():
            raise DeviceNotFound("fake camera has disappeared (fault 'disappears')", device=self.describe())
        self._frames = self._load_frames()
        self._index = 0
        self.frames_served = 0
        self._next_due = 0.0
        self._closed.clear()
        self.opens += 1

    def _close(self) -> None:
        self._closed.set()

    def probe(self) -> ProbeResult:
        result = super().probe()
        if result.ok:
            return ProbeResult(
                True,
                f"{self.describe()}: SIMULATED camera, {len(self._frames)} frame(s)",
                {"simulated": True, "frames": len(self._frames)},
            )
        return result

    # -- frames ---------------------------------------------------------------------------------
    def _read_frame(self, timeout_s: float) -> Frame | None:
        s = self.settings
        if self._gone_since is not None:
            if not self._back():
                raise DeviceNotFound("fake camera has disappeared (fault 'disappears')", device=self.describe())
            log.info("%s: reappeared", self.name)
            self._gone_since = None
            self._index = 0
            self.frames_served = 0
        if s.fault == "no_frames" or (not s.loop and self._index >= len(self._frames)):
            self._closed.wait(timeout_s)  # a camera that sends nothing: the caller's timeout passes
            return None
        if s.fault == "disappears" and self.frames_served >= s.fault_after_frames:
            self._gone_since = time.monotonic()
            log.warning("%s: camera disappeared (simulated unplug)", self.name)
            raise DeviceNotFound("fake camera disappeared (fault 'disappears')", device=self.describe())
        if s.fps > 0:  # pace like a real camera
            wait = self._next_due - time.monotonic()
            if wait > timeout_s:
                self._closed.wait(timeout_s)
                return None
            if wait > 0:
                self._closed.wait(wait)
            self._next_due = time.monotonic() + 1.0 / s.fps  # the next frame one interval after this one
        frame = self._frames[self._index % len(self._frames)]
        self._index += 1
        if s.loop:
            self._index %= len(self._frames)
        self.frames_served += 1
        if s.fault == "black_frames" and self.frames_served > s.fault_after_frames:
            return np.zeros_like(frame)
        return frame.copy()

    def _back(self) -> bool:
        after = self.settings.reappear_after_s
        return after is not None and self._gone_since is not None and time.monotonic() - self._gone_since >= after

    def _load_frames(self) -> list[np.ndarray]:
        s = self.settings
        if s.video:
            frames = _read_video(Path(s.video), self.describe())
        elif s.images:
            frames = [_read_image(p, self.describe()) for p in _expand(s.images, self.describe())]
        else:
            rng = np.random.default_rng(0)
            frames = [np.clip(128 + rng.normal(0, 4, (480, 640, 3)), 0, 255).astype(np.uint8)]
        if s.frame_size is not None:
            frames = [_on_canvas(f, s.frame_size) for f in frames]
        return frames


def _expand(paths: list[str], device: str) -> list[Path]:
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DeviceNotFound(f"fake camera: folder {p} holds no JPEG/PNG/BMP images", device=device)
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise DeviceNotFound(
                f"fake camera: image {p} does not exist",
                device=device,
                hint="fix [camera] images: files or folders of JPEG/PNG/BMP images",
            )
    return out


def _read_image(path: Path, device: str) -> np.ndarray:
    try:
        return decode_image(path.read_bytes(), what=f"fake camera image {path}")
    except ImageError as exc:
        raise DriverError(str(exc), device=device) from exc


def _read_video(path: Path, device: str) -> list[np.ndarray]:
    import cv2  # drivers may use OpenCV; agent/ never does

    if not path.is_file():
        raise DeviceNotFound(f"fake camera: video {path} does not exist", device=device)
    cap = cv2.VideoCapture(str(path))
    frames: list[np.ndarray] = []
    try:
        while len(frames) < MAX_VIDEO_FRAMES:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            frames.append(frame)
    finally:
        cap.release()
    if not frames:
        raise DriverError(
            f"fake camera: video {path} has no readable frames",
            device=device,
            hint="write it as MJPG in .avi, or any codec this OpenCV build reads",
        )
    return frames


def _on_canvas(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    width, height = size
    h, w = frame.shape[:2]
    scale = min(1.0, width / w, height / h)
    if scale < 1.0:
        w, h = max(1, int(w * scale)), max(1, int(h * scale))
        frame = np.asarray(Image.fromarray(frame[:, :, ::-1]).resize((w, h), Image.Resampling.BILINEAR))[:, :, ::-1]
    canvas = np.full((height, width, 3), 128, dtype=np.uint8)
    top, left = (height - h) // 2, (width - w) // 2
    canvas[top : top + h, left : left + w] = frame
    return canvas
