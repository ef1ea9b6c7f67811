"""The one local TOML file that configures fvagent, validated into frozen typed settings.

``load_config(path)`` reads the file with tomllib, resolves secrets (inline, ``*_file``, or a systemd
credential under ``$CREDENTIALS_DIRECTORY``), validates every section, and raises one ``ConfigError``
that lists every fault as ``key.path: rule``. Unknown keys are errors, so a typo never passes silently.

The ``[card_reader]`` and ``[camera]`` sections hold ``driver = "NAME"`` plus that driver's own
settings; the driver validates them (see ``drivers.registry``).

Adding a key to a section: declare the field with a default and a docstring, and show it in
``deploy/fvagent.example.toml`` (a test fails until you do). A cross-key rule in a section's model
validator should raise ``KeyProblems([("key", "rule")])`` (or a ``ValueError`` whose message starts
with the key's name), so the error names the key: ``face.early_stop_score: must be >= threshold``.
A new secret key goes into ``_SECRETS``; it then also accepts ``<key>_file`` and the systemd
credential ``<key>``. docs/configuration.md is the technician's guide.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from core.errors import ConfigError, SecretError
from core.records import JsonObject, validate_operator
from drivers import registry

DEFAULT_CONFIG_PATH = Path("/etc/fvagent/fvagent.toml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class KeyProblems(ValueError):
    """Raise from a section's model validator to blame specific keys: ``problems`` is
    ``[(key, rule), ...]`` with keys relative to the section, reported as ``section.key: rule``.

    (A plain ``ValueError`` whose message starts with one of the section's key names is reported
    against that key too; any other message is reported against the section.)
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{key}: {rule}" for key, rule in self.problems))


def _http_url(value: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("must be an http(s) URL")
    return value


# --------------------------------------------------------------------------------------------------
# Secrets


def read_secret_file(path: Path, *, key: str, check_mode: bool = True) -> str:
    """Read a secret from ``path``; refuse a file that group or others can read.

    ``check_mode=False`` skips the permission check, for systemd credentials: systemd itself
    restricts ``$CREDENTIALS_DIRECTORY`` to the service's user. Surrounding whitespace (the newline
    an editor or ``echo`` adds) is stripped. Raises ``SecretError`` naming ``key`` and the fix (the
    chmod command, the missing path).
    """
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise SecretError(f"{key}: secret file {path} does not exist", hint=f"create it, or fix {key}") from exc
    except PermissionError as exc:
        raise SecretError(f"{key}: cannot read secret file {path}", hint="check the file's owner") from exc
    if not stat.S_ISREG(st.st_mode):
        raise SecretError(f"{key}: secret file {path} is not a regular file", hint=f"fix {key}")
    if check_mode and stat.S_IMODE(st.st_mode) & 0o077:
        raise SecretError(
            f"{key}: secret file {path} is readable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); fix with: chmod 600 {path}",
            hint=f"chmod 600 {path}",
        )
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretError(f"{key}: cannot read secret file {path}: {exc}") from exc
    if not value:
        raise SecretError(f"{key}: secret file {path} is empty")
    return value


def credential_path(name: str) -> Path | None:
    """``$CREDENTIALS_DIRECTORY/name`` when systemd handed that credential over, else None.

    Raises ``SecretError`` naming the credential when the directory or the file is there but this
    process cannot read it: systemd made the directory yet did not give it to the service's user
    (seen in a container whose root mount is not shared, where the credentials systemd mounts
    stay invisible to the service), or the process runs as another user than the unit's.
    """
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if not cred_dir:
        return None
    path = Path(cred_dir) / name
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        # The fix is in the message itself: config problems are listed without their hints.
        raise SecretError(
            f"systemd credential {name!r}: cannot read {path} (permission denied for uid {os.geteuid()}); "
            "systemd did not hand the credentials directory to this user: run fvagent only as the unit's "
            "User=, and in a container make the root mount shared (mount --make-rshared /) so that "
            f"systemd's credential mounts reach the service; or give the secret as {name}_file instead",
            hint='systemctl cat fvagent (LoadCredential=); docs/operations.md, "Secrets as systemd credentials"',
        ) from exc
    return path if stat.S_ISREG(st.st_mode) else None


def _resolve_secrets(
    raw: dict[str, Any],
    names: tuple[str, ...],
    prefix: str,
    problems: list[tuple[str, str]],
    *,
    base_dir: Path | None = None,
    sources: dict[str, str] | None = None,
) -> None:
    """Turn ``NAME`` / ``NAME_file`` / a systemd credential into the inline ``NAME`` value, in place.

    Order: an inline value, else ``NAME_file`` (a relative path is relative to ``base_dir``, the
    config file's directory), else ``$CREDENTIALS_DIRECTORY/NAME`` when present (how
    ``LoadCredential=NAME:PATH`` hands secrets to the service). Both inline and file is an error.
    ``sources`` receives, per key path, where each secret came from (for ``fvagent config check``).
    """
    for name in names:
        key_path = f"{prefix}.{name}"
        file_key = f"{prefix}.{name}_file"
        inline = raw.get(name)
        file_value = raw.pop(f"{name}_file", None)
        if inline is not None and file_value is not None:
            problems.append((key_path, f"give either {name} or {name}_file, not both"))
            continue
        if file_value is not None and (not isinstance(file_value, str) or not file_value):
            problems.append((file_key, "must be the path of a file holding the secret"))
            continue
        try:
            if file_value is not None:
                path = Path(file_value)
                if not path.is_absolute() and base_dir is not None:
                    path = base_dir / path
                raw[name] = read_secret_file(path, key=file_key)
                where = f"file {path}"
            elif inline is None and (credential := credential_path(name)) is not None:
                raw[name] = read_secret_file(credential, key=key_path, check_mode=False)
                where = f"systemd credential {name!r}"
            elif inline is not None:
                where = "inline"
            else:
                continue
        except SecretError as exc:
            at = file_key if file_value is not None else key_path
            problems.append((at, exc.message.removeprefix(f"{at}: ")))
            continue
        if sources is not None:
            sources[key_path] = where


# --------------------------------------------------------------------------------------------------
# Sections


class DeviceSettings(_Section):
    """[device]: what this terminal is, as registered with the platform (POST /machine/info)."""

    machine_code: str = Field(min_length=1, max_length=50)
    """Unique device code: manufacturer code + serial number (machineCode)."""
    device_no: str = Field(min_length=1, max_length=50)
    """The device's serial number (deviceNo)."""
    manufacturer: str = Field(min_length=1, max_length=50)
    """Manufacturer, e.g. 德生实名易 (machineManufacturer)."""
    model: str = Field(min_length=1, max_length=50)
    """Model, e.g. TSR-R3 (machineMode)."""
    purchase_date: dt.date
    """Purchase date, yyyy-MM-dd (purchaseTime)."""
    dept_id: str = Field(min_length=1, max_length=50)
    """Department id (deptId)."""
    dept_name: str = Field(min_length=1, max_length=50)
    """Department name, e.g. 妇产科 (deptName)."""
    register_user: str = Field(min_length=1, max_length=50)
    """Who registers the device (registerUser)."""
    operator: str
    """Default operationUser for verifications until the desk sets another (the operationUser rule:
    ``core.records.validate_operator``)."""
    status: Literal[0, 1] = 0
    """0 enabled, 1 disabled (停用), as sent at registration; 1 also holds every upload."""
    max_clock_offset_s: float = Field(default=120.0, gt=0)
    """Local clock this far from the platform's (learnt from its replies): a status alert and a
    doctor FAIL; verifications captured meanwhile keep the measured offset beside their verifyTime."""

    @field_validator("operator")
    @classmethod
    def _operator_rule(cls, value: str) -> str:
        return validate_operator(value)


class AuthSettings(_Section):
    """[platform.auth]: how the Authorization header is obtained."""

    kind: Literal["static", "token", "oauth2"] = "static"
    """static: the ESB ticket as issued; token: an access-token endpoint (seed 003);
    oauth2: client_credentials at an auth center (seed 004)."""
    ticket: SecretStr | None = None
    """static: the ESB ticket (or ticket_file, or credential `ticket`)."""
    token_url: str | None = None
    """token/oauth2: the token endpoint's full URL."""
    app_key: str | None = None
    """token: the application key sent to the token endpoint."""
    app_secret: SecretStr | None = None
    """token: the application secret sent to the token endpoint (or app_secret_file)."""
    client_id: str | None = None
    """oauth2: client_id."""
    client_secret: SecretStr | None = None
    """oauth2: client_secret (or client_secret_file)."""
    scope: str | None = None
    """oauth2: optional scope."""
    refresh_margin_s: float = Field(default=300.0, ge=0)
    """Refresh a token this many seconds before it expires."""
    token_key_param: str = Field(default="appKey", min_length=1)
    """token: query parameter that carries app_key (seed 003 does not name it)."""
    token_secret_param: str = Field(default="appSecret", min_length=1)
    """token: query parameter that carries app_secret."""
    token_field: str = Field(default="access_token", min_length=1)
    """token/oauth2: response field holding the token; dotted for nesting (data.access_token);
    a plain name is also looked up under a `data` object."""
    token_expires_field: str = Field(default="expires_in", min_length=1)
    """token/oauth2: response field holding the lifetime in seconds (looked up like token_field)."""
    token_lifetime_s: float = Field(default=86400.0, gt=0)
    """token/oauth2: lifetime assumed when the response gives none (seed 003: one day)."""

    @model_validator(mode="after")
    def _kind_needs(self) -> AuthSettings:
        needs = {
            "static": ("ticket",),
            "token": ("token_url", "app_key", "app_secret"),
            "oauth2": ("token_url", "client_id", "client_secret"),
        }[self.kind]
        problems = []
        for name in needs:
            if getattr(self, name) is None:
                alternatives = f" (or {name}_file, or the systemd credential {name!r})" if name in _SECRET_NAMES else ""
                problems.append((name, f'required when kind = "{self.kind}"{alternatives}'))
        if problems:
            raise KeyProblems(problems)
        return self

    @field_validator("token_url")
    @classmethod
    def _token_url(cls, v: str | None) -> str | None:
        return None if v is None else _http_url(v)


class ConventionSettings(_Section):
    """[platform.conventions]: the encodings the spec leaves open (crypto-conventions.md)."""

    send_time_format: Literal["epoch_ms", "epoch_s", "yyyyMMddHHmmss", "yyyy-MM-dd HH:mm:ss"] = "epoch_ms"
    """Format of hmpt-portal-time; date strings are Asia/Shanghai time."""
    sign_key_encoding: Literal["utf8", "hex"] = "utf8"
    """How orgAppSecret becomes the HMAC key."""
    sign_output: Literal["hex", "hex_upper", "base64"] = "hex"
    """Encoding of hmpt-portal-sign."""
    sm4_key_mode: Literal["auto", "raw16", "hex32", "first16", "sm3_trunc16", "nhsa_derive"] = "auto"
    """How orgAppSecret becomes the 16-byte SM4 key."""
    padding: Literal["pkcs7", "none"] = "pkcs7"
    """SM4-ECB padding."""
    cipher_encoding: Literal["base64", "hex_lower", "hex_upper"] = "base64"
    """Encoding of the SM4 ciphertext in {"data": ...}."""
    response_encrypted: Literal["auto", "true", "false"] = "auto"
    """Whether a response's data is SM4-encrypted."""
    verify_response_sign: Literal["after-first", "auto", "required", "off"] = "after-first"
    """Response signatures: after-first: verified when present, and required once this platform
    has sent one valid signed reply (remembered in the outbox); auto: verified when present;
    required: always; off: never checked."""
    clock_skew_tolerance_s: float = Field(default=300.0, ge=0)
    """The platform's tolerance for our sendTime (the mock platform enforces it; the agent signs
    with the platform-corrected time)."""
    max_reply_skew_s: float = Field(default=300.0, gt=0)
    """A reply whose time (hmpt-portal-time, else returnTime) is further than this from our
    platform-corrected clock is not an acceptance (retryable)."""
    json_ensure_ascii: bool = False
    """Escape non-ASCII characters in the JSON body."""
    long_term_end_date: str = Field(default="长期", min_length=1, max_length=10)
    """cardEndDate sent for a long-term (长期) card, whose chip holds no end date."""


class PlatformSettings(_Section):
    """[platform]: the provincial platform (桂妇儿) and how to talk to it."""

    base_url: str
    """Base URL of the platform, e.g. https://gfe.example.gov.cn/api."""
    org_app_id: str = Field(min_length=1)
    """orgAppId, issued by the health commission."""
    org_app_secret: SecretStr
    """orgAppSecret (or org_app_secret_file, or credential `org_app_secret`)."""
    enabled: bool = True
    """The upstream switch: false keeps capturing and queueing but sends nothing."""
    encrypt: bool = False
    """SM4-encrypt request bodies as {"data": ciphertext}."""
    ca_bundle: Path | None = None
    """PEM bundle of CAs to trust for the platform's TLS certificate (default: the system's)."""
    client_cert: Path | None = None
    """PEM client certificate for mutual TLS, when the platform asks for one."""
    client_key: Path | None = None
    """Private key of client_cert, when not inside it."""
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    """TCP/TLS connect timeout."""
    timeout_s: float = Field(default=20.0, gt=0, le=600)
    """Whole-request timeout (read, write, pool)."""
    auth: AuthSettings
    """[platform.auth]."""
    conventions: ConventionSettings = ConventionSettings()
    """[platform.conventions]."""
    environment: Literal["production", "test"] = "production"
    """production: the real platform, which never receives a record from a fake driver (such records
    are held); test: a mock or test platform (the demo, `fvagent mock-platform`)."""
    allow_plain_http: bool = False
    """Allow an http:// base_url (no TLS), e.g. on the government extranet; `config check` warns."""

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        return _http_url(v).rstrip("/")

    @field_validator("ca_bundle", "client_cert", "client_key")
    @classmethod
    def _file_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"file {v} does not exist (give the full path of a PEM file)")
        return v

    @model_validator(mode="after")
    def _key_needs_cert(self) -> PlatformSettings:
        if self.client_key is not None and self.client_cert is None:
            raise KeyProblems([("client_key", "needs client_cert")])
        if self.base_url.startswith("http://") and not self.allow_plain_http:
            raise KeyProblems(
                [
                    (
                        "base_url",
                        "is plain http:// (no TLS): use https://, or set "
                        "allow_plain_http = true when the platform offers only HTTP",
                    )
                ]
            )
        return self


