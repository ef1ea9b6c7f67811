"""Face scoring without dlib: the score mapping, relay validation, mode "both", quality gates,
head-turn liveness, the scoring session over the fake camera (with a stub engine that reads what
to "see" from marker pixels), calibration arithmetic, and the CLI's argument errors."""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from agent import cli
from agent.config import FaceSettings
from agent.face import (
    DetectedFace,
    FaceEngine,
    FaceOutcome,
    FaceReason,
    distance_to_score,
    quality,
    reconcile_both,
    relay_outcome,
    result_for_score,
    score_frames,
    score_live,
    threshold_distance,
)
from agent.face.calibration import (
    Calibration,
    Photo,
    card_crop,
    list_photos,
    parse_card_size,
)
from agent.face.liveness import HeadTurnChallenge, yaw
from agent.face.session import QUALITY_CODES
from core.errors import RecordError
from core.images import decode_image
from drivers import registry

FACE = FaceSettings()


# -- a stub engine: frames carry what it should "see" in their first pixels --------------------------


def make_frame(
    value: int = 30,
    *,
    faces: int = 1,
    size: int = 150,
    second: int = 0,
    yaw_code: int = 100,
    brightness: int = 128,
    flat: bool = False,
    shape: tuple[int, int] = (240, 320),
) -> np.ndarray:
    """A frame whose face has descriptor value/100, ``faces`` faces, a box of ``size`` px.

    Marker pixels (row 0): [0,0] = (value, faces, size), [0,1] = (yaw_code, second face size, 0).
    The face box is textured (sharp) unless ``flat``, with mean grey ``brightness``.
    """
    h, w = shape
    rng = np.random.default_rng(value)
    frame = np.full((h, w, 3), 128, dtype=np.uint8)
    texture = np.full((size, size, 3), brightness, dtype=np.float64)
    if not flat:
        texture += rng.normal(0, 25, (size, size, 1))
    frame[10 : 10 + size, 10 : 10 + size] = np.clip(texture, 0, 255).astype(np.uint8)
    frame[0, 0] = (value, faces, size)
    frame[0, 1] = (yaw_code, second, 0)
    return frame


def png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame[:, :, ::-1])).save(buf, format="PNG")
    return buf.getvalue()


def _landmarks(yaw_value: float) -> np.ndarray:
    # eyes centred at x=5 and x=45 (distance 40), nose offset by yaw * 40 from their midpoint
    return np.array([[0, 0], [10, 0], [40, 0], [50, 0], [25 + yaw_value * 40, 30]], dtype=np.float64)


class StubEngine(FaceEngine):
    name = "stub"

    def __init__(self, face: FaceSettings = FACE, *, fail_on: int | None = None) -> None:
        super().__init__(face)
        self.encodings = 0
        self.fail_on = fail_on

    def detect(self, bgr: np.ndarray, *, upsample: int = 0) -> list[DetectedFace]:
        value, count, size = (int(v) for v in bgr[0, 0])
        if self.fail_on is not None and value == self.fail_on:
            raise RuntimeError("engine exploded")
        yaw_code, second = int(bgr[0, 1, 0]), int(bgr[0, 1, 1])
        faces = [DetectedFace(10, 10, 10 + size, 10 + size, _landmarks((yaw_code - 100) / 100))] if count else []
        for _ in range(count - 1):
            s = second or size
            faces.append(DetectedFace(200, 10, 200 + s, 10 + s, None))
        return faces

    def encode(self, bgr: np.ndarray, face: DetectedFace) -> np.ndarray:
        self.encodings += 1
        return np.array([bgr[0, 0, 0] / 100.0])

    def encode_mirror(self, bgr: np.ndarray, face: DetectedFace) -> np.ndarray | None:
        return self.encode(bgr, face)  # the marker pixel would move in a flipped image


CARD = png(make_frame(30, size=60, shape=(126, 102)))
"""A card photo whose descriptor is 0.30: a live frame of value v is at distance |v - 30| / 100."""


def fake_camera(frames: list[np.ndarray], tmp_path: Path, **options: Any):  # type: ignore[no-untyped-def]
    paths = []
    for i, frame in enumerate(frames):
        path = tmp_path / f"f{i}.png"
        path.write_bytes(png(frame))
        paths.append(str(path))
    return registry.create("camera", "fake", {"images": paths, "fps": 0, **options})


