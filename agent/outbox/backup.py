"""A consistent copy of the outbox and its data key, taken while the daemon runs.

``backup(storage, dest)`` copies ``outbox.db`` through SQLite's online backup API (one read
transaction: a snapshot that includes every committed record, never a half-written page, while
the daemon goes on writing in WAL mode), writes the data key beside it as ``outbox.key`` (0600)
with the keys a rotation retired and the device's audit signing key, then opens the copy
read-only with that key and checks it. Restoring is putting both files back into the
state directory with the service stopped (docs/operations.md, "Backup and restore").
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from pathlib import Path

from agent.audit import signing
from agent.config import StorageSettings
from agent.files import create_secret_file
from agent.outbox.keys import load_key
from agent.outbox.rotation import retired_path
from agent.outbox.store import DB_NAME, Outbox
from core.errors import OutboxError

KEY_NAME = "outbox.key"


@dataclasses.dataclass(frozen=True)
class Backup:
    database: Path
    key: Path
    records: int
    key_source: str


def backup(storage: StorageSettings, dest: Path) -> Backup:
    """Copy the outbox of ``storage`` and its key into the directory ``dest`` (made 0700 if missing).

    Raises ``OutboxError`` when there is no outbox, ``dest`` already holds a backup (never
    overwritten), the copy fails or does not open with the key; ``KeyFileError`` for the key.
    """
    source = Path(storage.dir) / DB_NAME
    if not source.exists():
        raise OutboxError(f"there is no outbox in {storage.dir} to back up", hint="check [storage] dir")
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    database, key_path = dest / DB_NAME, dest / KEY_NAME
    for path in (database, key_path):
        if path.exists():
            raise OutboxError(
                f"{path} exists already; a backup is never written over another", hint="give a new, empty directory"
            )
    key = load_key(storage, may_create=False)
    try:
        create_secret_file(key_path, (key.key.hex() + "\n").encode("ascii"))
        fd = os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # the copy is as private as the key
        os.close(fd)
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
        try:
            dst = sqlite3.connect(database)
            try:
                src.backup(dst)  # all pages in one step: one consistent snapshot
                dst.execute("PRAGMA journal_mode = DELETE")  # a single self-contained file
            finally:
                dst.close()
        finally:
            src.close()
    except (OSError, sqlite3.Error) as exc:
        raise OutboxError(
            f"the backup to {dest} failed: {exc}", hint="check the free space and permissions of the destination"
        ) from exc
    _copy_private(retired_path(storage), dest / retired_path(StorageSettings(dir=dest, key_file=key_path)).name)
    _copy_private(signing.key_file(storage.dir), dest / signing.KEY_FILE)
    copy = Outbox.open(StorageSettings(dir=dest, key_file=key_path), create=False, readonly=True)
    try:
        records = int(copy.stats()["total"])
    finally:
        copy.close()
    return Backup(database, key_path, records, key.source)


def _copy_private(source: Path, target: Path) -> None:
    """Copy a secret beside the backup (0600) when it exists: the keys retired by a rotation (they
    open the older records) and the device's audit signing key (its public key is on file)."""
    try:
        create_secret_file(target, source.read_bytes())
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutboxError(
            f"cannot copy {source} into the backup: {exc.strerror}",
            hint="run the backup as the service user or root, into a new directory",
        ) from exc
