"""Optional head-turn liveness: ask for a turn to the left or right and check it in the landmarks.

Judged from dlib's 5-point landmarks only (the 68-point model is not for commercial use). The yaw
measure is the sideways offset of the nose base from the midpoint of the eyes, in eye distances:
about 0 when facing the camera, positive when the head turns towards the image's right. The first
face seen sets the baseline; the challenge passes when a later face is turned by at least
``liveness_min_turn`` in the asked direction.

Limits (docs/face.md): it defeats a flat photo held up to the camera (turning a flat photo does not
move its nose relative to its eyes), but not a video of the person turning, a bent photo, or a
mask. It slows the verification by the time the person needs to turn (about a second).
"""

from __future__ import annotations

import random

import numpy as np

from agent.face.reasons import FaceReason

PROMPTS = {
    "left": "请向左转头 (turn your head to the left)",
    "right": "请向右转头 (turn your head to the right)",
}


def yaw(landmarks: np.ndarray) -> float:
    """Nose offset from the eyes' midpoint, in eye distances (+: towards the image's right)."""
    pts = np.asarray(landmarks, dtype=np.float64)
    eye_a, eye_b, nose = pts[0:2].mean(axis=0), pts[2:4].mean(axis=0), pts[4]
    eye_dist = float(np.linalg.norm(eye_a - eye_b))
    if eye_dist < 1e-6:
        return 0.0
    return float((nose[0] - (eye_a[0] + eye_b[0]) / 2) / eye_dist)


class HeadTurnChallenge:
    """One challenge: feed it each frame's landmarks with ``observe``; read ``passed`` and ``reason``."""

    def __init__(self, direction: str, *, min_turn: float, mirrored: bool = False) -> None:
        if direction not in PROMPTS:
            raise ValueError(f"direction must be 'left' or 'right', not {direction!r}")
        self.direction = direction
        self.min_turn = min_turn
        # The person's left is the image's right in an unmirrored camera picture.
        self._sign = (1.0 if direction == "left" else -1.0) * (-1.0 if mirrored else 1.0)
        self.baseline: float | None = None
        self.best_turn = 0.0
        self.wrong_turn = 0.0
        self.passed = False

    @classmethod
    def random(cls, *, min_turn: float, mirrored: bool = False, rng: random.Random | None = None) -> HeadTurnChallenge:
        """A challenge in a random direction (unpredictable for a replayed video)."""
        return cls((rng or random.SystemRandom()).choice(["left", "right"]), min_turn=min_turn, mirrored=mirrored)

    @property
    def prompt(self) -> str:
        return PROMPTS[self.direction]

    def observe(self, landmarks: np.ndarray | None) -> None:
        if landmarks is None or self.passed:
            return
        value = yaw(landmarks)
        if self.baseline is None:
            self.baseline = value
            return
        turn = self._sign * (value - self.baseline)
        self.best_turn = max(self.best_turn, turn)
        self.wrong_turn = max(self.wrong_turn, -turn)
        if turn >= self.min_turn:
            self.passed = True

    @property
    def failure_code(self) -> FaceReason:
        """Why the challenge was not met, as a code (meaningless once ``passed``)."""
        return FaceReason.LIVENESS_NO_FACE if self.baseline is None else FaceReason.LIVENESS_FAILED

    @property
    def reason(self) -> str:
        if self.passed:
            return f"liveness: head turned {self.direction}"
        if self.baseline is None:
            return "liveness: no face seen for the head-turn challenge"
        if self.wrong_turn >= self.min_turn:
            return f"liveness failed: head turned the wrong way (asked {self.direction})"
        return (
            f"liveness failed: no head turn to the {self.direction} seen "
            f"(turn {self.best_turn:.2f} < {self.min_turn:.2f} eye distances)"
        )
