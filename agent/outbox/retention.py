"""Retention and the size budget of the outbox (``[storage]``), applied by ``housekeeping(now)``.

- photos (and a kept WLT) of sent records are erased ``keep_sent_days`` after they were sent;
- sent rows are deleted ``keep_sent_rows_days`` after they were sent (their attempts with them);
- past ``max_bytes``, sent data goes first, oldest first: photos, then whole sent rows.
  Unsent records (pending, sending, held, rejected) are never evicted: when they alone exceed the
  budget, the result (and ``stats()["over_budget"]``) carries a storage alert, and capture goes on
  as long as the disk has room.

Freed pages are returned to the file system (``PRAGMA incremental_vacuum``). Work is done in small
transactions, so capture never waits long behind housekeeping.

Nothing is erased or deleted by a clock that jumped ahead: ``now`` may be at most the latest time
the outbox itself has seen (its last capture, its last delivery, its last housekeeping pass) plus
the machine's uptime plus ``CLOCK_SLACK_S``. Past that, the date rules are skipped (the size budget,
which goes by order, not by date, still applies), and a storage alert says why until a pass is allowed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from core.errors import OutboxError, StorageFull

if TYPE_CHECKING:
    from agent.outbox.store import Outbox

log = logging.getLogger(__name__)

BATCH = 200
DAY_S = 86400.0
VACUUM_PAGES = 4096
CLOCK_SLACK_S = 3600.0
"""How far past (latest time seen + uptime) the clock may be before the date rules wait."""
_MARK = "housekeeping_clock"
_REFUSED = "housekeeping_refused"


class HousekeepingResult(TypedDict):
    """What one housekeeping pass did, and the size it left."""

    photos_erased: int
    rows_deleted: int
    evicted_photos: int
    evicted_rows: int
    bytes: int
    max_bytes: int
    alert: str | None
    """A one-line storage alert, or None."""


def boot_uptime_s() -> float:
    """Seconds since the machine booted (suspend included): time that really passed."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def latest_seen(outbox: Outbox) -> float | None:
    """The latest wall-clock time the outbox has recorded: last capture, last delivery, last allowed pass."""
    mark = outbox.get_state(_MARK)
    times = [
        float(t)
        for t in (outbox.queue.last_created_at(), outbox.queue.last_sent_at(), mark)
        if isinstance(t, int | float)
    ]
    return max(times) if times else None


def clock_alert(outbox: Outbox, now: float, uptime_s: float) -> str | None:
    """Why ``now`` is implausibly ahead for the date rules, or None when it is plausible."""
    seen = latest_seen(outbox)
    if seen is None or now <= seen + uptime_s + CLOCK_SLACK_S:
        return None
    ahead = now - seen - uptime_s
    return (
        f"storage: the clock is {ahead / 3600:.1f} h past the latest time the outbox has seen plus the uptime "
        f"({time.strftime('%Y-%m-%d %H:%M', time.localtime(seen))} + {uptime_s / 3600:.1f} h): no photo is "
        "erased and no record deleted by it. Check the clock (timedatectl; NTP); the first capture or "
        "delivery at the right time lets housekeeping go on"
    )


def _on_full_disk(work: Callable[[], None], outbox: Outbox) -> None:
    """Run ``work`` (one drain write); on a full disk, fold the WAL into the database and try once more.

    On a full disk the erasures and deletions pile up in the WAL; a checkpoint writes them into the
    database's existing pages and truncating the WAL gives its room back."""
    try:
        work()
    except StorageFull:
        if not outbox.fold_wal():
            raise
        work()


def _erase_photos(outbox: Outbox, ids: list[int], now: float) -> None:
    try:
        _on_full_disk(lambda: _erase_photos_once(outbox, ids, now), outbox)
    except StorageFull:
        if len(ids) == 1:
            raise
        # A batch too big for what a full disk has left: smaller transactions, each folded in turn.
        half = len(ids) // 2
        _erase_photos(outbox, ids[:half], now)
        _erase_photos(outbox, ids[half:], now)


def _erase_photos_once(outbox: Outbox, ids: list[int], now: float) -> None:
    outbox.queue.erase_photos(ids, now)


def _delete_rows(outbox: Outbox, ids: list[int], now: float) -> None:
    _on_full_disk(lambda: _delete_rows_once(outbox, ids, now), outbox)


def _delete_rows_once(outbox: Outbox, ids: list[int], now: float) -> None:
    outbox.queue.delete_sent(ids, now)


def refused_alert(outbox: Outbox) -> str | None:
    """The alert of the last housekeeping pass that refused the clock, while it stands."""
    value = outbox.get_state(_REFUSED)
    return value if isinstance(value, str) else None


