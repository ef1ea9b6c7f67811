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
from typing import TYPE_CHECKING, TypedDict

import numpy as np
from PIL import Image

from agent.face import quality
from agent.face.engine import DetectedFace, FaceEngine
from agent.face.liveness import HeadTurnChallenge
from agent.face.reasons import FaceReason
from agent.face.scoring import (
    RESULT_FAILED,
    RESULT_NOT_VERIFIED,
    distance_to_score,
    result_for_score,
)
from core.errors import DeviceTimeout, DriverError
from core.images import ImageError, decode_image, encode_jpeg, normalize_jpeg
from core.stored import FaceRetry

if TYPE_CHECKING:
    from agent.config import FaceSettings
    from core.protocols import CameraSource

log = logging.getLogger(__name__)

MAX_WORKING_SIDE = 1024
"""Larger images are scaled down before detection (faces stay far above the detector's 80 px)."""
CARD_UPSAMPLES = (0, 1, 2)
"""A 102x126 card photo's face is ~60 px, under the HOG window: upsample until one is found."""
FRAME_POLL_S = 1.0
"""Longest single wait for a frame, so the capture deadline is checked at least this often."""
QUALITY_CODES: tuple[tuple[str, FaceReason], ...] = (
    (quality.SEVERAL_FACES, FaceReason.SEVERAL_FACES),
    (quality.TOO_SMALL, FaceReason.FACE_TOO_SMALL),
    (quality.BLURRED, FaceReason.FACE_BLURRED),
    (quality.TOO_DARK, FaceReason.FACE_TOO_DARK),
    (quality.TOO_BRIGHT, FaceReason.FACE_TOO_BRIGHT),
    (quality.NO_FACE, FaceReason.NO_FACE_LIVE),
)
"""Frame reject reasons and their codes; when several rejected frames, the first listed names the capture."""


@dataclasses.dataclass(frozen=True)
class FaceOutcome:
    """The face part of one verification record.

    ``score`` in [0, 1] (faceScore), ``result`` 0 failed / 1 passed / 2 not verified (faceResult),
    ``reason`` one line for the log, ``code`` the same as a ``FaceReason`` for the page.
    ``best_frame_jpeg`` is the cameraImg (the best frame, or the last frame seen when none was
    usable; ``None`` only when the camera gave no frame at all), ``head_jpeg`` the headImg (the card
    photo as JPEG); both EXIF-free and <= 3 MB.
    """

    score: float
    result: int
    reason: str
    """The English line for the log (it quotes distances, frame counts, driver errors)."""
    code: FaceReason
    """Why, as a code: what the record meta and the operator page carry."""
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
    retry: FaceRetry | None = None
    """Set when the best score fell in the grey zone and more frames were read (``[face] retry_band``)."""


class _Common(TypedDict):
    """What every outcome of one capture shares, whatever its verdict."""

    best_frame_jpeg: bytes | None
    head_jpeg: bytes | None
    frames_seen: int
    elapsed_s: float
    camera_error: str | None
    rejects: dict[str, int]
    liveness: str | None


@dataclasses.dataclass(frozen=True)
class CardEncoding:
    """The card photo, prepared once per verification."""

    descriptor: np.ndarray | None
    head_jpeg: bytes | None
    reason: str | None
    """Why the card cannot be compared (None when ``descriptor`` is set)."""
    code: FaceReason | None = None
    """``reason`` as a code."""
    image: np.ndarray | None = dataclasses.field(default=None, repr=False)
    """The card photo's working image and its face, for ``refined`` (None without a descriptor)."""
    face: DetectedFace | None = dataclasses.field(default=None, repr=False)

    def refined(self, engine: FaceEngine) -> CardEncoding:
        """The card with its descriptor averaged with the mirror image's (steadier on a tiny,
        compressed chip photo: docs/face.md); unchanged when there is nothing to refine."""
        if self.descriptor is None or self.image is None or self.face is None:
            return self
        try:
            mirror = engine.encode_mirror(self.image, self.face)
        except Exception as exc:  # the plain descriptor still serves: never lose the frames over it
            log.warning("face engine failed on the mirrored card photo: %s", type(exc).__name__, exc_info=True)
            mirror = None
        if mirror is None:
            return dataclasses.replace(self, image=None, face=None)
        return dataclasses.replace(self, descriptor=(self.descriptor + mirror) / 2, image=None, face=None)


def encode_card(engine: FaceEngine, card_photo: bytes | None) -> CardEncoding:
    """Decode the card photo, find its face (upsampling as needed) and encode it; never raises."""
    if not card_photo:
        return CardEncoding(None, None, "no card photo", FaceReason.NO_CARD_PHOTO)
    try:
        bgr = decode_image(card_photo, what="card photo")
        head = normalize_jpeg(card_photo, what="card photo")
    except ImageError:
        return CardEncoding(None, None, "card photo is not a decodable image", FaceReason.CARD_PHOTO_UNREADABLE)
    try:
        return encode_card_image(engine, bgr, head)
    except Exception as exc:  # an engine failure must not block the desk
        log.warning("face engine failed on the card photo: %s", type(exc).__name__, exc_info=True)
        return CardEncoding(
            None, head, f"face engine failed on the card photo ({type(exc).__name__})", FaceReason.CARD_ENGINE_FAILED
        )


