"""The client of the provincial platform: two endpoints, every call classified into an ``Outcome``.

``PlatformClient(platform_settings)`` sends signed (optionally SM4-encrypted) JSON with httpx, one
synchronous request per call, safe to share between the uploader's threads. It never raises for
network or platform trouble: every call returns an ``Outcome`` (see ``core.outcome``). It
raises only for programming or local errors: ``PlatformDisabled`` when the upstream switch is off,
``CryptoError`` at construction when encryption is on and the secret is not an SM4 key under the
configured rule.

A request has one deadline, ``[platform] timeout_s``, for all of it (connect, send, the reply's
headers and body); the reply body is read up to ``MAX_REPLY_BYTES``. Requests are signed with the
platform-corrected time (``agent.uplink.clock``).

A reply is an acceptance only when every check passes (docs/platform.md, "What counts as
acceptance"): HTTP 2xx; its ``requestId`` is ours; its time (``hmpt-portal-time`` when present,
else ``returnTime``) is within ``max_reply_skew_s`` of our corrected clock; when signed (or, under
``after-first``, once this platform has signed a reply), the signature verifies and is not our own
request's signature sent back; then ``code`` 200 and ``exceptionCode`` 00000.

| what came back | outcome |
|---|---|
| timeout (the whole-request deadline), connection refused, DNS, TLS, dropped, truncated, > 64 KiB | retryable |
| HTTP 5xx, 408, 429 (Retry-After honoured, also on 503) | retryable |
| exceptionCode ``A2302`` (时间戳过期), any HTTP status | clock (retried with the corrected time) |
| HTTP 401/403 (after one fresh token and resend for the token kinds) | blocked |
| HTTP 3xx, 404, 405, other 4xx without an envelope | blocked (the URL or the setup is wrong) |
| HTTP 400/409/413/422 without an envelope | rejected (this request body was refused) |
| a bad, missing (when expected) or echoed response signature; not our requestId; a stale time | retryable |
| body not JSON, nested too deeply, or JSON without ``code`` | retryable |
| a non-2xx reply whose body says success | retryable |
| ``code`` 200 and ``exceptionCode`` 00000 or absent | accepted |
| ``exceptionCode`` B2301 on registration (already registered) | accepted |
| ``exceptionCode`` A2301 | rejected |
| ``exceptionCode`` A2304 / A2305 (device not registered / disabled) | unregistered (register, retry) |
| ``exceptionCode`` A2303, ``code`` 401/403 | blocked |
| ``code`` 429 or >= 500 with any other exceptionCode | retryable |
| any other failure | rejected |
| token endpoint unreachable or 5xx / refusing the credentials | retryable / blocked |

Errors are told apart by code, never by words in the message (the spec's own title says 认证).
The spec names only 00000, A2301 and B2301; A2302..A2305 are fvagent's reading, which the mock
platform answers with (``PLATFORM_CODES``).

A response ``data`` that fails to decrypt does not override the envelope: ``code`` and
``exceptionCode`` are clear text and decide; both endpoints' ``data`` is null by the spec, and a
record the platform accepted must not be sent twice. The failure is logged and named in the message.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import json
import logging
import re
import ssl
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import httpx

from agent import __version__
from agent.config import PlatformSettings
from agent.uplink.auth import AuthProvider, make_provider
from agent.uplink.clock import PlatformClock
from agent.uplink.conventions import HEADER_SIGN, HEADER_TIME, Conventions
from agent.uplink.transport import DeadlineTransport, deadline
from core import protocols
from core.errors import AuthError, CryptoError, PlatformDisabled, PlatformError
from core.outcome import Outcome, OutcomeKind
from core.records import Payload

log = logging.getLogger(__name__)

PATH_REGISTER = "/machine/info"
PATH_VERIFICATION = "/verification/pregnant_woman/first"

OK_EXCEPTION_CODE = "00000"
PARAMETER_ERROR = "A2301"
ALREADY_REGISTERED = "B2301"
TIMESTAMP_EXPIRED = "A2302"
SIGNATURE_REFUSED = "A2303"
DEVICE_NOT_REGISTERED = "A2304"
DEVICE_DISABLED = "A2305"
PLATFORM_CODES = {
    OK_EXCEPTION_CODE: "all well",
    PARAMETER_ERROR: "parameter error (spec)",
    ALREADY_REGISTERED: "device already registered (spec)",
    TIMESTAMP_EXPIRED: "时间戳过期: the request's sendTime is outside the platform's tolerance",
    SIGNATURE_REFUSED: "签名验证失败 / unknown orgAppId / header missing: our credentials or conventions",
    DEVICE_NOT_REGISTERED: "设备未登记: the device is not registered",
    DEVICE_DISABLED: "设备已停用: the device is registered as disabled",
}
"""The exceptionCodes the client tells apart; A2302..A2305 are fvagent's reading (the mock answers them)."""