def settings(**changes: Any) -> FaceSettings:
    return FaceSettings.model_validate({**FACE.model_dump(), **changes})


# -- the score mapping ------------------------------------------------------------------------------


def test_score_mapping_is_logistic_and_monotone() -> None:
    assert distance_to_score(0.5, 0.5, 25) == 0.5
    scores = [distance_to_score(d / 100, 0.5, 25) for d in range(150)]
    assert all(a >= b for a, b in itertools.pairwise(scores))
    assert scores[0] > 0.99 and scores[-1] < 0.0001
    assert distance_to_score(100.0, 0.5, 25) == 0.0  # no overflow
    d = threshold_distance(0.75, 0.5, 25)
    assert math.isclose(d, 0.5 - math.log(3) / 25)
    assert result_for_score(distance_to_score(d - 0.001, 0.5, 25), 0.75) == 1
    assert result_for_score(distance_to_score(d + 0.001, 0.5, 25), 0.75) == 0


def test_default_threshold_is_the_calibrated_one() -> None:
    # docs/face.md: chosen at target_far 0.001 on the shared faces' 102x126 cards (distance 0.5510);
    # tests/test_face_calibration.py checks it against the cross-validated band
    assert threshold_distance(FACE.threshold, FACE.score_midpoint, FACE.score_slope) == pytest.approx(0.551, abs=0.001)
    assert FACE.early_stop_score >= FACE.threshold and FACE.target_far == 0.001


def test_face_settings_order_is_checked() -> None:
    with pytest.raises(ValueError, match="early_stop_score"):
        settings(threshold=0.9, early_stop_score=0.8)
    with pytest.raises(ValueError, match="max_brightness"):
        settings(min_brightness=200, max_brightness=100)


# -- relay mode -------------------------------------------------------------------------------------


def jpeg_with_exif() -> bytes:
    img = Image.new("RGB", (40, 50), (90, 120, 150))
    exif = Image.Exif()
    exif[0x010F] = "TerminalMaker"
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    assert b"Exif" in buf.getvalue()
    return buf.getvalue()


@pytest.mark.parametrize(("score", "result"), [(0.86, 1), ("0.86", "1"), (0.1, 0), (0, 2), (1, 1), (0.0, 0)])
def test_relay_accepts_consistent_values(score: Any, result: Any) -> None:
    out = relay_outcome(score, result)
    assert out.source == "terminal" and out.result == int(result) and out.score == float(score)
    assert out.reason == "relayed from the terminal" and out.code is FaceReason.RELAYED


@pytest.mark.parametrize(
    ("score", "result", "field", "text"),
    [
        (86, 1, "faceScore", "percentage"),
        (-0.1, 0, "faceScore", "[0, 1]"),
        (float("nan"), 0, "faceScore", "number"),
        (True, 1, "faceScore", "number"),
        ("high", 1, "faceScore", "number"),
        (0.5, 3, "faceResult", "0 (failed)"),
        (0.5, True, "faceResult", "0 (failed)"),
        (0.5, 2, "faceScore", "must be 0 when faceResult is 2"),
        (0.0, 1, "faceScore", "cannot have score 0"),
        (1.0, 0, "faceScore", "cannot have score 1"),
    ],
)
def test_relay_rejects_bad_values_naming_the_field(score: Any, result: Any, field: str, text: str) -> None:
    with pytest.raises(RecordError) as info:
        relay_outcome(score, result)
    assert any(f == field and text in rule for f, rule in info.value.problems), info.value.problems


def test_relay_images_become_exif_free_and_bad_ones_are_named() -> None:
    out = relay_outcome(0.9, 1, best_frame_jpeg=jpeg_with_exif(), head_jpeg=png(make_frame()))
    assert out.best_frame_jpeg is not None and b"Exif" not in out.best_frame_jpeg
    assert out.head_jpeg is not None and out.head_jpeg.startswith(b"\xff\xd8\xff")
    with pytest.raises(RecordError) as info:
        relay_outcome(2.0, 1, head_jpeg=b"not an image")
    assert {f for f, _ in info.value.problems} == {"faceScore", "headImg"}


