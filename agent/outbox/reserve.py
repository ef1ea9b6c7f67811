"""The drain's reserve: a few megabytes of disk kept aside so a full disk never stops the uploads.

Sending a record writes (the claim, the attempt, the result), and so does erasing its photos after
the retention delay: on a full disk the uploader would stop, and nothing would ever free space.
So the outbox keeps ``<dir>/outbox.reserve`` (``RESERVE_BYTES``, allocated for real), and:

- a drain write (claim, result, requeue, housekeeping) that finds less than ``LOW_WATER_BYTES``
  free releases the reserve first, so it has room;
- while it is released, a drain write that finds the disk full again first folds the WAL into the
  database (a checkpoint, then truncating the WAL): the drain's writes reuse the same few pages;
- capture (``enqueue``) never uses that room: while the reserve is released it first tries to
  make it again, and without room for it the capture is refused (``StorageFull``) as on a full disk.

Once sending and retention (or a technician) freed space, the reserve is made again and capture
goes on.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from core.errors import StorageFull

log = logging.getLogger(__name__)

RESERVE_NAME = "outbox.reserve"
RESERVE_BYTES = 16 * 1024**2
"""Room to fold a WAL the background checkpointer has not caught up with (up to CHECKPOINT_BYTES)
and for some hundreds of claims and results after it."""
LOW_WATER_BYTES = 2 * 1024**2


class Reserve:
    """The reserve file of one state directory."""

    def __init__(self, directory: Path, fold_wal: Callable[[], bool] | None = None) -> None:
        self.path = Path(directory) / RESERVE_NAME
        self._fold_wal = fold_wal
        """Checkpoints the WAL into the database and truncates it: the room a full disk's drain runs in."""
        self._lock = threading.Lock()
        self.released = False
        """Released by a drain write on a full disk and not made again yet: capture waits."""

    @property
    def held(self) -> bool:
        try:
            return self.path.stat().st_size >= RESERVE_BYTES
        except FileNotFoundError:
            return False

    def ensure(self) -> bool:
        """Make the reserve when it is not there; False when the disk has no room for it."""
        with self._lock:
            if self.held:
                return True
            tmp = self.path.with_name(self.path.name + ".new")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    # Real blocks, not a sparse promise. No fsync: after a crash a short file is made again.
                    os.posix_fallocate(fd, 0, RESERVE_BYTES)
                finally:
                    os.close(fd)
                os.rename(tmp, self.path)
            except OSError as exc:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    log.warning("cannot make the outbox reserve %s: %s", self.path, exc.strerror)
                return False
            log.info("outbox reserve %s made (%d MiB): capture goes on", self.path, RESERVE_BYTES // 2**20)
            return True

    def before_drain(self) -> None:
        """Called before a drain write: release the reserve when the disk is (nearly) full."""
        try:
            free = _free_bytes(self.path.parent)
        except OSError:
            return
        if free >= LOW_WATER_BYTES:
            return
        with self._lock:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                # Released already: the drain's own writes fill the WAL; folding it gives the room back.
                # (Never made, on a disk too small for it: nothing to fold into.)
                if self.released and self._fold_wal is not None:
                    self._fold_wal()
                return
            except OSError as exc:
                log.warning("cannot release the outbox reserve %s: %s", self.path, exc.strerror)
                return
            self.released = True
        # With the reserve's room, fold the WAL now: the captures that filled the disk sit in it, and
        # later (with no room for the database to grow) it could no longer be folded.
        if self._fold_wal is not None:
            self._fold_wal()
        log.error(
            "the disk of %s is full (%d KiB free): the outbox reserve is released so records can still be "
            "sent and erased; capture waits until space is freed",
            self.path.parent,
            free // 1024,
        )

    def before_capture(self) -> None:
        """Called before a capture write: refuse it while a released reserve cannot be made again.
        (A disk too small for the reserve from the start captures without one.)"""
        if not self.released:
            return
        if self.ensure():
            self.released = False
            return
        raise StorageFull(
            f"the disk is full: {self.path.parent} has no room for the drain's reserve, so the "
            "verification is not stored",
            hint="free disk space; records are still sent meanwhile, and photos erased after the retention delay",
        )


def _free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize
