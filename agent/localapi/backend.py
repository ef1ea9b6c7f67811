"""What the local API does, without HTTP: the desk's view of the outbox, the operator and the status.

``DeskBackend`` is built by the service from parts it already owns (settings, the open ``Outbox``,
the ``EventBus``, the ``OperatorState``) and handed to ``create_app`` / ``LocalApiServer``. Its
methods are plain synchronous calls (the app runs them in a worker thread), raise domain errors,
and return ``VerificationView`` models, the typed ``Status`` or small JSON objects, in which personal
data is masked unless the caller asked for, and is allowed, full data.
"""

from __future__ import annotations

import base64
import binascii
import collections
import datetime as dt
import hashlib
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field

from agent.events import (
    STATUS,
    VERIFICATION,
    Event,
    EventBus,
    OperatorState,
)
from agent.face.reasons import REASON_ZH, UNKNOWN_REASON_ZH, FaceReason, parse_reason
from agent.status import PlatformState, Status
from core.clock import CHINA_TZ
from core.errors import RecordError, StorageFull
from core.privacy import mask_card_no, mask_name
from core.records import JsonObject, Payload, validate_operator
from core.stored import RecordState

if TYPE_CHECKING:
    from agent.config import Settings
    from agent.outbox.store import Outbox, Row

StatusSource: TypeAlias = Callable[[], Status]
"""Where the local API reads the agent's status: the service's ``status``, or ``collect_status``."""

log = logging.getLogger(__name__)

Photo = Literal["head", "camera"]
PHOTO_FIELDS: dict[str, str] = {"head": "headImg", "camera": "cameraImg"}
RELAY_SOURCE = "local_api"
"""``meta.source`` of a relayed verification in the outbox."""

MASKED_FIELDS = (
    "cardType",
    "realName",
    "cardNo",
    "sexName",
    "faceScore",
    "faceResult",
    "verifyDate",
    "verifyTime",
    "operationUser",
    "certTimeoutStatus",
    "deviceNo",
    "machineCode",
    "fingerScore",
    "fingerResult",
)
"""Record fields a caller without the full-data scope sees (realName and cardNo masked)."""
FULL_FIELDS = (
    "realName",
    "cardType",
    "cardNo",
    "sexCode",
    "sexName",
    "nationalCode",
    "nationalName",
    "operationUser",
    "birthday",
    "address",
    "police",
    "cardStartDate",
    "cardEndDate",
    "faceScore",
    "faceResult",
    "verifyDate",
    "verifyTime",
    "certTimeoutStatus",
    "deviceNo",
    "machineCode",
    "fingerScore",
    "fingerResult",
)
"""Record fields a full-data caller sees; photos only when asked for."""

RESULT_TEXT = {0: "未通过", 1: "通过", 2: "未核验"}


class NotFound(LookupError):
    """No verification with that id (or its photo was erased after upload, per retention)."""


class RelayRateLimited(RuntimeError):
    """More relayed verifications in the last minute than ``[local_api] max_relay_per_min``."""


class IdempotencyConflict(ValueError):
    """An Idempotency-Key already used for a different verification. ``record_id`` is the first one."""

    def __init__(self, message: str, record_id: int) -> None:
        self.record_id = record_id
        super().__init__(message)


def _problem_error(message: str, problems: list[tuple[str, str]]) -> RecordError:
    return RecordError(
        message, problems=problems, hint="fix each field listed; the field names are the platform spec's"
    )


class VerificationView(BaseModel):
    """A stored verification as the desk sees it (GET /v1/verifications/{id}); ``record`` holds the
    spec-named fields, masked unless asked for in full. The API's response model too."""

    model_config = ConfigDict(extra="forbid")

    id: int
    state: str | None = Field(description="pending, sending, sent, rejected or held")
    createdAt: str | None
    sentAt: str | None
    attempts: int
    lastError: str | None
    heldReason: str | None
    simulated: bool
    source: str | None
    masked: bool = Field(description="true: realName and cardNo are masked and private fields left out")
    hasPhotos: dict[str, bool]
    record: Payload = Field(description="the verification with the platform spec's field names")


