"""Rotating the outbox data key (``fvagent outbox rotate-key``): new records under a new key, the old
ones still readable under the old key until retention purges them.

Retired keys are kept, one ``<key id> <32 hex>`` per line, in ``<key file>.retired`` (0600, beside
the key file); a record sealed under one has its ``key_id``, a record under the current key has
none. A retired key no record uses any more is dropped at the next rotation.

The service must be stopped (the outbox lock is taken exclusively). The steps are ordered so that
a crash at any point leaves an outbox that opens, at the latest after running the command again:
the retired file first, then the new key beside the old one (``<key file>.new``), then one
database transaction (records marked, new key check value, chain head signed anew, a
``key_rotated`` event), then the new key renamed over the old.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import secrets
import sqlite3
from pathlib import Path

from agent.config import StorageSettings, read_secret_file
from agent.crypto import hmac_sm3
from agent.files import replace_private_file
from agent.outbox import chain
from agent.outbox.keys import CREDENTIAL_NAME, KEY_BYTES, DataKey, key_path
from core.errors import KeyFileError, OutboxError, SecretError

log = logging.getLogger(__name__)

_ID_LABEL = b"fvagent:key-id:v1"


def key_id(key: DataKey) -> str:
    """A short name of a key that reveals nothing of it (keyed digest, 12 hex characters)."""
    return hmac_sm3(key.key, _ID_LABEL)[:6].hex()


def retired_path(storage: StorageSettings) -> Path:
    path = key_path(storage)
    return path.with_name(path.name + ".retired")


def load_retired(storage: StorageSettings) -> dict[str, DataKey]:
    """The retired keys by id ({} when none were ever retired)."""
    path = retired_path(storage)
    if not path.exists():
        return {}
    try:
        text = read_secret_file(path, key="retired outbox keys")
    except SecretError as exc:
        raise KeyFileError(exc.message, hint=exc.hint) from exc
    keys: dict[str, DataKey] = {}
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        try:
            key = DataKey(bytes.fromhex(parts[1]), f"retired key {parts[0]} in {path}")
            if len(parts) != 2 or len(key.key) != KEY_BYTES or key_id(key) != parts[0]:
                raise ValueError(line)
        except (IndexError, ValueError) as exc:
            raise KeyFileError(
                f"{path}, line {number}: not '<key id> <32 hex characters>' of a retired key",
                hint="restore the file from your backup; records sealed under that key cannot be read without it",
            ) from exc
        keys[parts[0]] = key
    return keys


@dataclasses.dataclass(frozen=True)
class Rotation:
    old_id: str
    new_id: str
    records_under_old: int
    retired_kept: int


def _finish_interrupted(storage: StorageSettings) -> None:
    """A rotation cut after its database commit leaves ``<key>.new`` that the database already uses."""
    new_path = key_path(storage).with_name(key_path(storage).name + ".new")
    if not new_path.exists():
        return
    db = Path(storage.dir) / "outbox.db"
    if not db.exists():
        return
    conn = sqlite3.connect(db)
    try:
        check = conn.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
    finally:
        conn.close()
    new = DataKey(bytes.fromhex(read_secret_file(new_path, key="new outbox key")), f"file {new_path}")
    if check is not None and new.matches(bytes(check[0])):
        os.replace(new_path, key_path(storage))
        log.warning("finished an interrupted key rotation: %s is now the outbox key", key_path(storage))
    else:
        new_path.unlink()  # cut before the database changed: the old key is still the key


def rotate_key(storage: StorageSettings) -> Rotation:
    """Rotate the data key of the outbox in ``storage.dir``; see the module docstring."""
    from agent.outbox.store import Outbox

    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / CREDENTIAL_NAME).is_file():
        raise KeyFileError(
            f"the outbox key comes from the systemd credential {CREDENTIAL_NAME!r}: fvagent cannot replace it",
            hint="run rotate-key without the credential, on the key file, then "
            "encrypt the new key file as the credential again (docs/operations.md)",
        )
    _finish_interrupted(storage)
    outbox = Outbox.open(storage, create=False)
    try:
        try:
            fcntl.flock(outbox.db.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise OutboxError(
                "the outbox is in use by another fvagent process: the key cannot be rotated now",
                hint="stop the service first (systemctl stop fvagent), then start it again",
            ) from exc
        old = outbox.keys.current
        new = DataKey(secrets.token_bytes(KEY_BYTES), f"file {key_path(storage)}")
        old_id, new_id = key_id(old), key_id(new)
        with outbox.db.read("read the outbox") as conn:
            used = {r[0] for r in conn.execute("SELECT DISTINCT key_id FROM records WHERE key_id IS NOT NULL")}
            (under_old,) = conn.execute("SELECT COUNT(*) FROM records WHERE key_id IS NULL").fetchone()
        retired = {kid: key for kid, key in outbox.keys.retired.items() if kid in used}
        retired[old_id] = old
        replace_private_file(
            retired_path(storage), "".join(f"{kid} {key.key.hex()}\n" for kid, key in retired.items()).encode("ascii")
        )
        new_path = key_path(storage).with_name(key_path(storage).name + ".new")
        replace_private_file(new_path, (new.key.hex() + "\n").encode("ascii"))
        old_ckey, new_ckey = chain.chain_key(old.key), chain.chain_key(new.key)
        with outbox.db.write("rotate the outbox key") as conn:
            conn.execute("UPDATE records SET key_id = ? WHERE key_id IS NULL", (old_id,))
            conn.execute("UPDATE meta SET value = ? WHERE key = 'key_check'", (new.check_value(),))
            try:
                chain.resign(conn, old_ckey, new_ckey)
            except ValueError as exc:
                raise OutboxError(
                    f"the key is not rotated: {exc}", hint="run `fvagent audit verify` and resolve that first"
                ) from exc
            head = chain.append(
                conn,
                new_ckey,
                "key_rotated",
                None,
                outbox.clock(),
                {"old_key": old_id, "new_key": new_id, "records_under_old": int(under_old)},
            )
        os.replace(new_path, key_path(storage))
        chain.write_head_file(chain.head_file(storage.dir), head, new_ckey, outbox.db.lock_fd, force=True)
    finally:
        outbox.close()
    log.warning(
        "outbox key rotated (%s -> %s): back up %s and %s", old_id, new_id, key_path(storage), retired_path(storage)
    )
    return Rotation(old_id, new_id, int(under_old), len(retired))