def test_both_mode_keeps_the_terminals_values_and_logs_disagreement(caplog: pytest.LogCaptureFixture) -> None:
    terminal = relay_outcome(0.91, 1)
    engine = FaceOutcome(
        0.02,
        0,
        "no match",
        FaceReason.NO_MATCH,
        0.71,
        best_frame_jpeg=b"\xff\xd8\xffjpeg",
        frames_seen=8,
        elapsed_s=1.2,
    )
    with caplog.at_level(logging.WARNING, logger="agent.face.relay"):
        out = reconcile_both(terminal, engine)
    assert (out.score, out.result, out.source) == (0.91, 1, "terminal")
    assert (out.engine_score, out.engine_result, out.disagrees) == (0.02, 0, True)
    assert out.best_frame_jpeg == b"\xff\xd8\xffjpeg" and out.frames_seen == 8
    assert "engine disagrees" in out.reason and out.code is FaceReason.RELAYED
    assert any("engine result 0" in r.getMessage() for r in caplog.records)

    caplog.clear()
    agree = reconcile_both(terminal, FaceOutcome(0.97, 1, "match", FaceReason.MATCH, 0.3))
    assert not agree.disagrees and "engine agrees" in agree.reason and not caplog.records
    unsure = reconcile_both(terminal, FaceOutcome(0.0, 2, "no usable frame", FaceReason.NO_USABLE_FRAME))
    assert not unsure.disagrees and "could not verify" in unsure.reason


# -- quality gates -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (make_frame(faces=0), quality.NO_FACE),
        (make_frame(size=50), quality.TOO_SMALL),
        (make_frame(brightness=15), quality.TOO_DARK),
        (make_frame(brightness=240), quality.TOO_BRIGHT),
        (make_frame(flat=True), quality.BLURRED),
        (make_frame(faces=2, second=120), quality.SEVERAL_FACES),
        (make_frame(faces=2, second=60), None),  # a small face further back is ignored
        (make_frame(), None),
    ],
)
def test_quality_gates_give_reasons(frame: np.ndarray, reason: str | None) -> None:
    verdict = quality.assess(frame, StubEngine().detect(frame), FACE)
    assert verdict.reason == reason
    assert (verdict.face is None) == (reason is not None)
    assert reason is None or reason in dict(QUALITY_CODES)  # each reason has its FaceReason code


class FixedFaceEngine(StubEngine):
    """Always sees one 100 px face at the same place of whatever image it is given."""

    def detect(self, bgr: np.ndarray, *, upsample: int = 0) -> list[DetectedFace]:
        return [DetectedFace(100, 100, 200, 200, _landmarks(0.0))]

    def encode(self, bgr: np.ndarray, face: DetectedFace) -> np.ndarray:
        return np.array([0.30])


def test_min_face_px_counts_the_cameras_own_pixels() -> None:
    # A 2048 px wide frame is scaled to 1024 for detection; its 100 px face there is 200 camera pixels.
    rng = np.random.default_rng(1)
    big = np.clip(rng.normal(128, 25, (1536, 2048, 3)), 0, 255).astype(np.uint8)
    face = [DetectedFace(100, 100, 200, 200, None)]
    assert quality.assess(big, face, settings(min_face_px=150)).reason == quality.TOO_SMALL
    assert quality.assess(big, face, settings(min_face_px=150), frame_scale=0.5).face is not None
    assert quality.assess(big, face, settings(min_face_px=250), frame_scale=0.5).reason == quality.TOO_SMALL
    out = score_frames(FixedFaceEngine(), [big], CARD, settings(min_face_px=150))
    assert out.result == 1, out.reason


# -- liveness ------------------------------------------------------------------------------------


def test_yaw_sign_and_head_turn_challenge() -> None:
    assert yaw(_landmarks(0.0)) == 0.0 and yaw(_landmarks(0.3)) > 0 > yaw(_landmarks(-0.3))
    left = HeadTurnChallenge("left", min_turn=0.15)
    for value in (0.02, 0.05, 0.1):
        left.observe(_landmarks(value))
    assert not left.passed and "no head turn to the left" in left.reason
    left.observe(_landmarks(0.2))
    assert left.passed and left.reason == "liveness: head turned left"
    right = HeadTurnChallenge("right", min_turn=0.15)
    right.observe(_landmarks(0.0))
    right.observe(_landmarks(0.3))
    assert not right.passed and "wrong way" in right.reason
    mirrored = HeadTurnChallenge("right", min_turn=0.15, mirrored=True)
    mirrored.observe(_landmarks(0.0))
    mirrored.observe(_landmarks(0.3))
    assert mirrored.passed
    assert HeadTurnChallenge.random(min_turn=0.1, rng=random.Random(1)).direction in ("left", "right")
    assert "左" in HeadTurnChallenge("left", min_turn=0.1).prompt