class StorageSettings(_Section):
    """[storage]: the state directory and how much it may hold."""

    dir: Path = Path("/var/lib/fvagent")
    """The state directory: outbox database, local data key."""
    key_file: Path | None = None
    """The outbox data key; default `<dir>/outbox.key`, made 0600 on first start
    (or the systemd credential `outbox_key`)."""
    keep_sent_days: float = Field(default=7, ge=0)
    """Photos of sent records are erased after this many days."""
    keep_sent_rows_days: float = Field(default=90, ge=0)
    """Sent rows (without photos) are deleted after this many days."""
    max_bytes: int = Field(default=2 * 1024**3, gt=0)
    """Size budget of the outbox; past it sent data is evicted first, unsent never."""
    min_free_bytes: int = Field(default=64 * 1024**2, ge=0)
    """Below this much free disk, status raises a storage alert."""
    unsent_alert_days: float = Field(default=30, gt=0)
    """Rejected and held records (never deleted by retention) raise a status and doctor alert once older."""

    @model_validator(mode="after")
    def _keep_order(self) -> StorageSettings:
        if self.keep_sent_rows_days < self.keep_sent_days:
            raise ValueError("keep_sent_rows_days must be >= keep_sent_days")
        return self


class UploaderSettings(_Section):
    """[uploader]: how the outbox drains to the platform."""

    backoff_initial_s: float = Field(default=2.0, gt=0)
    """First retry delay after a retryable failure (full jitter)."""
    backoff_max_s: float = Field(default=300.0, gt=0)
    """Largest retry delay."""
    max_rps: float = Field(default=10.0, gt=0)
    """Global cap on requests per second to the platform."""
    concurrency: int = Field(default=4, ge=1, le=32)
    """Requests in flight at once."""
    poll_interval_s: float = Field(default=1.0, gt=0)
    """How often an idle uploader looks for due records."""
    register_refresh_h: float = Field(default=24.0, gt=0)
    """Re-register the device this often (and whenever [device] changes)."""

    @model_validator(mode="after")
    def _order(self) -> UploaderSettings:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        return self


