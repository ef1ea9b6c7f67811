"""Distance -> score -> faceResult: the one documented, monotone mapping.

``score = 1 / (1 + exp(slope * (distance - midpoint)))``: a distance equal to ``midpoint`` scores
0.5, smaller distances score towards 1, larger towards 0; ``slope`` sets how fast. faceResult is 1
when the score is at least ``threshold``, else 0. The distance the threshold corresponds to is
``midpoint - ln(threshold / (1 - threshold)) / slope`` (``threshold_distance``).
"""

from __future__ import annotations

import math

RESULT_FAILED = 0
RESULT_PASSED = 1
RESULT_NOT_VERIFIED = 2


def distance_to_score(distance: float, midpoint: float, slope: float) -> float:
    """Map a descriptor distance to a score in [0, 1] (monotone decreasing), rounded to 4 places."""
    x = slope * (distance - midpoint)
    if x > 700:  # exp overflows past ~709; the score is 0 to any precision we keep
        return 0.0
    return round(1.0 / (1.0 + math.exp(x)), 4)


def threshold_distance(threshold: float, midpoint: float, slope: float) -> float:
    """The largest distance whose score still reaches ``threshold`` (0 < threshold < 1)."""
    return midpoint - math.log(threshold / (1.0 - threshold)) / slope


def result_for_score(score: float, threshold: float) -> int:
    """faceResult: 1 (passed) when ``score >= threshold``, else 0 (failed)."""
    return RESULT_PASSED if score >= threshold else RESULT_FAILED
