"""Completing held records: the meta the verifier stored beside a held record reaches complete_held.

The verifier marks a held record ``face_result_pending`` (held before a face result existed) and
``camera_placeholder`` (cameraImg is the grey stand-in, not a person). ``complete_held`` must score the
stored live photo only when both say so; these tests go through ``Outbox.release_held`` as the service
does, so the guard is tested where it is used.
"""

from __future__ import annotations

import base64
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import Settings, parse_config
from agent.face.engine import DetectedFace, FaceEngine
from agent.outbox import Outbox
from agent.service.verification import HELD_NO_DECODER, complete_held, placeholder_jpeg
from tests.test_outbox_support import jpeg, record, storage

EXAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "fvagent.example.toml"
WLT = b"WLT" + bytes(61)


class RecordingEngine(FaceEngine):
    """An engine that finds no face and notes every image it was asked to look at."""

    name = "recording"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.face)
        self.looked_at: list[tuple[int, ...]] = []

    def detect(self, bgr: np.ndarray, *, upsample: int = 0) -> list[DetectedFace]:
        self.looked_at.append(tuple(bgr.shape))
        return []

    def encode(self, bgr: np.ndarray, face: DetectedFace) -> np.ndarray:
        raise AssertionError("no face was detected, so none is encoded")


@pytest.fixture
def settings() -> Settings:
    raw = tomllib.loads(EXAMPLE_CONFIG.read_text("utf-8"))
    raw["face"] = {**raw.get("face", {}), "mode": "compute"}
    return parse_config(raw, validate_drivers=False)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox.open(storage(tmp_path))
    yield box
    box.close()


def _hold(outbox: Outbox, *, camera_jpeg: bytes, meta: dict[str, Any]) -> int:
    """A record held for its card photo, as the verifier stores it: no headImg, faceResult 2, the WLT kept."""
    payload = {k: v for k, v in record(1).items() if k != "headImg"}
    payload.update(cameraImg=base64.b64encode(camera_jpeg).decode("ascii"), faceScore=0.0, faceResult=2)
    return outbox.enqueue(payload, held_reason=HELD_NO_DECODER, raw_wlt=WLT, meta=meta)


def _release(outbox: Outbox, settings: Settings, engine: RecordingEngine, engine_asked: list[bool]) -> int:
    def engine_now() -> FaceEngine:
        engine_asked.append(True)
        return engine

    # meta optional: a store that dropped it would still call this, and the guards below must notice.
    def complete(payload: dict[str, Any], raw_wlt: bytes | None, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        return complete_held(
            payload, raw_wlt, settings=settings, decoder=lambda _wlt: jpeg(5, 64), engine=engine_now, meta=meta
        )

    return outbox.release_held(complete)


def test_a_placeholder_camera_image_is_never_scored(outbox: Outbox, settings: Settings) -> None:
    record_id = _hold(
        outbox,
        camera_jpeg=placeholder_jpeg(),
        meta={"source": "reader", "face_result_pending": True, "camera_placeholder": True},
    )
    engine, asked = RecordingEngine(settings), []
    assert _release(outbox, settings, engine, asked) == 1
    assert engine.looked_at == []  # neither the card photo nor the grey stand-in went to the engine
    payload = outbox.payload(record_id)
    assert payload is not None and payload["faceResult"] == 2 and payload["headImg"]


def test_a_record_held_after_its_face_result_is_not_scored_again(outbox: Outbox, settings: Settings) -> None:
    _hold(outbox, camera_jpeg=jpeg(3, 64), meta={"source": "reader", "face_result_pending": False})
    engine, asked = RecordingEngine(settings), []
    assert _release(outbox, settings, engine, asked) == 1
    assert asked == [] and engine.looked_at == []


def test_a_pending_face_result_is_computed_from_the_stored_live_photo(outbox: Outbox, settings: Settings) -> None:
    _hold(outbox, camera_jpeg=jpeg(3, 64), meta={"source": "reader", "face_result_pending": True})
    engine, asked = RecordingEngine(settings), []
    assert _release(outbox, settings, engine, asked) == 1
    assert asked == [True] and engine.looked_at  # the card photo and the live photo were looked at


def test_a_row_stored_before_these_keys_existed_is_completed_as_before(outbox: Outbox, settings: Settings) -> None:
    # Rows written by an older fvagent have neither key: in compute mode the face result counts as
    # pending (faceResult 2 on a held record) and the stored camera image as a real one.
    _hold(outbox, camera_jpeg=jpeg(3, 64), meta={"source": "reader"})
    engine, asked = RecordingEngine(settings), []
    assert _release(outbox, settings, engine, asked) == 1
    assert asked == [True] and engine.looked_at