class DriverSection(BaseModel):
    """[card_reader] / [camera]: ``driver`` picks a registered driver; every other key is that driver's own."""

    model_config = ConfigDict(extra="allow", frozen=True)

    driver: str = "fake"
    """Name of the driver (see `fvagent doctor` for the installed ones)."""

    @property
    def options(self) -> dict[str, Any]:  # Any: pydantic's model_extra; the driver's Settings validates it
        """The driver's own settings: every key but ``driver``."""
        return dict(self.model_extra or {})


class FaceSettings(_Section):
    """[face]: how the face score is obtained."""

    mode: Literal["compute", "relay", "both"] = "compute"
    """compute: the engine scores; relay: record the terminal's score; both: record the terminal's,
    log where the engine disagrees."""
    engine: str = "dlib"
    """Face engine (entry point group fvagent.face_engines)."""
    threshold: float = Field(default=0.75, ge=0, le=1)
    """faceScore at or above which faceResult is 1 (passed); with the default mapping 0.75 means
    distance <= 0.551, chosen at target_far 0.001 (calibration: docs/face.md, `fvagent face calibrate`)."""
    score_midpoint: float = Field(default=0.595, gt=0)
    """Distance that maps to score 0.5 (logistic mapping); moving it moves the threshold's distance."""
    score_slope: float = Field(default=25.0, gt=0)
    """Steepness of the logistic mapping, per unit distance."""
    capture_timeout_s: float = Field(default=5.0, gt=0, le=60)
    """Longest time spent reading camera frames for one verification."""
    liveness: Literal["off", "head-turn"] = "off"
    """Optional head-turn liveness challenge."""
    min_face_px: int = Field(default=80, ge=20, le=2000)
    """Quality gate: the face box's shorter side, in frame pixels (smaller: "face too small")."""
    min_sharpness: float = Field(default=12.0, ge=0)
    """Quality gate: Laplacian variance of the face scaled to 128 px (lower: "face blurred")."""
    min_brightness: float = Field(default=40.0, ge=0, le=255)
    """Quality gate: mean grey level of the face (lower: "face too dark")."""
    max_brightness: float = Field(default=215.0, ge=0, le=255)
    """Quality gate: mean grey level of the face (higher: "face too bright")."""
    second_face_ratio: float = Field(default=0.6, gt=0, le=1)
    """A second face at least this fraction of the largest one's width: "more than one face"."""
    early_stop_score: float = Field(default=0.90, gt=0, le=1)
    """Stop reading frames once a frame scores at least this (a clear pass); >= threshold."""
    max_compared_frames: int = Field(default=4, ge=1, le=200)
    """Stop after comparing this many good frames (the best of them counts)."""
    liveness_min_turn: float = Field(default=0.15, gt=0, le=1)
    """head-turn: the nose's sideways shift, in eye distances, that counts as a turn."""
    camera_mirrored: bool = False
    """head-turn: the camera image is mirrored (the person's left is on the image's left)."""
    target_far: float = Field(default=0.001, gt=0, lt=1)
    """False-accept rate the calibration aims at (`fvagent face calibrate` picks the operating
    distance from it on impostor pairs); the shipped threshold was chosen at 0.001 (docs/face.md)."""
    retry_band: float = Field(default=0.2, ge=0, lt=1)
    """Grey zone, in score: a best score in [threshold - retry_band, threshold) reads frames for up
    to `retry_s` more (the person is asked to face the camera again) before failing; 0 turns it off."""
    retry_s: float = Field(default=3.0, ge=0, le=30)
    """Grey zone: the longest extra time spent reading frames (0 turns the grey zone off)."""

    @model_validator(mode="after")
    def _face_order(self) -> FaceSettings:
        if self.early_stop_score < self.threshold:
            raise ValueError("early_stop_score must be >= threshold")
        if self.max_brightness <= self.min_brightness:
            raise ValueError("max_brightness must be > min_brightness")
        return self


