"""One verification's face scoring: card photo in, camera frames in, a ``FaceOutcome`` out.

``score_live`` never raises for a bad image, a bad camera or an engine failure: whatever happens it
ends within ``face.capture_timeout_s`` (plus one frame's processing) with a result and a reason.

Steps: the card photo is decoded and encoded once; frames are read until the capture time is up;
each frame's largest face passes the quality gates (``agent.face.quality``) or the frame is
counted under its reject reason; each good frame is compared with the card and the closest one is
kept; reading stops early on a clear pass (``early_stop_score``) or after ``max_compared_frames``
compared frames. faceResult 2 (not verified) when the card photo is missing, undecodable or shows
no face, or when no frame was usable; the reason says which.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from agent.errors import DeviceTimeout, DriverError
from agent.face import quality
from agent.face.engine import DetectedFace, FaceEngine
from agent.face.liveness import HeadTurnChallenge
from agent.face.scoring import RESULT_FAILED, RESULT_NOT_VERIFIED, distance_to_score, result_for_score
from agent.images import ImageError, decode_image, encode_jpeg, normalize_jpeg

if TYPE_CHECKING:
    from agent.config import FaceSettings
    from drivers.base import Camera

log = logging.getLogger(__name__)

MAX_WORKING_SIDE = 1024
"""Larger images are scaled down before detection (faces stay far above the detector's 80 px)."""
CARD_UPSAMPLES = (0, 1, 2)
"""A 102x126 card photo's face is ~60 px, under the HOG window: upsample until one is found."""
FRAME_POLL_S = 1.0
"""Longest single wait for a frame, so the capture deadline is checked at least this often."""


@dataclasses.dataclass(frozen=True)
class FaceOutcome:
    """The face part of one verification record.

    ``score`` in [0, 1] (faceScore), ``result`` 0 failed / 1 passed / 2 not verified (faceResult),
    ``reason`` one line for the operator and the log. ``best_frame_jpeg`` is the cameraImg (the
    best frame, or the last frame seen when none was usable; ``None`` only when the camera gave no
    frame at all), ``head_jpeg`` the headImg (the card photo as JPEG); both EXIF-free and <= 3 MB.
    """

    score: float
    result: int
    reason: str
    distance: float | None = None
    best_frame_jpeg: bytes | None = dataclasses.field(default=None, repr=False)
    head_jpeg: bytes | None = dataclasses.field(default=None, repr=False)
    frames_seen: int = 0
    elapsed_s: float = 0.0
    source: str = "engine"
    """"engine" (computed here) or "terminal" (relayed)."""
    camera_error: str | None = None
    """Set when the camera failed during capture: the daemon reports the camera fault."""
    rejects: dict[str, int] = dataclasses.field(default_factory=dict)
    """Frames rejected, by quality reason."""
    liveness: str | None = None
    """The liveness verdict when a challenge ran."""
    engine_score: float | None = None
    """Mode "both": the engine's own score beside the terminal's."""
    engine_result: int | None = None
    """Mode "both": the engine's own result beside the terminal's."""
    disagrees: bool = False
    """Mode "both": engine and terminal gave different pass/fail results."""
    best_frame_index: int | None = None
    """Which frame (0-based, in reading order) was the closest; None when none was compared."""


@dataclasses.dataclass(frozen=True)
class CardEncoding:
    """The card photo, prepared once per verification."""

    descriptor: np.ndarray | None
    head_jpeg: bytes | None
    reason: str | None
    """Why the card cannot be compared (None when ``descriptor`` is set)."""


def encode_card(engine: FaceEngine, card_photo: bytes | None) -> CardEncoding:
    """Decode the card photo, find its face (upsampling as needed) and encode it; never raises."""
    if not card_photo:
        return CardEncoding(None, None, "no card photo")
    try:
        bgr = decode_image(card_photo, what="card photo")
        head = normalize_jpeg(card_photo, what="card photo")
    except ImageError:
        return CardEncoding(None, None, "card photo is not a decodable image")
    try:
        bgr = working_image(bgr)
        for upsample in CARD_UPSAMPLES:
            faces = engine.detect(bgr, upsample=upsample)
            if faces:
                return CardEncoding(engine.encode(bgr, faces[0]), head, None)
    except Exception as exc:  # an engine failure must not block the desk
        log.warning("face engine failed on the card photo: %s", type(exc).__name__, exc_info=True)
        return CardEncoding(None, head, f"face engine failed on the card photo ({type(exc).__name__})")
    return CardEncoding(None, head, "no face found on the card photo")


def working_image(bgr: np.ndarray, max_side: int = MAX_WORKING_SIDE) -> np.ndarray:
    """``bgr`` scaled down so its longer side is at most ``max_side`` (unchanged when smaller)."""
    h, w = bgr.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return bgr
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    rgb = Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1])).resize(size, Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])


