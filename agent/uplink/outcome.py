"""The four outcomes of every call to the platform, and what the uploader does with each."""

from __future__ import annotations

import dataclasses
import enum

from agent.privacy import mask_id_numbers


class OutcomeKind(str, enum.Enum):
    ACCEPTED = "accepted"
    """The platform took it (B2301 on registration counts: already registered)."""
    REJECTED = "rejected"
    """This record is wrong (A2301, other record-level business errors): never retried blindly."""
    BLOCKED = "blocked"
    """Our configuration is wrong (401/403, signature or credential refused): pause all sending."""
    RETRYABLE = "retryable"
    """Network, timeout, 5xx, 429, unreadable reply, bad response signature: back off and retry."""


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

    def __post_init__(self) -> None:
        # The platform's message may quote the record (e.g. the ID number it found wrong); it is
        # logged, shown in status and kept in the outbox's plain columns, so it is masked here once.
        object.__setattr__(self, "message", mask_id_numbers(self.message))

    @property
    def accepted(self) -> bool:
        return self.kind is OutcomeKind.ACCEPTED

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.message} (requestId {self.request_id})"
