"""The client of the provincial platform: two endpoints, every call classified into an ``Outcome``.

``PlatformClient(platform_settings)`` sends signed (optionally SM4-encrypted) JSON with httpx, one
synchronous request per call, safe to share between the uploader's threads. It never raises for
network or platform trouble: every call returns an ``Outcome`` of one of four kinds (see
``agent.uplink.outcome``). It raises only for programming or local errors: ``PlatformDisabled`` when
the upstream switch is off, ``CryptoError`` at construction when encryption is on and the secret is
not an SM4 key under the configured rule.

Checks run in the spec's order: the transport, the HTTP status, the response signature (when present,
per ``verify_response_sign``), the envelope's ``code``, then ``exceptionCode``:

| what came back | outcome |
|---|---|
| timeout, connection refused, DNS, TLS handshake, connection dropped, truncated body | retryable |
| HTTP 5xx, 408, 429 (Retry-After honoured, also on 503) | retryable |
| HTTP 401/403 (after one fresh token and resend for the token kinds) | blocked |
| HTTP 3xx, 404, 405, other 4xx without an envelope | blocked (the URL or the setup is wrong) |
| HTTP 400/409/413/422 without an envelope | rejected (this request body was refused) |
| bad or (with ``required``) missing response signature | retryable |
| body not JSON, or JSON without ``code`` | retryable |
| ``code`` 200 and ``exceptionCode`` 00000 or absent | accepted |
| ``exceptionCode`` B2301 on registration (already registered) | accepted |
| ``exceptionCode`` A2301 | rejected |
| ``code`` 401/403, or a message about the signature, token, ticket or app id | blocked |
| ``code`` 429 or >= 500 with any other exceptionCode | retryable |
| any other failure | rejected |
| token endpoint unreachable or 5xx / refusing the credentials | retryable / blocked |

A response ``data`` that fails to decrypt does not override the envelope: ``code`` and
``exceptionCode`` are clear text and decide; both endpoints' ``data`` is null by the spec, and a
record the platform accepted must not be sent twice. The failure is logged and named in the message.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import logging
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from agent import __version__
from agent.config import PlatformSettings
from agent.errors import AuthError, CryptoError, PlatformDisabled
from agent.privacy import mask_card_no
from agent.uplink.auth import AuthProvider, make_provider
from agent.uplink.conventions import HEADER_SIGN, HEADER_TIME, Conventions
from agent.uplink.outcome import Outcome, OutcomeKind

log = logging.getLogger(__name__)

PATH_REGISTER = "/machine/info"
PATH_VERIFICATION = "/verification/pregnant_woman/first"

OK_EXCEPTION_CODE = "00000"
PARAMETER_ERROR = "A2301"
ALREADY_REGISTERED = "B2301"

# A failure message about our credentials rather than the record (the spec gives no code for these).
_CREDENTIAL_WORDS = re.compile(r"签名|验签|\bsign|令牌|token|授权|认证|鉴权|ticket|票据|appid|app_id|orgAppId|密钥|\bsecret",
                               re.IGNORECASE)
_TOKEN_WORDS = re.compile(r"令牌|token|授权码", re.IGNORECASE)
# ID-card-like digit runs in platform messages are masked before they reach logs or outcomes.
_ID_LIKE = re.compile(r"\d{14,17}[\dXx]")


def _mask(text: str) -> str:
    return _ID_LIKE.sub(lambda m: mask_card_no(m.group(0)), text)


def build_ssl_context(platform: PlatformSettings) -> ssl.SSLContext:
    """Certificate verification always on: the system's CAs, or ``ca_bundle``; the client certificate
    when configured. The signature does not cover the body, so TLS is what protects it."""
    ctx = ssl.create_default_context(cafile=str(platform.ca_bundle) if platform.ca_bundle else None)
    if platform.client_cert is not None:
        ctx.load_cert_chain(str(platform.client_cert), str(platform.client_key) if platform.client_key else None)
    return ctx


class PlatformClient:
    """Signed requests to the platform. Thread-safe; use as a context manager or call ``close()``.

    ``transport`` replaces the network (tests pass ``httpx.MockTransport``); ``clock`` gives epoch
    seconds for sendTime and token expiry; ``auth`` overrides the provider ``[platform.auth]`` selects.
    """

    def __init__(self, platform: PlatformSettings, *, transport: httpx.BaseTransport | None = None,
                 clock: Callable[[], float] = time.time, auth: AuthProvider | None = None) -> None:
        self.platform = platform
        self.conventions = Conventions.from_platform(platform)
        if platform.encrypt:
            self.conventions.sm4_key()  # a secret that is no SM4 key stops us here, not at the first send
        self._clock = clock
        timeout = httpx.Timeout(platform.timeout_s, connect=platform.connect_timeout_s)
        verify: ssl.SSLContext | bool = build_ssl_context(platform) if transport is None else True
        self._http = httpx.Client(transport=transport, verify=verify, timeout=timeout, follow_redirects=False,
                                  headers={"User-Agent": f"fvagent/{__version__}"})
        self.auth = auth if auth is not None else make_provider(platform.auth, client=self._http, clock=clock)
        self._lock = threading.Lock()
        self.last_skew_s: float | None = None
        """Our clock minus the platform's returnTime at the last reply that carried one."""

    def __enter__(self) -> PlatformClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PlatformClient(base_url={self.platform.base_url!r}, auth={self.auth.kind!r})"

    def close(self) -> None:
        """Close the connection pool; idempotent."""
        self.auth.close()
        self._http.close()

    # ---------------------------------------------------------------------------------------------

    def register_device(self, payload: dict[str, Any]) -> Outcome:
        """POST /machine/info. B2301 (already registered) counts as accepted."""
        return self._call(PATH_REGISTER, payload, registration=True)

    def upload_verification(self, payload: dict[str, Any]) -> Outcome:
        """POST /verification/pregnant_woman/first with one verification record's payload."""
        return self._call(PATH_VERIFICATION, payload, registration=False)

    # ---------------------------------------------------------------------------------------------

    def _call(self, path: str, payload: dict[str, Any], *, registration: bool) -> Outcome:
        if not self.platform.enabled:
            raise PlatformDisabled("the platform is switched off ([platform] enabled = false): nothing is sent",
                                   hint="set [platform] enabled = true to send; records stay queued meanwhile")
        if not isinstance(payload, dict):
            raise TypeError(f"payload must be a dict, not {type(payload).__name__}")
        outcome, credential = self._attempt(path, payload, registration=registration)
        if credential is not None and self.auth.refreshable and self.auth.invalidate(credential):
            # The token was refused: fetch a new one and resend once (fresh id, time and signature).
            log.info("request %s: token rejected, resending once with a new token", outcome.request_id)
            outcome, _ = self._attempt(path, payload, registration=registration)
        return outcome

    def _attempt(self, path: str, payload: dict[str, Any], *, registration: bool) -> tuple[Outcome, str | None]:
        """One request. Returns the outcome and, when the platform rejected the token, the credential sent."""
        request_id = uuid.uuid4().hex
        try:
            credential = self.auth.authorization()
        except AuthError as exc:
            kind = OutcomeKind.RETRYABLE if getattr(exc, "retryable", False) else OutcomeKind.BLOCKED
            return self._done(path, Outcome(kind, request_id, f"cannot get the Authorization: {exc.message}",
                                            http_status=getattr(exc, "http_status", None))), None
        send_time = self.conventions.send_time(self._clock())
        try:
            body = self.conventions.request_body(payload, encrypt=self.platform.encrypt)
            headers = self.conventions.request_headers(request_id, send_time, credential)
        except CryptoError as exc:
            return self._done(path, Outcome(OutcomeKind.BLOCKED, request_id, f"cannot sign or encrypt: {exc}")), None
        headers["Content-Type"] = "application/json; charset=utf-8"
        url = self.platform.base_url + path
        log.debug("request %s: POST %s (%d bytes)", request_id, path, len(body))
        try:
            resp = self._http.post(url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            return self._done(path, Outcome(OutcomeKind.RETRYABLE, request_id,
                                            f"timed out ({type(exc).__name__})")), None
        except httpx.TransportError as exc:
            return self._done(path, Outcome(OutcomeKind.RETRYABLE, request_id,
                                            f"network error: {type(exc).__name__}: {_mask(str(exc)) or 'no detail'}")), None
        except httpx.RequestError as exc:  # e.g. DecodingError: a body that claims gzip but is not
            return self._done(path, Outcome(OutcomeKind.RETRYABLE, request_id,
                                            f"unreadable reply: {type(exc).__name__}: {_mask(str(exc))}")), None
        except UnicodeEncodeError as exc:
            return self._done(path, Outcome(OutcomeKind.BLOCKED, request_id,
                                            f"a header value is not ASCII ({exc.reason}): check [platform] org_app_id "
                                            "and the [platform.auth] credential")), None
        outcome, token_rejected = self._classify(resp, request_id, registration=registration)
        return self._done(path, outcome), (credential if token_rejected else None)

    def _done(self, path: str, outcome: Outcome) -> Outcome:
        level = logging.INFO if outcome.kind is OutcomeKind.ACCEPTED else logging.WARNING
        facts = [f"HTTP {outcome.http_status}" if outcome.http_status is not None else "no HTTP reply"]
        facts += [f"code {outcome.code}"] if outcome.code is not None else []
        facts += [f"exceptionCode {outcome.exception_code}"] if outcome.exception_code is not None else []
        log.log(level, "request %s: POST %s -> %s (%s): %s", outcome.request_id, path, outcome.kind.value,
                ", ".join(facts), outcome.message)
        return outcome

    def _classify(self, resp: httpx.Response, request_id: str, *, registration: bool) -> tuple[Outcome, bool]:
        """The outcome of one HTTP response, and whether it says our token was rejected."""
        status = resp.status_code

        def out(kind: OutcomeKind, message: str, **kw: Any) -> Outcome:
            return Outcome(kind, request_id, _mask(message), http_status=status, **kw)

        retry_after = _retry_after(resp.headers.get("Retry-After"), self._clock())
        # 1. the HTTP status
        if status in (401, 403):
            return out(OutcomeKind.BLOCKED, f"HTTP {status}: the platform refused our credentials"
                       f"{_short_text(resp)}; check [platform] org_app_id/org_app_secret and [platform.auth]"), status == 401
        if status == 429 or status == 408 or status >= 500:
            return out(OutcomeKind.RETRYABLE, f"HTTP {status}{_short_text(resp)}", retry_after_s=retry_after), False
        envelope = _envelope(resp)
        if not 200 <= status < 300 and envelope is None:
            if status in (400, 409, 413, 422):
                return out(OutcomeKind.REJECTED, f"HTTP {status}: the platform refused this request body"
                           f"{_short_text(resp)}"), False
            return out(OutcomeKind.BLOCKED, f"HTTP {status}{_short_text(resp)}: check [platform] base_url"), False
        # 2. the response signature
        problem = self._check_response_sign(resp)
        if problem:
            return out(OutcomeKind.RETRYABLE, problem), False
        # 3. the envelope
        if envelope is None:
            what = "empty" if not resp.content else "not the platform's JSON envelope (truncated, or an error page?)"
            return out(OutcomeKind.RETRYABLE, f"unreadable reply: {what}"), False
        code = _int_or_none(envelope.get("code"))
        exception_code = envelope.get("exceptionCode")
        exception_code = str(exception_code) if exception_code is not None else None
        msg = str(envelope.get("msg") or envelope.get("message") or "")
        platform_rid = envelope.get("requestId")
        platform_rid = str(platform_rid) if platform_rid is not None else None
        return_time = _int_or_none(envelope.get("returnTime"))
        details = dict(code=code, exception_code=exception_code, platform_request_id=platform_rid,
                       return_time_ms=return_time)
        if platform_rid is not None and platform_rid != request_id:
            log.warning("request %s: the platform echoed requestId %s", request_id, platform_rid)
        self._note_skew(request_id, return_time)
        note = self._decrypt_note(request_id, envelope.get("data"))
        text = (msg or "(no message)") + note
        if code is None:
            return out(OutcomeKind.RETRYABLE, f"unreadable reply: envelope without a numeric code: {text}",
                       **details), False
        # 4. code, then exceptionCode
        if code == 200 and exception_code in (None, "", OK_EXCEPTION_CODE):
            return out(OutcomeKind.ACCEPTED, text, **details), False
        if registration and exception_code == ALREADY_REGISTERED:
            return out(OutcomeKind.ACCEPTED, f"already registered ({ALREADY_REGISTERED}): {text}", **details), False
        if exception_code == PARAMETER_ERROR:
            return out(OutcomeKind.REJECTED, f"{PARAMETER_ERROR} parameter error: {text}", **details), False
        if code in (401, 403) or _CREDENTIAL_WORDS.search(msg):
            token_error = code == 401 or bool(_TOKEN_WORDS.search(msg))
            return out(OutcomeKind.BLOCKED, f"credentials refused (code {code}): {text}", **details), token_error
        if code == 429 or code >= 500:
            return out(OutcomeKind.RETRYABLE, f"platform error (code {code}): {text}", retry_after_s=retry_after,
                       **details), False
        return out(OutcomeKind.REJECTED, f"refused (code {code}, exceptionCode {exception_code}): {text}",
                   **details), False

    def _check_response_sign(self, resp: httpx.Response) -> str | None:
        mode = self.conventions.settings.verify_response_sign
        if mode == "off":
            return None
        sign, send_time = resp.headers.get(HEADER_SIGN), resp.headers.get(HEADER_TIME)
        if sign is None and send_time is None:
            return "the response carries no signature (verify_response_sign = \"required\")" if mode == "required" \
                else None
        if sign is None or send_time is None or not self.conventions.verify_sign(send_time, sign):
            return "bad response signature: the reply may not come from the platform"
        return None

    def _decrypt_note(self, request_id: str, data: Any) -> str:
        try:
            self.conventions.response_data(data)
        except CryptoError as exc:
            log.warning("request %s: the response data could not be decrypted: %s", request_id, exc)
            return f" [response data not decryptable: {exc.message}; check [platform.conventions]]"
        return ""

    def _note_skew(self, request_id: str, return_time_ms: int | None) -> None:
        if return_time_ms is None:
            return
        skew = self._clock() - return_time_ms / 1000.0
        with self._lock:
            self.last_skew_s = skew
        if abs(skew) > self.conventions.settings.clock_skew_tolerance_s:
            log.warning("request %s: our clock is %.0f s %s the platform's; fix NTP", request_id, abs(skew),
                        "ahead of" if skew > 0 else "behind")


def _envelope(resp: httpx.Response) -> dict[str, Any] | None:
    """The JSON object in the body, or None when it is empty, not JSON or not an object."""
    if not resp.content:
        return None
    try:
        obj = json.loads(resp.content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) and "code" in obj else None


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _short_text(resp: httpx.Response) -> str:
    """A short, single-line hint of a non-envelope body (an HTML error page, a gateway message)."""
    text = resp.text.strip() if resp.content else ""
    if not text:
        return ""
    text = re.sub(r"<[^>]*>", " ", text)
    text = " ".join(text.split())[:120]
    return f" ({text})" if text else ""


def _retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - now)