class Scorer:
    """The state of one verification: feed frames to ``offer`` until it returns True, then ``finish``.

    Used by ``score_live`` (frames from a camera) and ``score_frames`` (frames from files).
    """

    def __init__(self, engine: FaceEngine, card: CardEncoding, face: FaceSettings, *,
                 clock: Callable[[], float] = time.monotonic, challenge: HeadTurnChallenge | None = None,
                 t0: float | None = None) -> None:
        self.engine = engine
        self.card = card
        self.face = face
        self.clock = clock
        self.challenge = challenge
        self.t0 = clock() if t0 is None else t0
        self.frames_seen = 0
        self.compared = 0
        self.rejects: collections.Counter[str] = collections.Counter()
        self.best_distance: float | None = None
        self.best_frame: np.ndarray | None = None
        self.best_index: int | None = None
        self.fallback_frame: np.ndarray | None = None
        self._engine_error_logged = False

    def offer(self, frame: object) -> bool:
        """Consider one frame; True when there is no point reading more."""
        self.frames_seen += 1
        if not (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
                and frame.shape[0] >= 16 and frame.shape[1] >= 16):
            self.rejects["bad frame"] += 1
            return False
        self.fallback_frame = frame
        try:
            work = working_image(frame)
            faces = self.engine.detect(work)
            verdict = quality.assess(work, faces, self.face, frame_scale=work.shape[1] / frame.shape[1])
            if self.challenge is not None and faces:
                self.challenge.observe(faces[0].landmarks)
            if verdict.face is None:
                self.rejects[verdict.reason or quality.NO_FACE] += 1
                return self.best_distance is not None and self._done()  # a turned head may end a challenge
            if self.card.descriptor is None:  # nothing to compare: keep the first good frame for cameraImg
                self.best_frame = frame
                return self.challenge is None or self.challenge.passed
            if self.compared >= self.face.max_compared_frames:
                return self._done()
            distance = self._compare(work, verdict.face)
        except Exception as exc:  # an engine failure on one frame must not end the verification
            self.rejects["engine error"] += 1
            if not self._engine_error_logged:
                log.warning("face engine failed on a frame: %s", type(exc).__name__, exc_info=True)
                self._engine_error_logged = True
            return False
        self.compared += 1
        if self.best_distance is None or distance < self.best_distance:
            self.best_distance, self.best_frame, self.best_index = distance, frame, self.frames_seen - 1
        return self._done()

    def _compare(self, work: np.ndarray, face: DetectedFace) -> float:
        assert self.card.descriptor is not None
        return self.engine.distance(self.engine.encode(work, face), self.card.descriptor)

    def _done(self) -> bool:
        if self.challenge is not None and not self.challenge.passed:
            return False
        if self.compared >= self.face.max_compared_frames:
            return True
        return self.best_distance is not None and self._score(self.best_distance) >= self.face.early_stop_score

    def _score(self, distance: float) -> float:
        return distance_to_score(distance, self.face.score_midpoint, self.face.score_slope)

    def finish(self, camera_error: str | None = None, *, no_frame_reason: str | None = None) -> FaceOutcome:
        """The outcome from what was seen; ``camera_error`` when the camera failed during capture."""
        elapsed = round(max(0.0, self.clock() - self.t0), 3)
        frame = self.best_frame if self.best_frame is not None else self.fallback_frame
        best_jpeg = None
        if frame is not None:
            try:
                best_jpeg = encode_jpeg(frame)
            except ImageError:
                log.warning("best frame could not be encoded within the size limit")
        common = dict(best_frame_jpeg=best_jpeg, head_jpeg=self.card.head_jpeg, frames_seen=self.frames_seen,
                      elapsed_s=elapsed, camera_error=camera_error, rejects=dict(self.rejects),
                      liveness=self.challenge.reason if self.challenge is not None else None)
        if self.card.reason is not None:
            return FaceOutcome(0.0, RESULT_NOT_VERIFIED, self.card.reason, **common)  # type: ignore[arg-type]
        if self.best_distance is None:
            if camera_error is not None:
                reason = f"camera error: {camera_error}"
            elif self.frames_seen == 0:
                reason = no_frame_reason or f"camera delivered no frame in {elapsed:.1f} s"
            else:
                reason = f"no usable frame in {elapsed:.1f} s ({self.frames_seen} frames: {self._reject_summary()})"
            return FaceOutcome(0.0, RESULT_NOT_VERIFIED, reason, **common)  # type: ignore[arg-type]
        distance = round(self.best_distance, 4)
        score = self._score(distance)
        result = result_for_score(score, self.face.threshold)
        if result == RESULT_FAILED:
            reason = (f"no match: best distance {distance:.3f} over {self.compared} frame(s), "
                      f"score {score:.2f} < threshold {self.face.threshold:.2f}")
        else:
            reason = f"match: distance {distance:.3f}, score {score:.2f}"
        if self.challenge is not None and not self.challenge.passed:
            result, reason = RESULT_FAILED, self.challenge.reason
        return FaceOutcome(score, result, reason, distance, best_frame_index=self.best_index,
                           **common)  # type: ignore[arg-type]  # type: ignore[arg-type]

    def _reject_summary(self) -> str:
        return ", ".join(f"{why} x{n}" for why, n in self.rejects.most_common()) or "none compared"


