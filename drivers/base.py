"""Driver interfaces: the public lifecycle lives here, drivers fill in the private steps.

Every driver kind (card readers, cameras, later fingerprint readers) shares ``Driver``: built from
validated settings, ``open()``/``close()`` (idempotent, safe on a half-built driver), a context
manager, ``probe()`` for diagnostics, and a ``repr`` that shows the device and its state. Timeouts
are float seconds and always bounded. "No card" is a normal return value; a device that does not
answer raises ``DeviceTimeout``.

Fakes are real, registered drivers with ``simulated = True``: they log a warning when opened and
everything they produce is marked simulated, so fake data can never pass for real.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from core.card import IdCard
from core.errors import DeviceTimeout, DriverError

if TYPE_CHECKING:
    from core.images import Frame

log = logging.getLogger(__name__)


class DriverSettings(BaseModel):
    """Base of each driver's own settings model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """What ``probe()`` found: ``ok`` and one line a technician can act on."""

    ok: bool
    detail: str
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


class Driver:
    """Base of all drivers. Subclasses set ``kind``, ``Settings`` and implement ``_open``/``_close``."""

    kind: ClassVar[str] = ""
    """Driver kind: "card_reader", "camera", ..."""
    Settings: ClassVar[type[DriverSettings]] = DriverSettings
    """The driver's settings model, validated from its config section."""
    simulated: ClassVar[bool] = False
    """True for fakes: every record they lead to is marked as simulated."""

    def __init__(self, settings: DriverSettings | None = None, *, name: str | None = None) -> None:
        self.settings = settings if settings is not None else self.Settings()
        self.name = name or type(self).__name__
        self._is_open = False
        self._lock = threading.RLock()

    @classmethod
    def from_options(cls, options: Mapping[str, object], *, name: str | None = None) -> Driver:
        """Build from a config section's driver options (raises pydantic's ValidationError)."""
        return cls(cls.Settings.model_validate(options), name=name)

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._is_open

    def open(self) -> None:
        """Open the device. Idempotent. Raises ``DeviceNotFound`` or ``DriverError``."""
        with self._lock:
            if self._is_open:
                return
            if self.simulated:
                log.warning("%s: simulated %s driver in use; its records are marked as fake", self.name, self.kind)
            self._open()
            self._is_open = True

    def close(self) -> None:
        """Release the device. Idempotent and safe on a driver that never opened."""
        with self._lock:
            if not self._is_open:
                return
            self._is_open = False
            try:
                self._close()
            except Exception:  # closing must never raise over the error that made us close
                log.debug("%s: error while closing", self.name, exc_info=True)

    def __enter__(self) -> Driver:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "open" if self._is_open else "closed"
        return f"<{type(self).__name__} {self.describe()} {state}>"

    # -- for subclasses ---------------------------------------------------------------------------
    def describe(self) -> str:
        """The device, for repr and messages (a port, a URL, an index)."""
        return self.name

    def probe(self) -> ProbeResult:
        """Check the device for `fvagent doctor` without side effects on a card or capture."""
        try:
            self.open()
        except DriverError as exc:
            return ProbeResult(False, str(exc))
        return ProbeResult(True, f"{self.describe()} opened")

    def _open(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------
# Card readers


class CardReaderSettings(DriverSettings):
    """Settings every card reader understands."""

    poll_interval_s: float = 0.3
    """Pause between find-card polls (readers dislike faster polling)."""
    wlt_decoder: str | None = None
    """Path of the WLT photo decoder shim (docs/drivers.md). Every reader accepts it, because the
    service also uses it to complete held records; readers that return raw WLT decode with it."""


class CardReader(Driver):
    """A reader of ID cards.

    ``read_card(timeout_s)`` polls until a card is read or the time is up. It returns each card
    once per tap: the same card stays in the field without being read again until it leaves.
    """

    kind = "card_reader"
    Settings: ClassVar[type[DriverSettings]] = CardReaderSettings
    keep_raw_answer: bool = False
    """Set by ``fvagent card capture``: keep the last read's raw answer in ``raw_answer``."""
    raw_answer: bytes | None = None
    """The answer to the last read command, as received (sam-serial, sam-usb) or rebuilt as a 30 01
    frame (sdt); kept only while ``keep_raw_answer`` is set, because it holds personal data.
    Readers without frames (fake) leave it None."""

    def read_card(self, timeout_s: float) -> IdCard | None:
        """Wait up to ``timeout_s`` for a new card. Returns it, or ``None`` when no card came.

        Raises ``DeviceTimeout`` when the reader does not answer, ``DeviceNotFound`` when it is gone,
        ``CardReadError`` when the SAM failed to read a presented card, ``ProtocolError`` on a bad
        frame. The reader must be open.
        """
        if not self._is_open:
            raise DriverError("reader is not open", device=self.describe())
        deadline = time.monotonic() + max(0.0, timeout_s)
        interval = getattr(self.settings, "poll_interval_s", 0.3)
        while True:
            with self._lock:
                card = self._poll_card()
            if card is not None:
                return card
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(interval, remaining))

    def _poll_card(self) -> IdCard | None:
        """One poll: the new card now in the field, or ``None``. Must not block longer than one exchange."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------
# Cameras


class Camera(Driver):
    """A camera. ``read_frame(timeout_s)`` returns one BGR frame (numpy uint8, HxWx3)."""

    kind = "camera"

    def read_frame(self, timeout_s: float) -> Frame:
        """Return the next frame as a BGR ``numpy.ndarray``.

        Raises ``DeviceTimeout`` when no frame arrives in ``timeout_s``, ``DeviceNotFound`` when the
        camera is gone. The camera must be open.
        """
        if not self._is_open:
            raise DriverError("camera is not open", device=self.describe())
        frame = self._read_frame(max(0.0, timeout_s))
        if frame is None:
            raise DeviceTimeout(f"no frame within {timeout_s:.1f} s", device=self.describe())
        return frame

    def _read_frame(self, timeout_s: float) -> Frame | None:
        """Return a frame or ``None`` when none came within ``timeout_s``."""
        raise NotImplementedError
