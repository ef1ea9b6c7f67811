"""Retention and the size budget of the outbox (``[storage]``), applied by ``housekeeping(now)``.

- photos (and a kept WLT) of sent records are erased ``keep_sent_days`` after they were sent;
- sent rows are deleted ``keep_sent_rows_days`` after they were sent (their attempts with them);
- past ``max_bytes``, sent data goes first, oldest first: photos, then whole sent rows.
  Unsent records (pending, sending, held, rejected) are never evicted: when they alone exceed the
  budget, the result (and ``stats()["over_budget"]``) carries a storage alert, and capture goes on
  as long as the disk has room.

Freed pages are returned to the file system (``PRAGMA incremental_vacuum``). Work is done in small
transactions, so capture never waits long behind housekeeping.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.outbox.store import Outbox

log = logging.getLogger(__name__)

BATCH = 200
DAY_S = 86400.0
VACUUM_PAGES = 4096


def _erase_photos(outbox: Outbox, ids: list[int], now: float) -> None:
    marks = ",".join("?" * len(ids))
    with outbox._write("erase photos of sent records") as conn:
        conn.execute(f"UPDATE payloads SET photos = NULL, raw_wlt = NULL WHERE record_id IN ({marks})", ids)
        conn.execute(f"UPDATE records SET photos_erased_at = ?, bytes = (SELECT length(data) FROM payloads "
                     f"WHERE payloads.record_id = records.id) WHERE id IN ({marks})", (now, *ids))


def _delete_rows(outbox: Outbox, ids: list[int]) -> None:
    marks = ",".join("?" * len(ids))
    with outbox._write("delete old sent records") as conn:
        conn.execute(f"DELETE FROM attempts WHERE record_id IN ({marks})", ids)
        conn.execute(f"DELETE FROM payloads WHERE record_id IN ({marks})", ids)
        deleted = conn.execute(f"DELETE FROM records WHERE id IN ({marks}) AND state = 'sent'", ids).rowcount
    if outbox.watermark is not None:
        outbox.watermark.note(None, -int(deleted))


def _ids(outbox: Outbox, sql: str, args: tuple[Any, ...]) -> list[int]:
    with outbox._read("read the outbox") as conn:
        return [int(r[0]) for r in conn.execute(sql, (*args, BATCH)).fetchall()]


_WITH_PHOTOS = ("SELECT r.id FROM records r JOIN payloads p ON p.record_id = r.id WHERE r.state = 'sent' "
                "AND (p.photos IS NOT NULL OR p.raw_wlt IS NOT NULL)")


def _total(outbox: Outbox) -> int:
    with outbox._read("measure the outbox") as conn:
        return int(conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM records").fetchone()[0])


def budget_alert(held_bytes: int, max_bytes: int) -> str | None:
    """The one-line storage alert when the outbox holds more than ``storage.max_bytes``, else None."""
    if held_bytes <= max_bytes:
        return None
    return (f"storage: the outbox holds {held_bytes / 2**20:.1f} MiB, over storage.max_bytes "
            f"({max_bytes / 2**20:.1f} MiB), and unsent records are never evicted: restore "
            "the upload (see the platform state) or raise max_bytes")


def housekeeping(outbox: Outbox, now: float | None = None) -> dict[str, Any]:
    """Apply retention and the size budget once. The daemon calls it every few minutes.

    Returns ``{"photos_erased", "rows_deleted", "evicted_photos", "evicted_rows", "bytes",
    "max_bytes", "alert"}``; ``alert`` is a one-line storage alert or ``None``.
    """
    storage = outbox.storage
    now = time.time() if now is None else now
    result: dict[str, Any] = {"photos_erased": 0, "rows_deleted": 0, "evicted_photos": 0, "evicted_rows": 0}

    erase_before = now - storage.keep_sent_days * DAY_S
    while ids := _ids(outbox, _WITH_PHOTOS + " AND r.sent_at < ? ORDER BY r.sent_at LIMIT ?", (erase_before,)):
        _erase_photos(outbox, ids, now)
        result["photos_erased"] += len(ids)

    delete_before = now - storage.keep_sent_rows_days * DAY_S
    while ids := _ids(outbox, "SELECT id FROM records WHERE state = 'sent' AND sent_at < ? ORDER BY sent_at LIMIT ?",
                      (delete_before,)):
        _delete_rows(outbox, ids)
        result["rows_deleted"] += len(ids)

    # The budget: sent photos first, then sent rows, oldest first. Never anything unsent.
    total = _total(outbox)
    while total > storage.max_bytes and (ids := _ids(outbox, _WITH_PHOTOS + " ORDER BY r.sent_at LIMIT ?", ())):
        _erase_photos(outbox, ids, now)
        result["evicted_photos"] += len(ids)
        total = _total(outbox)
    while total > storage.max_bytes and (ids := _ids(
            outbox, "SELECT id FROM records WHERE state = 'sent' ORDER BY sent_at LIMIT ?", ())):
        _delete_rows(outbox, ids)
        result["evicted_rows"] += len(ids)
        total = _total(outbox)

    if any(result.values()):
        _vacuum(outbox)
        log.info("outbox housekeeping: %s", ", ".join(f"{k} {v}" for k, v in result.items() if v))
    result["bytes"] = total
    result["max_bytes"] = storage.max_bytes
    result["alert"] = None
    if total > storage.max_bytes:
        result["alert"] = budget_alert(total, storage.max_bytes)
        log.warning("%s", result["alert"])
    return result


def _vacuum(outbox: Outbox) -> None:
    """Give free pages back to the file system, a few MB per transaction."""
    while True:
        with outbox._read("measure the outbox") as conn:
            free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            auto = int(conn.execute("PRAGMA auto_vacuum").fetchone()[0])
        if free == 0 or auto != 2:  # 2 = incremental; older files made without it keep their pages
            return
        with outbox._write("return free space") as conn:
            conn.execute(f"PRAGMA incremental_vacuum({VACUUM_PAGES})").fetchall()