class LocalApiSettings(_Section):
    """[local_api]: the local HTTP API and operator page."""

    enabled: bool = True
    """Serve the local API and the operator page."""
    listen: str = "127.0.0.1:8787"
    """host:port to bind (anything but loopback requires `token`), or unix:PATH for a Unix socket
    (mode 0660, group `socket_group`) whose peers are checked against allowed_uids/allowed_gids."""
    token: SecretStr | None = None
    """Bearer token for the API (or token_file, or credential `token`); every call that creates or
    changes something needs it (or an allowed Unix-socket peer), even on loopback."""
    full_data_token: SecretStr | None = None
    """Bearer token whose holder may see unmasked data (or full_data_token_file); it also grants
    everything `token` grants."""
    max_body_bytes: int = Field(default=12 * 1024**2, ge=64 * 1024, le=64 * 1024**2)
    """Largest request body accepted (two 3 MB photos in base64 need about 8 MB)."""
    relay: bool = False
    """Accept relayed verifications (POST /v1/verifications); also needs [face] mode relay or both."""
    socket_group: str | None = None
    """listen = unix:PATH: the group that owns the socket (default: the service's own group)."""
    allowed_uids: tuple[int, ...] = ()
    """listen = unix:PATH: user ids whose processes may make changes over the socket."""
    allowed_gids: tuple[int, ...] = ()
    """listen = unix:PATH: group ids (primary group of the peer) whose processes may make changes."""
    allowed_origins: tuple[str, ...] = ()
    """Browser origins besides the page's own that may call the API, e.g. "http://127.0.0.1:8080"."""
    max_clock_skew_s: float = Field(default=600.0, gt=0, le=86400)
    """A relayed verifyTime further than this from the agent's clock is refused (422)."""
    max_relay_per_min: int = Field(default=30, ge=1, le=6000)
    """Relayed verifications accepted per minute; more are refused (429)."""
    max_unsent_relayed: int = Field(default=2000, ge=1)
    """Relayed verifications waiting for upload at most; more are refused (507)."""
    relay_reserve_bytes: int = Field(default=256 * 1024**2, ge=0)
    """Free disk space in the state directory kept for the device's own captures: below it,
    relayed verifications are refused (507)."""
    result_display_s: float = Field(default=60.0, ge=1.0, le=3600.0)
    """How long the operator page shows a verification as the current one before it returns to
    请刷身份证, so the previous mother's result is never taken for the next one's."""

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        if v.startswith("unix:"):
            if not v[5:].startswith("/"):
                raise ValueError("unix:PATH needs an absolute path, e.g. unix:/run/fvagent/api.sock")
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(
                "must be host:port, e.g. 127.0.0.1:8787 (port 0: any free port), or unix:/run/fvagent/api.sock"
            )
        return v

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for origin in v:
            parsed = urlparse(origin)
            if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path not in ("", "/"):
                raise ValueError(f"{origin!r} is not an origin: scheme://host[:port], e.g. http://127.0.0.1:8080")
        return tuple(o.rstrip("/").lower() for o in v)

    @property
    def unix_path(self) -> Path | None:
        """The socket's path for ``listen = "unix:PATH"``, else ``None``."""
        return Path(self.listen[5:]) if self.listen.startswith("unix:") else None

    @property
    def host(self) -> str:
        if self.unix_path is not None:
            return "localhost"
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        if self.unix_path is not None:
            return 0
        return int(self.listen.rpartition(":")[2])

    @model_validator(mode="after")
    def _token_off_loopback(self) -> LocalApiSettings:
        if self.host not in ("127.0.0.1", "localhost", "::1") and self.token is None:
            raise ValueError(f"listening on {self.host} (not loopback) requires token or token_file")
        if (
            self.token is not None
            and self.full_data_token is not None
            and self.token.get_secret_value() == self.full_data_token.get_secret_value()
        ):
            raise ValueError("full_data_token must differ from token (it unmasks personal data)")
        return self


