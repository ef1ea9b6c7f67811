"""What the outbox keeps of a record beside its sealed payload: its state and its plain meta.

``RecordState`` is the queue's state machine (docs/outbox.md); ``RecordMeta`` the non-personal facts
a record carries in clear for status pages and the guards that complete held records. Both cross
from the verification loop and the local API into the outbox, and from the outbox to the uploader,
status and the operator page.
"""

from __future__ import annotations

import enum
from typing import Literal

from pydantic import BaseModel, ConfigDict


class RecordState(enum.StrEnum):
    PENDING = "pending"
    """Waiting for its next upload attempt (``next_attempt_at``)."""
    SENDING = "sending"
    """Claimed by the uploader for one attempt; back to pending if the process dies."""
    SENT = "sent"
    """The platform's real acceptance was recorded: final."""
    REJECTED = "rejected"
    """The platform refused this record: waits for a person (retry or resolve)."""
    HELD = "held"
    """Kept and never sent until completed or released (``held_reason`` says why)."""

    @property
    def unsent(self) -> bool:
        """Still owed to the platform: not sent and not refused."""
        return self in (RecordState.PENDING, RecordState.SENDING, RecordState.HELD)


RecordSource = Literal["reader", "local_api"]
"""Where a record came from: this terminal's reader, or a terminal's relayed verification."""


class FaceRetry(BaseModel):
    """The face grey zone's retry: the best score before it and how many more frames were compared."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    score_before: float
    frames: int


class RecordMeta(BaseModel):
    """Non-personal facts stored in clear beside a sealed record (never a name, number or photo).

    Unknown keys in an older row are ignored on reading; ``to_json()`` writes only what is set.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    source: RecordSource
    """Always stored: ``count_unsent(source=)`` selects on it."""
    reason: str | None = None
    """The face session's line for the log (English); the page uses ``reason_code``."""
    reason_code: str | None = None
    """The face outcome's code (``agent.face.reasons.FaceReason``), which the page shows in Chinese;
    absent in rows written before codes existed, which the page shows with a default text."""
    face_source: str | None = None
    """"engine" (computed here) or "terminal" (relayed)."""
    engine_score: float | None = None
    engine_result: int | None = None
    face_retry: FaceRetry | None = None
    camera_placeholder: bool = False
    """cameraImg is a placeholder (the camera gave no frame): the engine must not score it."""
    face_result_pending: bool = False
    """Held before a face result existed: completing the record computes it."""
    clock_offset_s: float | None = None
    """The local clock's offset from the platform's at capture, when beyond the configured bound."""
    body_sha256: str | None = None
    """Relay: keyed digest of the request body, to tell a retried post from a different one."""

    def to_json(self) -> dict[str, object]:
        """The meta as stored: JSON types, unset and default values left out."""
        return self.model_dump(mode="json", exclude_defaults=True)