class DeskBackend:
    """The local API's operations over the service's parts.

    Parameters:
        settings: the agent's ``Settings`` (``device`` and ``face`` are read).
        outbox: the open ``agent.outbox.Outbox`` (``enqueue``, ``get``, ``payload``, ``find``, ``stats``).
        events: the ``EventBus`` the service publishes verifications on; relayed verifications
            accepted here are published on it too.
        operator: the desk's ``OperatorState``.
        status_provider: returns the agent's ``Status`` (the service's own, or
            ``agent.status.collect_status(settings)`` for the outbox and status file).
            Results are cached ``status_ttl_s``.
        clock: wall-clock seconds (``time.time``), for the relay's clock-skew and rate rules.
        metrics: the service's ``agent.metrics.Metrics`` for GET /metrics (None: not served).
    """

    def __init__(
        self,
        settings: Settings,
        outbox: Outbox,
        events: EventBus,
        operator: OperatorState,
        *,
        status_provider: StatusSource,
        status_ttl_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        metrics: Any = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._relayed_at: collections.deque[float] = collections.deque()
        self._relay_lock = threading.Lock()
        self.outbox = outbox
        self.events = events
        self.operator = operator
        self._status_provider = status_provider
        self.metrics = metrics
        """The service's ``agent.metrics.Metrics`` (GET /metrics), or None: no /metrics."""
        self._status_ttl_s = status_ttl_s
        self._status_cache: tuple[float, Status] | None = None
        self._status_lock = threading.Lock()
        self._announced: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._announce_lock = threading.Lock()

    # -- relay in ---------------------------------------------------------------------------------
    def submit(self, body: object, *, idempotency_key: str | None = None) -> int:
        """Validate a relayed verification (spec field names) and commit it to the outbox.

        Validation is the captured record's: ``parse_verification`` (every spec rule) plus the relay
        rules of ``agent.face.relay.relay_outcome`` (faceResult 2 carries score 0, and so on).

        Missing ``operationUser`` is filled with the current operator, missing ``deviceNo`` and
        ``machineCode`` with ``[device]``'s; a different ``deviceNo``/``machineCode`` is an error
        (this agent uploads for its own device only). Returns the outbox id once the row is durable;
        a repeated ``idempotency_key`` with the same verification returns the first id, with a
        different one raises ``IdempotencyConflict``. Raises ``RecordError`` listing every bad field
        (``.problems``), or ``OutboxError`` / ``StorageFull`` when it cannot be stored.

        Plausibility (``[local_api]``): verifyTime within ``max_clock_skew_s`` of our clock (else a
        ``RecordError`` on verifyTime), at most ``max_relay_per_min`` a minute (``RelayRateLimited``),
        at most ``max_unsent_relayed`` waiting, and never the disk space kept for this device's own
        captures (``relay_reserve_bytes``) (``StorageFull``). Photos are re-encoded, so no EXIF, GPS or
        other metadata a terminal put in them reaches the platform.
        """
        from agent.face.relay import (
            relay_outcome,  # late: keeps the module light to import
        )
        from core.records import parse_verification

        if not isinstance(body, dict):
            raise _problem_error(
                "a verification must be a JSON object",
                [("(body)", f"must be a JSON object, not {type(body).__name__}")],
            )
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
        try:  # the consistency rules a relayed score meets when it comes through the reader's loop
            relay_outcome(data.get("faceScore"), data.get("faceResult"))
        except RecordError as exc:
            listed = {field for field, _ in problems}
            problems.extend((f, r) for f, r in exc.problems if f not in listed)
        # A retry of a post already stored answers with its first id (or a conflict, below) even when
        # the clock, rate or room rules would refuse a new one now.
        stored = self.outbox.id_for_key(idempotency_key) if idempotency_key is not None else None
        if record is not None and stored is None:
            problems.extend(self._clock_problems(record.verifyTime))
        if problems or record is None:
            raise _problem_error(f"the verification has {len(problems)} error(s)", problems)
        if stored is None:
            self._check_room()  # before the photos are re-encoded: a refused flood costs no decoding
        payload = _reencoded_photos(record.to_payload())
        canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
        # meta is not encrypted: a digest keyed with the outbox key reveals nothing of the record
        keyed = getattr(self.outbox, "fingerprint", None)
        body_hash = keyed(canonical) if callable(keyed) else hashlib.sha256(canonical).hexdigest()
        record_id = int(
            self.outbox.enqueue(
                payload, idempotency_key=idempotency_key, meta={"source": RELAY_SOURCE, "body_sha256": body_hash}
            )
        )
        if idempotency_key is not None:
            row = self.outbox.get(record_id)
            first_hash = (row.meta or {}).get("body_sha256") if row is not None else None
            if first_hash is not None and first_hash != body_hash:
                raise IdempotencyConflict(
                    f"Idempotency-Key was already used for verification {record_id}, with a different body", record_id
                )
        if self._first_announcement(record_id):
            log.info(
                "relayed verification %d committed (card %s, faceResult %s)",
                record_id,
                mask_card_no(payload.get("cardNo")),
                payload.get("faceResult"),
            )
            self.events.publish(
                VERIFICATION, {"id": record_id, "source": RELAY_SOURCE, "result": payload.get("faceResult")}
            )
        return record_id

    def _clock_problems(self, verify_time: str) -> list[tuple[str, str]]:
        """verifyTime (yyyy-MM-dd HH:mm:ss, Asia/Shanghai) further than max_clock_skew_s from now."""
        skew = self.settings.local_api.max_clock_skew_s
        try:
            at = dt.datetime.strptime(verify_time, "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA_TZ).timestamp()
        except (TypeError, ValueError):
            return []  # parse_verification has named the format already
        off = at - self._clock()
        if abs(off) <= skew:
            return []
        way = "ahead of" if off > 0 else "behind"
        return [
            (
                "verifyTime",
                f"must be within {skew:.0f} s of the agent's clock "
                f"([local_api] max_clock_skew_s); it is {abs(off):.0f} s {way} it",
            )
        ]

    def _check_room(self) -> None:
        """Rate, waiting-count and disk rules of a relayed verification; raise before anything is stored."""
        limits = self.settings.local_api
        now = self._clock()
        with self._relay_lock:
            while self._relayed_at and self._relayed_at[0] <= now - 60:
                self._relayed_at.popleft()
            if len(self._relayed_at) >= limits.max_relay_per_min:
                raise RelayRateLimited(
                    f"more than {limits.max_relay_per_min} relayed verifications in a minute: "
                    "refused; retry in a minute"
                )
            self._relayed_at.append(now)  # counted even if refused below: a flood of refusals is a flood
        waiting = int(self.outbox.count_unsent(source=RELAY_SOURCE))
        if waiting >= limits.max_unsent_relayed:
            raise StorageFull(
                f"{waiting} relayed verifications already wait for upload "
                f"([local_api] max_unsent_relayed = {limits.max_unsent_relayed}): refused",
                hint="let the uploader drain the queue (fvagent status shows why it does not)",
            )
        try:
            free = shutil.disk_usage(self.settings.storage.dir).free
        except OSError:
            return  # the outbox's own write reports a missing or full directory
        if free < limits.relay_reserve_bytes:
            raise StorageFull(
                f"only {free // 1024**2} MB free in the state directory: the last "
                f"{limits.relay_reserve_bytes // 1024**2} MB are kept for this device's own captures "
                "([local_api] relay_reserve_bytes); relayed verification refused",
                hint="free disk space or let the uploader drain the queue",
            )

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
    def verification(self, record_id: int, *, full: bool = False, photos: bool = False) -> VerificationView:
        """The stored verification ``record_id`` as the desk sees it. Raises ``NotFound``.

        ``full`` shows unmasked fields; ``photos`` (only with ``full``) adds headImg/cameraImg base64.
        """
        row = self.outbox.get(record_id)
        if row is None:
            raise NotFound(f"no verification with id {record_id}")
        payload = self.outbox.payload(record_id) or {}
        return self._view(row, payload, full=full, photos=photos and full)

    def find(
        self, *, card_no: str | None = None, since: dt.datetime | None = None, limit: int = 20, full: bool = False
    ) -> list[VerificationView]:
        """Recent verifications, newest first, of one card when ``card_no`` is given, since ``since``."""
        rows = self.outbox.find(card_no, since, limit)
        out = []
        for row in rows:
            payload = self.outbox.payload(row.id) or {}
            out.append(self._view(row, payload, full=full, photos=False))
        return out

    def photo(self, record_id: int, which: Photo, *, max_age_s: float | None = None) -> bytes:
        """The JPEG bytes of the card (``head``) or live (``camera``) photo. Raises ``NotFound``,
        also for a record committed more than ``max_age_s`` ago when that is given."""
        if which not in PHOTO_FIELDS:
            raise NotFound(f"no photo {which!r}; use head or camera")
        row = self.outbox.get(record_id)
        if row is None:
            raise NotFound(f"no verification with id {record_id}")
        created = row.created_at
        if max_age_s is not None and (created is None or self._clock() - float(created) > max_age_s):
            raise NotFound(
                f"verification {record_id}'s photos are shown here only for {max_age_s / 60:.0f} minutes "
                "after it was taken"
            )
        payload = self.outbox.payload(record_id) or {}
        b64 = payload.get(PHOTO_FIELDS[which])
        if not b64:
            raise NotFound(f"verification {record_id} has no {which} photo (erased after upload, or never taken)")
        try:
            return base64.b64decode(b64, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise NotFound(f"verification {record_id}: stored {which} photo is not base64") from exc

    def _view(self, row: Row, payload: Payload, *, full: bool, photos: bool) -> VerificationView:
        record_id = int(row.id)
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
        meta = row.meta or {}
        source = meta.get("source") if isinstance(meta, dict) else None
        return VerificationView(
            id=record_id,
            state=row.state,
            createdAt=_iso(row.created_at),
            sentAt=_iso(row.sent_at),
            attempts=row.attempts or 0,
            lastError=row.last_error,
            heldReason=row.held_reason,
            simulated=bool(row.simulated),
            source=None if source is None else str(source),
            masked=not full,
            hasPhotos={k: bool(payload.get(f)) for k, f in PHOTO_FIELDS.items()},
            record=record,
        )

    # -- the page's feed --------------------------------------------------------------------------
    def feed_item(self, event: Event) -> JsonObject | None:
        """What the operator page shows for a ``verification`` event: masked, with photo links.

        The event's data is ``{"id": outbox_id, "reasonCode": FaceReason, "reason": English text, ...}``;
        the record's fields come from the outbox. An event whose record could not be stored (``id`` None) is shown from
        the event's own masked fields (``name``, ``cardNo``, ``result``, ``score``, ``error``), so
        the desk sees that something went wrong. ``None`` when there is nothing to show.
        """
        data = event.data
        raw_id = data.get("id")
        view = None
        if raw_id is not None:
            try:
                view = self.verification(int(raw_id))
            except (TypeError, ValueError, NotFound):
                log.debug("event %d names no stored verification", event.seq)
        if view is None and not (data.get("cardNo") or data.get("error")):
            return None
        rec = view.record if view else {}
        result = _as_int(rec.get("faceResult", data.get("result")))
        score = rec.get("faceScore", data.get("score"))
        source = data.get("source") or (view.source if view else None)
        reason_text, detail = reason_zh(
            result,
            score,
            parse_reason(data.get("reasonCode")),
            data.get("reason"),
            relayed=source == "local_api",
            threshold=self.settings.face.threshold,
        )
        error = data.get("error")
        held = (view.heldReason if view else None) or data.get("held")
        photos: dict[str, str | None] = {"head": None, "camera": None}
        if view is not None:
            record_id = view.id
            photos = {k: (f"/ui/photos/{record_id}/{k}" if has else None) for k, has in view.hasPhotos.items()}
        return {
            "id": view.id if view else None,
            "seq": event.seq,
            "name": rec.get("realName", "") if view else _safe_name(data.get("name")),
            "cardNo": rec.get("cardNo") if view else _safe_card(data.get("cardNo")),
            "score": score,
            "result": result,
            "resultText": RESULT_TEXT.get(result, "未知") if result is not None else "未知",
            "reason": reason_text,
            "reasonDetail": detail,
            "verifyTime": rec.get("verifyTime")
            or dt.datetime.fromtimestamp(event.time, CHINA_TZ).strftime("%Y-%m-%d %H:%M:%S"),
            "operator": rec.get("operationUser") or self.operator.get(),
            "state": view.state if view else "unsaved",
            "held": bool(held),
            "error": "记录未能保存，请通知技术人员" if error and not view else None,
            "errorDetail": str(error) if error and not view else None,
            "simulated": bool((view.simulated if view else None) or data.get("simulated")),
            "source": source,
            "photos": photos,
            # how much longer the page shows it as the current result (a replayed old one: 0)
            "currentForS": round(max(0.0, self.settings.local_api.result_display_s - (time.time() - event.time)), 1),
            "handover": self._handover(view.id) if view and result in (0, 2) else None,
        }

    # -- the follow-up list and hand-over marks ----------------------------------------------------
    def follow_ups(self, *, since: dt.datetime | None = None, limit: int = 100) -> list[JsonObject]:
        """The failed and not-verified verifications since ``since``, masked (``agent.localapi.followup``)."""
        from agent.localapi.followup import follow_ups

        return follow_ups(self.outbox, threshold=self.settings.face.threshold, since=since, limit=limit)

    def mark_handed_over(self, record_id: int) -> JsonObject:
        """Mark that the case of a failed (or not verified) verification was handed over to the
        police, by the current operator, now; kept in the outbox, never uploaded. Marking twice
        returns the first mark. Raises ``NotFound``, or ``RecordError`` for a passed verification."""
        if self.outbox.get(record_id) is None:
            raise NotFound(f"no verification with id {record_id}")
        result = _as_int((self.outbox.payload(record_id, photos=False) or {}).get("faceResult"))
        if result not in (0, 2):
            raise _problem_error(
                f"verification {record_id} passed: there is nothing to hand over",
                [("id", "only a failed (0) or not verified (2) verification is handed over")],
            )
        mark = self.outbox.mark_handed_over(record_id, self.operator.get())
        log.info("verification %d marked handed over to the police", record_id)
        self.events.publish("handover", {"id": record_id})
        return {"id": record_id, "operator": mark.operator, "at": _local_time(mark.at)}

    def _handover(self, record_id: int) -> dict[str, str] | None:
        mark = self.outbox.handovers([record_id]).get(record_id)
        return {"operator": mark.operator, "at": _local_time(mark.at)} if mark else None

    # -- status and operator ----------------------------------------------------------------------
    def status(self) -> Status:
        """The agent's status (cached for ``status_ttl_s``); its ``to_json()`` is GET /v1/status."""
        with self._status_lock:
            now = time.monotonic()
            if self._status_cache and now - self._status_cache[0] < self._status_ttl_s:
                return self._status_cache[1]
            status = self._status_provider()
            self._status_cache = (now, status)
            return status

    def page_status(self) -> JsonObject:
        """The small summary the operator page shows: queue depth, platform state, operator."""
        # The queue and the platform both from the one Status (which read the outbox's counts once).
        status: Status | None
        try:
            status = self.status()
        except Exception:  # the page must keep working while the outbox or the service is unhappy
            log.debug("status failed", exc_info=True)
            status = None
        states: dict[str, str] = {}
        for event in self.events.recent(VERIFICATION, 10):  # so the page can follow each upload
            record_id = event.data.get("id")
            try:
                row = self.outbox.get(int(record_id)) if record_id is not None else None
            except Exception:
                row = None
            if row is not None:
                states[str(record_id)] = str(row.state)
        page_platform = _page_platform(status.platform.state if status is not None else PlatformState.UNKNOWN)
        return {
            "queueDepth": status.queue.depth if status is not None else 0,
            "queue": {state.value: status.queue.count(state) if status is not None else 0 for state in RecordState},
            "platform": page_platform.value,
            "platformText": PLATFORM_TEXT[page_platform],
            "operator": self.operator.get(),
            "states": states,
            "time": dt.datetime.now(CHINA_TZ).strftime("%Y-%m-%d %H:%M:%S"),
            "resultDisplayS": self.settings.local_api.result_display_s,
            "capture": self._capture(),
        }

    def _capture(self) -> dict[str, Any]:
        """{"phase": "retry", "until": ISO time} while the face grey zone's retry runs, else idle."""
        for event in reversed(self.events.recent(STATUS, 50)):
            capture = event.data.get("capture")
            if isinstance(capture, dict):
                until = _parse_iso(capture.get("until"))
                if capture.get("phase") == "retry" and until is not None and until > dt.datetime.now(dt.UTC):
                    return {"phase": "retry", "until": capture["until"]}
                break
        return {"phase": "idle"}

    def get_operator(self) -> str:
        return self.operator.get()

    def set_operator(self, name: object) -> str:
        """Set the operationUser for the following verifications. Raises ``RecordError`` for a bad name."""
        try:
            value = validate_operator(name)
        except ValueError as exc:
            raise _problem_error("bad operator", [("operator", str(exc))]) from exc
        value = self.operator.set(value)
        self.events.publish("operator", {"operator": value})
        return value


def _reencoded_photos(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with every photo decoded and encoded again: the new JPEG carries no metadata
    segment (EXIF, GPS, XMP, comments) of the original."""
    from core.images import ImageError, decode_image, encode_jpeg

    out = dict(payload)
    problems = []
    for field in (*PHOTO_FIELDS.values(), "fingerCollectImg"):
        if out.get(field):
            try:
                pixels = decode_image(base64.b64decode(out[field]), what=field)
                out[field] = base64.b64encode(encode_jpeg(pixels)).decode("ascii")
            except ImageError as exc:
                problems.append((field, exc.message))
    if problems:
        raise _problem_error(f"the verification has {len(problems)} unusable photo(s)", problems)
    return out


def reason_zh(
    result: int | None,
    score: object,
    code: FaceReason | None,
    detail: object,
    *,
    relayed: bool = False,
    threshold: float,
) -> tuple[str | None, str | None]:
    """(Chinese reason for the desk, the original technical line) for a result other than passed.

    ``code`` is the face outcome's code (the record's ``meta["reason_code"]``, the event's
    ``reasonCode``); ``None`` for an older record without one or a code this version does not know,
    which reads as the result's plain default. ``detail`` is the English line, passed through for the
    technician. ``relayed``: the terminal scored the face itself; ``threshold`` the ``[face]
    threshold`` quoted with a low score.
    """
    if result == 1:
        return None, None
    line = str(detail) if detail else None
    score_text = _score_text(score)
    if relayed or code is FaceReason.RELAYED:
        if result == 0:
            zh = REASON_ZH[FaceReason.RELAYED]
            return (f"{zh}（分数 {score_text}）" if score_text else zh), line
        return REASON_ZH[FaceReason.TERMINAL_NO_RESULT], line
    if result == 0 and score_text and code in (None, FaceReason.NO_MATCH):
        return f"{REASON_ZH[FaceReason.NO_MATCH]}（分数 {score_text}，阈值 {threshold:.2f}）", line
    if code is not None:
        return REASON_ZH[code], line
    return (UNKNOWN_REASON_ZH.get(result) if result is not None else None), line


def _parse_iso(value: Any) -> dt.datetime | None:
    try:
        parsed = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _safe_name(value: Any) -> str:
    """An event's name as shown: masked, whatever the publisher sent."""
    text = str(value or "")
    return text if "*" in text else mask_name(text)


def _score_text(score: Any) -> str | None:
    try:
        return f"{float(score):.2f}"
    except (TypeError, ValueError):
        return None


def _safe_card(value: Any) -> str:
    """An event's card number as shown: masked, whatever the publisher sent."""
    text = str(value or "")
    return text if "*" in text else mask_card_no(text)


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _local_time(epoch: float) -> str:
    """China time as the platform writes it: yyyy-MM-dd HH:mm:ss."""
    return dt.datetime.fromtimestamp(float(epoch), CHINA_TZ).strftime("%Y-%m-%d %H:%M:%S")


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, CHINA_TZ).isoformat(timespec="seconds")
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="seconds")
    return str(value)


def _page_platform(state: PlatformState) -> PlatformState:
    """The states the page shows: a daemon that is not running is a platform state not known."""
    return PlatformState.UNKNOWN if state is PlatformState.NOT_RUNNING else state


PLATFORM_TEXT: dict[PlatformState, str] = {
    PlatformState.OK: "平台连接正常",
    PlatformState.DOWN: "平台连接中断，记录已保存待上传",
    PlatformState.BLOCKED: "上传已暂停（需检查配置）",
    PlatformState.DISABLED: "已关闭上传",
    PlatformState.UNKNOWN: "平台状态未知",
}
"""What the operator page says for each platform state."""
