"""One daemon per outbox: ``fvagent run`` holds an exclusive lock in the state directory.

Two daemons on one outbox would each run a reader loop and an uploader: duplicate verifications
and two uploaders racing over the same rows. The lock is ``flock(LOCK_EX | LOCK_NB)`` on
``<storage.dir>/daemon.lock``, taken before any driver is opened and held (by the open file) until
the process ends, even if it is killed; the file holds the owner's pid for the message.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from core.errors import FvagentError

LOCK_FILE = "daemon.lock"


class AlreadyRunning(FvagentError):
    """Another ``fvagent run`` holds this state directory. ``pid`` is its process id when known."""


class DaemonLock:
    """``acquire()`` raises ``AlreadyRunning`` when another process holds the lock (nothing else in
    the directory is touched), ``FvagentError`` when the directory cannot be used; ``release()``."""

    def __init__(self, storage_dir: Path | str) -> None:
        self.path = Path(storage_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise FvagentError(
                f"cannot open the daemon lock {self.path}: {exc.strerror}",
                hint=f"check the owner and permissions of {self.path.parent} ([storage] dir)",
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FvagentError(f"cannot lock {self.path}: {exc.strerror}") from exc
            pid = int(owner) if owner.isdigit() else None
            raise AlreadyRunning(
                f"already running (pid {pid if pid is not None else 'unknown'}) on {self.path.parent}",
                hint="one daemon per state directory: systemctl status fvagent; stop it first",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (removing it would race)
            self._fd = None
