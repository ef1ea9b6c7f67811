"""What each part of the pipeline needs from the next, as Protocols.

A part takes the narrowest of these instead of a concrete class, so tests hand in a fake and the
type checker proves that the real one fits. The real implementations: ``RecordSink`` is
``agent.outbox.Outbox``, ``PlatformClient`` is ``agent.uplink.client.PlatformClient``,
``CameraSource`` is any ``drivers.base.Camera``; a clock is ``core.clock.Clock``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from core.images import Frame
from core.outcome import Outcome
from core.records import Payload


class RecordSink(Protocol):
    """Where a verification is committed: durable before ``enqueue`` returns its id."""

    def enqueue(
        self,
        payload: Payload,
        *,
        simulated: bool = False,
        held_reason: str | None = None,
        raw_wlt: bytes | None = None,
        idempotency_key: str | None = None,
        meta: Mapping[str, object] | None = None,
    ) -> int: ...


class PlatformClient(Protocol):
    """The platform's two calls, each answered with an ``Outcome`` (never an exception for the
    network). A payload is the JSON object as sent (a dict: the real client refuses anything else)."""

    def register_device(self, payload: Payload) -> Outcome: ...

    def upload_verification(self, payload: Payload) -> Outcome: ...

    def abort(self) -> None:
        """Cut the requests in flight (at stop); they end as retryable outcomes."""

    def close(self) -> None: ...


class CameraSource(Protocol):
    """A camera as the face session uses it."""

    @property
    def is_open(self) -> bool: ...

    @property
    def simulated(self) -> bool:
        """True for a fake camera: every record it takes part in is marked simulated."""
        ...

    def open(self) -> None: ...

    def read_frame(self, timeout_s: float) -> Frame:
        """The next BGR frame; raises ``DeviceTimeout`` when none comes in ``timeout_s``."""
        ...
