"""One verification: card -> card photo -> live frames -> score (or the terminal's) -> record -> outbox.

``Verifier.verify(card)`` never raises for hardware or scoring trouble: whatever happens, the
verification ends recorded in the outbox (durably, before ``verify`` returns) with a faceResult and
a reason, and an event is published for the operator page. The cases:

- card photo: the decoded JPEG the reader gave, else the chip's WLT decoded by the configured
  decoder; without a decoder (or when it fails) the record is committed *held* with the raw WLT and
  completed later by ``complete_held`` once a decoder is configured;
- face, by ``[face] mode``: ``compute`` scores the live face with the engine; ``relay`` takes the
  terminal's score from the card event; ``both`` records the terminal's and logs where the engine
  disagrees. No camera, no engine or no usable frame: faceResult 2 with the reason;
- cameraImg is required by the platform: when the camera gave no frame at all, a plain grey
  placeholder JPEG is sent with faceResult 2 (not verified), and the row's meta says so;
- a card whose data breaks the platform spec (e.g. a name too long for varchar(10)) is still
  committed, held with the reason, so nothing read is lost and a technician can export and fix it.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from agent.config import Settings
from agent.events import STATUS, VERIFICATION, EventBus
from agent.face import (
    FaceOutcome,
    FaceReason,
    reconcile_both,
    relay_outcome,
    score_frames,
    score_live,
)
from agent.face.engine import FaceEngine
from agent.face.reasons import CAPTURE_CODES
from agent.face.scoring import RESULT_NOT_VERIFIED
from agent.outbox.store import SIMULATED_HELD_REASON
from core.card import IdCard
from core.clock import china_isoformat
from core.errors import FvagentError, RecordError
from core.images import ImageError, decode_image, encode_jpeg, normalize_jpeg
from core.privacy import mask_card_no, mask_name
from core.protocols import CameraSource, RecordSink
from core.records import Payload, VerificationCapture, build_verification, parse_verification, verification_fields

log = logging.getLogger(__name__)

HELD_NO_DECODER = "card photo not decoded: no WLT decoder configured ([card_reader] wlt_decoder)"
HELD_DECODER_FAILED = "card photo not decoded: the WLT decoder failed"
HELD_NO_PHOTO = "the card gave no photo"
HELD_INVALID = "the card's data breaks the platform spec"
RELAY_FRAME_TIMEOUT_S = 1.0
"""Relay mode: how long to wait for one camera frame for cameraImg."""

_placeholder: bytes | None = None


def placeholder_jpeg() -> bytes:
    """A plain grey 320x240 JPEG: the cameraImg of a verification whose camera gave no frame."""
    global _placeholder
    if _placeholder is None:
        import numpy as np

        _placeholder = encode_jpeg(np.full((240, 320, 3), 128, dtype=np.uint8))
    return _placeholder


@dataclasses.dataclass(frozen=True)
class Verification:
    """What one verification produced, as the loop and the status see it (no personal data)."""

    outbox_id: int | None
    """The committed row; ``None`` only when the outbox could not store it (``error`` says why)."""
    result: int
    score: float
    reason: str
    held_reason: str | None
    card_no_masked: str
    name_masked: str
    simulated: bool
    latency_s: float
    """From the card read to the durable commit."""
    at: float
    """Wall-clock time of the commit (epoch seconds)."""
    error: str | None = None

    def summary(self) -> dict[str, str | int | float | bool | None]:
        return {
            "id": self.outbox_id,
            "at": china_isoformat(self.at),
            "result": self.result,
            "score": self.score,
            "reason": self.reason,
            "held": self.held_reason,
            "card": self.card_no_masked,
            "latency_s": round(self.latency_s, 3),
            "simulated": self.simulated,
            "error": self.error,
        }


class Verifier:
    """Runs verifications for the service (and for ``fvagent verify-once``).

    Parameters:
        settings: the agent's ``Settings``.
        outbox: the open outbox (``enqueue(payload, *, simulated, held_reason, raw_wlt, meta) -> id``).
        camera: returns the open camera or ``None`` while it is faulty; ``camera_fault(reason)``
            reports a camera that failed during capture.
        engine: returns the loaded face engine, or ``None`` (with ``engine_error()`` saying why).
        operator: returns the current operationUser.
        decoder: ``wlt bytes -> JPEG bytes`` when a WLT decoder is configured, else ``None``.
        events: where the committed verification is announced (optional).
        stopping: set when the service stops: a capture in progress is cut short (it still ends
            recorded, with what was seen so far).
        clock_offset: the platform's clock minus ours, as learnt from its replies (``None`` while
            unknown); beyond ``[device] max_clock_offset_s`` it is kept in the record's meta beside
            the local verifyTime.
    """

    def __init__(
        self,
        settings: Settings,
        outbox: RecordSink,
        *,
        camera: Callable[[], CameraSource | None],
        camera_fault: Callable[[str], None] | None = None,
        engine: Callable[[], FaceEngine | None],
        engine_error: Callable[[], str | None] | None = None,
        operator: Callable[[], str],
        decoder: Callable[[bytes], bytes] | None = None,
        events: EventBus | None = None,
        stopping: threading.Event | None = None,
        now: Callable[[], dt.datetime] | None = None,
        clock_offset: Callable[[], float | None] | None = None,
    ) -> None:
        self.settings = settings
        self._clock_offset = clock_offset or (lambda: None)
        self.outbox = outbox
        self._camera = camera
        self._camera_fault = camera_fault or (lambda reason: None)
        self._engine = engine
        self._engine_error = engine_error or (lambda: None)
        self._operator = operator
        self.decoder = decoder
        self.events = events
        self._stopping = stopping or threading.Event()
        self._now = now or (lambda: dt.datetime.now().astimezone())

    # -- the whole verification -------------------------------------------------------------------
    def verify(self, card: IdCard, *, read_at: float | None = None) -> Verification:
        """Verify ``card`` (an ``IdCard`` just read) and commit the record. Never raises for hardware,
        scoring or record problems; ``OutboxError`` is caught too and reported in ``error``."""
        t0 = time.monotonic() if read_at is None else read_at
        settings = self.settings
        head, held_reason = self._card_photo(card)
        outcome, camera_simulated = self._face(card, head)
        camera_jpeg = outcome.best_frame_jpeg
        meta: dict[str, Any] = {
            "source": "reader",
            "reason": outcome.reason,
            "reason_code": outcome.code.value,
            "face_source": outcome.source,
        }
        if outcome.engine_score is not None:
            meta["engine_score"] = outcome.engine_score
            meta["engine_result"] = outcome.engine_result
        if outcome.retry is not None:
            meta["face_retry"] = outcome.retry.model_dump()
        if camera_jpeg is None:
            camera_jpeg = placeholder_jpeg()
            meta["camera_placeholder"] = True
        offset = self._clock_offset()
        if offset is not None and abs(offset) > settings.device.max_clock_offset_s:
            # verifyTime stays the local clock's (what the desk saw); the offset says how to read it.
            meta["clock_offset_s"] = round(offset, 1)
        simulated = card.simulated or camera_simulated
        capture = VerificationCapture(
            card,
            head_jpeg=head or placeholder_jpeg(),
            camera_jpeg=camera_jpeg,
            face_score=outcome.score,
            face_result=outcome.result,
            operator=self._operator(),
            verified_at=self._now(),
            device=settings.device,
            long_term_end=settings.platform.conventions.long_term_end_date,
        )
        try:
            payload = build_verification(capture).to_payload()
        except RecordError as exc:
            # Keep what was read: held (never sent) with the reason, for a technician to export and fix.
            held_reason = f"{HELD_INVALID}: " + "; ".join(f"{f}: {r}" for f, r in exc.problems)[:400]
            log.error(
                "card %s cannot make a valid record (%s); stored held",
                mask_card_no(card.card_no),
                held_reason,
            )
            payload = verification_fields(dataclasses.replace(capture, head_jpeg=head))
        if simulated and settings.platform.environment == "production":
            held_reason = SIMULATED_HELD_REASON  # over any other reason: completing it must not release it
        elif (
            head is None
            and held_reason is not None
            and "headImg" in payload
            and not held_reason.startswith(HELD_INVALID)
        ):
            del payload["headImg"]  # completed from the WLT when a decoder comes
        meta["face_result_pending"] = held_reason is not None and head is None and settings.face.mode != "relay"
        try:
            outbox_id = self.outbox.enqueue(
                payload,
                simulated=simulated,
                held_reason=held_reason,
                raw_wlt=card.photo_wlt if held_reason else None,
                meta=meta,
            )
            error = None
        except FvagentError as exc:
            outbox_id, error = None, str(exc)
            log.error("verification of card %s could not be stored: %s", mask_card_no(card.card_no), exc)
        latency = time.monotonic() - t0
        done = Verification(
            outbox_id=outbox_id,
            result=outcome.result,
            score=outcome.score,
            reason=outcome.reason,
            held_reason=held_reason,
            card_no_masked=mask_card_no(card.card_no),
            name_masked=mask_name(card.name),
            simulated=simulated,
            latency_s=latency,
            at=time.time(),
            error=error,
        )
        if outbox_id is not None:
            log.info(
                "verification %d committed: card %s, faceResult %d, score %.2f%s (%s) in %.2f s",
                outbox_id,
                done.card_no_masked,
                outcome.result,
                outcome.score,
                ", held" if held_reason else "",
                outcome.reason,
                latency,
                extra={
                    "FVAGENT_EVENT": "verification",
                    "FVAGENT_OUTBOX_ID": outbox_id,
                    "FVAGENT_FACE_RESULT": outcome.result,
                },
            )
        if self.events is not None:
            try:
                self.events.publish(
                    VERIFICATION,
                    {
                        "id": outbox_id,
                        "reason": outcome.reason if outcome.result != 1 else None,
                        "reasonCode": outcome.code.value,
                        "result": outcome.result,
                        "score": outcome.score,
                        "name": done.name_masked,
                        "cardNo": done.card_no_masked,
                        "held": held_reason,
                        "simulated": simulated,
                        "error": error,
                        "source": "reader",
                        "latency_s": round(latency, 3),
                    },
                )
            except Exception:  # the page is a convenience; the record is already safe
                log.debug("publishing the verification event failed", exc_info=True)
        return done

    # -- the card photo ---------------------------------------------------------------------------
    def _card_photo(self, card: IdCard) -> tuple[bytes | None, str | None]:
        """(JPEG of the card photo, held reason)."""
        if card.photo_jpeg:
            try:
                return normalize_jpeg(card.photo_jpeg, what="card photo"), None
            except ImageError as exc:
                log.warning("card photo from the reader is not a usable JPEG: %s", exc)
        if card.photo_wlt:
            if self.decoder is None:
                return None, HELD_NO_DECODER
            try:
                return normalize_jpeg(self.decoder(card.photo_wlt), what="decoded card photo"), None
            except Exception as exc:  # a vendor library failing must not block the desk
                log.warning("WLT decoder failed: %s", exc)
                return None, f"{HELD_DECODER_FAILED} ({exc})"
        return None, HELD_NO_PHOTO

    # -- the face ---------------------------------------------------------------------------------
    def _face(self, card: IdCard, head: bytes | None) -> tuple[FaceOutcome, bool]:
        """(the face outcome, whether a simulated camera took part)."""
        face = self.settings.face
        camera = self._camera()
        simulated = camera is not None and camera.simulated
        terminal: FaceOutcome | None = None
        if face.mode in ("relay", "both"):
            terminal = self._terminal(card)
        if face.mode == "relay":
            assert terminal is not None
            if terminal.best_frame_jpeg is None and camera is not None:
                terminal = dataclasses.replace(terminal, best_frame_jpeg=self._one_frame(camera))
            return terminal, simulated
        engine_outcome = self._compute(camera, head)
        if terminal is not None and face.mode == "both":
            if card.terminal_score is None:
                return dataclasses.replace(
                    engine_outcome, reason=f"{engine_outcome.reason}; the terminal sent no score"
                ), simulated
            return reconcile_both(terminal, engine_outcome), simulated
        return engine_outcome, simulated

    def _terminal(self, card: IdCard) -> FaceOutcome:
        score, result = card.terminal_score, card.terminal_result
        if score is None and result is None:
            return FaceOutcome(
                0.0,
                RESULT_NOT_VERIFIED,
                "the terminal reported no face score",
                FaceReason.TERMINAL_NO_RESULT,
                source="terminal",
            )
        try:
            return relay_outcome(score, result)
        except RecordError as exc:
            rules = "; ".join(f"{f}: {r}" for f, r in exc.problems)
            log.warning("terminal's face values refused: %s", rules)
            return FaceOutcome(
                0.0,
                RESULT_NOT_VERIFIED,
                f"the terminal's face values are invalid ({rules})",
                FaceReason.TERMINAL_INVALID,
                source="terminal",
            )

    def _compute(self, camera: CameraSource | None, head: bytes | None) -> FaceOutcome:
        engine = self._engine()
        if engine is None:
            reason = f"face engine unavailable: {self._engine_error() or 'not loaded'}"
            frame = self._one_frame(camera) if camera is not None else None
            return FaceOutcome(
                0.0, RESULT_NOT_VERIFIED, reason, FaceReason.ENGINE_UNAVAILABLE, best_frame_jpeg=frame, head_jpeg=head
            )
        if camera is None:
            return FaceOutcome(
                0.0, RESULT_NOT_VERIFIED, "camera unavailable", FaceReason.CAMERA_UNAVAILABLE, head_jpeg=head
            )
        stopping = self._stopping

        def clock() -> float:  # a stop request ends the capture at once, with what was seen so far
            return time.monotonic() + (1e6 if stopping.is_set() else 0.0)

        outcome = score_live(engine, camera, head, self.settings.face, clock=clock, on_retry=self._capture_retry)
        if outcome.retry is not None:
            self._publish_capture({"phase": "idle"})
        if stopping.is_set():
            # no usable frame because the stop ended the capture: the stop is the reason the desk reads
            code = FaceReason.CAPTURE_STOPPED if outcome.code in CAPTURE_CODES else outcome.code
            outcome = dataclasses.replace(
                outcome, reason=f"{outcome.reason} (capture cut short: service stopping)", code=code
            )
        if outcome.camera_error:
            self._camera_fault(outcome.camera_error)
        return outcome

    def _capture_retry(self, retry_s: float) -> None:
        """The grey zone's retry started: the page asks the person to face the camera again."""
        until = dt.datetime.now().astimezone() + dt.timedelta(seconds=retry_s)  # real time: the page compares it
        self._publish_capture({"phase": "retry", "until": until.isoformat(timespec="seconds")})

    def _publish_capture(self, capture: dict[str, Any]) -> None:
        if self.events is None:
            return
        try:
            self.events.publish(STATUS, {"capture": capture})
        except Exception:  # the page is a convenience; the capture goes on
            log.debug("publishing the capture state failed", exc_info=True)

    def _one_frame(self, camera: CameraSource) -> bytes | None:
        """One frame as JPEG for cameraImg (relay mode, or when the engine is unavailable)."""
        try:
            return encode_jpeg(camera.read_frame(RELAY_FRAME_TIMEOUT_S))
        except Exception as exc:
            log.debug("no frame for cameraImg: %s", exc)
            if not isinstance(exc, TimeoutError):
                self._camera_fault(str(exc))
            return None


