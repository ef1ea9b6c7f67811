"""Small private files written whole: keys, the operator, exports.

Each one is mode 0600 from its first byte, so a secret or a personal record is never readable by
another local user even for a moment, and each is fsynced before it counts as written.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import FvagentError


def create_secret_file(path: Path, data: bytes) -> bool:
    """Write ``data`` as the new file ``path`` (0600, fsynced with its directory), never over an
    existing one. Returns False when ``path`` exists already (another process made it first: theirs
    is kept). Raises ``OSError``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.new-{os.getpid()}")
    try:
        _write_synced(tmp, data, os.O_EXCL)
        try:
            os.link(tmp, path)  # link() never replaces: the first writer wins
        except FileExistsError:
            return False
        _fsync_dir(path.parent)
        return True
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def replace_private_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: a 0600 temporary file beside it, fsynced, then
    renamed over it and the directory fsynced, so a crash leaves the old content or the new, never
    half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _write_synced(tmp, data, os.O_TRUNC)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _write_synced(path: Path, data: bytes, mode_flag: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | mode_flag, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def create_export_file(target: Path, error: type[FvagentError]) -> int:
    """Open ``target`` as a new 0600 file for an export and return its descriptor. An export never
    overwrites: an existing file, or one that cannot be made, raises ``error`` naming it."""
    try:
        return os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise error(f"{target} exists: choose a new file name", hint="export never overwrites a file") from exc
    except OSError as exc:
        raise error(f"cannot create {target}: {exc.strerror}") from exc