class LoggingSettings(_Section):
    """[logging]."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Lowest level logged."""
    journald: Literal["auto", "on", "off"] = "auto"
    """auto: log to journald with structured fields when systemd-python is installed and
    the service runs under systemd; otherwise to stderr."""


class Settings(_Section):
    """The whole configuration file."""

    device: DeviceSettings
    platform: PlatformSettings
    storage: StorageSettings = StorageSettings()
    uploader: UploaderSettings = UploaderSettings()
    card_reader: DriverSection = DriverSection()
    camera: DriverSection = DriverSection()
    face: FaceSettings = FaceSettings()
    local_api: LocalApiSettings = LocalApiSettings()
    logging: LoggingSettings = LoggingSettings()

    source: Path | None = Field(default=None, exclude=True)
    """The file this was loaded from (not a key of the file)."""

    _secret_sources: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def secret_sources(self) -> dict[str, str]:
        """Where each secret that is set came from, by key path: ``inline``, ``file PATH`` or
        ``systemd credential 'NAME'``."""
        return dict(self._secret_sources)

    def masked(self) -> JsonObject:
        """The effective configuration as plain data, every secret shown as ``********``."""
        return {key: _masked(value) for key, value in self.model_dump(mode="python", exclude={"source"}).items()}


def _masked(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "********"
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    if isinstance(value, Path | dt.date):
        return str(value)
    return value


# --------------------------------------------------------------------------------------------------
# Loading

_SECRETS = {
    ("platform",): ("org_app_secret",),
    ("platform", "auth"): ("ticket", "app_secret", "client_secret"),
    ("local_api",): ("token", "full_data_token"),
}
"""Secret keys per section: each may be inline, ``<key>_file``, or the systemd credential ``<key>``."""
_SECRET_NAMES = frozenset(name for names in _SECRETS.values() for name in names)

_RELATIVE_PATHS = {("platform",): ("ca_bundle", "client_cert", "client_key")}
"""Path keys resolved against the config file's directory when relative."""


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The settings model that validates the table at ``loc`` (``()`` is the whole file)."""
    model: type[BaseModel] = Settings
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


_SHOULD = re.compile(r"^(Input|Value|String|List|Dictionary|Decimal|Float|Integer|Date|Datetime|Path|Url) should ")


def _problems_from(err: Mapping[str, Any]) -> list[tuple[str, str]]:
    """One pydantic error as ``(key.path, rule)`` pairs: the key at fault and a short rule."""
    loc = tuple(err["loc"])
    path = ".".join(str(p) for p in loc)
    kind, msg = err["type"], str(err["msg"])
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        known = [n for n in parent.model_fields if n != "source"] if parent is not None else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        return [(path, "unknown key" + (f" (did you mean {close[0]!r}?)" if close else ""))]
    if kind == "missing":
        return [(path, "required")]
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return [(path, f"must be a table ([{path}])")]
    error = (err.get("ctx") or {}).get("error")
    model = _model_at(loc)
    if isinstance(error, KeyProblems):
        prefix = f"{path}." if path else ""
        return [(prefix + key, rule) for key, rule in error.problems]
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if model is not None and kind == "value_error":
        # "keep_sent_rows_days must be >= keep_sent_days" from a section validator: blame that key.
        first, _, rest = msg.partition(" ")
        first = first.rstrip(":")
        if first in model.model_fields and rest:
            return [(f"{path}.{first}" if path else first, rest)]
    msg = _SHOULD.sub("must ", msg)
    return [(path or "(file)", msg[:1].lower() + msg[1:] if msg else kind)]


def _resolve_relative_paths(raw: dict[str, Any], base_dir: Path) -> None:
    for section_path, names in _RELATIVE_PATHS.items():
        section: Any = raw
        for part in section_path:
            section = section.get(part) if isinstance(section, dict) else None
        if isinstance(section, dict):
            for name in names:
                value = section.get(name)
                if isinstance(value, str) and value and not Path(value).is_absolute():
                    section[name] = str(base_dir / value)


def parse_config(raw: Mapping[str, object], *, source: Path | None = None, validate_drivers: bool = True) -> Settings:
    """Validate a parsed TOML document into ``Settings``; raise ``ConfigError`` listing every fault.

    Every fault is one ``(key.path, rule)`` pair in ``ConfigError.problems``. Relative paths of
    secret files and of the TLS files are taken relative to ``source``'s directory. With
    ``validate_drivers`` the ``[card_reader]`` and ``[camera]`` sections are also checked by their
    drivers (which must then be importable).
    """
    doc: dict[str, Any] = _deep_copy(raw)  # Any: TOML values, checked by Settings below
    problems: list[tuple[str, str]] = []
    sources: dict[str, str] = {}
    base_dir = source.parent if source is not None else None
    if "source" in doc:
        problems.append(("source", "unknown key"))
        del doc["source"]
    if base_dir is not None:
        _resolve_relative_paths(doc, base_dir)
    for path, names in _SECRETS.items():
        section: Any = doc
        for part in path:
            section = section.get(part) if isinstance(section, dict) else None
        if isinstance(section, dict):
            _resolve_secrets(section, names, ".".join(path), problems, base_dir=base_dir, sources=sources)
    # A secret whose file failed is reported once, at the file key, not again as "required".
    failed_secrets = {path.removesuffix("_file") for path, _ in problems}
    settings: Settings | None = None
    try:
        settings = Settings.model_validate({**doc, "source": source})
    except ValidationError as exc:
        for err in exc.errors():
            problems.extend(p for p in _problems_from(err) if p[0] not in failed_secrets)
    if settings is not None and validate_drivers:
        for kind, section_name in (("card_reader", "card_reader"), ("camera", "camera")):
            section_obj: DriverSection = getattr(settings, section_name)
            try:
                registry.validate_settings(kind, section_obj.driver, section_obj.options)
            except ConfigError as exc:
                problems.extend((f"{section_name}.{p}", r) for p, r in exc.problems or [("driver", exc.message)])
    if problems:
        where = f" in {source}" if source else ""
        raise ConfigError(
            f"configuration{where} has {len(problems)} error(s)",
            problems=problems,
            hint="fix each key named above; deploy/fvagent.example.toml documents every key",
        )
    assert settings is not None
    settings._secret_sources = sources
    return settings


def config_warnings(settings: Settings) -> list[str]:
    """Things that work but should be fixed, e.g. inline secrets in a file others can read."""
    warnings: list[str] = []
    inline = sorted(key for key, where in settings.secret_sources.items() if where == "inline")
    if inline and settings.source is not None:
        try:
            mode = stat.S_IMODE(settings.source.stat().st_mode)
        except OSError:
            mode = 0
        if mode & 0o004:
            warnings.append(
                f"{', '.join(inline)} inline in {settings.source}, which every user can read "
                f"(mode {mode:04o}): chmod 640 {settings.source}, or move the secret to a *_file or a "
                f"systemd credential"
            )
    return warnings


PLACEHOLDER_PREFIX = "change-me"
"""Values in deploy/fvagent.example.toml that must be replaced start with this."""
_EXAMPLE_HOSTS = ("example.gov.cn", "example.com", "example.org", "example.invalid")


def deployment_problems(settings: Settings) -> list[tuple[str, str]]:
    """What makes a valid file unfit to run against the real platform, as ``(key.path, rule)``:
    the example's placeholder values left in, and (with ``environment = "production"``) a fake
    driver, whose invented people would be held, never sent. ``fvagent config check`` fails on these."""
    problems: list[tuple[str, str]] = []
    values: dict[str, Any] = {
        **{
            f"device.{k}": getattr(settings.device, k)
            for k in ("machine_code", "device_no", "dept_id", "register_user")
        },
        "platform.org_app_id": settings.platform.org_app_id,
        "platform.org_app_secret": settings.platform.org_app_secret,
        **{
            f"platform.auth.{k}": getattr(settings.platform.auth, k)
            for k in ("ticket", "app_key", "app_secret", "client_id", "client_secret")
        },
        "local_api.token": settings.local_api.token,
        "local_api.full_data_token": settings.local_api.full_data_token,
    }
    for key, value in values.items():
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(text, str) and text.lower().startswith(PLACEHOLDER_PREFIX):
            problems.append(
                (
                    key,
                    f"still the example's placeholder ({PLACEHOLDER_PREFIX}...): put in the real value"
                    + (" (or use the *_file / systemd credential)" if isinstance(value, SecretStr) else ""),
                )
            )
    host = (urlparse(settings.platform.base_url).hostname or "").lower()
    if any(host == h or host.endswith("." + h) for h in _EXAMPLE_HOSTS):
        problems.append(("platform.base_url", f"still the example's host {host}: put in the platform's real URL"))
    if settings.platform.environment == "production":
        fixes = {"card_reader": '"sam-serial" (or "sam-usb")', "camera": '"opencv"'}
        for kind in ("card_reader", "camera"):
            name = getattr(settings, kind).driver
            if _is_simulated_driver(kind, name):
                problems.append(
                    (
                        f"{kind}.driver",
                        f'"{name}" is a simulated driver and [platform] environment is '
                        f'"production": set driver = {fixes[kind]}, or environment = '
                        '"test" for a test platform',
                    )
                )
    return problems


def plain_http_warning(settings: Settings) -> str | None:
    """The warning for an http:// base_url (allowed by ``allow_plain_http``), else ``None``."""
    if not settings.platform.base_url.startswith("http://"):
        return None
    return (
        f"platform.base_url {settings.platform.base_url} is plain HTTP (allow_plain_http = true): requests "
        "and replies cross the network unencrypted; use https:// when the platform offers it"
    )


def _is_simulated_driver(kind: str, name: str) -> bool:
    try:
        return bool(getattr(registry.load_class(kind, name), "simulated", False))
    except Exception:  # not installed: parse_config reports that; a name is all we have
        return name == "fake"


def load_config(path: str | os.PathLike[str], *, validate_drivers: bool = True) -> Settings:
    """Read and validate the TOML file at ``path``. Raises ``ConfigError``."""
    p = Path(path)
    try:
        text = p.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(
            f"config file {p} does not exist", hint="copy deploy/fvagent.example.toml there and fill it in"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from exc
    try:
        raw = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {p} is not UTF-8 text", problems=[("(file)", "must be UTF-8")]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML", problems=[("(file)", str(exc))]) from exc
    return parse_config(raw, source=p.resolve(), validate_drivers=validate_drivers)


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
