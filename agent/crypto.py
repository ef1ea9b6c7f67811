"""SM3, HMAC-SM3, SM4-ECB and SM4-GCM through ``cryptography`` (OpenSSL).

The platform requires HMAC-SM3 signatures and optional SM4-ECB encryption on the wire
(``../shared/spec/crypto-conventions.md``); data at rest in the outbox uses SM4-GCM, which has
integrity. Every failure is a ``CryptoError``: a bad key length, a failed decryption or padding,
a tampered GCM message, or an OpenSSL build without SM3/SM4 (``self_test()``).

gmssl is only the test oracle: it is about 500x slower and its unpadding checks nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from core.errors import CryptoError as CryptoError  # re-exported: callers catch it from here

BLOCK = 16
"""SM4 block and key size in bytes."""
GCM_NONCE = 12
GCM_TAG = 16


def _check_key(key: bytes, what: str = "SM4 key") -> bytes:
    if not isinstance(key, bytes | bytearray | memoryview):
        raise CryptoError(f"{what} must be bytes, not {type(key).__name__}")
    key = bytes(key)
    if len(key) != BLOCK:
        raise CryptoError(
            f"{what} must be exactly 16 bytes, got {len(key)}",
            hint="see [platform.conventions] sm4_key_mode for how the secret becomes a key",
        )
    return key


def sm3(data: bytes) -> bytes:
    """The 32-byte SM3 digest of ``data`` (GB/T 32905)."""
    try:
        digest = hashes.Hash(hashes.SM3())
    except UnsupportedAlgorithm as exc:
        raise CryptoError("this OpenSSL build has no SM3", hint="install the cryptography wheel from PyPI") from exc
    digest.update(bytes(data))
    return digest.finalize()


def hmac_sm3(key: bytes, msg: bytes) -> bytes:
    """The 32-byte HMAC-SM3 (RFC 2104 with SM3, 64-byte block) of ``msg`` under ``key`` (any length)."""
    try:
        mac = hmac.HMAC(bytes(key), hashes.SM3())
    except UnsupportedAlgorithm as exc:
        raise CryptoError("this OpenSSL build has no SM3", hint="install the cryptography wheel from PyPI") from exc
    mac.update(bytes(msg))
    return mac.finalize()


def _pkcs7_pad(data: bytes) -> bytes:
    n = BLOCK - len(data) % BLOCK
    return data + bytes([n]) * n


def _pkcs7_unpad(data: bytes) -> bytes:
    if not data or len(data) % BLOCK:
        raise CryptoError("bad SM4 padding: decrypted data is not whole blocks")
    n = data[-1]
    # Not constant time: ECB here carries no secrecy against a padding oracle anyway (no MAC),
    # and the platform's response is what we decrypt, never an attacker-chosen loop.
    if not 1 <= n <= BLOCK or data[-n:] != bytes([n]) * n:
        raise CryptoError(
            "bad SM4 padding: wrong key, or the data is not SM4-ECB/PKCS#7",
            hint="check [platform.conventions] sm4_key_mode, padding and cipher_encoding",
        )
    return data[:-n]


def _ecb(key: bytes) -> Cipher[modes.ECB]:
    try:
        return Cipher(algorithms.SM4(key), modes.ECB())
    except UnsupportedAlgorithm as exc:
        raise CryptoError("this OpenSSL build has no SM4", hint="install the cryptography wheel from PyPI") from exc


def sm4_ecb_encrypt(key16: bytes, data: bytes, *, padding: str = "pkcs7") -> bytes:
    """SM4-ECB encrypt ``data``. ``padding`` is ``"pkcs7"`` (= Java's PKCS5Padding) or ``"none"``
    (``data`` must then be whole 16-byte blocks)."""
    key = _check_key(key16)
    data = bytes(data)
    if padding == "pkcs7":
        data = _pkcs7_pad(data)
    elif padding == "none":
        if len(data) % BLOCK:
            raise CryptoError(
                f"SM4 without padding needs whole 16-byte blocks, got {len(data)} bytes", hint='use padding = "pkcs7"'
            )
    else:
        raise CryptoError(f"unknown SM4 padding {padding!r}", hint='use "pkcs7" or "none"')
    enc = _ecb(key).encryptor()
    return enc.update(data) + enc.finalize()


def sm4_ecb_decrypt(key16: bytes, data: bytes, *, padding: str = "pkcs7") -> bytes:
    """SM4-ECB decrypt ``data``; raises ``CryptoError`` when it is not whole blocks or the padding is bad."""
    key = _check_key(key16)
    data = bytes(data)
    if padding not in ("pkcs7", "none"):
        raise CryptoError(f"unknown SM4 padding {padding!r}", hint='use "pkcs7" or "none"')
    if len(data) % BLOCK or (padding == "pkcs7" and not data):
        raise CryptoError(f"SM4 ciphertext must be whole 16-byte blocks, got {len(data)} bytes")
    dec = _ecb(key).decryptor()
    plain = dec.update(data) + dec.finalize()
    return _pkcs7_unpad(plain) if padding == "pkcs7" else plain


def sm4_gcm_seal(key16: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """SM4-GCM encrypt for data at rest: ``nonce(12) || ciphertext || tag(16)``, a fresh random nonce."""
    key = _check_key(key16)
    nonce = os.urandom(GCM_NONCE)
    try:
        enc = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
    except UnsupportedAlgorithm as exc:
        raise CryptoError("this OpenSSL build has no SM4-GCM", hint="install the cryptography wheel from PyPI") from exc
    if aad:
        enc.authenticate_additional_data(bytes(aad))
    body = enc.update(bytes(plaintext)) + enc.finalize()
    return nonce + body + enc.tag


def sm4_gcm_open(key16: bytes, sealed: bytes, aad: bytes = b"") -> bytes:
    """Open what ``sm4_gcm_seal`` made; raises ``CryptoError`` on a wrong key, wrong aad or any tampering."""
    key = _check_key(key16)
    sealed = bytes(sealed)
    if len(sealed) < GCM_NONCE + GCM_TAG:
        raise CryptoError(f"sealed data too short ({len(sealed)} bytes) to be SM4-GCM")
    nonce, body, tag = sealed[:GCM_NONCE], sealed[GCM_NONCE:-GCM_TAG], sealed[-GCM_TAG:]
    try:
        dec = Cipher(algorithms.SM4(key), modes.GCM(nonce, tag)).decryptor()
        if aad:
            dec.authenticate_additional_data(bytes(aad))
        return dec.update(body) + dec.finalize()
    except InvalidTag as exc:
        raise CryptoError("SM4-GCM authentication failed: wrong key, or the data was altered") from exc
    except UnsupportedAlgorithm as exc:
        raise CryptoError("this OpenSSL build has no SM4-GCM", hint="install the cryptography wheel from PyPI") from exc


# Published vectors (crypto-conventions.md): GB/T 32905 App. A, GB/T 32907 App. A.
SM3_ABC = bytes.fromhex("66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0")
SM3_ABCD16 = bytes.fromhex("debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732")
SM4_KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")
SM4_ONE_BLOCK = bytes.fromhex("681edf34d206965e86b3e94f536e4246")


def self_test() -> None:
    """Run the published SM3/SM4 vectors and a GCM round trip; raise ``CryptoError`` on any mismatch.

    The agent runs this at start: a ``cryptography`` built against a distro OpenSSL may lack SM4.
    """
    checks: list[tuple[str, Callable[[], bool]]] = [
        ("SM3 'abc' (GB/T 32905)", lambda: sm3(b"abc") == SM3_ABC),
        ("SM3 'abcd'x16 (GB/T 32905)", lambda: sm3(b"abcd" * 16) == SM3_ABCD16),
        ("SM4 one block (GB/T 32907)", lambda: sm4_ecb_encrypt(SM4_KEY, SM4_KEY, padding="none") == SM4_ONE_BLOCK),
        (
            "SM4-ECB PKCS#7 round trip",
            lambda: sm4_ecb_decrypt(SM4_KEY, sm4_ecb_encrypt(SM4_KEY, b"fvagent")) == b"fvagent",
        ),
        (
            "SM4-GCM round trip",
            lambda: sm4_gcm_open(SM4_KEY, sm4_gcm_seal(SM4_KEY, b"fvagent", b"a"), b"a") == b"fvagent",
        ),
    ]
    for name, check in checks:
        try:
            ok = check()
        except CryptoError:
            raise
        except Exception as exc:  # an OpenSSL oddity must still surface as the one error class
            raise CryptoError(f"crypto self-test {name} failed: {exc}") from exc
        if not ok:
            raise CryptoError(
                f"crypto self-test {name} gave a wrong result",
                hint="this OpenSSL's SM3/SM4 is broken; install the cryptography wheel from PyPI",
            )