def complete_held(
    payload: Payload,
    raw_wlt: bytes | None,
    *,
    settings: Settings,
    decoder: Callable[[bytes], bytes],
    engine: Callable[[], FaceEngine | None],
    meta: Mapping[str, object] | None = None,
) -> Payload:
    """Complete a record held for its card photo: decode the WLT into headImg and, in compute mode,
    score the stored live photo against it (the face result was pending). Returns the validated
    payload. Raises ``RecordError``/``FvagentError`` when it cannot be completed (it stays held).

    ``meta`` is the row's stored meta. A row written before ``face_result_pending`` existed counts as
    pending in compute mode (what every held record then was), and one without ``camera_placeholder``
    as having a real camera image (the key was written from the start whenever it was a placeholder).
    """
    if not raw_wlt:
        raise RecordError("held record has no raw WLT photo to decode", problems=[("headImg", "no WLT kept")])
    head = normalize_jpeg(decoder(raw_wlt), what="decoded card photo")
    data = dict(payload)
    data["headImg"] = base64.b64encode(head).decode("ascii")
    pending = (meta or {}).get("face_result_pending", settings.face.mode != "relay")
    if pending and settings.face.mode != "relay" and int(data.get("faceResult", 2)) == RESULT_NOT_VERIFIED:
        eng = engine()
        if eng is not None and data.get("cameraImg") and not (meta or {}).get("camera_placeholder"):
            try:
                frame = decode_image(base64.b64decode(data["cameraImg"]), what="stored live photo")
                outcome = score_frames(eng, [frame], head, settings.face)
                data["faceScore"], data["faceResult"] = outcome.score, outcome.result
                log.info("held record completed: faceResult %d (%s)", outcome.result, outcome.reason)
            except ImageError as exc:
                log.warning("held record's live photo cannot be scored: %s", exc)
    return parse_verification(data, long_term_end=settings.platform.conventions.long_term_end_date).to_payload()