SEND_TIME_LEAD_S = 1.0
"""Requests are signed this far in the past, so a genuine reply's time (hence its signature) is never
our request's, even with a sendTime format of whole seconds."""
MAX_REPLY_BYTES = 64 * 1024
"""A reply body is read up to this much; a longer one is abandoned (retryable). The envelope is
a few hundred bytes."""
_PERSONAL_FIELDS = ("realName", "address", "birthday")
"""Payload values masked wherever a platform message quotes them."""


class _ReplyTooLarge(Exception):
    pass


def build_ssl_context(platform: PlatformSettings) -> ssl.SSLContext:
    """Certificate verification always on: the system's CAs, or ``ca_bundle``; the client certificate
    when configured. The signature does not cover the body, so TLS is what protects it."""
    ctx = ssl.create_default_context(cafile=str(platform.ca_bundle) if platform.ca_bundle else None)
    if platform.client_cert is not None:
        ctx.load_cert_chain(str(platform.client_cert), str(platform.client_key) if platform.client_key else None)
    return ctx


class PlatformClient:
    """Signed requests to the platform. Thread-safe; use as a context manager or call ``close()``.

    ``transport`` replaces the network (tests pass ``httpx.MockTransport``); ``clock`` gives the
    local epoch seconds (the platform-corrected time is ``platform_clock.now()``); ``auth``
    overrides the provider ``[platform.auth]`` selects.

    ``expect_signed`` (under ``verify_response_sign = "after-first"``): this platform has sent a
    valid signed reply before, so an unsigned one is not believed. The uploader sets it from the
    outbox and stores it when an outcome says ``signed``.
    """

    def __init__(
        self,
        platform: PlatformSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        auth: AuthProvider | None = None,
        platform_clock: PlatformClock | None = None,
    ) -> None:
        self.platform = platform
        self.conventions = Conventions.from_platform(platform)
        if platform.encrypt:
            self.conventions.sm4_key()  # a secret that is no SM4 key stops us here, not at the first send
        self._clock = clock
        self.platform_clock = platform_clock or PlatformClock(platform.conventions.max_reply_skew_s, clock=clock)
        self.expect_signed = False
        timeout = httpx.Timeout(platform.timeout_s, connect=platform.connect_timeout_s)
        if transport is None:
            transport = DeadlineTransport(build_ssl_context(platform))
        self._transport = transport
        self._http = httpx.Client(
            transport=transport,
            timeout=timeout,
            follow_redirects=False,
            headers={"User-Agent": f"fvagent/{__version__}"},
        )
        self.auth = auth if auth is not None else make_provider(platform.auth, client=self._http, clock=clock)

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

    def abort(self) -> None:
        """Make requests in flight fail now (the daemon is stopping); safe from any thread."""
        abort = getattr(self._transport, "abort", None)
        if abort is not None:
            abort()

    # ---------------------------------------------------------------------------------------------

    def register_device(self, payload: Payload) -> Outcome:
        """POST /machine/info. B2301 (already registered) counts as accepted."""
        return self._call(PATH_REGISTER, payload, registration=True)

    def upload_verification(self, payload: Payload) -> Outcome:
        """POST /verification/pregnant_woman/first with one verification record's payload."""
        return self._call(PATH_VERIFICATION, payload, registration=False)

    # ---------------------------------------------------------------------------------------------

    def _call(self, path: str, payload: Payload, *, registration: bool) -> Outcome:
        if not self.platform.enabled:
            raise PlatformDisabled(
                "the platform is switched off ([platform] enabled = false): nothing is sent",
                hint="set [platform] enabled = true to send; records stay queued meanwhile",
            )
        if not isinstance(payload, dict):
            raise TypeError(f"payload must be a dict, not {type(payload).__name__}")
        outcome, credential = self._attempt(path, payload, registration=registration)
        if credential is not None and self.auth.refreshable and self.auth.invalidate(credential):
            # The token was refused: fetch a new one and resend once (fresh id, time and signature).
            log.info("request %s: token rejected, resending once with a new token", outcome.request_id)
            outcome, _ = self._attempt(path, payload, registration=registration)
        return outcome

    def _attempt(self, path: str, payload: Payload, *, registration: bool) -> tuple[Outcome, str | None]:
        """One request. Returns the outcome and, when the platform rejected the token, the credential sent."""
        request_id = uuid.uuid4().hex
        personal = tuple(str(payload[f]) for f in _PERSONAL_FIELDS if payload.get(f))
        try:
            credential = self.auth.authorization()
        except AuthError as exc:
            kind = OutcomeKind.RETRYABLE if getattr(exc, "retryable", False) else OutcomeKind.BLOCKED
            return self._done(
                path,
                Outcome(
                    kind,
                    request_id,
                    f"cannot get the Authorization: {exc.message}",
                    http_status=getattr(exc, "http_status", None),
                ),
            ), None
        send_time = self.conventions.send_time(self.platform_clock.now() - SEND_TIME_LEAD_S)
        try:
            body = self.conventions.request_body(payload, encrypt=self.platform.encrypt)
            headers = self.conventions.request_headers(request_id, send_time, credential)
        except CryptoError as exc:
            return self._done(path, Outcome(OutcomeKind.BLOCKED, request_id, f"cannot sign or encrypt: {exc}")), None
        headers["Content-Type"] = "application/json; charset=utf-8"
        url = self.platform.base_url + path
        log.debug("request %s: POST %s (%d bytes)", request_id, path, len(body))

        def failed(kind: OutcomeKind, message: str) -> tuple[Outcome, None]:
            return self._done(path, Outcome(kind, request_id, message, personal=personal)), None

        sent_at = self.platform_clock.local()
        try:
            with deadline(self.platform.timeout_s) as until:
                request = self._http.build_request("POST", url, content=body, headers=headers)
                resp = self._http.send(request, stream=True)
                try:
                    reply = _read_body(resp, until)
                finally:
                    resp.close()
        except _ReplyTooLarge:
            return failed(
                OutcomeKind.RETRYABLE,
                f"reply body larger than {MAX_REPLY_BYTES // 1024} KiB: abandoned (not the platform's envelope)",
            )
        except httpx.TimeoutException as exc:
            return failed(
                OutcomeKind.RETRYABLE,
                f"timed out: no whole reply within [platform] timeout_s = "
                f"{self.platform.timeout_s:g} s ({type(exc).__name__})",
            )
        except httpx.TransportError as exc:
            return failed(OutcomeKind.RETRYABLE, f"network error: {type(exc).__name__}: {str(exc) or 'no detail'}")
        except httpx.RequestError as exc:  # e.g. DecodingError: a body that claims gzip but is not
            return failed(OutcomeKind.RETRYABLE, f"unreadable reply: {type(exc).__name__}: {exc}")
        except UnicodeEncodeError as exc:
            return failed(
                OutcomeKind.BLOCKED,
                f"a header value is not ASCII ({exc.reason}): check [platform] "
                "org_app_id and the [platform.auth] credential",
            )
        reply_check = _ReplyCheck(
            request_id, self.conventions.sign(send_time), send_time, sent_at, self.platform_clock.local()
        )
        outcome, token_rejected = self._classify(resp, reply, reply_check, registration=registration, personal=personal)
        return self._done(path, outcome), (credential if token_rejected else None)

    def _done(self, path: str, outcome: Outcome) -> Outcome:
        level = logging.INFO if outcome.kind is OutcomeKind.ACCEPTED else logging.WARNING
        if outcome.failed_check == "request_id":
            level = logging.DEBUG  # the uploader logs this once per record, not at every retry
        facts = [f"HTTP {outcome.http_status}" if outcome.http_status is not None else "no HTTP reply"]
        facts += [f"code {outcome.code}"] if outcome.code is not None else []
        facts += [f"exceptionCode {outcome.exception_code}"] if outcome.exception_code is not None else []
        log.log(
            level,
            "request %s: POST %s -> %s (%s): %s",
            outcome.request_id,
            path,
            outcome.kind.value,
            ", ".join(facts),
            outcome.message,
        )
        return outcome

    def _classify(
        self,
        resp: httpx.Response,
        reply: bytes,
        ours: _ReplyCheck,
        *,
        registration: bool,
        personal: tuple[str, ...] = (),
    ) -> tuple[Outcome, bool]:
        """The outcome of one HTTP response (its body ``reply``), and whether it says our token was rejected."""
        status = resp.status_code
        signed = False

        def out(
            kind: OutcomeKind,
            message: str,
            *,
            retry_after_s: float | None = None,
            failed_check: str | None = None,
            **details: Unpack[_ReplyDetails],
        ) -> Outcome:
            return Outcome(
                kind,
                ours.request_id,
                message,
                http_status=status,
                signed=signed,
                personal=personal,
                retry_after_s=retry_after_s,
                failed_check=failed_check,
                **details,
            )

        retry_after = _retry_after(resp.headers.get("Retry-After"), self._clock())
        envelope, unreadable = _envelope(reply)
        # 1. who sent it: the signature (when present or expected), then the requestId
        sign_problem, signed = self._check_response_sign(resp, ours)
        identified = sign_problem is None and envelope is not None and envelope.get("requestId") == ours.request_id
        reply_time = self._reply_time(resp, envelope)
        exception_code = (
            None if envelope is None or envelope.get("exceptionCode") is None else str(envelope.get("exceptionCode"))
        )
        code = _int_or_none(envelope.get("code")) if envelope is not None else None
        msg = str(envelope.get("msg") or envelope.get("message") or "") if envelope is not None else ""
        platform_rid = envelope.get("requestId") if envelope is not None else None
        details = _ReplyDetails(
            code=code,
            exception_code=exception_code,
            platform_request_id=str(platform_rid) if platform_rid is not None else None,
            return_time_ms=_int_or_none(envelope.get("returnTime")) if envelope is not None else None,
        )
        # 2. the clock: a timestamp-expired reply teaches the platform's time, whatever its HTTP status
        expired = exception_code == TIMESTAMP_EXPIRED
        fresh = reply_time is not None and self.platform_clock.is_fresh(reply_time, ours.received_at)
        if identified and reply_time is not None:
            self.platform_clock.observe(reply_time, ours.sent_at, ours.received_at, expired=expired)
        if expired and identified:
            return out(
                OutcomeKind.CLOCK,
                f"{TIMESTAMP_EXPIRED} timestamp expired (时间戳过期): {msg or '(no message)'}; "
                f"retried with the platform's time (offset {self._offset_text()})",
                **details,
            ), False
        # 3. the HTTP status
        if status in (401, 403):
            return out(
                OutcomeKind.BLOCKED,
                f"HTTP {status}: the platform refused our credentials"
                f"{_short_text(reply)}; check [platform] org_app_id/org_app_secret and [platform.auth]",
                **details,
            ), status == 401 or code == 401
        if status == 429 or status == 408 or status >= 500:
            return out(
                OutcomeKind.RETRYABLE, f"HTTP {status}{_short_text(reply)}", retry_after_s=retry_after, **details
            ), False
        if not 200 <= status < 300 and envelope is None:
            if status in (400, 409, 413, 422):
                return out(
                    OutcomeKind.REJECTED, f"HTTP {status}: the platform refused this request body{_short_text(reply)}"
                ), False
            return out(OutcomeKind.BLOCKED, f"HTTP {status}{_short_text(reply)}: check [platform] base_url"), False
        # 4. the acceptance checks, in order
        if sign_problem:
            return out(OutcomeKind.RETRYABLE, sign_problem, failed_check="signature", **details), False
        if envelope is None:
            what = unreadable or (
                "empty" if not reply else "not the platform's JSON envelope (truncated, or an error page?)"
            )
            return out(OutcomeKind.RETRYABLE, f"unreadable reply: {what}"), False
        if code is None:
            return out(
                OutcomeKind.RETRYABLE,
                f"unreadable reply: envelope without a numeric code: {msg or '(no message)'}",
                **details,
            ), False
        if platform_rid != ours.request_id:
            return out(
                OutcomeKind.RETRYABLE,
                f"the reply's requestId {str(platform_rid)[:40]!r} is not ours "
                f"({ours.request_id}): not an answer to this request",
                failed_check="request_id",
                **details,
            ), False
        if reply_time is None:
            return out(
                OutcomeKind.RETRYABLE,
                "the reply carries no time (no hmpt-portal-time, no returnTime): its freshness cannot be checked",
                failed_check="reply_time",
                **details,
            ), False
        if not fresh:
            when = dt.datetime.fromtimestamp(reply_time, dt.UTC).isoformat(timespec="seconds")
            return out(
                OutcomeKind.RETRYABLE,
                f"stale reply: its time {when} is more than "
                f"{self.platform_clock.tolerance_s:g} s from our platform-corrected clock "
                "([platform.conventions] max_reply_skew_s)",
                failed_check="reply_time",
                **details,
            ), False
        note = self._decrypt_note(ours.request_id, envelope.get("data"))
        text = (msg or "(no message)") + note
        # 5. code, then exceptionCode
        success = (code == 200 and exception_code in (None, "", OK_EXCEPTION_CODE)) or (
            registration and exception_code == ALREADY_REGISTERED
        )
        if success and not 200 <= status < 300:
            return out(
                OutcomeKind.RETRYABLE,
                f"HTTP {status} whose body says success: a non-2xx reply is never "
                "an acceptance (check [platform] base_url if this persists)",
                failed_check="status",
                **details,
            ), False
        if code == 200 and exception_code in (None, "", OK_EXCEPTION_CODE):
            return out(OutcomeKind.ACCEPTED, text, **details), False
        if registration and exception_code == ALREADY_REGISTERED:
            return out(OutcomeKind.ACCEPTED, f"already registered ({ALREADY_REGISTERED}): {text}", **details), False
        if exception_code == PARAMETER_ERROR:
            return out(OutcomeKind.REJECTED, f"{PARAMETER_ERROR} parameter error: {text}", **details), False
        if exception_code in (DEVICE_NOT_REGISTERED, DEVICE_DISABLED) and not registration:
            return out(
                OutcomeKind.UNREGISTERED,
                f"{exception_code} {PLATFORM_CODES[exception_code]}: {text}; registering again, then retrying",
                **details,
            ), False
        if exception_code == SIGNATURE_REFUSED or code in (401, 403):
            return out(
                OutcomeKind.BLOCKED,
                f"credentials refused (code {code}, exceptionCode {exception_code}): "
                f"{text}; check [platform] org_app_id/org_app_secret and [platform.auth]",
                **details,
            ), code == 401
        if code == 429 or code >= 500:
            return out(
                OutcomeKind.RETRYABLE, f"platform error (code {code}): {text}", retry_after_s=retry_after, **details
            ), False
        return out(
            OutcomeKind.REJECTED, f"refused (code {code}, exceptionCode {exception_code}): {text}", **details
        ), False

    def _reply_time(self, resp: httpx.Response, envelope: dict[str, Any] | None) -> float | None:
        """The reply's time in epoch seconds: its hmpt-portal-time when present (and in our
        send_time_format), else its returnTime."""
        header = resp.headers.get(HEADER_TIME)
        if header is not None:
            with contextlib.suppress(PlatformError):
                return self.conventions.parse_send_time(header)
        ms = _int_or_none(envelope.get("returnTime")) if envelope is not None else None
        return ms / 1000.0 if ms is not None else None

    def _offset_text(self) -> str:
        offset = self.platform_clock.offset_s
        return "unknown" if offset is None else f"{offset:+.0f} s"

    def _check_response_sign(self, resp: httpx.Response, ours: _ReplyCheck) -> tuple[str | None, bool]:
        """``(problem, signed)``: why the reply's signature is not believed (None when it is, or when
        none is needed), and whether it carried a valid signature of its own.

        The signature covers only orgAppId + time, so our request's own headers sent back verify
        too: a reply signed with our sendTime proves nothing and counts as unsigned. (Requests are
        signed ``SEND_TIME_LEAD_S`` in the past, so a genuine reply never has our time.)"""
        mode = self.conventions.settings.verify_response_sign
        if mode == "off":
            return None, False
        sign, send_time = resp.headers.get(HEADER_SIGN), resp.headers.get(HEADER_TIME)
        echoed = (
            sign is not None
            and send_time is not None
            and (send_time.strip() == ours.send_time or sign.strip().lower() == ours.sign.lower())
        )
        if (sign is None and send_time is None) or echoed:
            what = "our own request's signature sent back" if echoed else "no signature"
            if mode == "required":
                return f'the reply carries {what} (verify_response_sign = "required")', False
            if mode == "after-first" and self.expect_signed:
                return (
                    f"the reply carries {what}, from a platform that signs its replies "
                    '(verify_response_sign = "after-first"): not believed'
                ), False
            return None, False
        if sign is None or send_time is None or not self.conventions.verify_sign(send_time, sign):
            return "bad response signature: the reply may not come from the platform", False
        return None, True

    def _decrypt_note(self, request_id: str, data: object) -> str:
        try:
            self.conventions.response_data(data)
        except CryptoError as exc:
            log.warning("request %s: the response data could not be decrypted: %s", request_id, exc)
            return f" [response data not decryptable: {exc.message}; check [platform.conventions]]"
        return ""


