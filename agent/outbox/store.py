"""The durable outbox: every verification is committed here (SQLite, WAL, synchronous=FULL) before
anyone is told it is done, sealed with SM4-GCM under the local data key.

What the database reveals without the key: counts, times, states, sizes, attempt ids and the
non-personal ``meta`` (face reason, distance, source). Names, ID numbers and photos are in the
sealed ``payloads`` table; a card number can be looked up through a keyed blind index only.

States: ``pending`` -> ``sending`` -> ``sent`` | ``rejected``, plus ``held`` (kept, never sent,
until ``release_held`` completes it). A ``rejected`` row becomes ``sent`` by ``resolve`` once a
corrected copy was accepted some other way. A row left in ``sending`` by a crash returns to ``pending``
when the uploader starts (``requeue_interrupted``), so delivery is at-least-once.

One ``Outbox`` is safe to share between threads (one connection behind a lock). Other processes
(the CLI while the daemon runs) open the same file: WAL lets them read while the daemon writes,
and ``busy_timeout`` makes writers wait for each other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from agent.config import StorageSettings
from agent.outbox import chain, rotation, schema
from agent.outbox.keys import DataKey, key_for_check, load_key
from agent.outbox.reserve import Reserve
from core.errors import (
    CryptoError,
    KeyFileError,
    OutboxCorrupt,
    OutboxError,
    StorageFull,
)

log = logging.getLogger(__name__)

DB_NAME = "outbox.db"
LOCK_NAME = "outbox.lock"
PHOTO_FIELDS = ("headImg", "cameraImg", "fingerCollectImg")
SIMULATED_HELD_REASON = "simulated record: not sent to a production platform"
"""Why a record from a fake driver is held when ``[platform] environment = "production"``."""
"""Payload fields sealed apart from the rest, so retention can erase them alone."""
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


@dataclasses.dataclass(frozen=True)
class Row:
    """One outbox row without its sealed payload: everything here is safe to show."""

    id: int
    state: str
    created_at: float
    updated_at: float | None
    attempts: int
    next_attempt_at: float
    last_error: str | None
    last_outcome: str | None
    request_id: str | None
    """The hmpt-portal-request-id of the last attempt that got an answer."""
    sent_at: float | None
    simulated: bool
    held_reason: str | None
    meta: dict[str, Any]
    bytes: int
    has_photos: bool
    photos_erased_at: float | None
    idempotency_key: str | None = None


@dataclasses.dataclass(frozen=True)
class Claim:
    """A record taken for one upload attempt (state ``sending``)."""

    id: int
    attempt: int
    attempt_row: int
    started_at: float


@dataclasses.dataclass(frozen=True)
class Handover:
    """The desk's mark that a failed verification was handed over to the police: by whom, when."""

    record_id: int
    at: float
    operator: str


@dataclasses.dataclass(frozen=True)
class Attempt:
    record_id: int
    attempt: int
    request_id: str | None
    started_at: float
    finished_at: float | None
    outcome: str | None
    http_status: int | None
    exception_code: str | None
    message: str | None


_ROW_COLUMNS = (
    "r.id, r.state, r.created_at, r.updated_at, r.attempts, r.next_attempt_at, r.last_error, "
    "r.last_outcome, r.request_id, r.sent_at, r.simulated, r.held_reason, r.meta, r.bytes, "
    "p.photos IS NOT NULL, r.photos_erased_at, r.idempotency_key"
)
_ROW_FROM = "records r LEFT JOIN payloads p ON p.record_id = r.id"


def _row(t: tuple[Any, ...]) -> Row:
    try:
        meta = json.loads(t[12]) if t[12] else {}
    except ValueError:
        meta = {}
    return Row(
        id=t[0],
        state=t[1],
        created_at=t[2],
        updated_at=t[3],
        attempts=t[4],
        next_attempt_at=t[5],
        last_error=t[6],
        last_outcome=t[7],
        request_id=t[8],
        sent_at=t[9],
        simulated=bool(t[10]),
        held_reason=t[11],
        meta=meta if isinstance(meta, dict) else {},
        bytes=t[13],
        has_photos=bool(t[14]),
        photos_erased_at=t[15],
        idempotency_key=t[16],
    )


def _aad(uid: str, part: str) -> bytes:
    # Binds each sealed blob to its row and its role: a blob copied to another row does not open.
    return f"fvagent-outbox:{uid}:{part}".encode("ascii")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


_PHOTOS_MAGIC = b"FVP1"


def _pack_photos(photos: dict[str, Any]) -> bytes:
    """The photo fields as one blob: each string stored as its UTF-8 bytes, side by side.

    Cheaper than JSON on the capture path: no escaping scan over 200 KB of base64, and no base64
    decoding either (on this class of CPU decoding costs more than sealing the extra quarter)."""
    fields, parts = [], []
    for name, value in photos.items():
        if isinstance(value, str):
            part, kind = value.encode("utf-8"), "str"
        else:
            part, kind = _dumps(value), "json"
        fields.append([name, len(part), kind])
        parts.append(part)
    header = _dumps(fields)
    return _PHOTOS_MAGIC + len(header).to_bytes(4, "big") + header + b"".join(parts)


def _unpack_photos(blob: bytes) -> dict[str, Any]:
    if not blob.startswith(_PHOTOS_MAGIC):
        return dict(json.loads(blob))  # rows written before the compact form
    size = int.from_bytes(blob[4:8], "big")
    fields = json.loads(blob[8 : 8 + size])
    out: dict[str, Any] = {}
    at = 8 + size
    view = memoryview(blob)
    for name, length, kind in fields:
        part = view[at : at + length]
        at += length
        out[name] = str(part, "utf-8") if kind == "str" else json.loads(bytes(part))
    return out


