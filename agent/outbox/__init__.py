"""Durable store-and-forward: the encrypted SQLite outbox, the uploader, registration and retention.

``Outbox.open(storage_settings)`` commits each verification durably before anyone is told it is
done; ``Uploader`` drains it to the platform; ``housekeeping(outbox, now)`` applies retention and
the size budget. docs/outbox.md is the guide.
"""

from agent.outbox.retention import housekeeping
from agent.outbox.store import Attempt, Claim, Handover, Outbox, OutboxStats, Row
from agent.outbox.uploader import RateLimiter, Uploader, full_jitter
from core.errors import KeyFileError, OutboxCorrupt, OutboxError, StorageFull

__all__ = [
    "Attempt",
    "Claim",
    "Handover",
    "KeyFileError",
    "Outbox",
    "OutboxCorrupt",
    "OutboxError",
    "OutboxStats",
    "RateLimiter",
    "Row",
    "StorageFull",
    "Uploader",
    "full_jitter",
    "housekeeping",
]
