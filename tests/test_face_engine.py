"""The dlib engine end to end on the shared test faces, through the fake camera and the CLI.

The faces are read from ../shared/data/faces at run time (``faces_dir``); derived frames are
written only to tmp_path. dlib encodes a face in ~90 ms on a shared CPU, so the whole file stays
around thirty encodings with one engine per session.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFilter

from agent import cli
from agent.config import FaceSettings
from agent.face import FaceEngine, encode_card, load_engine, score_live
from agent.face.calibration import card_crop
from agent.face.session import working_image
from core.errors import FaceError
from core.images import MAX_IMAGE_BYTES, decode_image
from drivers import registry

pytestmark = pytest.mark.faces

FACE = FaceSettings()


@pytest.fixture(scope="session")
def engine() -> FaceEngine:
    eng = load_engine(FACE)
    eng.load()
    return eng


def photo(faces_dir: Path, rel: str) -> np.ndarray:
    return working_image(decode_image((faces_dir / rel).read_bytes(), what=rel))


def jpeg(bgr: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1])).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def camera_of(frames: list[np.ndarray], tmp_path: Path, **options: Any):  # type: ignore[no-untyped-def]
    paths = []
    for i, frame in enumerate(frames):
        path = tmp_path / f"frame{i}.png"
        Image.fromarray(np.ascontiguousarray(frame[:, :, ::-1])).save(path)
        paths.append(str(path))
    return registry.create("camera", "fake", {"images": paths, "fps": 0, **options})


def settings(**changes: Any) -> FaceSettings:
    return FaceSettings.model_validate({**FACE.model_dump(), **changes})


def test_load_engine_names_an_unknown_engine() -> None:
    with pytest.raises(FaceError, match="installed: dlib"):
        load_engine(settings(engine="acme"))


def test_same_person_passes_and_stops_at_once(engine: FaceEngine, faces_dir: Path, tmp_path: Path) -> None:
    card = (faces_dir / "obama/face_recognition-obama.jpg").read_bytes()
    with camera_of([photo(faces_dir, "obama/face_recognition-obama2.jpg")], tmp_path, frame_size=[640, 480]) as cam:
        out = score_live(engine, cam, card, FACE)
    assert out.result == 1 and out.distance is not None and out.distance < 0.45, out
    assert out.frames_seen == 1  # a clear pass: no more frames read
    assert out.best_frame_jpeg is not None and len(out.best_frame_jpeg) <= MAX_IMAGE_BYTES
    assert decode_image(out.best_frame_jpeg).shape == (480, 640, 3)
    assert out.head_jpeg is not None and b"Exif" not in out.head_jpeg[:4096]
    assert out.elapsed_s < 5.0


def test_other_person_fails(engine: FaceEngine, faces_dir: Path, tmp_path: Path) -> None:
    card = (faces_dir / "obama/face_recognition-obama.jpg").read_bytes()
    frames = [photo(faces_dir, "biden/face_recognition-biden2.jpg"), photo(faces_dir, "clapton/openface-clapton-2.jpg")]
    with camera_of(frames, tmp_path) as cam:
        out = score_live(engine, cam, card, settings(max_compared_frames=2))
    assert out.result == 0 and out.distance is not None and out.distance > 0.6 and out.score < 0.05
    assert out.frames_seen == 2 and "no match" in out.reason


def test_chip_sized_card_of_the_same_person_passes(engine: FaceEngine, faces_dir: Path, tmp_path: Path) -> None:
    source = photo(faces_dir, "kit_harington/face_recognition-john2.jpeg")
    face = engine.detect(source)[0]
    card = jpeg(card_crop(source, face, (102, 126)), quality=80)
    assert encode_card(engine, card).descriptor is not None  # the ~60 px face is found by upsampling
    live = photo(faces_dir, "kit_harington/face_recognition-johnsnow_test1.jpg")
    with camera_of([live], tmp_path) as cam:
        out = score_live(engine, cam, card, settings(max_compared_frames=1))
    assert out.result == 1, out
    assert decode_image(out.head_jpeg or b"").shape[:2] == (126, 102)


def test_quality_gates_on_real_frames(engine: FaceEngine, faces_dir: Path, tmp_path: Path) -> None:
    img = photo(faces_dir, "obama/face_recognition-obama2.jpg")
    dark = (img * 0.22).astype(np.uint8)
    blurred = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(5)))
    small = np.asarray(Image.fromarray(img).resize((img.shape[1] // 4, img.shape[0] // 4)))
    card = (faces_dir / "obama/face_recognition-obama.jpg").read_bytes()
    ticks = iter(np.arange(0, 100, 0.5))
    with camera_of([dark, blurred, small], tmp_path) as cam:
        out = score_live(engine, cam, card, settings(capture_timeout_s=3.0), clock=lambda: float(next(ticks)))
    assert out.result == 2 and out.frames_seen == 5
    assert set(out.rejects) == {"face too dark", "face blurred", "face too small"}, out.rejects
    assert "no usable frame" in out.reason


def test_two_people_in_front_of_the_camera(engine: FaceEngine, faces_dir: Path, tmp_path: Path) -> None:
    a = Image.fromarray(photo(faces_dir, "obama/face_recognition-obama2.jpg")).resize((480, 920))
    b = Image.fromarray(photo(faces_dir, "biden/face_recognition-biden2.jpg")).resize((480, 480))
    canvas = Image.new("RGB", (960, 920), (128, 128, 128))
    canvas.paste(a, (0, 0))
    canvas.paste(b, (480, 0))
    ticks = iter(np.arange(0, 100, 0.6))
    with camera_of([np.asarray(canvas)], tmp_path) as cam:
        out = score_live(engine, cam, None, settings(capture_timeout_s=1.0), clock=lambda: float(next(ticks)))
    assert out.result == 2 and out.reason == "no card photo"
    assert out.rejects.get("more than one face", 0) >= 1


def test_card_photo_without_a_face(engine: FaceEngine, faces_dir: Path, tmp_path: Path) -> None:
    grey = jpeg(np.full((126, 102, 3), 128, dtype=np.uint8))
    with camera_of([photo(faces_dir, "obama/face_recognition-obama2.jpg")], tmp_path) as cam:
        out = score_live(engine, cam, grey, FACE)
    assert (out.result, out.reason) == (2, "no face found on the card photo")
    assert out.best_frame_jpeg is not None and out.head_jpeg is not None


def test_camera_that_vanishes_mid_capture(engine: FaceEngine, faces_dir: Path) -> None:
    card = (faces_dir / "obama/face_recognition-obama.jpg").read_bytes()
    cam = registry.create("camera", "fake", {"fault": "disappears", "fault_after_frames": 2, "fps": 0})
    with cam:
        out = score_live(engine, cam, card, FACE)
    assert out.result == 2 and out.camera_error and out.frames_seen == 2
    assert out.best_frame_jpeg is not None  # the grey frames it did send


def _rng_for(direction: str) -> random.Random:
    return next(random.Random(s) for s in range(100) if random.Random(s).choice(["left", "right"]) == direction)


@pytest.mark.parametrize(("direction", "result"), [("left", 1), ("right", 0)])
def test_head_turn_liveness(engine: FaceEngine, faces_dir: Path, tmp_path: Path, direction: str, result: int) -> None:
    # obama.jpg faces the camera; in obama1.jpg his head is turned towards the image's right (his left)
    card = (faces_dir / "obama/face_recognition-obama3.jpg").read_bytes()
    frames = [
        photo(faces_dir, "obama/face_recognition-obama.jpg"),
        photo(faces_dir, "obama/face_recognition-obama1.jpg"),
    ]
    # "left" ends early on match + turn; "right" runs to the end of the capture time, so keep it short
    face = settings(liveness="head-turn", max_compared_frames=2, capture_timeout_s=5.0 if result else 1.5)
    with camera_of(frames, tmp_path, loop=False) as cam:
        out = score_live(engine, cam, card, face, rng=_rng_for(direction))
    assert out.result == result, out
    assert out.liveness is not None and out.liveness.startswith("liveness")
    if result == 0:
        assert out.reason == out.liveness and out.distance is not None and out.distance < 0.5  # right face, no turn


def test_cli_compare_prints_the_best_live_image(faces_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    card = faces_dir / "biden/face_recognition-biden.jpg"
    lives = [faces_dir / "clapton/openface-clapton-2.jpg", faces_dir / "biden/face_recognition-biden2.jpg"]
    assert cli.main(["face", "compare", str(card), *map(str, lives)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["result"] == 1 and report["best_live"] == str(lives[1])
    assert 0 < report["distance"] < 0.45 and report["score"] >= FACE.threshold


def test_cli_calibrate_json_on_a_small_set(faces_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for person in ("biden", "clapton", "lennon"):
        (tmp_path / person).symlink_to(faces_dir / person, target_is_directory=True)
    assert cli.main(["face", "calibrate", str(tmp_path), "--card-size", "102x126", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= {"threshold", "far", "frr", "pairs", "far_upper_95", "cross_validated", "chosen"}
    assert report["threshold"] == FACE.threshold and report["target_far"] == FACE.target_far
    assert report["impostor_pairs"] == 24 and report["far_upper_95"] == pytest.approx(1 - 0.05 ** (1 / 24), abs=1e-6)
    assert report["cross_validated"]["folds"] == 0  # three people: too few to halve
    assert set(report["cross_validated"]) >= {"frr_mean", "frr_max", "far_mean", "far_max"}
    pairs = report["pairs"]
    assert len(pairs) == 6 * 5 and sum(p["same"] for p in pairs) == 6
    assert report["far"] == 0.0
    assert all(p["result"] == 0 for p in pairs if not p["same"])
    assert all(p["distance"] < 0.6 for p in pairs if p["same"])
    chosen = report["chosen"]
    assert chosen["false_accepts"] == 0 and 0.4 < chosen["distance"] < min(
        p["distance"] for p in pairs if not p["same"]
    )