def _timestamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def _errcode(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _is_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return _errcode(exc) in _FULL_CODES or "disk is full" in str(exc)


def _nearly_full(directory: Path) -> bool:
    from agent.outbox.reserve import LOW_WATER_BYTES

    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < LOW_WATER_BYTES


def _is_corrupt(exc: BaseException) -> bool:
    return _errcode(exc) in _CORRUPT_CODES or any(
        text in str(exc) for text in ("malformed", "not a database", "file is encrypted")
    )


class Outbox:
    """The outbox. Build it with ``Outbox.open(storage_settings)``; ``close()`` when done."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        storage: StorageSettings,
        key: DataKey,
        lock_fd: int,
        clock: Callable[[], float],
        *,
        readonly: bool = False,
    ) -> None:
        self._conn = conn
        self.readonly = readonly
        """Opened by a read-only command: nothing here writes, moves or checkpoints the file."""
        self.path = path
        self.storage = storage
        self._key = key
        self._lock_fd = lock_fd
        self._clock = clock
        self._lock = threading.RLock()
        self._closed = False
        self._chain_key = chain.chain_key(key.key)
        self._retired: dict[str, DataKey] = {}
        """Keys retired by ``fvagent outbox rotate-key``, by id: they open the records marked with it."""
        self._new_head: chain.Head | None = None
        self.wakeup = threading.Event()
        """Set after every enqueue and retry, so an idle uploader starts at once."""
        self.watermark: Any = None
        """The ``agent.outbox.watermark.Watermark`` kept while open for writing."""
        self.reserve: Reserve | None = None
        """The drain's disk reserve (``agent.outbox.reserve``), kept while open for writing."""
        self._stop_checkpoints = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="outbox-checkpoint", daemon=True)
        if not readonly:
            self._checkpointer.start()

    def __repr__(self) -> str:
        return f"Outbox(path={str(self.path)!r}, key={self._key.source!r})"

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def key_source(self) -> str:
        return self._key.source

    @property
    def key_warning(self) -> str | None:
        """A problem with the key that must be fixed but does not stop the outbox (its file mode)."""
        return self._key.warning

    # -- opening -----------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        storage: StorageSettings,
        *,
        check: bool = False,
        create: bool = True,
        clock: Callable[[], float] = time.time,
        readonly: bool = False,
    ) -> Outbox:
        """Open (or create) the outbox in ``storage.dir``.

        Creates the state directory (0700) and, on first start, the 0600 key file; reads the key
        from the systemd credential ``outbox_key`` when one is given; runs the schema migrations.
        ``check`` runs ``PRAGMA quick_check`` too (it reads the whole file: the daemon does it at
        start, the CLI does not). ``create=False`` (the CLI) raises ``OutboxError`` instead of
        creating a missing outbox, so a command run as root never makes files the service cannot use.

        Raises ``KeyFileError`` for a missing, malformed or wrong key (found with the sealed check
        value: nothing is written); ``OutboxCorrupt`` for a damaged database file, which is renamed
        ``outbox.db.damaged-<UTC time>`` (its -wal beside it) and never overwritten, so the next
        open starts a new, empty outbox; ``StorageFull`` when the disk has no room; ``OutboxError``
        for anything else (permissions, a newer schema).

        ``readonly`` (status, doctor, the listing commands): the file is opened read-only, never
        migrated, moved or checkpointed; a damaged file raises ``OutboxCorrupt`` and stays where it is.
        """
        directory = Path(storage.dir)
        if readonly:
            return cls._open_readonly(storage, directory / DB_NAME, clock)
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
            problem = _header_problem(path)
            if problem:
                raise _Damaged(problem)
            new = not path.exists() or path.stat().st_size == 0
            try:
                conn = sqlite3.connect(
                    path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
                )
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
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
                key = cls._key_for(conn, storage, path)
                retired = rotation.load_retired(storage)
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
        outbox = cls(conn, path, storage, key, lock_fd, clock)
        outbox._retired = retired
        outbox._chain_upgrade()
        from agent.outbox import watermark

        watermark.check_at_open(outbox)
        outbox.reserve = Reserve(directory, fold_wal=outbox.fold_wal)
        outbox.reserve.ensure()
        return outbox

    @classmethod
    def _open_readonly(cls, storage: StorageSettings, path: Path, clock: Callable[[], float]) -> Outbox:
        if not path.exists():
            raise OutboxError(
                f"there is no outbox {path}",
                hint="the service creates it (and its key) at its first start; check [storage] dir",
            )
        damaged_hint = (
            "the service salvages it at its next start (fvagent outbox salvage FILE does it by hand); "
            "nothing was changed"
        )
        problem = _header_problem(path)
        if problem:
            raise OutboxCorrupt(f"the outbox database {path} is damaged ({problem})", hint=damaged_hint)
        lock_path = path.with_name(LOCK_NAME)
        lock_fd = os.open(lock_path if lock_path.exists() else path, os.O_RDONLY)
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                f"file:{path}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            found = schema.version(conn)
            if found != schema.CURRENT:
                raise OutboxError(
                    f"the outbox {path} has schema {found}, this fvagent reads {schema.CURRENT}",
                    hint="start the service once (it upgrades the file), or run the fvagent that wrote it",
                )
            stored = conn.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
            key = (
                key_for_check(storage, bytes(stored[0]), path)
                if stored is not None
                else load_key(storage, may_create=False)
            )
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
        outbox = cls(conn, path, storage, key, lock_fd, clock, readonly=True)
        try:
            outbox._retired = rotation.load_retired(storage)  # records sealed before a rotation stay readable
        except BaseException:
            outbox.close()
            raise
        return outbox

    @staticmethod
    def _key_for(conn: sqlite3.Connection, storage: StorageSettings, path: Path) -> DataKey:
        stored = conn.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
        if stored is not None:
            return key_for_check(storage, bytes(stored[0]), path)
        has_rows = conn.execute("SELECT EXISTS(SELECT 1 FROM records)").fetchone()[0]
        if has_rows:
            raise KeyFileError(
                f"the outbox {path} holds records but no key check value",
                hint="the file was altered; keep it and ask for support",
            )
        key = load_key(storage, may_create=True)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('key_check', ?)", (key.check_value(),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        stored = conn.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
        if not key.matches(bytes(stored[0])):  # another process stored its key's check value first
            raise KeyFileError(
                f"the outbox {path} was just initialised with a different key",
                hint="two fvagent processes use different key files: make them agree",
            )
        return key

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
                        conn = sqlite3.connect(
                            self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
                        )
                        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                        conn.execute("PRAGMA synchronous = FULL")
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except FileNotFoundError:
                    continue
                except sqlite3.Error as exc:  # the backstop autocheckpoint still bounds the WAL
                    log.debug("background checkpoint failed: %s", exc)
        finally:
            if conn is not None:
                conn.close()

    def close(self) -> None:
        """Close the database; idempotent."""
        self._stop_checkpoints.set()
        if self._checkpointer.is_alive() and self._checkpointer is not threading.current_thread():
            self._checkpointer.join(10)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._conn.close()
            finally:
                os.close(self._lock_fd)
                if self.watermark is not None:
                    self.watermark.close()

    # -- transactions ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _write(self, what: str, *, drain: bool = False) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` ... ``COMMIT`` under the lock; SQLite errors become domain errors.

        ``drain``: a write that sends or frees (claim, result, housekeeping) may use the disk reserve."""
        if drain and self.reserve is not None:
            self.reserve.before_drain()
        with self._lock:
            if self._closed:
                raise OutboxError("the outbox is closed")
            conn = self._conn
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
    def _read(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise OutboxError("the outbox is closed")
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise self._translate(exc, what) from exc

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

    def _meta_get(self, conn: sqlite3.Connection, key: str) -> Any:
        return chain.read_meta_json(conn, key)

    @staticmethod
    def _meta_set(conn: sqlite3.Connection, key: str, value: Any) -> None:
        if value is None:
            conn.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, _dumps(value)))

    def _chained(self, head: chain.Head | None) -> None:
        """Note the chain head an event of this transaction made: written to ``outbox.head`` after COMMIT."""
        if head is not None:
            self._new_head = head

    def _publish_head(self) -> None:
        head, self._new_head = self._new_head, None
        if head is None:
            return
        try:
            chain.write_head_file(chain.head_file(self.storage.dir), head, self._chain_key, self._lock_fd)
        except OSError as exc:  # the commit stands; the file only lags (audit verify allows that)
            log.warning("cannot write the audit head file in %s: %s", self.storage.dir, exc.strerror)

    def _chain_upgrade(self) -> None:
        """Chain the rows an older fvagent wrote (once, at the first open after the upgrade)."""
        with self._read("read the outbox") as conn:
            if conn.execute("SELECT NOT EXISTS(SELECT 1 FROM meta WHERE key = 'chain.upgrade')").fetchone()[0]:
                return
        with self._write("chain the existing records") as conn:
            n = chain.upgrade(conn, self._chain_key, self._clock())
            conn.execute("DELETE FROM meta WHERE key = 'chain.upgrade'")
            self._chained(chain.read_head(conn))
        log.warning("audit chain built for %d record(s) written before it existed (marked %r)", n, chain.UPGRADE_NOTE)

    # -- capture -----------------------------------------------------------------------------------
    def enqueue(
        self,
        payload: dict[str, Any],
        *,
        simulated: bool = False,
        held_reason: str | None = None,
        raw_wlt: bytes | None = None,
        idempotency_key: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> int:
        """Commit one verification and return its id; durable (fsynced) before this returns.

        ``payload`` is the spec-named body (validated by the caller, unless ``held_reason`` says why
        it is held); ``meta`` non-personal facts shown on status pages; ``raw_wlt`` the card's WLT
        photo kept (sealed) for a held record; ``idempotency_key``: a repeat returns the first id.
        Raises ``StorageFull`` when the disk is full (nothing stored is changed), ``OutboxError``.
        """
        if not isinstance(payload, dict):
            raise TypeError(f"payload must be a dict, not {type(payload).__name__}")
        now = self._clock()
        uid = uuid.uuid4().hex
        data = {k: v for k, v in payload.items() if k not in PHOTO_FIELDS}
        photos = {k: payload[k] for k in PHOTO_FIELDS if payload.get(k) is not None}
        sealed_data = self._key.seal(_dumps(data), _aad(uid, "data"))
        sealed_photos = self._key.seal(_pack_photos(photos), _aad(uid, "photos")) if photos else None
        sealed_wlt = self._key.seal(bytes(raw_wlt), _aad(uid, "wlt")) if raw_wlt else None
        card_no = payload.get("cardNo")
        index = self._key.card_index(card_no) if isinstance(card_no, str) and card_no else None
        size = len(sealed_data) + len(sealed_photos or b"") + len(sealed_wlt or b"")
        meta_text = json.dumps(meta or {}, ensure_ascii=False, default=str)
        state = "held" if held_reason else "pending"
        if self.reserve is not None:
            self.reserve.before_capture()
        with self._write("store the verification") as conn:
            if idempotency_key is not None:
                found = conn.execute("SELECT id FROM records WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
                if found is not None:
                    return int(found[0])
            cur = conn.execute(
                "INSERT INTO records (uid, created_at, updated_at, state, attempts, next_attempt_at, bytes, simulated,"
                " held_reason, idempotency_key, card_index, meta) VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?)",
                (uid, now, now, state, now, size, int(bool(simulated)), held_reason, idempotency_key, index, meta_text),
            )
            record_id = int(cur.lastrowid or 0)
            conn.execute(
                "INSERT INTO payloads (record_id, data, photos, raw_wlt) VALUES (?, ?, ?, ?)",
                (record_id, sealed_data, sealed_photos, sealed_wlt),
            )
            self._chained(chain.on_commit(conn, self._chain_key, record_id))
        if self.watermark is not None:
            self.watermark.note(record_id, 1)
        self.wakeup.set()
        return record_id

    # -- reading -----------------------------------------------------------------------------------
    def id_for_key(self, idempotency_key: str) -> int | None:
        """The id of the record committed with ``idempotency_key``, or None."""
        with self._read("look up an idempotency key") as conn:
            found = conn.execute("SELECT id FROM records WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
        return int(found[0]) if found is not None else None

    def get(self, record_id: int) -> Row | None:
        """The row ``record_id`` (no personal data), or ``None``."""
        with self._read("read the outbox") as conn:
            t = conn.execute(f"SELECT {_ROW_COLUMNS} FROM {_ROW_FROM} WHERE r.id = ?", (int(record_id),)).fetchone()
        return _row(t) if t else None

    def payload(self, record_id: int, *, photos: bool = True) -> dict[str, Any] | None:
        """The decrypted payload of ``record_id`` (without photos once retention erased them, or when
        ``photos`` is false: listings need no photo), or ``None``.

        Raises ``OutboxCorrupt`` when the sealed data does not open (altered on disk).
        """
        with self._read("read the outbox") as conn:
            t = conn.execute(
                f"SELECT r.uid, p.data, {'p.photos' if photos else 'NULL'}, r.key_id FROM records r "
                "JOIN payloads p ON p.record_id = r.id WHERE r.id = ?",
                (int(record_id),),
            ).fetchone()
        if t is None:
            return None
        uid, data, sealed_photos, key_id = t
        key = self._sealed_under(key_id, record_id)
        try:
            payload = json.loads(key.open(data, _aad(uid, "data")))
            if sealed_photos is not None:
                payload.update(_unpack_photos(key.open(sealed_photos, _aad(uid, "photos"))))
        except (CryptoError, ValueError) as exc:
            raise OutboxCorrupt(
                f"record {record_id}: its sealed data does not open (altered on disk)", record_id=record_id
            ) from exc
        return payload

    def raw_wlt(self, record_id: int) -> bytes | None:
        """The sealed WLT photo kept with a held record, decrypted; ``None`` when there is none."""
        with self._read("read the outbox") as conn:
            t = conn.execute(
                "SELECT r.uid, p.raw_wlt, r.key_id FROM records r JOIN payloads p ON p.record_id = r.id WHERE r.id = ?",
                (int(record_id),),
            ).fetchone()
        if t is None or t[1] is None:
            return None
        try:
            return self._sealed_under(t[2], record_id).open(t[1], _aad(t[0], "wlt"))
        except CryptoError as exc:
            raise OutboxCorrupt(f"record {record_id}: its sealed WLT photo does not open", record_id=record_id) from exc

    def _sealed_under(self, key_id: str | None, record_id: int) -> DataKey:
        """The key a record is sealed under: the current one, or a retired one (after a rotation)."""
        if key_id is None:
            return self._key
        key = self._retired.get(key_id)
        if key is None:
            raise KeyFileError(
                f"record {record_id} is sealed under the retired key {key_id}, which is not in "
                f"{rotation.retired_path(self.storage)}",
                hint="restore that file from your backup",
            )
        return key

    def find(
        self,
        card_no: str | None = None,
        since: dt.datetime | None = None,
        limit: int = 50,
        *,
        before_id: int | None = None,
    ) -> list[Row]:
        """Rows newest first, of one card number when given (through the blind index), created at or
        after ``since`` (a naive datetime is local time), with ids below ``before_id`` (to page on)."""
        where, args = [], []
        if before_id is not None:
            where.append("r.id < ?")
            args.append(int(before_id))
        if card_no:
            keys = [self._key, *self._retired.values()]  # records sealed before a rotation are indexed under their key
            where.append(f"r.card_index IN ({','.join('?' * len(keys))})")
            args.extend(key.card_index(card_no) for key in keys)
        if since is not None:
            where.append("r.created_at >= ?")
            args.append(since.timestamp())
        sql = f"SELECT {_ROW_COLUMNS} FROM {_ROW_FROM}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY r.id DESC LIMIT ?"
        with self._read("search the outbox") as conn:
            return [_row(t) for t in conn.execute(sql, (*args, max(1, int(limit)))).fetchall()]

    def list(self, state: str | None = None, limit: int = 50) -> list[Row]:
        """Rows newest first, of one state when given."""
        if state is not None and state not in schema.STATES:
            raise OutboxError(f"unknown state {state!r}", hint="one of " + ", ".join(schema.STATES))
        sql = f"SELECT {_ROW_COLUMNS} FROM {_ROW_FROM}"
        args: tuple[Any, ...] = ()
        if state is not None:
            sql += " WHERE r.state = ?"
            args = (state,)
        sql += " ORDER BY r.id DESC LIMIT ?"
        with self._read("list the outbox") as conn:
            return [_row(t) for t in conn.execute(sql, (*args, max(1, int(limit)))).fetchall()]

    def attempts(self, record_id: int) -> list[Attempt]:
        """Every upload attempt of ``record_id``, first to last, with its request id."""
        with self._read("read the attempts") as conn:
            rows = conn.execute(
                "SELECT record_id, attempt, request_id, started_at, finished_at, outcome, http_status,"
                " exception_code, message FROM attempts WHERE record_id = ? ORDER BY attempt, id",
                (int(record_id),),
            ).fetchall()
        return [Attempt(*r) for r in rows]

    def stats(self) -> dict[str, Any]:
        """Counts per state and ``total``, plus ``oldest_pending_age_s``, ``bytes`` (sealed data held),
        ``max_bytes``, ``over_budget``, ``last_sent_at`` and ``oldest_unsent_at`` (the oldest rejected
        or held record's creation; epoch seconds), ``held_simulated`` (held with
        ``SIMULATED_HELD_REASON``) and ``unsealable`` (rejected here, not by the platform: their sealed
        data no longer opens)."""
        with self._read("count the outbox") as conn:
            counts = dict(conn.execute("SELECT state, COUNT(*) FROM records GROUP BY state").fetchall())
            (simulated,) = conn.execute(
                "SELECT COUNT(*) FROM records WHERE state = 'held' AND held_reason = ?", (SIMULATED_HELD_REASON,)
            ).fetchone()
            (oldest,) = conn.execute(
                "SELECT MIN(created_at) FROM records WHERE state IN ('pending', 'sending')"
            ).fetchone()
            (size,) = conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM records").fetchone()
            (last_sent,) = conn.execute("SELECT MAX(sent_at) FROM records WHERE state = 'sent'").fetchone()
            (oldest_unsent,) = conn.execute(
                "SELECT MIN(created_at) FROM records WHERE state IN ('rejected', 'held')"
            ).fetchone()
            (unsealable,) = conn.execute(
                "SELECT COUNT(*) FROM records WHERE state = 'rejected' AND last_outcome = 'local'"
            ).fetchone()
        out: dict[str, Any] = {state: int(counts.get(state, 0)) for state in schema.STATES}
        out["total"] = sum(int(v) for v in counts.values())
        out["oldest_pending_age_s"] = round(max(0.0, self._clock() - oldest), 1) if oldest is not None else None
        out["bytes"] = int(size)
        out["max_bytes"] = int(self.storage.max_bytes)
        out["over_budget"] = int(size) > self.storage.max_bytes
        out["last_sent_at"] = last_sent
        out["held_simulated"] = int(simulated)
        out["oldest_unsent_at"] = oldest_unsent
        out["unsealable"] = int(unsealable)
        return out

    def count_unsent(self, *, source: str) -> int:
        """Records from ``source`` (``meta.source``: ``reader``, ``local_api``) not yet sent or rejected."""
        with self._read("count the unsent records") as conn:
            (n,) = conn.execute(
                "SELECT COUNT(*) FROM records WHERE state IN ('pending', 'sending', 'held')"
                " AND json_extract(meta, '$.source') = ?",
                (source,),
            ).fetchone()
        return int(n)

    def hold_simulated(self) -> int:
        """Hold every pending simulated record with ``SIMULATED_HELD_REASON``: a production platform
        must never get one, whenever it was captured. Returns how many."""
        now = self._clock()
        with self._write("hold the simulated records") as conn:
            ids = [int(i) for (i,) in conn.execute("SELECT id FROM records WHERE simulated = 1 AND state = 'pending'")]
            conn.executemany(
                "UPDATE records SET state = 'held', held_reason = ?, updated_at = ? WHERE id = ?",
                [(SIMULATED_HELD_REASON, now, i) for i in ids],
            )
            self._chained(chain.on_held(conn, self._chain_key, ids, now, SIMULATED_HELD_REASON))
        return len(ids)

    # -- operator actions --------------------------------------------------------------------------
    def retry(self, record_id: int) -> None:
        """Send ``record_id`` again as soon as possible: a rejected or waiting (pending) record.

        Raises ``OutboxError`` for an unknown id, a sent or held record, or one being sent now.
        """
        with self._write("retry the record") as conn:
            t = conn.execute("SELECT state FROM records WHERE id = ?", (int(record_id),)).fetchone()
            if t is None:
                raise OutboxError(f"no record with id {record_id}", record_id=record_id)
            if t[0] not in ("rejected", "pending"):
                why = {
                    "sent": "it was already accepted by the platform",
                    "sending": "it is being sent right now",
                    "held": "it is held (see its held reason); it is released when complete",
                }[t[0]]
                raise OutboxError(f"record {record_id} cannot be retried: {why}", record_id=record_id)
            conn.execute(
                "UPDATE records SET state = 'pending', next_attempt_at = ?, updated_at = ? WHERE id = ?",
                (self._clock(), self._clock(), int(record_id)),
            )
            self._chained(chain.on_requeued(conn, self._chain_key, [int(record_id)], self._clock(), "operator"))
        self.wakeup.set()

    def resolve(self, record_id: int, *, request_id: str, message: str) -> None:
        """Mark a rejected record ``sent``: a corrected copy of it was accepted by the platform some
        other way (``fvagent upload-file``, or by hand), under ``request_id``.

        The record then counts as any sent record (retention erases its photos, ``retry --rejected``
        leaves it alone). One attempts row records the delivery, with ``request_id`` and ``message``.
        Raises ``OutboxError`` for an empty request id, an unknown id, or a record that is not rejected.
        """
        request_id = request_id.strip()
        if not request_id:
            raise OutboxError(
                f"record {record_id} cannot be marked sent without the accepted request id",
                record_id=record_id,
                hint="give the requestId that `fvagent upload-file` printed for the accepted record",
            )
        now = self._clock()
        with self._write("mark the record sent") as conn:
            t = conn.execute("SELECT state, attempts FROM records WHERE id = ?", (int(record_id),)).fetchone()
            if t is None:
                raise OutboxError(f"no record with id {record_id}", record_id=record_id)
            state, attempts = t
            if state != "rejected":
                why = {
                    "sent": "it was already accepted by the platform",
                    "sending": "it is being sent right now",
                    "pending": "it is queued to be sent (not rejected); if it is rejected again, resolve it then",
                    "held": "it is held (see its held reason) and was never sent",
                }[state]
                raise OutboxError(f"record {record_id} cannot be marked sent: {why}", record_id=record_id)
            # Counted as one more attempt, so `attempts` keeps matching the attempts rows.
            conn.execute(
                "INSERT INTO attempts (record_id, attempt, request_id, started_at, finished_at, outcome,"
                " message) VALUES (?, ?, ?, ?, ?, 'accepted', ?)",
                (int(record_id), int(attempts) + 1, request_id, now, now, message[:500]),
            )
            conn.execute(
                "UPDATE records SET state = 'sent', attempts = attempts + 1, sent_at = ?, updated_at = ?,"
                " request_id = ?, last_outcome = 'accepted', last_error = NULL WHERE id = ?",
                (now, now, request_id, int(record_id)),
            )
            self._chained(chain.on_resolved(conn, self._chain_key, int(record_id), now, request_id, message))

    # -- hand-over marks (the desk's follow-up of failed verifications) ----------------------------
    def mark_handed_over(self, record_id: int, operator: str) -> Handover:
        """Note that the desk handed the case of ``record_id`` over to the police, by ``operator``, now.

        The record itself is not changed and the mark is never uploaded. A record is marked once:
        marking it again returns the first mark unchanged. Raises ``OutboxError`` for an unknown id.
        """
        now = self._clock()
        with self._write("store the hand-over mark") as conn:
            t = conn.execute("SELECT uid FROM records WHERE id = ?", (int(record_id),)).fetchone()
            if t is None:
                raise OutboxError(f"no record with id {record_id}", record_id=record_id)
            sealed = self._key.seal(operator.encode("utf-8"), _aad(t[0], "handover"))
            cur = conn.execute(
                "INSERT OR IGNORE INTO handovers (record_id, at, operator) VALUES (?, ?, ?)",
                (int(record_id), now, sealed),
            )
            if cur.rowcount:
                self._chained(chain.on_handover(conn, self._chain_key, int(record_id), now, sealed))
        found = self.handovers([record_id]).get(int(record_id))
        if found is None:  # deleted by retention between the two transactions: only a sent record can be
            raise OutboxError(f"no record with id {record_id}", record_id=record_id)
        return found

    def handovers(self, record_ids: Iterable[int]) -> dict[int, Handover]:
        """The hand-over marks of those records that have one, by record id."""
        ids = [int(i) for i in record_ids]
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._read("read the hand-over marks") as conn:
            rows = conn.execute(
                f"SELECT h.record_id, h.at, h.operator, r.uid FROM handovers h JOIN records r "
                f"ON r.id = h.record_id WHERE h.record_id IN ({marks})",
                ids,
            ).fetchall()
        out = {}
        for record_id, at, sealed, uid in rows:
            try:
                operator = self._key.open(sealed, _aad(uid, "handover")).decode("utf-8")
            except (CryptoError, UnicodeDecodeError) as exc:
                raise OutboxCorrupt(
                    f"record {record_id}: its hand-over mark does not open (altered on disk)", record_id=record_id
                ) from exc
            out[int(record_id)] = Handover(record_id=int(record_id), at=float(at), operator=operator)
        return out

    def retry_rejected(self) -> int:
        """Queue every rejected record again; returns how many."""
        now = self._clock()
        with self._write("retry the rejected records") as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM records WHERE state = 'rejected'")]
            self._chained(chain.on_requeued(conn, self._chain_key, ids, now, "operator"))
            n = conn.execute(
                "UPDATE records SET state = 'pending', next_attempt_at = ?, updated_at = ? WHERE state = 'rejected'",
                (now, now),
            ).rowcount
        self.wakeup.set()
        return int(n)

    def export_rejected(self, path: str | os.PathLike[str]) -> int:
        """Write every rejected record to ``path`` (JSON Lines, created 0600, never overwritten):
        one object per line with ``id``, ``createdAt``, ``attempts``, ``lastError`` and ``record``
        (the full payload, to fix and resend with ``fvagent upload-file``). Returns how many.
        With no rejected record nothing is created (an empty file would only block the name).

        A record whose sealed data no longer opens (altered on disk) gets a line with ``record`` null
        and ``error`` saying so, and is logged: it must not keep the others from being exported."""
        rows = self.list("rejected", limit=1_000_000)
        if not rows:
            return 0
        target = Path(path)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as exc:
            raise OutboxError(
                f"{target} exists: choose a new file name", hint="export never overwrites a file"
            ) from exc
        except OSError as exc:
            raise OutboxError(f"cannot create {target}: {exc.strerror}") from exc
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for row in reversed(rows):
                doc = {
                    "id": row.id,
                    "createdAt": dt.datetime.fromtimestamp(row.created_at).astimezone().isoformat(),
                    "attempts": row.attempts,
                    "lastError": row.last_error,
                }
                try:
                    doc["record"] = self.payload(row.id)
                except OutboxCorrupt as exc:
                    log.error("export: %s; its line in %s has no record", exc.message, target)
                    doc["record"] = None
                    doc["error"] = exc.message
                fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return len(rows)

    def release_held(
        self,
        complete: Callable[[dict[str, Any], bytes | None, dict[str, Any]], dict[str, Any] | None],
        *,
        limit: int = 100,
    ) -> int:
        """Offer each held record (oldest first) to ``complete(payload, raw_wlt, meta)``, ``meta`` being
        the row's stored meta (its guards: ``face_result_pending``, ``camera_placeholder``); a returned
        payload replaces the stored one and the record becomes pending; ``None`` keeps it held. An
        exception from ``complete`` keeps that record held (logged). Returns how many were released."""
        released = 0
        for row in reversed(self.list("held", limit=limit)):
            if row.held_reason == SIMULATED_HELD_REASON:
                continue  # a complete photo does not make a simulated record real
            payload = self.payload(row.id)
            if payload is None:
                continue
            try:
                done = complete(payload, self.raw_wlt(row.id), dict(row.meta))
            except Exception:
                log.warning("record %d stays held: completing it failed", row.id, exc_info=True)
                continue
            if done is None:
                continue
            if self._replace_payload(row.id, done, from_state="held"):
                released += 1
        if released:
            self.wakeup.set()
        return released

    def _replace_payload(self, record_id: int, payload: dict[str, Any], *, from_state: str) -> bool:
        now = self._clock()
        with self._read("read the outbox") as conn:
            t = conn.execute("SELECT uid FROM records WHERE id = ?", (record_id,)).fetchone()
        if t is None:
            return False
        uid = t[0]
        data = {k: v for k, v in payload.items() if k not in PHOTO_FIELDS}
        photos = {k: payload[k] for k in PHOTO_FIELDS if payload.get(k) is not None}
        sealed_data = self._key.seal(_dumps(data), _aad(uid, "data"))
        sealed_photos = self._key.seal(_pack_photos(photos), _aad(uid, "photos")) if photos else None
        card_no = payload.get("cardNo")
        index = self._key.card_index(card_no) if isinstance(card_no, str) and card_no else None
        with self._write("update the held record") as conn:
            n = conn.execute(
                "UPDATE records SET state = 'pending', held_reason = NULL, next_attempt_at = ?,"
                " updated_at = ?, card_index = ?, bytes = ?, key_id = NULL WHERE id = ? AND state = ?",
                (now, now, index, len(sealed_data) + len(sealed_photos or b""), record_id, from_state),
            ).rowcount
            if n:
                conn.execute(
                    "UPDATE payloads SET data = ?, photos = ?, raw_wlt = NULL WHERE record_id = ?",
                    (sealed_data, sealed_photos, record_id),
                )
                self._chained(chain.on_released(conn, self._chain_key, record_id, now))
        return bool(n)

    # -- the uploader's side -----------------------------------------------------------------------
    def requeue_interrupted(self) -> int:
        """Rows left in ``sending`` by a crash go back to ``pending``; their unfinished attempts are
        marked ``interrupted``. Only the uploader calls this, at its start. Returns how many."""
        now = self._clock()
        with self._write("requeue interrupted records", drain=True) as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM records WHERE state = 'sending'")]
            self._chained(chain.on_requeued(conn, self._chain_key, ids, now, "interrupted"))
            n = conn.execute(
                "UPDATE records SET state = 'pending', next_attempt_at = ?, updated_at = ?,"
                " last_outcome = 'interrupted' WHERE state = 'sending'",
                (now, now),
            ).rowcount
            conn.execute(
                "UPDATE attempts SET outcome = 'interrupted', finished_at = ?,"
                " message = 'the process stopped during this attempt' WHERE outcome IS NULL",
                (now,),
            )
        if n:
            log.warning(
                "%d record(s) were being sent when fvagent stopped; they are queued again "
                "(the platform may receive them twice)",
                n,
            )
        return int(n)

    def claim(self, limit: int, now: float | None = None, *, max_wait_s: float | None = None) -> list[Claim]:
        """Take up to ``limit`` due pending records, oldest first, into ``sending`` (one attempt each).

        ``max_wait_s`` (the uploader's ``backoff_max_s``): no retry is ever set further ahead than
        this, so one that is was set while the wall clock was wrong (it stepped back since): it is
        due now, and a clock step never delays a retry by more than the longest backoff."""
        now = self._clock() if now is None else now
        with self._write("claim records to send", drain=True) as conn:
            if max_wait_s is not None:
                conn.execute(
                    "UPDATE records SET next_attempt_at = ? WHERE state = 'pending' AND next_attempt_at > ?",
                    (now, now + max_wait_s),
                )
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM records WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY id LIMIT ?",
                    (now, int(limit)),
                ).fetchall()
            ]
            claims = []
            for record_id in ids:
                conn.execute(
                    "UPDATE records SET state = 'sending', attempts = attempts + 1, updated_at = ? WHERE id = ?",
                    (now, record_id),
                )
                attempt = conn.execute("SELECT attempts FROM records WHERE id = ?", (record_id,)).fetchone()[0]
                cur = conn.execute(
                    "INSERT INTO attempts (record_id, attempt, started_at) VALUES (?, ?, ?)", (record_id, attempt, now)
                )
                claims.append(Claim(record_id, int(attempt), int(cur.lastrowid or 0), now))
                self._chained(chain.on_attempt(conn, self._chain_key, record_id, int(attempt), now))
        return claims

    def next_due_at(self) -> float | None:
        """When the earliest pending record becomes due (epoch seconds), or ``None``."""
        with self._read("read the outbox") as conn:
            t = conn.execute("SELECT MIN(next_attempt_at) FROM records WHERE state = 'pending'").fetchone()
        return t[0] if t else None

    def finish(
        self,
        claim: Claim,
        outcome: str,
        *,
        message: str,
        request_id: str | None = None,
        http_status: int | None = None,
        exception_code: str | None = None,
        next_attempt_at: float | None = None,
        now: float | None = None,
        return_time_ms: int | None = None,
    ) -> None:
        """Record the end of one attempt. ``outcome``: ``accepted`` (-> sent), ``rejected`` or
        ``local`` (-> rejected), ``retryable``, ``blocked``, ``clock`` or ``unregistered`` (-> pending, due at
        ``next_attempt_at``)."""
        now = self._clock() if now is None else now
        with self._write("record the upload result", drain=True) as conn:
            conn.execute(
                "UPDATE attempts SET request_id = ?, finished_at = ?, outcome = ?, http_status = ?,"
                " exception_code = ?, message = ? WHERE id = ?",
                (request_id, now, outcome, http_status, exception_code, message[:500], claim.attempt_row),
            )
            if outcome == "accepted":
                cur = conn.execute(
                    "UPDATE records SET state = 'sent', sent_at = ?, updated_at = ?, request_id = ?,"
                    " last_outcome = ?, last_error = NULL WHERE id = ? AND state = 'sending'",
                    (now, now, request_id, outcome, claim.id),
                )
            elif outcome in ("rejected", "local"):
                cur = conn.execute(
                    "UPDATE records SET state = 'rejected', updated_at = ?, request_id = ?,"
                    " last_outcome = ?, last_error = ? WHERE id = ? AND state = 'sending'",
                    (now, request_id, outcome, message[:500], claim.id),
                )
            elif outcome in ("retryable", "blocked", "clock", "unregistered"):
                cur = conn.execute(
                    "UPDATE records SET state = 'pending', next_attempt_at = ?, updated_at = ?,"
                    " request_id = COALESCE(?, request_id), last_outcome = ?, last_error = ?"
                    " WHERE id = ? AND state = 'sending'",
                    (
                        now if next_attempt_at is None else next_attempt_at,
                        now,
                        request_id,
                        outcome,
                        message[:500],
                        claim.id,
                    ),
                )
            else:
                raise ValueError(f"unknown outcome {outcome!r}")
            if cur.rowcount:
                self._chained(
                    chain.on_result(
                        conn,
                        self._chain_key,
                        claim.id,
                        claim.attempt,
                        outcome,
                        now,
                        request_id=request_id,
                        return_time_ms=return_time_ms,
                        http_status=http_status,
                        exception_code=exception_code,
                        message=message,
                    )
                )

    def release(self, claim: Claim) -> None:
        """Give a claimed record back untried (the uploader was paused or stopped): its attempt is undone."""
        with self._write("release a claimed record", drain=True) as conn:
            conn.execute("DELETE FROM attempts WHERE id = ?", (claim.attempt_row,))
            if conn.execute(
                "UPDATE records SET state = 'pending', attempts = attempts - 1 WHERE id = ? AND state = 'sending'",
                (claim.id,),
            ).rowcount:
                self._chained(chain.on_attempt_undone(conn, self._chain_key, claim.id, self._clock()))

    # -- registration and pause state (kept in the database) ----------------------------------------
    def registration_state(self) -> dict[str, Any]:
        """``{"registered": bool, "at", "request_id", "message", "outcome", "fingerprint"}`` of the
        last registration attempt; ``registered`` is False until one was accepted."""
        with self._read("read the registration state") as conn:
            state = self._meta_get(conn, "registration")
        if not isinstance(state, dict):
            return {"registered": False, "at": None, "outcome": None, "message": "not registered yet"}
        return state

    def set_registration_state(self, state: dict[str, Any]) -> None:
        with self._write("store the registration state", drain=True) as conn:
            self._meta_set(conn, "registration", state)

    def get_state(self, name: str) -> Any:
        """A small JSON value the uploader keeps across restarts (e.g. ``blocked``)."""
        with self._read("read the outbox state") as conn:
            return self._meta_get(conn, f"state.{name}")

    def set_state(self, name: str, value: Any) -> None:
        with self._write("store the outbox state", drain=True) as conn:
            self._meta_set(conn, f"state.{name}", value)

    def fingerprint(self, data: bytes) -> str:
        """A keyed digest of configuration data (see ``DataKey.fingerprint``)."""
        return self._key.fingerprint(data)

    # -- retention ---------------------------------------------------------------------------------
    def housekeeping(self, now: float | None = None, *, uptime_s: float | None = None) -> dict[str, Any]:
        """Apply retention and the size budget; see ``agent.outbox.retention.housekeeping``."""
        from agent.outbox.retention import housekeeping

        return housekeeping(self, now, uptime_s=uptime_s)

    def fold_wal(self) -> bool:
        """Checkpoint the whole WAL into the database and truncate it (on a full disk that gives its
        room back: the database's pages exist already). True when it was done, False when busy."""
        try:
            with self._read("checkpoint the outbox") as conn:
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except OutboxError as exc:
            log.warning("cannot fold the outbox WAL: %s", exc)
            return False
        return not busy

    def integrity_check(self) -> list[str]:
        """``PRAGMA integrity_check``: ``["ok"]`` when the file is sound."""
        with self._read("check the outbox") as conn:
            return [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]


class _Damaged(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _header_problem(path: Path) -> str | None:
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
    error = OutboxCorrupt(
        f"the outbox database {path} is damaged ({reason}); it was kept as {target}, not overwritten",
        hint=f"start fvagent again to begin a new outbox; keep {target.name} and the key file "
        "for recovery (the same key opens it)",
    )
    error.kept_as = target  # type: ignore[attr-defined]
    return error


def damaged_copies(directory: Path | str) -> list[Path]:
    """The damaged databases moved aside in ``directory`` (``outbox.db.damaged-*``, without their -wal/-shm)."""
    return sorted(p for p in Path(directory).glob(f"{DB_NAME}.damaged-*") if not p.name.endswith(("-wal", "-shm")))
