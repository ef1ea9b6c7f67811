"""Durable store-and-forward: the encrypted SQLite outbox, registration state and retention.

``Outbox.open(storage_settings)`` commits each verification durably before anyone is told it is
done; ``housekeeping(outbox, now)`` applies retention and the size budget. ``agent.delivery`` drains
the outbox to the platform. docs/outbox.md is the guide.
"""

from agent.outbox.retention import housekeeping
from agent.outbox.store import Attempt, Claim, Handover, Outbox, OutboxStats, Row
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
    "Row",
    "StorageFull",
    "housekeeping",
]
