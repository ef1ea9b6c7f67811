"""Face reason codes: every code has the desk's Chinese, the page maps the code (never the English
line), and the code travels from the verification to the record meta and the event."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.events import VERIFICATION, Event, EventBus
from agent.face.reasons import REASON_ZH, UNKNOWN_REASON_ZH, FaceReason, parse_reason
from agent.localapi.backend import reason_zh
from agent.localapi.followup import follow_ups
from agent.outbox import Outbox
from agent.service.verification import Verifier
from core.stored import RecordMeta
from tests.test_localapi import Agent, make_settings, verification_body
from tests.test_outbox_support import record, storage
from tests.test_service import card, config_doc, images, write_config  # noqa: F401 - images is a fixture

CJK = re.compile(r"[\u4e00-\u9fff]")
MISLEADING = "no match: no face found, camera error, relayed from the terminal"
"""An English line full of the phrases the page used to search for: the code alone must decide."""


def test_every_face_reason_has_chinese_text() -> None:
    assert set(REASON_ZH) == set(FaceReason)
    for code, text in REASON_ZH.items():
        assert CJK.search(text), f"{code} has no Chinese text"
    assert all(CJK.search(text) for text in UNKNOWN_REASON_ZH.values())


def test_a_stored_code_parses_back_and_an_unknown_one_is_none() -> None:
    for code in FaceReason:
        assert parse_reason(code.value) is code
    assert parse_reason(None) is None and parse_reason("from_a_newer_version") is None


@pytest.mark.parametrize(
    ("code", "result", "score", "expected"),
    [
        (FaceReason.NO_FACE_ON_CARD, 2, 0.0, "证件照片不可用"),
        (FaceReason.NO_FACE_LIVE, 2, 0.0, "未采集到合格的人脸画面（未检测到人脸）"),
        (FaceReason.SEVERAL_FACES, 2, 0.0, "未采集到合格的人脸画面（画面中有多张人脸）"),
        (FaceReason.CAMERA_ERROR, 2, 0.0, "摄像头故障，未能采集现场照片"),
        (FaceReason.CAPTURE_STOPPED, 2, 0.0, "服务停止，采集中断"),
        (FaceReason.TERMINAL_NO_RESULT, 2, 0.0, "终端未完成人脸比对"),
        (FaceReason.LIVENESS_FAILED, 0, 0.93, "活体检测未通过"),
        (FaceReason.NO_MATCH, 0, 0.42, "人证比对不一致（分数 0.42，阈值 0.75）"),
        (FaceReason.RELAYED, 0, 0.35, "终端比对未通过（分数 0.35）"),
        (FaceReason.RELAYED, 2, 0.0, "终端未完成人脸比对"),
        (None, 2, 0.0, "未完成人脸比对"),  # an older row without a code
        (None, 0, 0.42, "人证比对不一致（分数 0.42，阈值 0.75）"),
        (None, 0, None, "人证比对未通过"),
    ],
)
def test_the_chinese_comes_from_the_code_alone(
    code: FaceReason | None, result: int, score: float | None, expected: str
) -> None:
    assert reason_zh(result, score, code, MISLEADING, threshold=0.75) == (expected, MISLEADING)
    assert reason_zh(1, 0.9, code, MISLEADING, threshold=0.75) == (None, None)  # a pass needs no reason


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    with Agent(make_settings(tmp_path)) as a:
        yield a


def test_the_page_shows_the_text_for_a_code(agent: Agent) -> None:
    record_id = agent.backend.submit(verification_body(score=0.0, result=2))
    for seq, code in enumerate(FaceReason, start=1):
        if code is FaceReason.RELAYED:
            continue  # relayed is worded by result: above
        data = {"id": record_id, "source": "reader", "reason": MISLEADING, "reasonCode": code.value}
        item = agent.backend.feed_item(Event(seq, VERIFICATION, data, time.time()))
        assert item is not None and (item["reason"], item["reasonDetail"]) == (REASON_ZH[code], MISLEADING)
    unknown = {"id": record_id, "source": "reader", "reason": MISLEADING, "reasonCode": "from_a_newer_version"}
    item = agent.backend.feed_item(Event(99, VERIFICATION, unknown, time.time()))
    assert item is not None and item["reason"] == UNKNOWN_REASON_ZH[2]


def test_rows_without_a_code_still_load_and_read_as_the_default(tmp_path: Path) -> None:
    old_meta = {"source": "reader", "reason": "no usable frame in 5.0 s (12 frames: no face 12)"}
    assert RecordMeta.model_validate(old_meta).reason_code is None
    new_meta = {**old_meta, "reason_code": FaceReason.NO_FACE_LIVE.value}
    assert RecordMeta.model_validate(new_meta).reason_code == "no_face_live"
    with Outbox.open(storage(tmp_path)) as box:
        old = box.enqueue({**record(1), "faceResult": 2, "faceScore": 0.0}, meta=old_meta)
        new = box.enqueue({**record(2), "faceResult": 2, "faceScore": 0.0}, meta=new_meta)
        by_id = {item["id"]: item for item in follow_ups(box, threshold=0.75)}
    assert by_id[old]["reason"] == UNKNOWN_REASON_ZH[2]  # the English line is not searched
    assert by_id[new]["reason"] == REASON_ZH[FaceReason.NO_FACE_LIVE]


class RecordingSink:
    """A record sink that keeps what it was given."""

    def __init__(self) -> None:
        self.metas: list[dict[str, Any]] = []

    def enqueue(self, payload: dict[str, Any], **kw: Any) -> int:
        self.metas.append(kw["meta"])
        return len(self.metas)


def test_the_verifier_stores_and_announces_the_code(tmp_path: Path, images: dict[str, Any]) -> None:
    doc = config_doc(tmp_path, images, face={"mode": "compute"})
    settings = load_config(write_config(tmp_path / "c.toml", doc), validate_drivers=False)
    sink, events = RecordingSink(), EventBus()
    sub = events.subscribe()
    verifier = Verifier(settings, sink, camera=lambda: None, engine=lambda: None, operator=lambda: "x", events=events)
    done = verifier.verify(card(0))
    assert done.result == 2
    assert RecordMeta.model_validate(sink.metas[0]).reason_code == FaceReason.ENGINE_UNAVAILABLE.value
    event = sub.get(1.0)
    assert event is not None and event.data["reasonCode"] == FaceReason.ENGINE_UNAVAILABLE.value
