"""Hardware that comes and goes: a driver slot that degrades instead of crashing.

``DriverSlot`` owns one configured driver (the card reader or the camera). ``get()`` returns the
open driver, or ``None`` while it is faulty; a failure (``fault(exc)``) closes it and schedules a
reopen on the one backoff curve (core.backoff: 1 s doubling to 30 s). The first failure of an episode is logged
at warning level, the retries quietly, the recovery at info: a device failure is logged once.
``state()`` is what status shows: ``ok``, ``fault`` (with the reason and the next retry), or
``off`` (not configured for this mode).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from agent.status import Part, PartState
from core.backoff import Backoff
from drivers.base import Driver

log = logging.getLogger(__name__)

D = TypeVar("D", bound=Driver)

BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 30.0


class DriverSlot(Generic[D]):
    """One driver of ``kind`` built by ``factory()`` (e.g. ``registry.create(...)``), opened lazily.

    ``clock`` is injectable for tests. Thread-safe: the verification loop uses the driver while the
    supervisor reads ``state()``.
    """

    def __init__(
        self,
        kind: str,
        factory: Callable[[], D],
        *,
        label: str,
        clock: Callable[[], float] = time.monotonic,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self.kind = kind
        self.label = label
        self._factory = factory
        self._clock = clock
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        self._lock = threading.RLock()
        self._driver: D | None = None
        self._error: str | None = None
        self._since = time.time()
        self._next_try = 0.0
        self.failures = 0
        """Faults since start (for status and tests)."""
        self.opens = 0
        """Successful opens since start."""

    def get(self) -> D | None:
        """The open driver, opening it now when due; ``None`` while it is faulty and not yet due."""
        with self._lock:
            if self._driver is not None and self._driver.is_open:
                return self._driver
            if self._clock() < self._next_try:
                return None
            return self._open()

    def _open(self) -> D | None:
        try:
            if self._driver is None:
                self._driver = self._factory()
            self._driver.open()
        except Exception as exc:  # any driver failure degrades; the desk goes on
            self._note_fault(exc)
            return None
        if self._error is not None:
            log.info("%s recovered: %s", self.label, self._describe())
        self._error = None
        self._since = time.time()
        self._backoff.succeeded()
        self.opens += 1
        return self._driver

    def fault(self, exc: BaseException | str) -> None:
        """The driver failed while in use: close it and schedule a reopen."""
        with self._lock:
            if self._driver is not None:
                try:
                    self._driver.close()
                except Exception:
                    log.debug("%s: close after fault failed", self.label, exc_info=True)
            self._note_fault(exc)

    def _note_fault(self, exc: BaseException | str) -> None:
        text = exc if isinstance(exc, str) else (str(exc) or type(exc).__name__)
        self.failures += 1
        if self._error is None:
            log.warning("%s unavailable: %s (retrying in the background)", self.label, text)
            self._since = time.time()
        else:
            log.debug("%s still unavailable: %s", self.label, text)
        self._error = text
        self._next_try = self._clock() + self._backoff.failed()

    def state(self) -> Part:
        with self._lock:
            if self._error is not None:
                retry_in = max(0.0, self._next_try - self._clock())
                detail = f"{self._error}; retrying in {retry_in:.0f} s"
                return Part(PartState.FAULT, detail, since=self._since, failures=self.failures)
            if self._driver is not None and self._driver.is_open:
                simulated = self._driver.simulated
                return Part(PartState.OK, self._describe(), since=self._since, simulated=simulated)
            return Part(PartState.CLOSED, f"{self.label} not opened yet")

    @property
    def healthy(self) -> bool:
        with self._lock:
            return self._error is None

    def _describe(self) -> str:
        if self._driver is None:
            return self.label
        try:
            return str(self._driver.describe())
        except Exception:
            return self.label

    def close(self) -> None:
        with self._lock:
            if self._driver is not None:
                try:
                    self._driver.close()
                except Exception:
                    log.debug("%s: close failed", self.label, exc_info=True)
            self._driver = None
