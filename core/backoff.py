"""The one backoff curve: delays doubling from ``initial_s`` up to ``max_s``.

Used wherever something is retried after a failure: a driver reopened, the platform tried again, a
registration repeated. ``delay(n)`` is the pure curve; ``Backoff`` also counts the failures of the
current episode, so callers only say ``failed()`` and ``succeeded()``.
"""

from __future__ import annotations

import dataclasses
import random


def exponential_delay(attempt: int, initial_s: float, max_s: float) -> float:
    """The delay before retry number ``attempt`` (1-based): ``min(max_s, initial_s * 2**(attempt-1))``."""
    return min(max_s, initial_s * (2.0 ** min(max(attempt, 1) - 1, 60)))


def full_jitter(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Uniform in [0, exponential_delay(attempt)]: many clients retrying never move in step."""
    return rng.uniform(0.0, exponential_delay(attempt, initial_s, max_s))


@dataclasses.dataclass
class Backoff:
    """The failures of one episode and the delay they earn. Not thread-safe: one owner."""

    initial_s: float
    max_s: float
    jitter: random.Random | None = None
    """With a random source, each delay is drawn with full jitter; without one it is the curve."""
    failures: int = 0
    """Failures since the last success."""

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s < self.initial_s:
            raise ValueError(f"backoff needs 0 < initial_s <= max_s, got {self.initial_s} and {self.max_s}")

    def failed(self) -> float:
        """Count one more failure; return the delay before the next try."""
        self.failures += 1
        return self.delay(self.failures)

    def succeeded(self) -> None:
        """The episode is over: the next failure starts again at ``initial_s``."""
        self.failures = 0

    def delay(self, attempt: int) -> float:
        """The delay before retry number ``attempt`` on this curve (jittered when ``jitter`` is set)."""
        if self.jitter is not None:
            return full_jitter(attempt, self.initial_s, self.max_s, self.jitter)
        return exponential_delay(attempt, self.initial_s, self.max_s)