# -- the scoring session -----------------------------------------------------------------------------


def test_clear_pass_stops_early(tmp_path: Path) -> None:
    engine = StubEngine()
    cam = fake_camera([make_frame(value=120), make_frame(value=32), make_frame(value=31)], tmp_path)
    prompts: list[str] = []
    out = score_live(engine, cam, CARD, FACE, on_prompt=prompts.append)
    assert FACE.liveness == "off" and out.liveness is None and not prompts  # liveness is off by default
    assert out.result == 1 and out.distance == pytest.approx(0.02) and out.score >= FACE.early_stop_score
    assert out.frames_seen == 2 and out.best_frame_index == 1  # stopped at the clear pass
    assert out.reason.startswith("match") and out.code is FaceReason.MATCH
    assert cam.is_open  # opened for us when closed; the caller closes it
    best = decode_image(out.best_frame_jpeg or b"")
    assert best.shape == (240, 320, 3) and b"Exif" not in (out.best_frame_jpeg or b"")
    assert decode_image(out.head_jpeg or b"").shape[:2] == (126, 102)
    cam.close()


def test_no_match_compares_up_to_the_limit_and_keeps_the_best(tmp_path: Path) -> None:
    engine = StubEngine()
    face = settings(max_compared_frames=3)
    cam = fake_camera([make_frame(value=v) for v in (100, 95, 110, 40)], tmp_path)
    with cam:
        out = score_live(engine, cam, CARD, face)
    assert out.result == 0 and out.distance == pytest.approx(0.65) and out.frames_seen == 3
    assert "no match" in out.reason and out.best_frame_index == 1 and out.retry is None  # under the grey zone
    assert out.code is FaceReason.NO_MATCH
    assert engine.encodings == 1 + 1 + 3  # the card, its mirror (no clear pass), each compared frame once


# -- the grey zone ([face] retry_band, retry_s) ----------------------------------------------------------
# threshold 0.75 is distance <= 0.5511, the grey zone's bottom (score 0.55) distance 0.587: a frame of
# value 87 (distance 0.57) lands in it, 95 (0.65) under it.


def test_a_score_in_the_grey_zone_reads_more_frames_and_can_pass(tmp_path: Path) -> None:
    engine = StubEngine()
    retries: list[float] = []
    cam = fake_camera([make_frame(value=v) for v in (87, 92, 40, 31)], tmp_path, loop=False)
    with cam:
        out = score_live(engine, cam, CARD, settings(max_compared_frames=2), on_retry=retries.append)
    assert retries == [FACE.retry_s]
    assert out.result == 1 and out.distance == pytest.approx(0.10) and out.frames_seen == 3  # stops at the pass
    assert out.retry is not None and out.retry.frames == 1
    assert out.retry.score_before == distance_to_score(0.57, FACE.score_midpoint, FACE.score_slope)
    assert "grey zone" in out.reason and out.best_frame_index == 2


def test_a_grey_zone_retry_that_finds_no_better_frame_fails(tmp_path: Path) -> None:
    cam = fake_camera([make_frame(value=87)], tmp_path)
    with cam:
        out = score_live(StubEngine(), cam, CARD, settings(max_compared_frames=2))
    assert out.result == 0 and out.frames_seen == 4 and out.retry is not None and out.retry.frames == 2
    assert out.reason.startswith("no match") and "grey zone" in out.reason


def test_a_score_under_the_grey_zone_fails_at_once(tmp_path: Path) -> None:
    retries: list[float] = []
    cam = fake_camera([make_frame(value=95), make_frame(value=40)], tmp_path)
    with cam:
        out = score_live(StubEngine(), cam, CARD, settings(max_compared_frames=1), on_retry=retries.append)
    assert out.result == 0 and out.frames_seen == 1 and out.retry is None and not retries


