"""What the local API does, without HTTP: the desk's view of the outbox, the operator and the status.

``DeskBackend`` is built by the service from parts it already owns (settings, the open ``Outbox``,
the ``EventBus``, the ``OperatorState``) and handed to ``create_app`` / ``LocalApiServer``. Its
methods are plain synchronous calls (the app runs them in a worker thread), raise domain errors,
and return plain JSON-able dicts in which personal data is masked unless the caller asked for, and
is allowed, full data.
"""

from __future__ import annotations

import base64
import binascii
import collections
import datetime as dt
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from agent.errors import RecordError
from agent.events import VERIFICATION, EventBus, Event, OperatorState, validate_operator
from agent.privacy import mask_card_no, mask_name

log = logging.getLogger(__name__)

Photo = Literal["head", "camera"]
PHOTO_FIELDS: dict[str, str] = {"head": "headImg", "camera": "cameraImg"}

MASKED_FIELDS = ("cardType", "realName", "cardNo", "sexName", "faceScore", "faceResult", "verifyDate",
                 "verifyTime", "operationUser", "certTimeoutStatus", "deviceNo", "machineCode",
                 "fingerScore", "fingerResult")
"""Record fields a caller without the full-data scope sees (realName and cardNo masked)."""
FULL_FIELDS = ("realName", "cardType", "cardNo", "sexCode", "sexName", "nationalCode", "nationalName",
               "operationUser", "birthday", "address", "police", "cardStartDate", "cardEndDate",
               "faceScore", "faceResult", "verifyDate", "verifyTime", "certTimeoutStatus", "deviceNo",
               "machineCode", "fingerScore", "fingerResult")
"""Record fields a full-data caller sees; photos only when asked for."""

RESULT_TEXT = {0: "未通过", 1: "通过", 2: "未核验"}
DEFAULT_REASON = {0: "人脸比对分数低于阈值", 2: "未完成人脸比对"}
SHANGHAI = dt.timezone(dt.timedelta(hours=8))


class NotFound(LookupError):
    """No verification with that id (or its photo was erased after upload, per retention)."""


def _problem_error(message: str, problems: list[tuple[str, str]]) -> RecordError:
    return RecordError(message, problems=problems,
                       hint="fix each field listed; the field names are the platform spec's")


