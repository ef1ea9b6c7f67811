"""Time: the one definition of the platform's zone, and the clock every part takes injected."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

CHINA_TZ = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")
"""The platform's clock: China has one zone and no daylight saving time."""

Clock = Callable[[], float]
"""Seconds as a float: ``time.time`` for stored times, ``time.monotonic`` for intervals. Parts take
one injected so tests can move time without sleeping."""


def platform_local(moment: dt.datetime) -> dt.datetime:
    """``moment`` as naive local time in China (UTC+8); a naive datetime is taken as already local."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(CHINA_TZ).replace(tzinfo=None)


def china_isoformat(epoch: float) -> str:
    """``epoch`` as ISO 8601 in China time to the second (``2026-12-02T20:44:06+08:00``)."""
    return dt.datetime.fromtimestamp(epoch, CHINA_TZ).isoformat(timespec="seconds")
