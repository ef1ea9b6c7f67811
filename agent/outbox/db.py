"""The outbox's SQLite file: opening it (pragmas, schema upgrade, the key check value), quarantining a
damaged file, the transactions every other part writes and reads in, and the background checkpoint.

The file is WAL with ``synchronous=FULL``: a commit is on disk before it returns. One ``Database`` is
safe to share between threads (one connection behind a lock). Other processes (the CLI while the
daemon runs) open the same file: WAL lets them read while the daemon writes, and ``busy_timeout``
makes writers wait for each other. SQLite errors leave here as ``OutboxError`` leaves.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from agent.config import StorageSettings
from agent.outbox import chain, schema
from agent.outbox.blobs import dumps
from agent.outbox.reserve import LOW_WATER_BYTES, Reserve
from core.errors import OutboxCorrupt, OutboxError, StorageFull

log = logging.getLogger(__name__)

DB_NAME = "outbox.db"
LOCK_NAME = "outbox.lock"
BUSY_TIMEOUT_MS = 15000
WAL_LIMIT_BYTES = 64 * 1024**2
CHECKPOINT_BYTES = 4 * 1024**2
"""The background checkpointer folds the WAL into the database once it holds this much."""
AUTOCHECKPOINT_PAGES = 16384
"""Backstop: a commit checkpoints by itself only when the WAL passed this many pages."""
_SQLITE_MAGIC = b"SQLite format 3\x00"
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_FULL_CODES = {13}  # SQLITE_FULL
_IOERR = 10

T = TypeVar("T")


class OutboxQuarantined(OutboxCorrupt):
    """The damaged outbox file was moved aside: ``kept_as`` is where it is now."""

    def __init__(self, message: str, *, kept_as: Path, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.kept_as = kept_as


class Database:
    """One open outbox file. Build it with ``open_writable`` or ``open_readonly``; ``close()`` when done."""

    def __init__(
        self, conn: sqlite3.Connection, path: Path, storage: StorageSettings, lock_fd: int, *, readonly: bool
    ) -> None:
        self.conn = conn
        """The connection; use it inside ``read``/``write`` only (they hold the lock)."""
        self.path = path
        self.storage = storage
        self.lock_fd = lock_fd
        """The open ``outbox.lock``: flocked shared while open; a key rotation takes it exclusive."""
        self.readonly = readonly
        """Opened by a read-only command: nothing here writes, moves or checkpoints the file."""
        self.reserve: Reserve | None = None
        """The drain's disk reserve (``agent.outbox.reserve``), kept while open for writing."""
        self.chain_key: bytes | None = None
        """The audit chain's key: set, the chain head a write noted is published after its COMMIT."""
        self._lock = threading.RLock()
        self._closed = False
        self._new_head: chain.Head | None = None
        self._stop_checkpoints = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="outbox-checkpoint", daemon=True)
        if not readonly:
            self._checkpointer.start()

    def __repr__(self) -> str:
        return f"Database(path={str(self.path)!r}, readonly={self.readonly})"

    # -- transactions ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def write(self, what: str, *, drain: bool = False) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` ... ``COMMIT`` under the lock; SQLite errors become domain errors
        saying the write could not ``what``.

        ``drain``: a write that sends or frees (claim, result, housekeeping) may use the disk reserve."""
        if drain and self.reserve is not None:
            self.reserve.before_drain()
        with self._lock:
            if self._closed:
                raise OutboxError("the outbox is closed")
            conn = self.conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    self._new_head = None
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._translate(exc, what) from exc
            self._publish_head()

    @contextlib.contextmanager
    def read(self, what: str) -> Iterator[sqlite3.Connection]:
        """The connection under the lock, for reads (each statement sees the latest commit)."""
        with self._lock:
            if self._closed:
                raise OutboxError("the outbox is closed")
            try:
                yield self.conn
            except sqlite3.Error as exc:
                raise self._translate(exc, what) from exc

    @contextlib.contextmanager
    def snapshot(self, what: str) -> Iterator[sqlite3.Connection]:
        """Like ``read``, inside one read transaction: every statement sees the same commit."""
        with self.read(what) as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("ROLLBACK")

    def chained(self, head: chain.Head | None) -> None:
        """Note the chain head an event of this transaction made: written to ``outbox.head`` after COMMIT."""
        if head is not None:
            self._new_head = head

    def _publish_head(self) -> None:
        head, self._new_head = self._new_head, None
        if head is None or self.chain_key is None:
            return
        try:
            chain.write_head_file(chain.head_file(self.storage.dir), head, self.chain_key, self.lock_fd)
        except OSError as exc:  # the commit stands; the file only lags (audit verify allows that)
            log.warning("cannot write the audit head file in %s: %s", self.storage.dir, exc.strerror)

    def _translate(self, exc: sqlite3.Error, what: str) -> OutboxError:
        if _is_full(exc) or (_errcode(exc) == _IOERR and _nearly_full(self.path.parent)):
            # A write (of the -shm, say) that failed on a full disk comes back as an I/O error.
            return StorageFull(
                f"the disk is full: cannot {what}; nothing stored was changed",
                hint=f"free disk space on the file system of {self.storage.dir}",
            )
        if _is_corrupt(exc):
            return OutboxCorrupt(
                f"the outbox {self.path} is damaged ({exc}): cannot {what}",
                hint="restart fvagent: the damaged file is then moved aside and a new outbox started",
            )
        return OutboxError(f"cannot {what}: {exc}", hint="see `fvagent status`; the database may be locked")

    # -- the meta table ----------------------------------------------------------------------------
    @staticmethod
    def meta_get(conn: sqlite3.Connection, key: str) -> object:
        """A JSON value of the ``meta`` table, or ``None`` when absent or unreadable."""
        value: object = chain.read_meta_json(conn, key)
        return value

    @staticmethod
    def meta_set(conn: sqlite3.Connection, key: str, value: object) -> None:
        """Store a JSON value in the ``meta`` table; ``None`` deletes it."""
        if value is None:
            conn.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, dumps(value)))

    # -- the file ----------------------------------------------------------------------------------
    def fold_wal(self) -> bool:
        """Checkpoint the whole WAL into the database and truncate it (on a full disk that gives its
        room back: the database's pages exist already). True when it was done, False when busy."""
        try:
            with self.read("checkpoint the outbox") as conn:
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except OutboxError as exc:
            log.warning("cannot fold the outbox WAL: %s", exc)
            return False
        return not busy

    def integrity_check(self) -> list[str]:
        """``PRAGMA integrity_check``: ``["ok"]`` when the file is sound."""
        with self.read("check the outbox") as conn:
            return [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]

    def free_pages(self) -> int:
        """Pages an incremental vacuum can give back to the file system (0 for a file made without
        ``auto_vacuum = INCREMENTAL``: an older file keeps its free pages)."""
        with self.read("measure the outbox") as conn:
            free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            auto = int(conn.execute("PRAGMA auto_vacuum").fetchone()[0])
        return free if auto == 2 else 0  # 2 = incremental

    def return_free_pages(self, pages: int) -> None:
        """Give up to ``pages`` free pages back to the file system, in one drain write.

        Run by ``executescript``, which steps the pragma until it is done: ``execute`` steps a
        statement that returns no rows only once, and incremental_vacuum frees one page per step
        (so it gave back one page per transaction, and retention took thousands of them)."""
        if self.reserve is not None:
            self.reserve.before_drain()
        with self.read("return free space") as conn:
            conn.executescript(f"PRAGMA incremental_vacuum({int(pages)});")

    def _checkpoint_loop(self) -> None:
        """Fold the WAL into the database off the capture path.

        A commit that has to checkpoint itself writes megabytes before it returns: that is what
        made enqueue's tail latency. Here a second connection runs a PASSIVE checkpoint (it never
        blocks writers) whenever the WAL passes ``CHECKPOINT_BYTES``.
        """
        wal = self.path.with_name(self.path.name + "-wal")
        conn: sqlite3.Connection | None = None
        try:
            while not self._stop_checkpoints.wait(0.2):
                try:
                    if wal.stat().st_size < CHECKPOINT_BYTES:
                        continue
                    if conn is None:
                        conn = _connect(self.path)
                        conn.execute("PRAGMA synchronous = FULL")
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except FileNotFoundError:
                    continue
                except sqlite3.Error as exc:  # the backstop autocheckpoint still bounds the WAL
                    log.debug("background checkpoint failed: %s", exc)
        finally:
            if conn is not None:
                conn.close()

    def stop_checkpoints(self) -> None:
        """Stop the background checkpointer (``close`` does it too)."""
        self._stop_checkpoints.set()
        if self._checkpointer.is_alive() and self._checkpointer is not threading.current_thread():
            self._checkpointer.join(10)

    def close(self) -> bool:
        """Close the file; idempotent. True when this call closed it."""
        self.stop_checkpoints()
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            try:
                self.conn.close()
            finally:
                os.close(self.lock_fd)
        return True


def _connect(path: Path | str, *, uri: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(path, uri=uri, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


# -- opening ---------------------------------------------------------------------------------------
def open_writable(
    storage: StorageSettings,
    *,
    check: bool,
    create: bool,
    prepare: Callable[[sqlite3.Connection, Path], T],
) -> tuple[Database, T]:
    """Open (or create) ``outbox.db`` in ``storage.dir`` for writing, upgraded to the current schema.

    ``prepare(conn, path)`` runs on the upgraded file before it is handed out (the outbox reads its
    keys there), inside the same error handling: an SQLite error it raises is translated like the
    file's own. See ``Outbox.open`` for ``check``, ``create`` and what is raised.
    """
    directory = Path(storage.dir)
    if not create and not (directory / DB_NAME).exists():
        raise OutboxError(
            f"there is no outbox in {directory} yet",
            hint="the service creates it (and its key) at its first start; check [storage] dir",
        )
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StorageFull(f"no room to create the state directory {directory}") from exc
        raise OutboxError(
            f"cannot create the state directory {directory}: {exc.strerror}",
            hint="create it and give it to the service user, or fix [storage] dir",
        ) from exc
    path = directory / DB_NAME
    try:
        lock_fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StorageFull(f"no room in {directory}") from exc
        raise OutboxError(
            f"cannot open {directory / LOCK_NAME}: {exc.strerror}",
            hint=f"check the owner and permissions of {directory}",
        ) from exc
    fcntl.flock(lock_fd, fcntl.LOCK_SH)  # held while open: a damaged file in use is not moved
    conn: sqlite3.Connection | None = None
    try:
        problem = header_problem(path)
        if problem:
            raise _Damaged(problem)
        new = not path.exists() or path.stat().st_size == 0
        try:
            conn = _connect(path)
            if new:
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only possible before the first table
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(
                    f"the outbox {path} cannot use WAL (journal_mode {mode})",
                    hint="put [storage] dir on a local file system",
                )
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA secure_delete = ON")  # deleted personal data does not linger in free pages
            try:
                found = schema.migrate(conn)
            except ValueError as exc:
                raise OutboxError(f"{path}: {exc}", hint="run the fvagent version that wrote it, or newer") from exc
            if found and found < schema.CURRENT:
                log.info("outbox %s migrated from schema %d to %d", path, found, schema.CURRENT)
            if check:
                result = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
                if result != ["ok"]:
                    raise _Damaged("quick_check: " + "; ".join(map(str, result[:3])))
            prepared = prepare(conn, path)
        except sqlite3.Error as exc:
            if _is_corrupt(exc):
                raise _Damaged(str(exc)) from exc
            if _is_full(exc):
                raise StorageFull(
                    f"no room on the disk for the outbox {path}", hint="free disk space in the state directory"
                ) from exc
            raise OutboxError(
                f"cannot open the outbox {path}: {exc}", hint=f"check the owner and permissions of {directory}"
            ) from exc
    except _Damaged as damaged:
        if conn is not None:
            conn.close()
        raise _move_aside(path, lock_fd, damaged.reason) from damaged
    except BaseException:
        if conn is not None:
            conn.close()
        os.close(lock_fd)
        raise
    return Database(conn, path, storage, lock_fd, readonly=False), prepared


def open_readonly(storage: StorageSettings, *, prepare: Callable[[sqlite3.Connection, Path], T]) -> tuple[Database, T]:
    """Open ``outbox.db`` read-only: never migrated, moved or checkpointed; a damaged file raises
    ``OutboxCorrupt`` and stays where it is; a file of another schema raises ``OutboxError``."""
    path = Path(storage.dir) / DB_NAME
    if not path.exists():
        raise OutboxError(
            f"there is no outbox {path}",
            hint="the service creates it (and its key) at its first start; check [storage] dir",
        )
    damaged_hint = (
        "the service salvages it at its next start (fvagent outbox salvage FILE does it by hand); nothing was changed"
    )
    problem = header_problem(path)
    if problem:
        raise OutboxCorrupt(f"the outbox database {path} is damaged ({problem})", hint=damaged_hint)
    lock_path = path.with_name(LOCK_NAME)
    lock_fd = os.open(lock_path if lock_path.exists() else path, os.O_RDONLY)
    conn: sqlite3.Connection | None = None
    try:
        conn = _connect(f"file:{path}?mode=ro", uri=True)
        found = schema.version(conn)
        if found != schema.CURRENT:
            raise OutboxError(
                f"the outbox {path} has schema {found}, this fvagent reads {schema.CURRENT}",
                hint="start the service once (it upgrades the file), or run the fvagent that wrote it",
            )
        prepared = prepare(conn, path)
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        os.close(lock_fd)
        if _is_corrupt(exc):
            raise OutboxCorrupt(f"the outbox database {path} is damaged ({exc})", hint=damaged_hint) from exc
        raise OutboxError(
            f"cannot read the outbox {path}: {exc}", hint=f"check the owner and permissions of {path.parent}"
        ) from exc
    except BaseException:
        if conn is not None:
            conn.close()
        os.close(lock_fd)
        raise
    return Database(conn, path, storage, lock_fd, readonly=True), prepared


# -- errors and damage -----------------------------------------------------------------------------
def _errcode(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _is_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return _errcode(exc) in _FULL_CODES or "disk is full" in str(exc)


def _nearly_full(directory: Path) -> bool:
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < LOW_WATER_BYTES


def _is_corrupt(exc: BaseException) -> bool:
    return _errcode(exc) in _CORRUPT_CODES or any(
        text in str(exc) for text in ("malformed", "not a database", "file is encrypted")
    )


class _Damaged(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def header_problem(path: Path) -> str | None:
    """Why the file at ``path`` is not a whole SQLite database (cheap: the 100-byte header), or ``None``.

    The size checks apply only without a write-ahead log: with one, a checkpoint may legitimately be
    half done, and SQLite itself (or ``quick_check``) judges the file.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size == 0:
        return None
    wal = path.with_name(path.name + "-wal")
    has_wal = wal.exists() and wal.stat().st_size > 0
    with open(path, "rb") as fh:
        header = fh.read(100)
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        return "not an SQLite database (bad header)"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return f"bad page size {page_size} in the header"
    pages = int.from_bytes(header[28:32], "big")
    change = int.from_bytes(header[24:28], "big")
    valid_for = int.from_bytes(header[92:96], "big")
    # The in-header page count is trustworthy when it was written with the current change counter.
    if has_wal:
        return None
    if change == valid_for and pages and size < pages * page_size:
        return f"truncated: {size} bytes where the header says {pages * page_size}"
    if size % page_size:
        return f"truncated: {size} bytes is not a whole number of {page_size}-byte pages"
    return None


def _timestamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def rename_aside(path: Path, prefix: str) -> Path:
    """Rename ``path`` and its -wal/-shm to ``<prefix><UTC time>`` beside it, never over an existing file."""
    stamp = _timestamp()
    target = path.with_name(f"{prefix}{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{prefix}{stamp}-{n}")
    os.rename(path, target)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.rename(side, target.with_name(target.name + suffix))
    return target


def _move_aside(path: Path, lock_fd: int, reason: str) -> OutboxCorrupt:
    """Rename the damaged file (and its -wal/-shm) out of the way, unless another process has it open."""
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock_fd)
        log.error("outbox %s is damaged (%s); another process has it open, so it was left in place", path, reason)
        return OutboxCorrupt(
            f"the outbox database {path} is damaged ({reason}); another fvagent process has it open",
            hint="stop the fvagent service; its next start moves the damaged file aside and starts a new outbox",
        )
    try:
        target = rename_aside(path, f"{path.name}.damaged-")
    except OSError as exc:
        return OutboxCorrupt(
            f"the outbox database {path} is damaged ({reason}) and could not be moved aside: {exc.strerror}",
            hint=f"move {path} away by hand, keep it for recovery",
        )
    finally:
        os.close(lock_fd)
    log.error("outbox %s is damaged (%s): kept as %s; a new outbox starts on the next open", path, reason, target)
    return OutboxQuarantined(
        f"the outbox database {path} is damaged ({reason}); it was kept as {target}, not overwritten",
        kept_as=target,
        hint=f"start fvagent again to begin a new outbox; keep {target.name} and the key file "
        "for recovery (the same key opens it)",
    )


def damaged_copies(directory: Path | str) -> list[Path]:
    """The damaged databases moved aside in ``directory`` (``outbox.db.damaged-*``, without their -wal/-shm)."""
    return sorted(p for p in Path(directory).glob(f"{DB_NAME}.damaged-*") if not p.name.endswith(("-wal", "-shm")))
