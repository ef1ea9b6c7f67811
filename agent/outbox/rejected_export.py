"""``export_rejected``: the rejected records as JSON Lines, to fix and resend with ``fvagent upload-file``.

A client of the outbox's public API: it lists the rejected rows and opens their payloads."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from agent.files import create_export_file
from core.errors import OutboxCorrupt, OutboxError
from core.stored import RecordState

if TYPE_CHECKING:
    from agent.outbox.store import Outbox

log = logging.getLogger(__name__)

ALL = 1_000_000
"""More rejected records than an outbox ever holds: the export takes them all."""


def export_rejected(outbox: Outbox, path: str | os.PathLike[str]) -> int:
    """Write every rejected record to ``path`` (JSON Lines, created 0600, never overwritten):
    one object per line with ``id``, ``createdAt``, ``attempts``, ``lastError`` and ``record``
    (the full payload, to fix and resend with ``fvagent upload-file``). Returns how many.
    With no rejected record nothing is created (an empty file would only block the name).

    A record whose sealed data no longer opens (altered on disk) gets a line with ``record`` null
    and ``error`` saying so, and is logged: it must not keep the others from being exported."""
    rows = outbox.list(RecordState.REJECTED, limit=ALL)
    if not rows:
        return 0
    target = Path(path)
    fd = create_export_file(target, OutboxError)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        for row in reversed(rows):
            doc: dict[str, object] = {
                "id": row.id,
                "createdAt": dt.datetime.fromtimestamp(row.created_at).astimezone().isoformat(),
                "attempts": row.attempts,
                "lastError": row.last_error,
            }
            try:
                doc["record"] = outbox.payload(row.id)
            except OutboxCorrupt as exc:
                log.error("export: %s; its line in %s has no record", exc.message, target)
                doc["record"] = None
                doc["error"] = exc.message
            fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return len(rows)
