"""A FUSE file system that loses what was not synced when the power is cut (as LazyFS does).

    python -m tests.powercut_fs BACKING MOUNTPOINT

Files live in BACKING. Every write lands in a per-file page cache held in this process (4 KiB pages,
and the file's size); ``fsync`` writes the file's dirty pages and size to BACKING and fsyncs it.
Writing anything to ``MOUNTPOINT/.powercut`` (made at start) is the cut: every unsynced page and size is dropped,
so the files are exactly what was last synced (kill the writers first, as a power cut does).
Metadata (create, rename, unlink, mkdir) goes to BACKING at once, as a journalling file system
commits it; file data does not, which is what an fsync-less write loses.

Used by tests/test_powercut.py (short form) and bench/powercut.py (long form). Needs /dev/fuse,
fuse3 (Debian) and mfusepy (the test extra).
"""

from __future__ import annotations

import errno
import os
import sys
import threading
from pathlib import Path
from typing import Any

import mfusepy

PAGE = 4096
CUT_NAME = "/.powercut"


class _Cached:
    """The unsynced state of one file: dirty pages and its size."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pages: dict[int, bytearray] = {}


class PowerCutFS(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, backing: Path) -> None:
        self.backing = backing
        self._mutex = threading.RLock()
        self.cache: dict[str, _Cached] = {}
        self.cuts = 0

    # -- helpers ---------------------------------------------------------------------------------
    def _real(self, path: str) -> str:
        return str(self.backing) + path

    def _state(self, path: str) -> _Cached:
        state = self.cache.get(path)
        if state is None:
            state = self.cache[path] = _Cached(os.path.getsize(self._real(path)))
        return state

    def _page(self, path: str, state: _Cached, number: int) -> bytearray:
        page = state.pages.get(number)
        if page is None:
            with open(self._real(path), "rb") as fh:
                fh.seek(number * PAGE)
                page = bytearray(fh.read(PAGE))
            limit = max(0, min(PAGE, state.size - number * PAGE))  # bytes past a cached truncate are gone
            page = page[:limit].ljust(PAGE, b"\0")
            state.pages[number] = page
        return page

    # -- metadata --------------------------------------------------------------------------------
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self._mutex:
            try:
                st = os.lstat(self._real(path))
            except OSError as exc:
                raise mfusepy.FuseOSError(exc.errno) from exc
            attrs = {
                key: getattr(st, key)
                for key in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime", "st_mtime", "st_ctime")
            }
            for key in ("st_atime", "st_mtime", "st_ctime"):
                attrs[key] = getattr(st, key + "_ns") if hasattr(st, key + "_ns") else attrs[key]
            state = self.cache.get(path)
            if state is not None:
                attrs["st_size"] = state.size
            return attrs

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._real(path))]

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._real(path), amode):
            raise mfusepy.FuseOSError(errno.EACCES)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._real(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._real(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        os.utime(self._real(path), ns=times) if times else os.utime(self._real(path))
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._real(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._real(path))
        return 0

    def unlink(self, path: str) -> int:
        with self._mutex:
            os.unlink(self._real(path))
            self.cache.pop(path, None)
        return 0

    def rename(self, old: str, new: str) -> int:
        with self._mutex:
            os.rename(self._real(old), self._real(new))
            self.cache.pop(new, None)
            if old in self.cache:
                self.cache[new] = self.cache.pop(old)
        return 0

    def link(self, target: str, source: str) -> int:
        with self._mutex:
            self._sync(source)  # a hard link shares the data: make it durable rather than track two names
            os.link(self._real(source), self._real(target))
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._real(path))
        return {
            key: getattr(st, key)
            for key in (
                "f_bavail",
                "f_bfree",
                "f_blocks",
                "f_bsize",
                "f_favail",
                "f_ffree",
                "f_files",
                "f_flag",
                "f_frsize",
                "f_namemax",
            )
        }

    # -- data ------------------------------------------------------------------------------------
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        fd = os.open(self._real(path), os.O_WRONLY | os.O_CREAT, mode)
        os.close(fd)
        return 0

    def open(self, path: str, flags: int) -> int:
        if not os.path.exists(self._real(path)):
            raise mfusepy.FuseOSError(errno.ENOENT)
        if flags & os.O_TRUNC:
            self.truncate(path, 0)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._mutex:
            state = self.cache.get(path)
            if state is None:
                with open(self._real(path), "rb") as fh_:
                    fh_.seek(offset)
                    return fh_.read(size)
            end = min(offset + size, state.size)
            out = bytearray()
            at = offset
            while at < end:
                number, inner = divmod(at, PAGE)
                take = min(PAGE - inner, end - at)
                out += self._page(path, state, number)[inner : inner + take]
                at += take
            return bytes(out)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        if path == CUT_NAME:
            self.cut()
            return len(data)
        with self._mutex:
            state = self._state(path)
            at, view = offset, memoryview(data)
            while view:
                number, inner = divmod(at, PAGE)
                take = min(PAGE - inner, len(view))
                self._page(path, state, number)[inner : inner + take] = view[:take]
                at += take
                view = view[take:]
            state.size = max(state.size, offset + len(data))
            return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self._mutex:
            state = self._state(path)
            for number in [n for n in state.pages if n * PAGE >= length]:
                del state.pages[number]
            last = length // PAGE
            if length % PAGE and length < state.size:
                page = self._page(path, state, last)
                page[length % PAGE :] = b"\0" * (PAGE - length % PAGE)
            if length > state.size:  # growing: the pages between read as zeros
                for number in range(state.size // PAGE, (length + PAGE - 1) // PAGE):
                    page = self._page(path, state, number)
                    start = max(0, state.size - number * PAGE)
                    page[start:] = b"\0" * (PAGE - start)
            state.size = length
        return 0

    def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
        if mode:
            raise mfusepy.FuseOSError(errno.EOPNOTSUPP)
        with self._mutex:
            state = self._state(path)
            if offset + size > state.size:
                self.truncate(path, offset + size)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self._mutex:
            self._sync(path)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        return 0

    def _sync(self, path: str) -> None:
        state = self.cache.pop(path, None)
        if state is None:
            return
        fd = os.open(self._real(path), os.O_WRONLY)
        try:
            for number, page in sorted(state.pages.items()):
                start = number * PAGE
                if start < state.size:
                    os.pwrite(fd, bytes(page[: min(PAGE, state.size - start)]), start)
            os.ftruncate(fd, state.size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def cut(self) -> None:
        """The power goes: every unsynced page and size is lost."""
        with self._mutex:
            self.cache.clear()
            self.cuts += 1


def main(argv: list[str]) -> int:
    backing, mountpoint = Path(argv[0]).resolve(), argv[1]
    (backing / CUT_NAME.lstrip("/")).touch()  # writing to it is the cut
    mfusepy.FUSE(PowerCutFS(backing), mountpoint, foreground=True, attr_timeout=0, entry_timeout=0, negative_timeout=0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