def test_the_grey_zone_retry_is_bounded_by_retry_s(tmp_path: Path) -> None:
    ticks = iter(np.arange(0, 100, 0.5))  # half a second per look at the clock
    cam = fake_camera([make_frame(value=87), make_frame(size=50)], tmp_path)  # then only faces too small
    with cam:
        out = score_live(
            StubEngine(),
            cam,
            CARD,
            settings(max_compared_frames=50, capture_timeout_s=1.0, retry_s=2.0),
            clock=lambda: float(next(ticks)),
        )
    assert out.result == 0 and out.retry is not None and out.retry.frames < 50  # ended by time, not by count
    assert 1.0 + 2.0 <= out.elapsed_s <= 1.0 + 2.0 + 1.0 and out.rejects.get("face too small", 0) >= 1


def test_a_failing_mirrored_card_encoding_keeps_the_plain_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class NoMirror(StubEngine):
        def encode_mirror(self, bgr: np.ndarray, face: DetectedFace) -> np.ndarray | None:
            raise RuntimeError("mirror exploded")

    cam = fake_camera([make_frame(value=85), make_frame(value=84)], tmp_path)  # passes, no clear pass
    with cam:
        out = score_live(NoMirror(), cam, CARD, settings(max_compared_frames=2))
    assert out.result == 1 and out.distance == pytest.approx(0.54) and out.rejects == {}  # no frame lost
    assert sum("mirrored card" in r.getMessage() for r in caplog.records) == 1  # tried once, logged once


@pytest.mark.parametrize("off", [{"retry_band": 0.0}, {"retry_s": 0.0}])
def test_the_grey_zone_can_be_turned_off(tmp_path: Path, off: dict[str, float]) -> None:
    cam = fake_camera([make_frame(value=87), make_frame(value=40)], tmp_path)
    with cam:
        out = score_live(StubEngine(), cam, CARD, settings(max_compared_frames=1, **off))
    assert out.result == 0 and out.frames_seen == 1 and out.retry is None


def test_no_usable_frame_is_result_2_with_the_reasons(tmp_path: Path) -> None:
    ticks = iter(np.arange(0, 100, 0.25))  # a clock that advances a quarter second per look
    cam = fake_camera([make_frame(size=50), make_frame(brightness=10)], tmp_path)
    with cam:
        out = score_live(StubEngine(), cam, CARD, settings(capture_timeout_s=2.0), clock=lambda: float(next(ticks)))
    assert out.result == 2 and out.score == 0.0 and out.distance is None
    assert "no usable frame" in out.reason and "face too small" in out.reason and "face too dark" in out.reason
    assert out.rejects == {"face too small": 4, "face too dark": 3}
    assert out.code is FaceReason.FACE_TOO_SMALL  # the first quality reason the desk can act on
    assert out.best_frame_jpeg is not None  # the last frame seen, for cameraImg


@pytest.mark.parametrize(
    ("card", "reason", "code"),
    [
        (None, "no card photo", FaceReason.NO_CARD_PHOTO),
        (b"\x00garbage", "card photo is not a decodable image", FaceReason.CARD_PHOTO_UNREADABLE),
        (
            png(make_frame(faces=0, size=60, shape=(126, 102))),
            "no face found on the card photo",
            FaceReason.NO_FACE_ON_CARD,
        ),
    ],
)
def test_bad_card_photo_is_result_2_but_a_frame_is_kept(
    card: bytes | None, reason: str, code: FaceReason, tmp_path: Path
) -> None:
    cam = fake_camera([make_frame(faces=0), make_frame(value=31)], tmp_path)
    with cam:
        out = score_live(StubEngine(), cam, card, FACE)
    assert (out.result, out.reason, out.code) == (2, reason, code)
    assert out.frames_seen == 2 and out.best_frame_jpeg is not None  # stopped at the first good frame
    assert (out.head_jpeg is not None) == (reason == "no face found on the card photo")


def test_camera_that_disappears_ends_with_result_2(tmp_path: Path) -> None:
    cam = registry.create("camera", "fake", {"fault": "disappears", "fault_after_frames": 1, "fps": 0})
    with cam:
        out = score_live(StubEngine(), cam, CARD, FACE)
    assert out.result == 2 and out.camera_error is not None and "disappeared" in out.camera_error
    assert out.reason.startswith("camera error") and out.frames_seen == 1
    assert out.code is FaceReason.CAMERA_ERROR