if TYPE_CHECKING:  # the type checker proves here that this is a client the uploader can take
    _fits: type[protocols.PlatformClient] = PlatformClient


class _ReplyDetails(TypedDict, total=False):
    """What a reply's envelope adds to its ``Outcome``."""

    code: int | None
    exception_code: str | None
    platform_request_id: str | None
    return_time_ms: int | None


class _ReplyCheck:
    """What a reply is checked against: our request's id, signature and time, and when it went and came."""

    __slots__ = ("received_at", "request_id", "send_time", "sent_at", "sign")

    def __init__(self, request_id: str, sign: str, send_time: str, sent_at: float, received_at: float) -> None:
        self.request_id, self.sign, self.send_time = request_id, sign, send_time
        self.sent_at, self.received_at = sent_at, received_at


def _read_body(resp: httpx.Response, until: float) -> bytes:
    """The reply body, decoded, up to ``MAX_REPLY_BYTES`` (else ``_ReplyTooLarge``), by the deadline
    ``until`` (monotonic; else ``httpx.ReadTimeout``)."""
    length = resp.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > MAX_REPLY_BYTES:
        raise _ReplyTooLarge
    parts: list[bytes] = []
    size = 0
    for chunk in resp.iter_bytes():
        size += len(chunk)
        if size > MAX_REPLY_BYTES:
            raise _ReplyTooLarge
        parts.append(chunk)
        if time.monotonic() > until:
            raise httpx.ReadTimeout("the whole-request deadline passed")
    return b"".join(parts)


def _envelope(body: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """``(envelope, why_not)``: the JSON object in the body, or None (and, for a body JSON cannot
    safely read, why) when it is empty, not JSON, nested too deeply or not an object."""
    if not body:
        return None, None
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, None
    except RecursionError:  # a hostile reply: refused, never a crash
        return None, "JSON nested too deeply"
    return (obj if isinstance(obj, dict) and "code" in obj else None), None


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _short_text(body: bytes) -> str:
    """A short, single-line hint of a non-envelope body (an HTML error page, a gateway message)."""
    text = body[:4096].decode("utf-8", "replace").strip()
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