def encode_card_image(engine: FaceEngine, bgr: np.ndarray, head_jpeg: bytes | None = None) -> CardEncoding:
    """Find the card photo's face (upsampling as needed) and encode it. Engine errors propagate."""
    bgr = working_image(bgr)
    for upsample in CARD_UPSAMPLES:
        faces = engine.detect(bgr, upsample=upsample)
        if faces:
            return CardEncoding(engine.encode(bgr, faces[0]), head_jpeg, None, image=bgr, face=faces[0])
    return CardEncoding(None, head_jpeg, "no face found on the card photo", FaceReason.NO_FACE_ON_CARD)


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

    def __init__(
        self,
        engine: FaceEngine,
        card: CardEncoding,
        face: FaceSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        challenge: HeadTurnChallenge | None = None,
        t0: float | None = None,
    ) -> None:
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
        self.compare_limit = face.max_compared_frames
        self.retry_from_score: float | None = None
        """Set when the grey zone's retry started: the best score before it."""
        self.compared_before_retry = 0

    def offer(self, frame: object) -> bool:
        """Consider one frame; True when there is no point reading more."""
        self.frames_seen += 1
        if not (
            isinstance(frame, np.ndarray)
            and frame.dtype == np.uint8
            and frame.ndim == 3
            and frame.shape[2] == 3
            and frame.shape[0] >= 16
            and frame.shape[1] >= 16
        ):
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
            if self.compared >= self.compare_limit:
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
        descriptor = self.card.descriptor
        assert descriptor is not None
        live = self.engine.encode(work, face)
        distance = self.engine.distance(live, descriptor)
        if self._score(distance) < self.face.early_stop_score and self.card.image is not None:
            # Not a clear pass: now the card's mirrored encoding is worth its time (a clear pass,
            # most genuine verifications, never pays for it). Frames compared earlier were clear
            # passes, so only this one is compared again.
            self.card = self.card.refined(self.engine)
            refined = self.card.descriptor
            assert refined is not None  # refining keeps a descriptor
            distance = self.engine.distance(live, refined)
        return distance

    def _done(self) -> bool:
        if self.challenge is not None and not self.challenge.passed:
            return False
        if self.compared >= self.compare_limit:
            return True
        if self.best_distance is None:
            return False
        # in the grey zone's retry a pass is enough: the person is already waiting
        enough = self.face.threshold if self.retry_from_score is not None else self.face.early_stop_score
        return self._score(self.best_distance) >= enough

    def wants_retry(self) -> bool:
        """True when the best score so far lands in the grey zone just below the threshold
        (``[face] retry_band``) and no retry has run yet."""
        if self.retry_from_score is not None or self.face.retry_band <= 0 or self.face.retry_s <= 0:
            return False
        if self.best_distance is None or self.card.descriptor is None:
            return False
        score = self._score(self.best_distance)
        return self.face.threshold - self.face.retry_band <= score < self.face.threshold

    def start_retry(self) -> None:
        """Allow ``max_compared_frames`` more compared frames, ending at the first pass."""
        assert self.best_distance is not None
        self.retry_from_score = self._score(self.best_distance)
        self.compared_before_retry = self.compared
        self.compare_limit = self.compared + self.face.max_compared_frames

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
        common = _Common(
            best_frame_jpeg=best_jpeg,
            head_jpeg=self.card.head_jpeg,
            frames_seen=self.frames_seen,
            elapsed_s=elapsed,
            camera_error=camera_error,
            rejects=dict(self.rejects),
            liveness=self.challenge.reason if self.challenge is not None else None,
        )
        if self.card.reason is not None:
            code = self.card.code or FaceReason.NO_CARD_PHOTO  # encode_card always sets both
            return FaceOutcome(0.0, RESULT_NOT_VERIFIED, self.card.reason, code, **common)
        if self.best_distance is None:
            if camera_error is not None:
                reason, code = f"camera error: {camera_error}", FaceReason.CAMERA_ERROR
            elif self.frames_seen == 0:
                if no_frame_reason is not None:
                    reason, code = no_frame_reason, FaceReason.NO_LIVE_IMAGE
                else:
                    reason, code = f"camera delivered no frame in {elapsed:.1f} s", FaceReason.NO_FRAME
            else:
                reason = f"no usable frame in {elapsed:.1f} s ({self.frames_seen} frames: {self._reject_summary()})"
                code = self._reject_code()
            return FaceOutcome(0.0, RESULT_NOT_VERIFIED, reason, code, **common)
        distance = round(self.best_distance, 4)
        score = self._score(distance)
        result = result_for_score(score, self.face.threshold)
        if result == RESULT_FAILED:
            reason = (
                f"no match: best distance {distance:.3f} over {self.compared} frame(s), "
                f"score {score:.2f} < threshold {self.face.threshold:.2f}"
            )
            code = FaceReason.NO_MATCH
        else:
            reason, code = f"match: distance {distance:.3f}, score {score:.2f}", FaceReason.MATCH
        if self.retry_from_score is not None:
            reason += (
                f" (grey zone: score {self.retry_from_score:.2f} at first, "
                f"{self.compared - self.compared_before_retry} more frame(s) compared)"
            )
        if self.challenge is not None and not self.challenge.passed:
            result, reason, code = RESULT_FAILED, self.challenge.reason, self.challenge.failure_code
        retry = (
            None
            if self.retry_from_score is None
            else FaceRetry(score_before=self.retry_from_score, frames=self.compared - self.compared_before_retry)
        )
        return FaceOutcome(
            score, result, reason, code, distance, best_frame_index=self.best_index, retry=retry, **common
        )

    def _reject_code(self) -> FaceReason:
        """The code of a capture without a usable frame: the first quality reason, in the order the
        desk can act on, that rejected any frame."""
        for why, code in QUALITY_CODES:
            if self.rejects[why]:
                return code
        return FaceReason.NO_USABLE_FRAME

    def _reject_summary(self) -> str:
        return ", ".join(f"{why} x{n}" for why, n in self.rejects.most_common()) or "none compared"


