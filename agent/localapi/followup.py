"""The follow-up list: the verifications that did not pass (faceResult 0) or were not made (2).

A failed verification obliges the hospital to have the police check the mother's identity (seed
001: 核验失败 → 医疗机构需要通知公安机关进行核查); the desk shows this list to the police and marks
each case handed over (``Outbox.mark_handed_over``). The operator page (``GET /ui/followups``) and
``fvagent queue ls --result 0,2`` read it through ``follow_ups``; both show masked data only.

The result is inside the sealed payload, so the list decrypts the data part (never the photos) of
each record in the time window, newest first, until ``limit`` items are found.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from agent.face.reasons import parse_reason
from agent.localapi.backend import RESULT_TEXT, _as_int, _local_time, reason_zh
from core.privacy import mask_card_no, mask_name
from core.records import JsonObject
from core.stored import RecordState

if TYPE_CHECKING:
    from agent.outbox.store import Outbox

FOLLOW_UP_RESULTS = (0, 2)
"""faceResult values that need follow-up: 0 failed, 2 not verified."""
SCAN_BATCH = 200
STATE_TEXT = {
    RecordState.PENDING: "待上传",
    RecordState.SENDING: "上传中",
    RecordState.SENT: "已上传",
    RecordState.REJECTED: "平台拒收",
    RecordState.HELD: "暂存（待补全）",
}
"""The upload state in the desk's words."""


def follow_ups(
    outbox: Outbox,
    *,
    threshold: float,
    results: Collection[int] = FOLLOW_UP_RESULTS,
    since: dt.datetime | None = None,
    limit: int = 100,
) -> list[JsonObject]:
    """Verifications with a faceResult in ``results``, committed at or after ``since``, newest first.

    Each item: ``id``, ``verifyTime``, ``name`` and ``cardNo`` (masked), ``result``, ``resultText``,
    ``score``, ``reason`` (plain Chinese) and ``reasonDetail`` (the face session's line), ``state``
    and ``stateText`` (upload state), ``simulated``, ``handover`` (``{"operator", "at"}`` or
    ``None``). ``threshold`` is ``[face] threshold``, quoted with a low score. Raises
    ``OutboxError`` when the outbox cannot be read, ``OutboxCorrupt`` for a record whose sealed
    data does not open.
    """
    wanted = {int(r) for r in results}
    found: list[tuple[Any, dict[str, Any]]] = []
    before: int | None = None
    while len(found) < limit:
        rows = outbox.find(None, since, SCAN_BATCH, before_id=before)
        for row in rows:
            data = outbox.payload(row.id, photos=False) or {}
            if _as_int(data.get("faceResult")) in wanted:
                found.append((row, data))
                if len(found) == limit:
                    break
        if len(rows) < SCAN_BATCH:
            break
        before = rows[-1].id
    marks = outbox.handovers([row.id for row, _ in found])
    return [_item(row, data, marks.get(row.id), threshold) for row, data in found]


def _item(row: Any, data: dict[str, Any], mark: Any, threshold: float) -> dict[str, Any]:
    result = _as_int(data.get("faceResult"))
    meta = row.meta or {}
    reason, detail = reason_zh(
        result,
        data.get("faceScore"),
        parse_reason(meta.get("reason_code")),
        meta.get("reason"),
        relayed=meta.get("source") == "local_api",
        threshold=threshold,
    )
    return {
        "id": row.id,
        "verifyTime": data.get("verifyTime") or _local_time(row.created_at),
        "name": mask_name(data.get("realName")),
        "cardNo": mask_card_no(data.get("cardNo")),
        "result": result,
        "resultText": RESULT_TEXT.get(result, "未知") if result is not None else "未知",
        "score": data.get("faceScore"),
        "reason": reason,
        "reasonDetail": detail,
        "state": row.state,
        "stateText": STATE_TEXT.get(row.state, row.state),
        "simulated": row.simulated,
        "handover": {"operator": mark.operator, "at": _local_time(mark.at)} if mark else None,
    }
