"""The outcomes of every call to the platform, and what the uploader does with each."""

from __future__ import annotations

import dataclasses
import enum

from core.privacy import mask_personal


class OutcomeKind(enum.StrEnum):
    ACCEPTED = "accepted"
    """The platform took it (B2301 on registration counts: already registered)."""
    REJECTED = "rejected"
    """This record is wrong (A2301, other record-level business errors): never retried blindly."""
    BLOCKED = "blocked"
    """Our configuration is wrong (401/403, signature or credential refused): pause all sending."""
    RETRYABLE = "retryable"
    """Network, timeout, 5xx, 429, unreadable reply, a reply that fails an acceptance check: back off and retry."""
    CLOCK = "clock"
    """The platform said our request's time is expired (时间戳过期): retried with the platform-corrected time."""
    UNREGISTERED = "unregistered"
    """The platform does not know this device as registered and enabled: register again, then retry."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The result of one request. ``request_id`` is the hmpt-portal-request-id that was sent."""

    kind: OutcomeKind
    request_id: str
    message: str
    http_status: int | None = None
    code: int | None = None
    """The envelope's ``code`` when a JSON envelope came back."""
    exception_code: str | None = None
    """The envelope's ``exceptionCode`` (00000, A2301, B2301, ...)."""
    platform_request_id: str | None = None
    """The ``requestId`` the platform echoed back."""
    return_time_ms: int | None = None
    """The platform's ``returnTime``, for clock-skew checks."""
    retry_after_s: float | None = None
    """Honoured when the platform sent Retry-After (429/503)."""
    signed: bool = False
    """The reply carried a response signature that verified."""
    failed_check: str | None = None
    """The acceptance check a reply with a success body failed: ``status``, ``request_id``,
    ``reply_time``, ``signature`` or ``size`` (see docs/platform.md, "What counts as acceptance")."""
    personal: dataclasses.InitVar[tuple[str, ...]] = ()
    """The record's personal values (name, address, birth date) to mask wherever the message quotes them."""

    def __post_init__(self, personal: tuple[str, ...]) -> None:
        # The platform's message may quote the record (the ID number or name it found wrong); it is
        # logged, shown in status and kept in the outbox's plain columns, so it is masked here once.
        object.__setattr__(self, "message", mask_personal(self.message, personal))

    @property
    def accepted(self) -> bool:
        return self.kind is OutcomeKind.ACCEPTED

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.message} (requestId {self.request_id})"
