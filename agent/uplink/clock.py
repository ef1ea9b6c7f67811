"""The platform's clock as the agent knows it: the offset learnt from replies, and the rule that
decides which reply times are believed.

A terminal PC with a flat CMOS battery may be a year off. The platform's replies carry its time
(``hmpt-portal-time`` when it signs, else ``returnTime``), so the agent keeps ``offset_s`` =
platform time - local time and signs its requests with ``now()`` = local time + offset, as cloud
SDKs correct for clock skew. The same clock judges a reply's freshness, so the rule must not let a
reply vouch for itself:

- a reply's freshness is judged against the offset known *before* it (``is_fresh``);
- a sample that agrees with the known offset (within ``max_reply_skew_s``) refines it;
- a *step* (a sample that disagrees) is believed only when the platform itself said our time was
  wrong ("timestamp expired", by its code), or when two replies to different requests at least
  ``CONFIRM_GAP_S`` apart agree on the new offset within ``CONFIRM_AGREE_S`` (the platform's clock
  ran with ours meanwhile: a replayed signature carries a fixed time and never does);
- no time before ``EARLIEST_PLATFORM_TIME`` is ever learnt (the spec is from June 2024).

The caller checks the reply's identity (requestId, signature) before handing its time here.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import TypedDict

log = logging.getLogger(__name__)

EARLIEST_PLATFORM_TIME = dt.datetime(2024, 6, 1, tzinfo=dt.UTC).timestamp()
"""No genuine reply predates the interface spec (2024-06): earlier times are never learnt."""
CONFIRM_AGREE_S = 2.0
"""Two samples confirm a step when they agree this closely (a date-format time has 1 s resolution)."""
CONFIRM_GAP_S = 5.0
"""... and were taken at least this far apart on the monotonic clock."""


class ClockSnapshot(TypedDict):
    """The platform clock as last measured: ``offset_s`` is platform minus local (rounded), ``measured_at``
    local epoch seconds; both None before the first reply."""

    offset_s: float | None
    measured_at: float | None


class PlatformClock:
    """Local time corrected by the offset learnt from the platform's replies. Thread-safe.

    ``clock`` is the local wall clock (epoch seconds), ``monotonic`` the process's monotonic clock;
    ``tolerance_s`` is ``[platform.conventions] max_reply_skew_s``.
    """

    def __init__(
        self,
        tolerance_s: float,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tolerance_s = tolerance_s
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._offset: float | None = None
        self._measured_at: float | None = None
        self._candidate: tuple[float, float] | None = None  # (offset, monotonic time) of an unconfirmed step
        self._refused_early = False

    @property
    def offset_s(self) -> float | None:
        """Platform time minus local time, or ``None`` before any reply was believed."""
        return self._offset

    def local(self) -> float:
        """The local wall clock."""
        return self._clock()

    def now(self) -> float:
        """The platform-corrected time (the local clock while no offset is known)."""
        return self._clock() + (self._offset or 0.0)

    def is_fresh(self, platform_time_s: float, received_at_local: float) -> bool:
        """Whether a reply's time is within the tolerance of our corrected clock (the offset
        known before this reply)."""
        return abs(platform_time_s - (received_at_local + (self._offset or 0.0))) <= self.tolerance_s + 1.0

    def observe(
        self, platform_time_s: float, sent_at_local: float, received_at_local: float, *, expired: bool = False
    ) -> None:
        """Learn from one identity-checked reply's time; ``expired``: the reply said our request's
        time was out of its tolerance (timestamp expired)."""
        if platform_time_s < EARLIEST_PLATFORM_TIME:
            if not self._refused_early:
                self._refused_early = True
                log.warning(
                    "a reply claims the platform's time is %s, before the interface existed: not learnt",
                    dt.datetime.fromtimestamp(platform_time_s, dt.UTC).isoformat(timespec="seconds"),
                )
            return
        sample = platform_time_s - (sent_at_local + received_at_local) / 2.0
        mono = self._monotonic()
        with self._lock:
            current = self._offset or 0.0
            if abs(sample - current) <= self.tolerance_s:
                self._offset, self._measured_at, self._candidate = sample, received_at_local, None
                return
            if expired:
                self._step(sample, received_at_local, "the platform said our request's time was expired")
                return
            if self._candidate is not None and abs(sample - self._candidate[0]) <= CONFIRM_AGREE_S:
                if mono - self._candidate[1] >= CONFIRM_GAP_S:
                    self._step(sample, received_at_local, "two replies agree on it")
                return  # agrees but too soon: keep the older candidate
            self._candidate = (sample, mono)

    def _step(self, sample: float, at: float, why: str) -> None:
        old = self._offset
        self._offset, self._measured_at, self._candidate = sample, at, None
        log.warning(
            "the platform's clock is %+.0f s from ours (was %s): %s; requests are signed with the platform's time",
            sample,
            "unknown" if old is None else f"{old:+.0f} s",
            why,
        )

    def snapshot(self) -> ClockSnapshot:
        """``offset_s`` (platform minus local, rounded) and ``measured_at`` (local epoch seconds)."""
        offset = self._offset
        return {"offset_s": None if offset is None else round(offset, 1), "measured_at": self._measured_at}