def _challenge(face: FaceSettings, on_prompt: Callable[[str], None] | None,
               rng: random.Random | None) -> HeadTurnChallenge | None:
    if face.liveness != "head-turn":
        return None
    challenge = HeadTurnChallenge.random(min_turn=face.liveness_min_turn, mirrored=face.camera_mirrored, rng=rng)
    if on_prompt is not None:
        try:
            on_prompt(challenge.prompt)
        except Exception:
            log.warning("liveness prompt callback failed", exc_info=True)
    return challenge


def score_live(engine: FaceEngine, camera: Camera, card_photo_jpeg: bytes | None, face: FaceSettings, *,
               clock: Callable[[], float] = time.monotonic, on_prompt: Callable[[str], None] | None = None,
               rng: random.Random | None = None) -> FaceOutcome:
    """Score the live face in front of ``camera`` against the card photo. Never raises.

    Reads frames for at most ``face.capture_timeout_s`` (measured with ``clock``). A camera that is
    not open is opened. Camera errors end the capture: faceResult 2 with the reason unless a frame
    was already compared, and ``camera_error`` set either way. With ``face.liveness = "head-turn"``
    the challenge's prompt is passed to ``on_prompt`` (show it to the person) before capture starts.
    """
    t0 = clock()
    scorer = Scorer(engine, encode_card(engine, card_photo_jpeg), face, clock=clock,
                    challenge=_challenge(face, on_prompt, rng), t0=t0)
    deadline = scorer.t0 + face.capture_timeout_s
    camera_error: str | None = None
    try:
        if not camera.is_open:
            camera.open()
        while (remaining := deadline - clock()) > 0:
            try:
                frame = camera.read_frame(min(remaining, FRAME_POLL_S))
            except DeviceTimeout:
                continue
            if scorer.offer(frame):
                break
    except DriverError as exc:
        camera_error = str(exc)
    except Exception as exc:  # a broken driver must not block the desk either
        log.warning("camera driver failed: %s", type(exc).__name__, exc_info=True)
        camera_error = f"camera driver failed: {type(exc).__name__}: {exc}"
    if camera_error is not None:
        log.warning("camera error during face capture: %s", camera_error)
    return scorer.finish(camera_error)


def score_frames(engine: FaceEngine, frames: Iterable[np.ndarray], card_photo_jpeg: bytes | None,
                 face: FaceSettings, *, clock: Callable[[], float] = time.monotonic) -> FaceOutcome:
    """Like ``score_live`` over given frames (files, a test): no capture timeout, no liveness."""
    t0 = clock()
    scorer = Scorer(engine, encode_card(engine, card_photo_jpeg), face, clock=clock, t0=t0)
    for frame in frames:
        if scorer.offer(frame):
            break
    return scorer.finish(no_frame_reason="no live image given")