def budget_alert(held_bytes: int, max_bytes: int) -> str | None:
    """The one-line storage alert when the outbox holds more than ``storage.max_bytes``, else None."""
    if held_bytes <= max_bytes:
        return None
    return (
        f"storage: the outbox holds {held_bytes / 2**20:.1f} MiB, over storage.max_bytes "
        f"({max_bytes / 2**20:.1f} MiB), and unsent records are never evicted: restore "
        "the upload (see the platform state) or raise max_bytes"
    )


def unsent_alert(oldest_unsent_at: float | None, days: float, now: float) -> str | None:
    """The alert for rejected or held records older than ``storage.unsent_alert_days``, else None."""
    if oldest_unsent_at is None or now - oldest_unsent_at < days * DAY_S:
        return None
    age = (now - oldest_unsent_at) / DAY_S
    return (
        f"storage: a rejected or held record is {age:.0f} days old (over storage.unsent_alert_days, {days:g}): "
        "it was never delivered; resolve it (fvagent queue ls --state rejected / --state held)"
    )


def damaged_alert(copies: list[Path]) -> str | None:
    """The alert for damaged databases kept in the state directory, else None."""
    if not copies:
        return None
    return (
        f"storage: {len(copies)} damaged outbox copy(ies) kept in the state directory ({copies[-1].name}"
        f"{' ...' if len(copies) > 1 else ''}): recover what they hold, then move them away"
    )


def housekeeping(outbox: Outbox, now: float | None = None, *, uptime_s: float | None = None) -> HousekeepingResult:
    """Apply retention and the size budget once. The daemon calls it every few minutes.

    ``uptime_s``: how long the machine has been up (default: since boot); it bounds how far the
    clock may have moved since the outbox last saw it. ``now`` defaults to the outbox's clock.
    """
    storage = outbox.storage
    now = outbox.clock() if now is None else now
    done = {"photos_erased": 0, "rows_deleted": 0, "evicted_photos": 0, "evicted_rows": 0}
    clock_problem = clock_alert(outbox, now, boot_uptime_s() if uptime_s is None else uptime_s)
    try:
        outbox.set_state(_REFUSED, clock_problem)
        if clock_problem is None:
            outbox.set_state(_MARK, max(now, latest_seen(outbox) or now))
    except OutboxError as exc:  # a full disk: the pass itself may still free room
        log.debug("housekeeping state not stored: %s", exc)
    if clock_problem is not None:
        log.error("%s", clock_problem)

    if clock_problem is None:
        erase_before = now - storage.keep_sent_days * DAY_S
        while ids := outbox.queue.sent_with_photos(BATCH, sent_before=erase_before):
            _erase_photos(outbox, ids, now)
            done["photos_erased"] += len(ids)
        delete_before = now - storage.keep_sent_rows_days * DAY_S
        while ids := outbox.queue.sent(BATCH, sent_before=delete_before):
            _delete_rows(outbox, ids, now)
            done["rows_deleted"] += len(ids)

    # The budget: sent photos first, then sent rows, oldest first. Never anything unsent.
    total = outbox.queue.held_bytes()
    while total > storage.max_bytes and (ids := outbox.queue.sent_with_photos(BATCH)):
        _erase_photos(outbox, ids, now)
        done["evicted_photos"] += len(ids)
        total = outbox.queue.held_bytes()
    while total > storage.max_bytes and (ids := outbox.queue.sent(BATCH)):
        _delete_rows(outbox, ids, now)
        done["evicted_rows"] += len(ids)
        total = outbox.queue.held_bytes()

    if any(done.values()):
        _vacuum(outbox)
        if outbox.reserve is not None and outbox.reserve.released:
            outbox.fold_wal()  # the disk was full: the WAL's room too goes back, so capture can resume
        log.info("outbox housekeeping: %s", ", ".join(f"{k} {v}" for k, v in done.items() if v))
    alert: str | None = clock_problem
    if total > storage.max_bytes:
        alert = budget_alert(total, storage.max_bytes)
        log.warning("%s", alert)
    return HousekeepingResult(
        photos_erased=done["photos_erased"],
        rows_deleted=done["rows_deleted"],
        evicted_photos=done["evicted_photos"],
        evicted_rows=done["evicted_rows"],
        bytes=total,
        max_bytes=storage.max_bytes,
        alert=alert,
    )


def _vacuum(outbox: Outbox) -> None:
    """Give free pages back to the file system, a few MB per transaction."""
    while outbox.db.free_pages():
        _on_full_disk(lambda: outbox.db.return_free_pages(VACUUM_PAGES), outbox)