def test_camera_that_cannot_open_ends_with_result_2(tmp_path: Path) -> None:
    cam = registry.create("camera", "opencv", {"device": str(tmp_path / "none.avi")})
    out = score_live(StubEngine(), cam, CARD, FACE)
    assert out.result == 2 and out.camera_error and "cannot open" in out.reason
    assert out.best_frame_jpeg is None and out.head_jpeg is not None


def test_camera_without_frames_respects_the_capture_timeout(tmp_path: Path) -> None:
    cam = registry.create("camera", "fake", {"fault": "no_frames"})
    with cam:
        out = score_live(StubEngine(), cam, CARD, settings(capture_timeout_s=0.4))
    assert out.result == 2 and out.frames_seen == 0 and "no frame" in out.reason
    assert out.code is FaceReason.NO_FRAME
    assert 0.35 <= out.elapsed_s < 2.0


def test_engine_failures_never_escape(tmp_path: Path) -> None:
    cam = fake_camera([make_frame(value=77), make_frame(value=31)], tmp_path)
    with cam:
        out = score_live(StubEngine(fail_on=77), cam, CARD, FACE)
    assert out.result == 1 and out.rejects == {"engine error": 1}
    broken_card = png(make_frame(value=77, size=60, shape=(126, 102)))
    with fake_camera([make_frame(value=31)], tmp_path) as cam2:
        out2 = score_live(StubEngine(fail_on=77), cam2, broken_card, FACE)
    assert out2.result == 2 and "engine failed on the card photo" in out2.reason
    assert out2.code is FaceReason.CARD_ENGINE_FAILED


def test_broken_frames_are_counted_not_fatal() -> None:
    frames: list[Any] = [np.zeros((4, 4), dtype=np.uint8), "nonsense", make_frame(value=30)]
    out = score_frames(StubEngine(), frames, CARD, FACE)
    assert out.result == 1 and out.rejects == {"bad frame": 2} and out.best_frame_index == 2
    nothing = score_frames(StubEngine(), [], CARD, FACE)
    assert (nothing.reason, nothing.code) == ("no live image given", FaceReason.NO_LIVE_IMAGE)


def test_liveness_on_passes_with_a_turn_and_fails_without(tmp_path: Path) -> None:
    face = settings(liveness="head-turn", capture_timeout_s=1.0)
    prompts: list[str] = []
    turn = [make_frame(value=31, yaw_code=100), make_frame(value=31, yaw_code=125)]  # +0.25: towards image right
    with fake_camera(turn, tmp_path) as cam:
        out = score_live(StubEngine(), cam, CARD, face, on_prompt=prompts.append, rng=_rng_for("left"))
    assert out.result == 1 and out.liveness == "liveness: head turned left" and prompts and "左" in prompts[0]
    assert out.frames_seen == 2  # stopped once both the match and the turn were seen
    with fake_camera(turn, tmp_path) as cam:
        out = score_live(StubEngine(), cam, CARD, face, rng=_rng_for("right"))
    assert out.result == 0 and "wrong way" in out.reason and out.score > 0.9  # the face matched
    assert out.code is FaceReason.LIVENESS_FAILED


def _rng_for(direction: str) -> random.Random:
    for seed in range(100):
        if random.Random(seed).choice(["left", "right"]) == direction:
            return random.Random(seed)
    raise AssertionError("no seed")


# -- calibration arithmetic ---------------------------------------------------------------------------


def test_card_crop_has_the_card_size_and_pads_at_edges() -> None:
    image = np.zeros((200, 200, 3), dtype=np.uint8)
    image[:, :, 2] = np.arange(200, dtype=np.uint8)[None, :]  # red grows left to right
    face = DetectedFace(0, 0, 120, 120)  # at the corner: the crop reaches outside the image
    card = card_crop(image, face, (102, 126))
    assert card.shape == (126, 102, 3)
    assert card[60, 0, 2] == 0  # padded with the edge pixels on the left
    assert parse_card_size("102x126") == (102, 126)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_card_size("102*126")


def test_list_photos_leaves_out_a_photo_filed_under_two_people(tmp_path: Path) -> None:
    for person, name, colour in [
        ("ann", "a1.png", 1),
        ("ann", "a2.png", 2),
        ("bob", "b1.png", 3),
        ("bob", "same.png", 9),
        ("cy", "same.png", 9),
        ("cy", "c1.png", 4),
    ]:
        (tmp_path / person).mkdir(exist_ok=True)
        Image.new("RGB", (8, 8), (colour, 0, 0)).save(tmp_path / person / name)
    labels = [p.label for p in list_photos(tmp_path)]
    assert labels == ["ann/a1.png", "ann/a2.png", "bob/b1.png", "cy/c1.png"]
    with pytest.raises(Exception, match="need two people"):
        list_photos(tmp_path / "ann")


