"""The outbox's local data key: SM4-GCM at rest, and an HMAC-SM3 key for the card-number index.

The key is 16 random bytes, kept as 32 hex characters in a 0600 file made on first start
(``[storage] key_file``, default ``<dir>/outbox.key``), or handed in by systemd as the credential
``outbox_key`` (``LoadCredential=outbox_key:/path``). The database stores a check value sealed
under the key, so a wrong or missing key is found at start, before anything is written, and is a
``KeyFileError``: a new key is never made for a database that already holds sealed data.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import stat
import time
from pathlib import Path

from agent.config import StorageSettings, credential_path, read_secret_file
from agent.crypto import hmac_sm3, sm4_gcm_open, sm4_gcm_seal
from agent.files import create_secret_file
from core.errors import CryptoError, KeyFileError, SecretError, StorageFull

log = logging.getLogger(__name__)

CREDENTIAL_NAME = "outbox_key"
KEY_BYTES = 16
CHECK_PLAINTEXT = b"fvagent outbox key check v1"
_CHECK_AAD = b"fvagent:key-check"
_INDEX_LABEL = b"fvagent:card-index:v1"
_FINGERPRINT_LABEL = b"fvagent:fingerprint:v1"


@dataclasses.dataclass(frozen=True, repr=False)
class DataKey:
    """The local key and where it came from (``source`` is safe to show; the key never is)."""

    key: bytes
    source: str
    warning: str | None = None
    """A problem that does not stop the outbox but must be fixed (a key file others can read)."""

    def __repr__(self) -> str:
        return f"DataKey(source={self.source!r})"

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        return sm4_gcm_seal(self.key, plaintext, aad)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        return sm4_gcm_open(self.key, sealed, aad)

    def check_value(self) -> bytes:
        """A sealed known text: stored once in the database, opened at every start."""
        return sm4_gcm_seal(self.key, CHECK_PLAINTEXT, _CHECK_AAD)

    def matches(self, check_value: bytes) -> bool:
        try:
            return sm4_gcm_open(self.key, check_value, _CHECK_AAD) == CHECK_PLAINTEXT
        except CryptoError:
            return False

    def card_index(self, card_no: str) -> bytes:
        """A keyed blind index of a card number: equal numbers match, the number cannot be read back."""
        sub = hmac_sm3(self.key, _INDEX_LABEL)
        return hmac_sm3(sub, card_no.strip().upper().encode("utf-8"))[:16]

    def fingerprint(self, data: bytes) -> str:
        """A keyed digest of configuration (secrets included) that reveals nothing offline."""
        sub = hmac_sm3(self.key, _FINGERPRINT_LABEL)
        return hmac_sm3(sub, data).hex()[:32]


def key_path(storage: StorageSettings) -> Path:
    return storage.key_file if storage.key_file is not None else storage.dir / "outbox.key"


def _parse(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyFileError(
            f"the outbox data key in {where} is not 32 hexadecimal characters",
            hint="restore the original key file from your backup; never replace it with a new one "
            "while the outbox holds data",
        )
    return key


def load_key(storage: StorageSettings, *, may_create: bool) -> DataKey:
    """The data key: the systemd credential ``outbox_key`` when present, else the key file.

    ``may_create``: the database holds no sealed data yet, so a missing key file is made (0600,
    written and fsynced before use). Raises ``KeyFileError`` for a missing (when it may not be made),
    unreadable, world-readable or malformed key, ``StorageFull`` when the disk cannot hold it.
    """
    try:
        cred = credential_path(CREDENTIAL_NAME)
        text = read_secret_file(cred, key=f"systemd credential {CREDENTIAL_NAME!r}", check_mode=False) if cred else None
    except SecretError as exc:
        raise KeyFileError(exc.message, hint=exc.hint) from exc
    if text is not None:
        return DataKey(
            _parse(text, f"systemd credential {CREDENTIAL_NAME!r}"), f"systemd credential {CREDENTIAL_NAME!r}"
        )
    path = key_path(storage)
    if not path.exists():
        if not may_create:
            raise KeyFileError(
                f"the outbox data key {path} is missing, but the outbox database holds data sealed under it",
                hint=f"restore {path} from your backup (or set [storage] key_file / the systemd credential "
                f"{CREDENTIAL_NAME}); fvagent will not make a new key for existing data",
            )
        return DataKey(_create(path), f"file {path}")
    warning = None
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            # Refusing to start would block the desk; the key is already exposed either way. Loud, not fatal.
            warning = (
                f"the outbox data key {path} is readable by group or others (mode {mode:04o}): "
                f"fix with chmod 600 {path}, and consider the key seen"
            )
            log.error("%s", warning)
        text = read_secret_file(path, key="storage.key_file", check_mode=False)
    except OSError as exc:
        raise KeyFileError(
            f"cannot read the outbox data key {path}: {exc.strerror}",
            hint="check the owner and permissions of the key file",
        ) from exc
    except SecretError as exc:
        raise KeyFileError(exc.message, hint=exc.hint) from exc
    return DataKey(_parse(text, str(path)), f"file {path}", warning)


INTERIM_PREFIX = "outbox.key.interim-"
"""Keys made when the configured key was missing or wrong: the new outbox is sealed under one, and the
configured path stays free for the original key to be put back."""


def new_interim_path(storage: StorageSettings) -> Path:
    return Path(storage.dir) / (INTERIM_PREFIX + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))


def key_for_check(storage: StorageSettings, check_value: bytes, path: Path) -> DataKey:
    """The key that opens ``check_value`` (the outbox at ``path``): the configured one, else an
    interim key in the state directory. Raises the configured key's ``KeyFileError`` when none does."""
    try:
        key = load_key(storage, may_create=False)
        if key.matches(check_value):
            return key
        problem = KeyFileError(
            f"the outbox data key ({key.source}) is not the key the outbox {path} was sealed with",
            hint="restore the original key file (or credential outbox_key) from your backup; the service sets "
            "this outbox aside and starts a new one meanwhile, and merges it when the key is back",
        )
    except KeyFileError as exc:
        problem = exc
    for interim in sorted(Path(storage.dir).glob(INTERIM_PREFIX + "*"), reverse=True):
        try:
            text = read_secret_file(interim, key="interim outbox key")
            key = DataKey(_parse(text, str(interim)), f"interim file {interim}")
        except (SecretError, KeyFileError):
            continue
        if key.matches(check_value):
            return key
    raise problem


def _create(path: Path) -> bytes:
    key = secrets.token_bytes(KEY_BYTES)
    try:
        if not create_secret_file(path, (key.hex() + "\n").encode("ascii")):
            log.info("outbox data key %s was made by another process; using it", path)
            return _parse(read_secret_file(path, key="storage.key_file"), str(path))
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC
            raise StorageFull(
                f"no room on the disk to write the outbox data key {path}",
                hint="free disk space in the state directory",
            ) from exc
        raise KeyFileError(
            f"cannot write the outbox data key {path}: {exc.strerror}",
            hint="check the owner and permissions of the state directory",
        ) from exc
    log.warning("made a new outbox data key %s (0600): back it up; without it the queued records cannot be read", path)
    return key
