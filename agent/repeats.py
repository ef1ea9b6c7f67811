"""Repeated identical log lines, logged once and then summarised.

A loop that fails the same way every 0.2 s (a full disk under the uploader's claim) must not fill
the journal with 149 copies of one line in 30 s, nor hide that it keeps failing. ``Repeats.log``
logs a message the first time; identical ones that follow are counted, and at most once per
``window_s`` one line says how many: "... (the same error 148 more times in the last 30 s)".
A different message (or ``clear()`` once the loop works again) ends the run, summarising what is left.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class Repeats:
    """Log-once-then-summarise for one loop's messages, on ``logger``."""

    def __init__(
        self, logger: logging.Logger, *, window_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._logger = logger
        self._window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: tuple[int, str] | None = None
        self._count = 0
        self._since = 0.0

    def log(self, level: int, msg: str, *args: object) -> None:
        text = msg % args if args else msg
        now = self._clock()
        with self._lock:
            if self._last == (level, text):
                self._count += 1
                if now - self._since >= self._window_s:
                    self._summary(now)
                return
            self._flush(now)
            self._last, self._count, self._since = (level, text), 0, now
        self._logger.log(level, "%s", text)

    def clear(self) -> None:
        """The loop works again: summarise what is left of the run, start afresh."""
        with self._lock:
            self._flush(self._clock())
            self._last = None

    def _flush(self, now: float) -> None:
        if self._last is not None and self._count:
            self._summary(now)

    def _summary(self, now: float) -> None:
        assert self._last is not None
        level, text = self._last
        self._logger.log(
            level,
            "%s (the same error %d more times in the last %.0f s)",
            text,
            self._count,
            max(now - self._since, 0.0),
        )
        self._count, self._since = 0, now
