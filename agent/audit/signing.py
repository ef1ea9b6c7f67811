"""The device's own SM2 signing key (GB/T 32918, SM2 with SM3 and the default user id), which signs
audit exports so anyone holding the public key can check them without the outbox key.

The private key is 32 random bytes (64 hex characters) in ``<storage.dir>/audit-sign.key`` (0600),
made at the service's first start, beside the default outbox key. gmssl does the curve arithmetic
(pure Python: one signature takes a few tens of milliseconds, one per export); the random numbers
come from ``secrets``, never from gmssl's own ``random``-based helper.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import secrets
from pathlib import Path

from gmssl import sm2

from agent.config import read_secret_file
from agent.files import create_secret_file
from core.errors import AuditError, SecretError, StorageFull

log = logging.getLogger(__name__)

KEY_FILE = "audit-sign.key"
ALGORITHM = "SM2-with-SM3"
_N = int(sm2.default_ecc_table["n"], 16)
_HEX = re.compile(r"^[0-9a-fA-F]+$")


def _crypt(private_hex: str, public_hex: str) -> sm2.CryptSM2:
    crypt = sm2.CryptSM2(private_key=private_hex, public_key="")
    # Set after construction: CryptSM2 strips a leading "04" with str.lstrip, which also eats any
    # 0 or 4 that starts the x coordinate.
    crypt.public_key = public_hex
    return crypt


def _point(private_hex: str) -> str:
    return str(_crypt(private_hex, "")._kg(int(private_hex, 16), sm2.default_ecc_table["g"]))


@dataclasses.dataclass(frozen=True, repr=False)
class SigningKey:
    private_hex: str
    path: Path

    def __repr__(self) -> str:
        return f"SigningKey(path={str(self.path)!r})"

    @property
    def public_key(self) -> str:
        """The public key as 130 hex characters: 04, x, y (uncompressed point)."""
        return "04" + _point(self.private_hex)

    def sign(self, message: bytes) -> str:
        """The signature r || s as 128 hex characters."""
        crypt = _crypt(self.private_hex, _point(self.private_hex))
        while True:
            k = f"{secrets.randbelow(_N - 1) + 1:064x}"
            signature = crypt.sign_with_sm3(message, k)
            if signature:
                return str(signature)


def parse_public_key(text: str) -> str:
    """A public key as ``fvagent audit pubkey`` prints it (130 hex characters starting 04), or ``AuditError``."""
    value = text.strip()
    if len(value) != 130 or not value.startswith("04") or not _HEX.match(value):
        raise AuditError(
            "the public key is not 130 hexadecimal characters starting with 04",
            hint="give the key exactly as `fvagent audit pubkey` printed it on the terminal",
        )
    return value.lower()


def verify(public_key: str, message: bytes, signature: str) -> bool:
    """Whether ``signature`` (r || s hex) is a valid SM2 signature of ``message`` under ``public_key``."""
    point = parse_public_key(public_key)[2:]
    if len(signature) != 128 or not _HEX.match(signature):
        return False
    r, s = int(signature[:64], 16), int(signature[64:], 16)
    if not (0 < r < _N and 0 < s < _N):
        return False
    return bool(_crypt("00", point).verify_with_sm3(signature.lower(), message))


def key_file(storage_dir: Path | str) -> Path:
    return Path(storage_dir) / KEY_FILE


def load(storage_dir: Path | str) -> SigningKey:
    """The signing key, or ``AuditError`` when it is missing or malformed."""
    path = key_file(storage_dir)
    if not path.exists():
        raise AuditError(
            f"the device's audit signing key {path} does not exist yet",
            hint="the service makes it at its first start (systemctl start fvagent)",
        )
    try:
        text = read_secret_file(path, key="audit signing key")
    except SecretError as exc:
        raise AuditError(exc.message, hint=exc.hint) from exc
    if len(text) != 64 or not _HEX.match(text) or not 0 < int(text, 16) < _N - 1:
        raise AuditError(
            f"the audit signing key {path} is not 64 hexadecimal characters of a valid SM2 key",
            hint="restore it from your backup; a new key means the hospital must file a new public key",
        )
    return SigningKey(text.lower(), path)


def ensure(storage_dir: Path | str) -> SigningKey:
    """The signing key, made (0600, fsynced, never over an existing one) when there is none yet."""
    path = key_file(storage_dir)
    if path.exists():
        return load(storage_dir)
    private_hex = f"{secrets.randbelow(_N - 2) + 1:064x}"
    try:
        if not create_secret_file(path, (private_hex + "\n").encode("ascii")):
            return load(storage_dir)  # another process made one first: theirs is kept
    except OSError as exc:
        if exc.errno == 28:
            raise StorageFull(f"no room to write the audit signing key {path}") from exc
        raise AuditError(
            f"cannot write the audit signing key {path}: {exc.strerror}",
            hint="check the owner and permissions of the state directory",
        ) from exc
    log.warning(
        "made the device's audit signing key %s (0600): back it up; `fvagent audit pubkey` prints "
        "the public key for the hospital",
        path,
    )
    return SigningKey(private_hex, path)
