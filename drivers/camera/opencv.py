"""A camera read through OpenCV's ``cv2.VideoCapture``: a V4L2 index or /dev/video path, or a stream URL.

``device`` is an index (``0``), a device path (``/dev/video0``), a stream URL (``rtsp://...``,
``http://...``), or a video file (useful for tests and demos). Resolution, fps and the pixel format
are requested from the device; what it really delivers is shown by ``probe()``. After every open the
first ``warmup_frames`` frames are read and dropped (auto-exposure and white balance settle).

Unplugging and reconnecting are handled here, in the driver, so the daemon only has to keep calling
``read_frame``:

- when a read fails the capture is released and reopened at once; if that works the caller gets a
  frame and never notices (a stream that dropped, a video file that reached its end);
- otherwise ``read_frame`` raises ``DeviceNotFound`` (logged once), and every later ``read_frame``
  raises it at once too until the next reopen attempt is due: attempts are spaced by a backoff that
  starts at ``reopen_backoff_initial_s`` and doubles up to ``reopen_backoff_max_s``;
- the first successful reopen resets the backoff and is logged at INFO.

The camera stays "open" (``is_open``) throughout; ``close()`` releases everything. ``open()`` itself
raises ``DeviceNotFound`` when the device cannot be opened at all, so the first open is the caller's
to retry.

``read_frame``'s timeout bounds our waiting, but ``VideoCapture.read`` blocks inside OpenCV: for
streams its own limit is ``read_timeout_s`` (FFmpeg backend); a V4L2 device returns within a frame
interval or fails at once when unplugged.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, ValidationInfo, field_validator

from core.backoff import Backoff
from core.errors import DeviceNotFound, DriverError, DriverNotFound
from drivers.base import Camera, DriverSettings, ProbeResult

if TYPE_CHECKING:
    from core.images import Frame

log = logging.getLogger(__name__)


class OpenCVCameraSettings(DriverSettings):
    """[camera] options of the OpenCV camera."""

    device: int | str = 0
    """Camera index (0), device path (/dev/video0), stream URL (rtsp://...), or a video file."""
    width: int | None = Field(default=640, ge=16, le=8192)
    """Requested frame width in pixels (None: the device's default)."""
    height: int | None = Field(default=480, ge=16, le=8192)
    """Requested frame height in pixels (None: the device's default)."""
    fps: float | None = Field(default=None, gt=0, le=240)
    """Requested frames per second (None: the device's default)."""
    fourcc: str | None = None
    """Requested pixel format, e.g. "MJPG" (many USB cameras only reach 30 fps at 640x480 in MJPG)."""
    backend: Literal["auto", "v4l2", "ffmpeg", "gstreamer"] = "auto"
    """OpenCV capture backend."""
    warmup_frames: int = Field(default=5, ge=0, le=100)
    """Frames read and dropped after every open, while exposure settles."""
    buffer_size: int | None = Field(default=1, ge=1, le=32)
    """Frames the driver may queue (1: always the freshest frame); None leaves the backend's default."""
    open_timeout_s: float = Field(default=10.0, gt=0, le=120)
    """Stream open timeout (FFmpeg backend)."""
    read_timeout_s: float = Field(default=5.0, gt=0, le=120)
    """Stream read timeout (FFmpeg backend)."""
    reopen_backoff_initial_s: float = Field(default=0.5, gt=0, le=60)
    """First pause between reopen attempts after the camera is lost."""
    reopen_backoff_max_s: float = Field(default=30.0, gt=0, le=3600)
    """Longest pause between reopen attempts."""

    @field_validator("reopen_backoff_max_s")
    @classmethod
    def _max_not_below_first(cls, v: float, info: ValidationInfo) -> float:
        first = info.data.get("reopen_backoff_initial_s")
        if first is not None and v < first:
            raise ValueError(f"must be >= reopen_backoff_initial_s ({first})")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: int | str) -> int | str:
        if isinstance(v, str):
            v = v.strip()
            if not v:
                raise ValueError("must be an index, a /dev/video path, a stream URL or a video file")
            if v.isdigit():
                return int(v)
        elif v < 0:
            raise ValueError("a camera index is 0 or more")
        return v

    @field_validator("fourcc")
    @classmethod
    def _fourcc(cls, v: str | None) -> str | None:
        if v is not None and len(v) != 4:
            raise ValueError('must be four characters, e.g. "MJPG" or "YUYV"')
        return v