def test_calibration_rates_and_pairs() -> None:
    photos = [Photo("a", Path("a1")), Photo("a", Path("a2")), Photo("b", Path("b1")), Photo("c", Path("c1"))]
    vectors: list[np.ndarray | None] = [np.array([0.0]), np.array([0.3]), np.array([0.9]), None]
    cal = Calibration(photos, vectors, vectors, FACE, None)
    far, frr = cal.rates(FACE.threshold)
    assert far == 0.0 and frr == 0.0  # genuine pair at 0.3 passes, impostors at >= 0.6 fail
    far, frr = cal.rates(0.9999)
    assert frr == 1.0
    pairs = cal.to_json()["pairs"]
    assert len(pairs) == 12 and {tuple(p) for p in pairs} == {("card", "live", "same", "distance", "score", "result")}
    missing = [p for p in pairs if "c1" in (p["card"], p["live"])]
    assert all(p["result"] == 2 and p["distance"] is None for p in missing)
    assert "<- configured" in cal.table()


# -- CLI argument errors (no photos needed) -----------------------------------------------------------


def test_cli_calibrate_errors_name_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["face", "calibrate", str(tmp_path / "nowhere")]) == 1
    assert "is not a folder" in capsys.readouterr().err
    assert cli.main(["face", "calibrate", str(tmp_path), "--card-size", "big"]) == 2
    assert "102x126" in capsys.readouterr().err
    assert cli.main(["face", "compare", str(tmp_path / "card.jpg"), str(tmp_path / "live.jpg")]) == 1
    assert "cannot read card image" in capsys.readouterr().err


def test_cli_face_json_reports_not_verified_for_garbage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    card = tmp_path / "card.jpg"
    card.write_bytes(b"garbage")
    live = tmp_path / "live.txt"
    live.write_text("not an image")
    assert cli.main(["face", "compare", str(card), str(live)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["result"] == 2 and report["reason"] == "card photo is not a decodable image"
    assert report["unreadable"] == [str(live)] and {"distance", "score", "result", "reason"} <= set(report)


def test_agent_face_imports_neither_cv2_nor_dlib() -> None:
    import subprocess
    import sys

    code = "import sys, agent.face, agent.cli.face_cmd; print('cv2' in sys.modules, 'dlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]  # cv2 stays in drivers/; dlib loads only when an engine is used


def test_only_the_5_point_model_and_prebuilt_dlib() -> None:
    # The 68-point model's training data excludes commercial use (the face_recognition wrapper
    # loads it at import); dlib comes from the dlib-bin wheels, never a compile.
    import importlib.metadata
    import importlib.util
    import re
    import tomllib

    from agent.face.dlib_engine import model_paths

    predictor, encoder = model_paths()
    assert (predictor.name, encoder.name) == (
        "shape_predictor_5_face_landmarks.dat",
        "dlib_face_recognition_resnet_model_v1.dat",
    )
    root = Path(__file__).resolve().parent.parent
    forbidden = re.compile(
        r"shape_predictor_68|pose_predictor_model_location|"
        r"^\s*(?:import|from)\s+face_recognition\b(?!_models)",
        re.MULTILINE,
    )
    for folder in ("agent", "drivers", "bench"):
        for path in (root / folder).rglob("*.py"):
            found = forbidden.search(path.read_text(encoding="utf-8"))
            assert found is None, f"{path.relative_to(root)}: {found.group(0) if found else ''}"
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    names = {re.match(r"[A-Za-z0-9._-]+", r).group(0).lower().replace("_", "-") for r in requirements}  # type: ignore[union-attr]
    assert "dlib-bin" in names and not names & {"dlib", "face-recognition"}
    spec = importlib.util.find_spec("dlib")  # finds the package without importing it
    assert spec is not None and spec.origin is not None
    wheel_files = {Path(str(f.locate())).resolve() for f in importlib.metadata.distribution("dlib-bin").files or []}
    assert Path(spec.origin).resolve() in wheel_files  # the dlib we import is dlib-bin's
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("dlib")  # and no compiled dlib beside it
