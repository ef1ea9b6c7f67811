"""The face engine (pluggable) and one verification's face scoring.

For the daemon:

- ``load_engine(face_settings) -> FaceEngine``: the engine named by ``[face] engine`` (entry-point
  group ``fvagent.face_engines``); models load lazily (``engine.load()`` loads them now).
- ``score_live(engine, camera, card_photo_jpeg, face_settings, *, clock, on_prompt, rng, on_retry) -> FaceOutcome``:
  compute mode; never raises; ``on_retry(retry_s)`` when the grey zone's retry starts.
- ``relay_outcome(score, result, *, reason, best_frame_jpeg, head_jpeg) -> FaceOutcome``: relay mode;
  raises ``RecordError`` on values that break the rules in ``agent.face.relay``.
- ``reconcile_both(terminal_outcome, engine_outcome) -> FaceOutcome``: mode "both".
- ``FaceReason``: why an outcome is what it is (``FaceOutcome.code``); ``REASON_ZH`` its Chinese.

Nothing here imports dlib or cv2 at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.face.engine import DetectedFace, FaceEngine
from agent.face.reasons import REASON_ZH, FaceReason
from agent.face.relay import reconcile_both, relay_outcome
from agent.face.scoring import (
    RESULT_FAILED,
    RESULT_NOT_VERIFIED,
    RESULT_PASSED,
    distance_to_score,
    result_for_score,
    threshold_distance,
)
from agent.face.session import (
    CardEncoding,
    FaceOutcome,
    Scorer,
    encode_card,
    score_frames,
    score_live,
)
from core.errors import DriverNotFound, FaceError
from core.stored import FaceRetry
from drivers import registry

if TYPE_CHECKING:
    from agent.config import FaceSettings

__all__ = [
    "REASON_ZH",
    "RESULT_FAILED",
    "RESULT_NOT_VERIFIED",
    "RESULT_PASSED",
    "CardEncoding",
    "DetectedFace",
    "FaceEngine",
    "FaceOutcome",
    "FaceReason",
    "FaceRetry",
    "Scorer",
    "distance_to_score",
    "encode_card",
    "load_engine",
    "reconcile_both",
    "relay_outcome",
    "result_for_score",
    "score_frames",
    "score_live",
    "threshold_distance",
]


def load_engine(face: FaceSettings) -> FaceEngine:
    """Build the configured face engine (models load lazily). Raises ``FaceError``."""
    try:
        cls = registry.load_class("face_engine", face.engine)
    except DriverNotFound as exc:
        raise FaceError(
            f"face engine {face.engine!r} is not available: {exc.message}",
            hint=exc.hint or "set [face] engine to an installed engine",
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, FaceEngine)):
        raise FaceError(f"face engine {face.engine!r} is not a FaceEngine ({cls!r})")
    return cls(face)
