"""The platform's open conventions, one class used by both the client and the mock platform.

The spec (``../shared/spec/platform-api.md``) fixes HMAC-SM3 and SM4-ECB but not the encodings:
the sendTime format, the signature's key and output encoding, how orgAppSecret becomes an SM4 key,
padding, the ciphertext encoding, and whether responses are signed or encrypted. Each is a
``[platform.conventions]`` setting (``agent.config.ConventionSettings``); the defaults and the
alternatives are in ``../shared/spec/crypto-conventions.md``. ``Conventions`` turns those settings
into the exact strings and bytes on the wire, symmetrically: what ``sign`` makes, ``verify_sign``
accepts; what ``encrypt_data`` makes, ``decrypt_data`` opens.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import json
import re

from agent import crypto
from agent.config import ConventionSettings, PlatformSettings
from core.clock import CHINA_TZ
from core.errors import CryptoError, PlatformError

HEADER_SIGN = "hmpt-portal-sign"
HEADER_TIME = "hmpt-portal-time"
HEADER_REQUEST_ID = "hmpt-portal-request-id"
HEADER_ORG_APP_ID = "hmpt-portal-org-app-id"
HEADER_AUTHORIZATION = "Authorization"

# Asia/Shanghai has been UTC+8 without daylight saving since 1991; a fixed offset needs no tzdata
# and is right whatever zone the device is set to.

_DATE_FORMATS = {"yyyyMMddHHmmss": "%Y%m%d%H%M%S", "yyyy-MM-dd HH:mm:ss": "%Y-%m-%d %H:%M:%S"}
_DATE_PATTERNS = {
    "yyyyMMddHHmmss": re.compile(r"\d{14}"),
    "yyyy-MM-dd HH:mm:ss": re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"),
}
_HEX = re.compile(r"[0-9a-fA-F]*")
_SIGN_LEN = 32
"""HMAC-SM3 output length in bytes."""
_VERBATIM_MIN = 4096
"""Strings this long are copied into JSON as they are when they need no escaping (see ``dumps``)."""
_JSON_VERBATIM = bytes(range(0x20, 0x7F)).replace(b'"', b"").replace(b"\\", b"")
"""The ASCII characters JSON writes as they are: printable, except the quote and the backslash."""


class Conventions:
    """One reading of the open conventions. Thread-safe: it holds no mutable state but a cached key.

    ``org_app_secret`` is the plain secret string (``SecretStr.get_secret_value()``).
    """

    def __init__(self, settings: ConventionSettings, org_app_id: str, org_app_secret: str) -> None:
        self.settings = settings
        self.org_app_id = org_app_id
        self._secret = org_app_secret
        self._sm4_key: bytes | None = None

    @classmethod
    def from_platform(cls, platform: PlatformSettings) -> Conventions:
        """The conventions of ``[platform]``: its ``conventions`` section, orgAppId and orgAppSecret."""
        return cls(platform.conventions, platform.org_app_id, platform.org_app_secret.get_secret_value())

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"Conventions(send_time_format={s.send_time_format!r}, sign_output={s.sign_output!r}, "
            f"sm4_key_mode={s.sm4_key_mode!r}, cipher_encoding={s.cipher_encoding!r}, org_app_id={self.org_app_id!r})"
        )

    # ---------------------------------------------------------------------------------------------
    # sendTime

    def send_time(self, now_epoch_s: float) -> str:
        """The ``hmpt-portal-time`` string for ``now_epoch_s`` (date formats in Asia/Shanghai time)."""
        fmt = self.settings.send_time_format
        if fmt == "epoch_ms":
            return str(int(now_epoch_s * 1000))
        if fmt == "epoch_s":
            return str(int(now_epoch_s))
        return dt.datetime.fromtimestamp(now_epoch_s, CHINA_TZ).strftime(_DATE_FORMATS[fmt])

    def parse_send_time(self, s: str) -> float:
        """Epoch seconds of a sendTime in this convention's format; ``PlatformError`` when it is not one."""
        fmt = self.settings.send_time_format
        text = s.strip() if isinstance(s, str) else ""
        try:
            if fmt == "epoch_ms":
                if not re.fullmatch(r"\d{13}", text):
                    raise ValueError
                return int(text) / 1000.0
            if fmt == "epoch_s":
                if not re.fullmatch(r"\d{10}", text):
                    raise ValueError
                return float(int(text))
            if not _DATE_PATTERNS[fmt].fullmatch(text):
                raise ValueError
            return dt.datetime.strptime(text, _DATE_FORMATS[fmt]).replace(tzinfo=CHINA_TZ).timestamp()
        except ValueError:
            raise PlatformError(
                f"{HEADER_TIME} {s!r} is not a sendTime in the format {fmt!r}",
                hint="check [platform.conventions] send_time_format",
            ) from None

    def clock_ok(self, send_time: str, now_epoch_s: float) -> bool:
        """Whether ``send_time`` parses and lies within ``clock_skew_tolerance_s`` of ``now_epoch_s``."""
        try:
            t = self.parse_send_time(send_time)
        except PlatformError:
            return False
        # A date format has one-second resolution: allow that much on top of the tolerance.
        return abs(t - now_epoch_s) <= self.settings.clock_skew_tolerance_s + 1.0

    # ---------------------------------------------------------------------------------------------
    # Signature: HMAC_SM3(message = orgAppId + sendTime, key = orgAppSecret)

    def _sign_key(self) -> bytes:
        if self.settings.sign_key_encoding == "utf8":
            return self._secret.encode("utf-8")
        if len(self._secret) % 2 or not _HEX.fullmatch(self._secret):
            raise CryptoError(
                "platform.org_app_secret is not a hex string, but "
                'platform.conventions.sign_key_encoding = "hex" needs one',
                hint='set sign_key_encoding = "utf8", or check the secret',
            )
        return bytes.fromhex(self._secret)

    def sign_bytes(self, send_time: str) -> bytes:
        """The raw 32-byte HMAC-SM3 over orgAppId + ``send_time``."""
        return crypto.hmac_sm3(self._sign_key(), (self.org_app_id + send_time).encode("utf-8"))

    def sign(self, send_time: str) -> str:
        """The ``hmpt-portal-sign`` value for ``send_time``, encoded per ``sign_output``."""
        mac = self.sign_bytes(send_time)
        out = self.settings.sign_output
        if out == "hex":
            return mac.hex()
        if out == "hex_upper":
            return mac.hex().upper()
        return base64.b64encode(mac).decode("ascii")

    def verify_sign(self, send_time: str | None, signature: str | None) -> bool:
        """Whether ``signature`` is the signature of ``send_time``: decoded first (hex in either case,
        or Base64), length checked, then compared in constant time. A missing header (``None``) is
        no signature."""
        if signature is None or send_time is None:
            return False
        try:
            if self.settings.sign_output == "base64":
                given = base64.b64decode(signature.strip(), validate=True)
            else:
                given = bytes.fromhex(signature.strip())
        except (ValueError, binascii.Error):
            return False
        if len(given) != _SIGN_LEN:
            return False
        return hmac.compare_digest(given, self.sign_bytes(send_time))

    # ---------------------------------------------------------------------------------------------
    # SM4

    def sm4_key(self) -> bytes:
        """The 16-byte SM4 key from orgAppSecret under ``sm4_key_mode``; ``CryptoError`` naming the
        setting when the secret does not fit the mode."""
        if self._sm4_key is None:
            self._sm4_key = self._derive_sm4_key()
        return self._sm4_key

    def _derive_sm4_key(self) -> bytes:
        mode = self.settings.sm4_key_mode
        secret = self._secret
        raw = secret.encode("utf-8")
        is_hex32 = len(secret) == 32 and bool(_HEX.fullmatch(secret))
        where = f"platform.conventions.sm4_key_mode = {mode!r}"
        if mode == "auto":
            if len(raw) == 16:
                return raw
            if is_hex32:
                return bytes.fromhex(secret)
            raise CryptoError(
                f"{where}: platform.org_app_secret is {len(raw)} bytes, neither 16 bytes "
                "nor 32 hex characters, so it is not an SM4 key",
                hint="set sm4_key_mode to first16, sm3_trunc16 or nhsa_derive "
                "(run `fvagent probe` to see which matches the platform's sample)",
            )
        if mode == "raw16":
            if len(raw) != 16:
                raise CryptoError(
                    f"{where} needs a secret of exactly 16 bytes, it is {len(raw)}",
                    hint="check platform.org_app_secret or choose another sm4_key_mode",
                )
            return raw
        if mode == "hex32":
            if not is_hex32:
                raise CryptoError(
                    f"{where} needs a secret of 32 hex characters",
                    hint="check platform.org_app_secret or choose another sm4_key_mode",
                )
            return bytes.fromhex(secret)
        if mode == "first16":
            if len(raw) < 16:
                raise CryptoError(
                    f"{where} needs a secret of at least 16 bytes, it is {len(raw)}",
                    hint="check platform.org_app_secret or choose another sm4_key_mode",
                )
            return raw[:16]
        if mode == "sm3_trunc16":
            return crypto.sm3(raw)[:16]
        if mode == "nhsa_derive":
            # The key is the ASCII of the first 16 upper-case hex characters of
            # SM4-ECB/PKCS#7(key = orgAppId[:16], data = secret), as NHSA-lineage clients do.
            app_key = self.org_app_id[:16].encode("utf-8")
            if len(app_key) != 16:
                raise CryptoError(
                    f"{where} needs an orgAppId of at least 16 characters "
                    f"(platform.org_app_id has {len(self.org_app_id)})",
                    hint="choose another sm4_key_mode",
                )
            return crypto.sm4_ecb_encrypt(app_key, raw).hex().upper()[:16].encode("ascii")
        raise CryptoError(f"unknown platform.conventions.sm4_key_mode {mode!r}")

    def encode_cipher(self, ciphertext: bytes) -> str:
        enc = self.settings.cipher_encoding
        if enc == "base64":
            return base64.b64encode(ciphertext).decode("ascii")
        return ciphertext.hex() if enc == "hex_lower" else ciphertext.hex().upper()

    def decode_cipher(self, text: object) -> bytes:
        """The ciphertext bytes of ``text`` per ``cipher_encoding``; ``CryptoError`` when it is not that."""
        enc = self.settings.cipher_encoding
        if not isinstance(text, str):
            raise CryptoError(f"SM4 data must be a string, got {type(text).__name__}")
        try:
            if enc == "base64":
                return base64.b64decode(text.strip(), validate=True)
            if not _HEX.fullmatch(text.strip()):
                raise ValueError
            return bytes.fromhex(text.strip())
        except (ValueError, binascii.Error):
            raise CryptoError(
                f"SM4 data is not {enc} text", hint="check [platform.conventions] cipher_encoding"
            ) from None

    def encrypt_data(self, plaintext: bytes) -> str:
        """SM4-ECB(plaintext) with the derived key and padding, encoded per ``cipher_encoding``."""
        return self.encode_cipher(crypto.sm4_ecb_encrypt(self.sm4_key(), plaintext, padding=self.settings.padding))

    def decrypt_data(self, text: object) -> bytes:
        """Inverse of ``encrypt_data``; ``CryptoError`` on a bad encoding, length, key or padding."""
        return crypto.sm4_ecb_decrypt(self.sm4_key(), self.decode_cipher(text), padding=self.settings.padding)

    def looks_encrypted(self, value: object) -> bool:
        """``response_encrypted = "auto"``'s test: a string that decodes to whole 16-byte blocks."""
        if not isinstance(value, str) or not value:
            return False
        try:
            raw = self.decode_cipher(value)
        except CryptoError:
            return False
        return len(raw) > 0 and len(raw) % crypto.BLOCK == 0

    def response_data(self, value: object) -> object:
        """A response's ``data`` field, decrypted and JSON-parsed when the convention says it is
        encrypted (``response_encrypted``); raises ``CryptoError`` when decryption fails."""
        mode = self.settings.response_encrypted
        if value is None or mode == "false" or (mode == "auto" and not self.looks_encrypted(value)):
            return value
        plain = self.decrypt_data(value)
        try:
            return json.loads(plain.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            # Decrypted, but not JSON: hand back the text (a platform may encrypt a bare string).
            try:
                return plain.decode("utf-8")
            except UnicodeDecodeError:
                raise CryptoError(
                    "decrypted response data is not UTF-8: wrong key or conventions",
                    hint="check [platform.conventions] sm4_key_mode",
                ) from None

    # ---------------------------------------------------------------------------------------------
    # Bodies and headers

    def dumps(self, obj: object) -> bytes:
        """Compact JSON as UTF-8 bytes (non-ASCII escaped only when ``json_ensure_ascii``).

        A record's photos (two strings of ~130 KB of base64) are copied in rather than escaped
        character by character, once a fast check shows they need no escaping: byte for byte what
        ``json.dumps`` makes, in a third of the time."""
        if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
            return self._json(obj)
        items = []
        for key, value in obj.items():
            if isinstance(value, str) and len(value) >= _VERBATIM_MIN and value.isascii():
                raw = value.encode("ascii")
                if not raw.translate(None, _JSON_VERBATIM):  # nothing JSON would escape
                    items.append(self._json(key) + b':"' + raw + b'"')
                    continue
            items.append(self._json(key) + b":" + self._json(value))
        return b"{" + b",".join(items) + b"}"

    def _json(self, obj: object) -> bytes:
        return json.dumps(obj, ensure_ascii=self.settings.json_ensure_ascii, separators=(",", ":")).encode("utf-8")

    def request_body(self, payload: object, *, encrypt: bool) -> bytes:
        """The request body: the payload's JSON, or ``{"data": encrypt_data(JSON)}`` when ``encrypt``."""
        plain = self.dumps(payload)
        if not encrypt:
            return plain
        # Base64 and hex never need escaping in JSON, so the envelope is joined rather than
        # serialized: the same bytes as dumps({"data": ...}) without scanning 350 KB once more.
        return b'{"data":"' + self.encrypt_data(plain).encode("ascii") + b'"}'

    def open_request_body(self, body: bytes) -> tuple[object, str, bool]:
        """The server's side of ``request_body``: ``(payload, text, was_encrypted)``, where ``text`` is
        the payload's JSON as it came (decrypted when it came encrypted), for a server that keeps it.

        A JSON object whose only key is ``data`` holding a string is taken as encrypted. Raises
        ``ValueError`` for a body that is not JSON and ``CryptoError`` when decryption fails.
        """
        text = body.decode("utf-8")
        obj = json.loads(text)
        if isinstance(obj, dict) and set(obj) == {"data"} and isinstance(obj["data"], str):
            text = self.decrypt_data(obj["data"]).decode("utf-8")
            return json.loads(text), text, True
        return obj, text, False

    def request_headers(self, request_id: str, send_time: str, authorization: str) -> dict[str, str]:
        """The five required request headers, signed for ``send_time``."""
        return {
            HEADER_SIGN: self.sign(send_time),
            HEADER_TIME: send_time,
            HEADER_REQUEST_ID: request_id,
            HEADER_ORG_APP_ID: self.org_app_id,
            HEADER_AUTHORIZATION: authorization,
        }

    def response_headers(self, send_time: str) -> dict[str, str]:
        """The signature headers a signing platform puts on its response (message = orgAppId + time)."""
        return {HEADER_SIGN: self.sign(send_time), HEADER_TIME: send_time}