class DeskBackend:
    """The local API's operations over the service's parts.

    Parameters:
        settings: the agent's ``Settings`` (``device`` and ``face`` are read).
        outbox: the open ``agent.outbox.Outbox`` (``enqueue``, ``get``, ``payload``, ``find``, ``stats``).
        events: the ``EventBus`` the service publishes verifications on; relayed verifications
            accepted here are published on it too.
        operator: the desk's ``OperatorState``.
        status_provider: returns the ``fvagent status --json`` document; default
            ``agent.service.status.collect_status(settings)``. Results are cached ``status_ttl_s``.
    """

    def __init__(self, settings: Any, outbox: Any, events: EventBus, operator: OperatorState, *,
                 status_provider: Callable[[], dict[str, Any]] | None = None, status_ttl_s: float = 2.0) -> None:
        self.settings = settings
        self.outbox = outbox
        self.events = events
        self.operator = operator
        self._status_provider = status_provider
        self._status_ttl_s = status_ttl_s
        self._status_cache: tuple[float, dict[str, Any]] | None = None
        self._status_lock = threading.Lock()
        self._announced: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._announce_lock = threading.Lock()

    # -- relay in ---------------------------------------------------------------------------------
    def submit(self, body: Any, *, idempotency_key: str | None = None) -> int:
        """Validate a relayed verification (spec field names) and commit it to the outbox.

        Missing ``operationUser`` is filled with the current operator, missing ``deviceNo`` and
        ``machineCode`` with ``[device]``'s; a different ``deviceNo``/``machineCode`` is an error
        (this agent uploads for its own device only). Returns the outbox id once the row is durable;
        a repeated ``idempotency_key`` returns the first id. Raises ``RecordError`` listing every
        bad field (``.problems``), or ``OutboxError`` / ``StorageFull`` when it cannot be stored.
        """
        from agent.records import parse_verification  # late: keeps the module light to import

        if not isinstance(body, dict):
            raise _problem_error("a verification must be a JSON object",
                                 [("(body)", f"must be a JSON object, not {type(body).__name__}")])
        data = dict(body)
        device = self.settings.device
        problems: list[tuple[str, str]] = []
        if data.get("operationUser") in (None, ""):
            data["operationUser"] = self.operator.get()
        for field, mine in (("deviceNo", device.device_no), ("machineCode", device.machine_code)):
            if data.get(field) in (None, ""):
                data[field] = mine
            elif data[field] != mine:
                problems.append((field, f"must be this device's {field} as registered ({mine}) or left out"))
        try:
            record = parse_verification(data, long_term_end=self.settings.platform.conventions.long_term_end_date)
        except RecordError as exc:
            problems.extend(exc.problems or [("(body)", exc.message)])
            record = None
        if problems or record is None:
            raise _problem_error(f"the verification has {len(problems)} error(s)", problems)
        payload = record.to_payload()
        body_hash = hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        record_id = int(self.outbox.enqueue(payload, idempotency_key=idempotency_key,
                                            meta={"source": "local_api", "body_sha256": body_hash}))
        if self._first_announcement(record_id):
            log.info("relayed verification %d committed (card %s, faceResult %s)", record_id,
                     mask_card_no(payload.get("cardNo")), payload.get("faceResult"))
            self.events.publish(VERIFICATION, {"id": record_id, "source": "local_api"})
        return record_id

    def _first_announcement(self, record_id: int) -> bool:
        """True the first time an id is seen here: a retried post (same id) is not announced twice."""
        with self._announce_lock:
            if record_id in self._announced:
                return False
            self._announced[record_id] = None
            while len(self._announced) > 1000:
                self._announced.popitem(last=False)
            return True

    # -- results out ------------------------------------------------------------------------------
    def verification(self, record_id: int, *, full: bool = False, photos: bool = False) -> dict[str, Any]:
        """The stored verification ``record_id`` as the desk sees it. Raises ``NotFound``.

        ``full`` shows unmasked fields; ``photos`` (only with ``full``) adds headImg/cameraImg base64.
        """
        row = self.outbox.get(record_id)
        if row is None:
            raise NotFound(f"no verification with id {record_id}")
        payload = self.outbox.payload(record_id) or {}
        return self._view(row, payload, full=full, photos=photos and full)

    def find(self, *, card_no: str | None = None, since: dt.datetime | None = None, limit: int = 20,
             full: bool = False) -> list[dict[str, Any]]:
        """Recent verifications, newest first, of one card when ``card_no`` is given, since ``since``."""
        rows = self.outbox.find(card_no, since, limit)
        out = []
        for row in rows:
            payload = self.outbox.payload(_row_get(row, "id")) or {}
            out.append(self._view(row, payload, full=full, photos=False))
        return out

    def photo(self, record_id: int, which: Photo) -> bytes:
        """The JPEG bytes of the card (``head``) or live (``camera``) photo. Raises ``NotFound``."""
        if which not in PHOTO_FIELDS:
            raise NotFound(f"no photo {which!r}; use head or camera")
        if self.outbox.get(record_id) is None:
            raise NotFound(f"no verification with id {record_id}")
        payload = self.outbox.payload(record_id) or {}
        b64 = payload.get(PHOTO_FIELDS[which])
        if not b64:
            raise NotFound(f"verification {record_id} has no {which} photo (erased after upload, or never taken)")
        try:
            return base64.b64decode(b64, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise NotFound(f"verification {record_id}: stored {which} photo is not base64") from exc

    def _view(self, row: Any, payload: dict[str, Any], *, full: bool, photos: bool) -> dict[str, Any]:
        record_id = int(_row_get(row, "id"))
        fields = FULL_FIELDS if full else MASKED_FIELDS
        record = {k: payload[k] for k in fields if k in payload and payload[k] is not None}
        if not full:
            if "realName" in record:
                record["realName"] = mask_name(record["realName"])
            if "cardNo" in record:
                record["cardNo"] = mask_card_no(record["cardNo"])
        if photos:
            for field in PHOTO_FIELDS.values():
                if payload.get(field):
                    record[field] = payload[field]
        meta = _row_get(row, "meta") or {}
        return {
            "id": record_id,
            "state": _row_get(row, "state"),
            "createdAt": _iso(_row_get(row, "created_at")),
            "sentAt": _iso(_row_get(row, "sent_at")),
            "attempts": _row_get(row, "attempts") or 0,
            "lastError": _row_get(row, "last_error"),
            "heldReason": _row_get(row, "held_reason"),
            "simulated": bool(_row_get(row, "simulated")),
            "source": meta.get("source") if isinstance(meta, dict) else None,
            "masked": not full,
            "hasPhotos": {k: bool(payload.get(f)) for k, f in PHOTO_FIELDS.items()},
            "record": record,
        }

    # -- the page's feed --------------------------------------------------------------------------
    def feed_item(self, event: Event) -> dict[str, Any] | None:
        """What the operator page shows for a ``verification`` event: masked, with photo links.

        The event's data is ``{"id": outbox_id, "reason": optional text}``; everything else comes
        from the outbox. ``None`` when the row is gone.
        """
        try:
            record_id = int(event.data["id"])
            view = self.verification(record_id)
        except (KeyError, TypeError, ValueError, NotFound):
            log.debug("event %d names no stored verification", event.seq)
            return None
        rec = view["record"]
        result = _as_int(rec.get("faceResult"))
        reason = event.data.get("reason") or (DEFAULT_REASON.get(result) if result is not None else None)
        if result == 0 and not event.data.get("reason") and rec.get("faceScore") is not None:
            reason = f"人脸比对分数 {float(rec['faceScore']):.2f} 低于阈值 {self.settings.face.threshold:.2f}"
        return {
            "id": record_id,
            "seq": event.seq,
            "name": rec.get("realName", ""),
            "cardNo": rec.get("cardNo", ""),
            "score": rec.get("faceScore"),
            "result": result,
            "resultText": RESULT_TEXT.get(result, "未知") if result is not None else "未知",
            "reason": None if result == 1 else reason,
            "verifyTime": rec.get("verifyTime"),
            "operator": rec.get("operationUser"),
            "state": view["state"],
            "simulated": view["simulated"],
            "source": view["source"] or event.data.get("source"),
            "photos": {k: (f"/ui/photos/{record_id}/{k}" if has else None) for k, has in view["hasPhotos"].items()},
        }

    # -- status and operator ----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The ``fvagent status --json`` document (cached for ``status_ttl_s``)."""
        with self._status_lock:
            now = time.monotonic()
            if self._status_cache and now - self._status_cache[0] < self._status_ttl_s:
                return self._status_cache[1]
            if self._status_provider is not None:
                doc = self._status_provider()
            else:
                from agent.service.status import collect_status

                doc = collect_status(self.settings)
            self._status_cache = (now, doc)
            return doc

    def page_status(self) -> dict[str, Any]:
        """The small summary the operator page shows: queue depth, platform state, operator."""
        try:
            stats = dict(self.outbox.stats())
        except Exception:  # the page must keep working while the outbox is unhappy
            log.debug("outbox stats failed", exc_info=True)
            stats = {}
        try:
            doc = self.status()
        except Exception:
            log.debug("status failed", exc_info=True)
            doc = {}
        queue = int(stats.get("pending", 0) or 0) + int(stats.get("sending", 0) or 0) + int(stats.get("held", 0) or 0)
        platform, platform_text = _platform_state(doc, self.settings)
        return {
            "queueDepth": queue,
            "queue": {k: stats.get(k, 0) for k in ("pending", "sending", "sent", "rejected", "held")},
            "platform": platform,
            "platformText": platform_text,
            "operator": self.operator.get(),
            "time": dt.datetime.now(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S"),
        }

    def get_operator(self) -> str:
        return self.operator.get()

    def set_operator(self, name: Any) -> str:
        """Set the operationUser for the following verifications. Raises ``RecordError`` for a bad name."""
        try:
            value = validate_operator(name)
        except ValueError as exc:
            raise _problem_error("bad operator", [("operator", str(exc))]) from exc
        value = self.operator.set(value)
        self.events.publish("operator", {"operator": value})
        return value


def _row_get(row: Any, name: str) -> Any:
    if isinstance(row, dict):
        return row.get(name)
    return getattr(row, name, None)


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, SHANGHAI).isoformat(timespec="seconds")
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="seconds")
    return str(value)


def _platform_state(doc: dict[str, Any], settings: Any) -> tuple[str, str]:
    """(state, Chinese text) from the status document: ok, down, blocked, disabled or unknown."""
    if not getattr(settings.platform, "enabled", True):
        return "disabled", "已关闭上传"
    platform = doc.get("platform") if isinstance(doc, dict) else None
    if not isinstance(platform, dict):
        return "unknown", "平台状态未知"
    if platform.get("blocked") or platform.get("state") == "blocked":
        return "blocked", "上传已暂停（需检查配置）"
    reachable = platform.get("reachable")
    state = platform.get("state")
    if reachable is True or state in ("ok", "up", "reachable"):
        return "ok", "平台连接正常"
    if reachable is False or state in ("down", "unreachable", "error"):
        return "down", "平台连接中断，记录已保存待上传"
    return "unknown", "平台状态未知"