def _challenge(
    face: FaceSettings, on_prompt: Callable[[str], None] | None, rng: random.Random | None
) -> HeadTurnChallenge | None:
    if face.liveness != "head-turn":
        return None
    challenge = HeadTurnChallenge.random(min_turn=face.liveness_min_turn, mirrored=face.camera_mirrored, rng=rng)
    if on_prompt is not None:
        try:
            on_prompt(challenge.prompt)
        except Exception:
            log.warning("liveness prompt callback failed", exc_info=True)
    return challenge


def score_live(
    engine: FaceEngine,
    camera: CameraSource,
    card_photo_jpeg: bytes | None,
    face: FaceSettings,
    *,
    clock: Callable[[], float] = time.monotonic,
    on_prompt: Callable[[str], None] | None = None,
    rng: random.Random | None = None,
    on_retry: Callable[[float], None] | None = None,
) -> FaceOutcome:
    """Score the live face in front of ``camera`` against the card photo. Never raises.

    Reads frames for at most ``face.capture_timeout_s`` (measured with ``clock``). A camera that is
    not open is opened. Camera errors end the capture: faceResult 2 with the reason unless a frame
    was already compared, and ``camera_error`` set either way. With ``face.liveness = "head-turn"``
    the challenge's prompt is passed to ``on_prompt`` (show it to the person) before capture starts.
    When the best score lands in the grey zone (``face.retry_band`` below the threshold), reading
    goes on for up to ``face.retry_s`` more; ``on_retry(retry_s)`` is called first (ask the person
    to face the camera again) and the outcome's ``retry`` says so.
    """
    t0 = clock()
    scorer = Scorer(
        engine,
        encode_card(engine, card_photo_jpeg),
        face,
        clock=clock,
        challenge=_challenge(face, on_prompt, rng),
        t0=t0,
    )
    deadline = scorer.t0 + face.capture_timeout_s
    camera_error: str | None = None
    try:
        if not camera.is_open:
            camera.open()
        _read_until(camera, scorer, deadline, clock)
        if scorer.wants_retry():
            # from the earlier of now and the deadline: a clock pushed far ahead (a stop request)
            # then leaves no time for the retry
            retry_deadline = min(clock(), deadline) + face.retry_s
            if retry_deadline > clock():
                scorer.start_retry()
                _notify(on_retry, face.retry_s, "grey-zone retry")
                _read_until(camera, scorer, retry_deadline, clock)
    except DriverError as exc:
        camera_error = str(exc)
    except Exception as exc:  # a broken driver must not block the desk either
        log.warning("camera driver failed: %s", type(exc).__name__, exc_info=True)
        camera_error = f"camera driver failed: {type(exc).__name__}: {exc}"
    if camera_error is not None:
        log.warning("camera error during face capture: %s", camera_error)
    return scorer.finish(camera_error)


def _read_until(camera: CameraSource, scorer: Scorer, deadline: float, clock: Callable[[], float]) -> None:
    """Offer frames to ``scorer`` until it has enough or ``deadline``; driver errors propagate."""
    while (remaining := deadline - clock()) > 0:
        try:
            frame = camera.read_frame(min(remaining, FRAME_POLL_S))
        except DeviceTimeout:
            continue
        if scorer.offer(frame):
            break


def _notify(callback: Callable[[float], None] | None, value: float, what: str) -> None:
    if callback is None:
        return
    try:
        callback(value)
    except Exception:  # the page is a convenience; the capture goes on
        log.warning("%s callback failed", what, exc_info=True)


def score_frames(
    engine: FaceEngine,
    frames: Iterable[np.ndarray],
    card_photo_jpeg: bytes | None,
    face: FaceSettings,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> FaceOutcome:
    """Like ``score_live`` over given frames (files, a test): no capture timeout, no liveness."""
    t0 = clock()
    scorer = Scorer(engine, encode_card(engine, card_photo_jpeg), face, clock=clock, t0=t0)
    for frame in frames:
        if scorer.offer(frame):
            break
    return scorer.finish(no_frame_reason="no live image given")
