"""Relay mode: record the score and result a terminal computed, after checking they make sense.

Rules for a relayed pair (each broken rule is one problem in the ``RecordError``):

- ``score`` is a number in [0, 1] (a JSON number or a decimal string; not a bool, NaN or infinity);
  a terminal that reports percentages must be configured to send fractions;
- ``result`` is 0 (failed), 1 (passed) or 2 (not verified), as a number or a one-digit string;
- consistency: result 2 carries score 0 (nothing was compared); result 1 needs a score above 0;
  result 0 needs a score below 1. The terminal's own threshold is unknown, so nothing stricter.

Mode "both": ``reconcile_both`` keeps the terminal's values as the record's and logs a warning
where the engine's pass/fail differs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

from agent.face.reasons import FaceReason
from agent.face.scoring import RESULT_FAILED, RESULT_NOT_VERIFIED, RESULT_PASSED
from agent.face.session import FaceOutcome
from core.errors import RecordError
from core.images import ImageError, normalize_jpeg

log = logging.getLogger(__name__)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def relay_outcome(
    score: object,
    result: object,
    *,
    reason: str | None = None,
    best_frame_jpeg: bytes | None = None,
    head_jpeg: bytes | None = None,
) -> FaceOutcome:
    """Validate a terminal's face score and result into a ``FaceOutcome`` (``source="terminal"``).

    Images, when given, are made EXIF-free JPEGs within 3 MB. Raises ``RecordError`` listing each
    problem as ``(field, rule)`` with faceScore / faceResult / cameraImg / headImg as field names.
    """
    problems: list[tuple[str, str]] = []
    number = _number(score)
    if number is None:
        problems.append(("faceScore", f"must be a number in [0, 1], got {score!r}"))
    elif not 0.0 <= number <= 1.0:
        problems.append(("faceScore", f"must be in [0, 1], got {number:g} (send a fraction, not a percentage)"))
    code: int | None = None
    if isinstance(result, int) and not isinstance(result, bool) and result in (0, 1, 2):
        code = result
    elif isinstance(result, str) and result.strip() in ("0", "1", "2"):
        code = int(result.strip())
    else:
        problems.append(("faceResult", f"must be 0 (failed), 1 (passed) or 2 (not verified), got {result!r}"))
    if number is not None and 0.0 <= number <= 1.0 and code is not None:
        if code == RESULT_NOT_VERIFIED and number != 0.0:
            problems.append(("faceScore", f"must be 0 when faceResult is 2 (not verified), got {number:g}"))
        elif code == RESULT_PASSED and number == 0.0:
            problems.append(("faceScore", "a passed result (faceResult 1) cannot have score 0"))
        elif code == RESULT_FAILED and number == 1.0:
            problems.append(("faceScore", "a failed result (faceResult 0) cannot have score 1"))
    images: dict[str, bytes | None] = {}
    for field, data in (("cameraImg", best_frame_jpeg), ("headImg", head_jpeg)):
        try:
            images[field] = normalize_jpeg(data, what=field) if data else None
        except ImageError as exc:
            problems.append((field, str(exc)))
    if problems:
        raise RecordError(
            "the terminal's face values are invalid",
            problems=problems,
            hint="faceScore is a fraction in [0, 1]; faceResult 0, 1 or 2; images JPEG",
        )
    assert number is not None and code is not None
    return FaceOutcome(
        round(number, 4),
        code,
        reason or "relayed from the terminal",
        FaceReason.RELAYED,
        source="terminal",
        best_frame_jpeg=images["cameraImg"],
        head_jpeg=images["headImg"],
    )


def reconcile_both(terminal: FaceOutcome, engine: FaceOutcome) -> FaceOutcome:
    """Mode "both": the terminal's score and result as the record's, the engine's kept beside them.

    Images come from the terminal when it sent them, else from the engine. A pass/fail disagreement
    (both results 0 or 1 and different) is logged as a warning and flagged with ``disagrees``; an
    engine that could not verify (result 2) is noted in the reason but is no disagreement.
    """
    both_judged = terminal.result in (0, 1) and engine.result in (0, 1)
    disagrees = both_judged and terminal.result != engine.result
    if disagrees:
        log.warning(
            "face: terminal result %d (score %.2f) but engine result %d (score %.2f, distance %s)",
            terminal.result,
            terminal.score,
            engine.result,
            engine.score,
            engine.distance,
        )
        note = f"engine disagrees: result {engine.result}, score {engine.score:.2f}"
    elif engine.result == RESULT_NOT_VERIFIED:
        note = f"engine could not verify: {engine.reason}"
    else:
        note = f"engine agrees (score {engine.score:.2f})"
    return dataclasses.replace(
        terminal,
        reason=f"{terminal.reason}; {note}",
        best_frame_jpeg=terminal.best_frame_jpeg or engine.best_frame_jpeg,
        head_jpeg=terminal.head_jpeg or engine.head_jpeg,
        frames_seen=engine.frames_seen,
        elapsed_s=engine.elapsed_s,
        camera_error=engine.camera_error,
        rejects=engine.rejects,
        liveness=engine.liveness,
        engine_score=engine.score,
        engine_result=engine.result,
        disagrees=disagrees,
    )
