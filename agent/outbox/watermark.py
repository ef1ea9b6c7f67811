"""The outbox's watermark: the highest record id and the number of records it holds, kept in a
small file beside the database (``<dir>/outbox.watermark``), outside SQLite's own files.

A write-ahead log deleted after an unclean stop, or an old copy of ``outbox.db`` put back, takes
committed records away without SQLite noticing anything: the database is consistent, just older.
At every open for writing the database is compared with the watermark; fewer records or a lower
highest id is an incident (see ``agent.outbox.incidents``) with the numbers.

The file is updated in place after every commit that adds or deletes records (one ``pwrite`` of
one fixed-size line, no fsync: it must survive the process, and SQLite's own fsync of the WAL
usually carries it to the disk; a watermark older than the database only misses an alert). It
names the outbox it belongs to (a digest of the sealed key check value), so a new outbox is never
compared with the watermark of the one it replaced.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.outbox.store import Outbox

log = logging.getLogger(__name__)

FILE_NAME = "outbox.watermark"
_LINE_BYTES = 64


class Watermark:
    """The open watermark file of one outbox; ``note(max_id, delta)`` after each commit."""

    def __init__(self, path: Path, tag: str, max_id: int, count: int) -> None:
        self.path = path
        self.tag = tag
        self.max_id = max_id
        self.count = count
        self._lock = threading.Lock()
        self._fd: int | None = None
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:  # a full disk cannot even make it: the outbox works on without it
            log.warning(
                "cannot open the outbox watermark %s (%s): missing records will not be noticed", path, exc.strerror
            )
        self._write()

    def note(self, record_id: int | None, delta: int) -> None:
        with self._lock:
            if record_id is not None:
                self.max_id = max(self.max_id, int(record_id))
            self.count = max(0, self.count + delta)
            self._write()

    def _write(self) -> None:
        if self._fd is None:
            return
        line = f"{self.tag} {self.max_id} {self.count}".ljust(_LINE_BYTES - 1).encode("ascii") + b"\n"
        try:
            os.pwrite(self._fd, line, 0)  # same size every time: the block is rewritten, never grown
        except OSError as exc:
            log.debug("outbox watermark not updated: %s", exc)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def read(path: Path) -> tuple[str, int, int] | None:
    """(tag, max_id, count) from the file, or None when absent or unreadable."""
    try:
        parts = path.read_text(encoding="ascii").split()
        return parts[0], int(parts[1]), int(parts[2])
    except (OSError, ValueError, IndexError):
        return None


def _tag(outbox: Outbox) -> str:
    with outbox.db.read("read the outbox") as conn:
        t = conn.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
    return hashlib.sha256(bytes(t[0]) if t else b"").hexdigest()[:16]


def held_counts(outbox: Outbox) -> tuple[int, int]:
    """(highest id ever given, records held) as the database says."""
    with outbox.db.read("count the outbox") as conn:
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
        count, top = conn.execute("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM records").fetchone()
    return max(int(seq[0]) if seq else 0, int(top)), int(count)


def check_at_open(outbox: Outbox) -> None:
    """Compare the database with its watermark, record an incident when records are missing, and
    start keeping the watermark (``outbox.watermark``) from the database's numbers."""
    from agent.outbox import incidents

    path = outbox.path.with_name(FILE_NAME)
    tag = _tag(outbox)
    max_id, count = held_counts(outbox)
    seen = read(path)
    if seen is not None and seen[0] == tag and (seen[1] > max_id or seen[2] > count):
        alert = (
            f"outbox: records missing: it had committed records up to id {seen[1]} ({seen[2]} held), but "
            f"{outbox.path.name} now holds {count} up to id {max_id}; {max(seen[1] - max_id, seen[2] - count)} "
            "or more lost (a deleted -wal file, an old copy put back?): see docs/operations.md, then "
            "fvagent outbox ack-damage"
        )
        log.error("%s", alert)
        incidents.record(
            outbox,
            "missing",
            alert,
            expected_max_id=seen[1],
            expected_count=seen[2],
            found_max_id=max_id,
            found_count=count,
        )
    outbox.watermark = Watermark(path, tag, max_id, count)