class OpenCVCamera(Camera):
    """A V4L2 / stream camera through ``cv2.VideoCapture``; reconnects itself after unplugging."""

    Settings: ClassVar[type[DriverSettings]] = OpenCVCameraSettings

    def __init__(self, settings: DriverSettings | None = None, *, name: str | None = None) -> None:
        super().__init__(settings, name=name or "opencv")
        self.settings: OpenCVCameraSettings
        self._cap: Any = None
        self._reopen_backoff = Backoff(self.settings.reopen_backoff_initial_s, self.settings.reopen_backoff_max_s)
        self._next_reopen = 0.0
        self._lost_logged = False
        self.reopens = 0
        """Successful reopens after a loss (for status and tests)."""

    def describe(self) -> str:
        device = self.settings.device
        if isinstance(device, str) and "://" in device:  # never show a stream password in logs
            parts = urlsplit(device)
            if parts.password is not None:
                host = parts.hostname or ""
                netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
                device = urlunsplit(parts._replace(netloc=netloc))
        return f"camera {device}"

    # -- lifecycle ------------------------------------------------------------------------------
    def _open(self) -> None:
        self._cap = self._connect()
        self._reopen_backoff.succeeded()
        self._lost_logged = False

    def _close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    def probe(self) -> ProbeResult:
        result = super().probe()
        if not result.ok:
            return result
        try:
            frame = self.read_frame(5.0)
        except DriverError as exc:
            return ProbeResult(False, f"{self.describe()} opened but gave no frame: {exc}")
        h, w = frame.shape[:2]
        return ProbeResult(True, f"{self.describe()}: {w}x{h} frames", {"width": w, "height": h})

    # -- frames ---------------------------------------------------------------------------------
    def _read_frame(self, timeout_s: float) -> Frame | None:
        ok: bool
        frame: Frame | None  # cv2's VideoCapture.read() is untyped here (self._cap is Any)
        with self._lock:
            if self._cap is None:
                self._reopen_or_raise()
            ok, frame = self._cap.read()
            if ok and frame is not None:
                return frame
            # The read failed: unplugged, stream dropped, or a file at its end. Try once at once.
            self._lose("read failed")
            self._reopen_or_raise()
            ok, frame = self._cap.read()
            if ok and frame is not None:
                return frame
            self._lose("read failed right after reopening")
            raise DeviceNotFound(
                "camera delivers no frames after reopening",
                device=self.describe(),
                hint="check the cable and that no other program holds the camera",
            )

    def _lose(self, why: str) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()
        if not self._lost_logged:
            log.warning("%s: camera lost (%s); reopening with backoff", self.describe(), why)
            self._lost_logged = True

    def _reopen_or_raise(self) -> None:
        now = time.monotonic()
        if now < self._next_reopen:
            raise DeviceNotFound(
                f"camera is gone; next reopen attempt in {self._next_reopen - now:.1f} s", device=self.describe()
            )
        try:
            self._cap = self._connect()
        except DeviceNotFound:
            self._next_reopen = time.monotonic() + self._reopen_backoff.failed()
            log.debug("%s: reopen failed; next attempt in %.1f s", self.describe(), self._next_reopen - now)
            raise
        self.reopens += 1
        if self._lost_logged:
            log.info("%s: camera reopened", self.describe())
        self._lost_logged = False
        self._reopen_backoff.succeeded()
        self._next_reopen = 0.0

    def _connect(self) -> Any:
        """Open the capture, apply the requested format, drop the warm-up frames."""
        try:
            import cv2
        except ImportError as exc:  # pragma: no cover - a dependency of fvagent
            raise DriverNotFound(
                "the opencv camera needs OpenCV", device=self.describe(), hint="pip install opencv-python-headless"
            ) from exc
        s = self.settings
        backend = {"auto": cv2.CAP_ANY, "v4l2": cv2.CAP_V4L2, "ffmpeg": cv2.CAP_FFMPEG, "gstreamer": cv2.CAP_GSTREAMER}[
            s.backend
        ]
        params: list[int] = []
        if isinstance(s.device, str) and "://" in s.device:
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                int(s.open_timeout_s * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                int(s.read_timeout_s * 1000),
            ]
        cap = cv2.VideoCapture(s.device, backend, params) if params else cv2.VideoCapture(s.device, backend)
        if not cap.isOpened():
            cap.release()
            raise DeviceNotFound(
                f"cannot open {self.describe()}",
                device=self.describe(),
                hint="check the cable and `ls /dev/video*`; the service user needs the "
                "'video' group; a stream URL must be reachable",
            )
        if s.fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*s.fourcc))
        if s.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, s.width)
        if s.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, s.height)
        if s.fps:
            cap.set(cv2.CAP_PROP_FPS, s.fps)
        if s.buffer_size:
            cap.set(cv2.CAP_PROP_BUFFERSIZE, s.buffer_size)
        for _ in range(s.warmup_frames):
            if not cap.grab():
                break
        return cap
