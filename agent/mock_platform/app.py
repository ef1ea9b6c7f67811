"""The mock platform's HTTP application: the two endpoints, both token endpoints, faults, admin.

How it answers (the spec fixes only 00000 / A2301 / B2301; the rest is our reading of a gateway in
front of a Java back end, documented in docs/mock-platform.md):

| request | HTTP | code | exceptionCode |
|---|---|---|---|
| accepted | 200 | 200 | 00000 |
| a field breaks the spec, body not JSON | 200 | 400 | A2301 (msg names each field) |
| device not registered / registered as disabled | 200 | 400 | A2304 / A2305 |
| device already registered | 200 | 409 | B2301 |
| sendTime off by more than the tolerance (时间戳过期) | 403 | 403 | A2302 |
| a hmpt-portal-* header missing, unknown org app id, sendTime unreadable, bad signature | 403 | 403 | A2303 |
| body not decryptable or not encrypted when it must be | 403 | 403 | (none) |
| Authorization missing, wrong ticket, unknown or expired token | 401 | 401 | (none) |
| unknown path | 404 (plain text, no envelope) | | |

Business paths are matched by suffix, so any base-URL prefix works (``/api/machine/info``).
Every envelope is signed (``hmpt-portal-sign``/``hmpt-portal-time``) with the same ``Conventions``
class the agent uses, unless ``sign_responses`` is off.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import random
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.mock_platform.config import (
    PATH_ACCESS_TOKEN,
    PATH_OAUTH2_TOKEN,
    PATH_REGISTER,
    PATH_VERIFICATION,
    Faults,
    MockPlatformConfig,
)
from agent.mock_platform.store import MockStore
from agent.uplink.client import (
    DEVICE_DISABLED,
    DEVICE_NOT_REGISTERED,
    SIGNATURE_REFUSED,
    TIMESTAMP_EXPIRED,
)
from agent.uplink.conventions import (
    HEADER_AUTHORIZATION,
    HEADER_ORG_APP_ID,
    HEADER_REQUEST_ID,
    HEADER_SIGN,
    HEADER_TIME,
    Conventions,
)
from core.errors import CryptoError, PlatformError, RecordError
from core.privacy import mask_card_no
from core.records import JsonObject, parse_registration, parse_verification

log = logging.getLogger(__name__)

OK = "00000"
PARAMETER_ERROR = "A2301"
ALREADY_REGISTERED = "B2301"

_REQUIRED_HEADERS = (HEADER_SIGN, HEADER_TIME, HEADER_REQUEST_ID, HEADER_ORG_APP_ID)
_HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>"
    b"<h1>502 Bad Gateway</h1><p>The upstream server is temporarily unavailable.</p>"
    b"<hr><center>nginx</center></body></html>"
)


def endpoint_of(path: str) -> str | None:
    """``register``, ``verification``, ``token``, ``oauth2`` or None, by the path's suffix."""
    path = path.rstrip("/")
    for suffix, name in (
        (PATH_REGISTER, "register"),
        (PATH_VERIFICATION, "verification"),
        (PATH_ACCESS_TOKEN, "token"),
        (PATH_OAUTH2_TOKEN, "oauth2"),
    ):
        if path.endswith(suffix):
            return name
    return None


class _Denied(Exception):
    """A request refused before its body is looked at (headers, signature, Authorization)."""

    def __init__(self, http_status: int, msg: str, exception_code: str | None = None) -> None:
        super().__init__(msg)
        self.http_status = http_status
        self.msg = msg
        self.exception_code = exception_code


class MockState:
    """Everything the running app shares: config, conventions, store, faults, issued tokens."""

    def __init__(self, config: MockPlatformConfig, store: MockStore) -> None:
        self.config = config
        self.store = store
        self.conventions = Conventions(config.conventions, config.org_app_id, config.org_app_secret)
        if config.encrypt:
            self.conventions.sm4_key()  # a secret that is no SM4 key fails at start, not per request
        # Signs with a secret the agent does not know: a well-formed but wrong response signature.
        self._wrong = Conventions(config.conventions, config.org_app_id, config.org_app_secret + "-wrong")
        self.faults = config.faults
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}
        """token -> (kind, expires at epoch s)."""

    # -- faults and tokens (called from any thread) --------------------------------------------

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults  # one reference swap: readers see the old or the new set, never a mix

    def roll(self, rate: float) -> bool:
        with self._lock:
            return self._rng.random() < rate

    def issue_token(self, kind: str) -> tuple[str, float]:
        token = secrets.token_urlsafe(24)
        lifetime = self.config.token_lifetime_s
        with self._lock:
            self._tokens[token] = (kind, time.time() + lifetime)
        return token, lifetime

    def expire_tokens(self) -> int:
        """Make every token issued so far expired; returns how many there were."""
        with self._lock:
            for token, (kind, _) in list(self._tokens.items()):
                self._tokens[token] = (kind, 0.0)
            return len(self._tokens)

    def token_valid(self, token: str, kind: str) -> bool:
        if self.faults.reject_tokens:
            return False
        with self._lock:
            entry = self._tokens.get(token)
        return entry is not None and entry[0] == kind and time.time() < entry[1]

    def reset(self) -> None:
        self.store.clear()
        self.set_faults(Faults())
        with self._lock:
            self._tokens.clear()

    # -- answers -------------------------------------------------------------------------------

    def envelope(
        self,
        http_status: int,
        code: int,
        msg: str,
        request_id: str | None,
        *,
        path: str,
        exception_code: str | None = None,
    ) -> Response:
        """The spec's envelope, signed, and the request logged."""
        body = {
            "code": code,
            "msg": msg,
            "exceptionCode": exception_code,
            "requestId": request_id,
            "returnTime": int(self.now() * 1000),
            "data": None,
        }
        self.store.log_request(
            at=time.time(),
            path=path,
            request_id=request_id,
            http_status=http_status,
            code=code,
            exception_code=exception_code,
            msg=msg,
        )
        return JSONResponse(body, status_code=http_status, headers=self.sign_headers())

    def sign_headers(self) -> dict[str, str]:
        if not self.config.sign_responses:
            return {}
        conv = self._wrong if self.faults.bad_response_sign else self.conventions
        return conv.response_headers(conv.send_time(self.now()))

    def now(self) -> float:
        """The platform's clock: the real one plus ``clock_offset_s`` (a platform whose clock differs)."""
        return time.time() + self.config.clock_offset_s

    # -- checks --------------------------------------------------------------------------------

    def check_headers(self, headers: Mapping[str, str]) -> None:
        """The five headers, in the order a gateway checks them; raises ``_Denied``."""
        missing = [h for h in _REQUIRED_HEADERS if not headers.get(h)]
        if missing:
            raise _Denied(403, f"缺少请求头 missing header(s): {', '.join(missing)}", SIGNATURE_REFUSED)
        if headers[HEADER_ORG_APP_ID] != self.config.org_app_id:
            raise _Denied(403, f"{HEADER_ORG_APP_ID} 未知 unknown orgAppId", SIGNATURE_REFUSED)
        send_time = headers[HEADER_TIME]
        try:
            sent_at = self.conventions.parse_send_time(send_time)
        except PlatformError:
            raise _Denied(
                403,
                f"{HEADER_TIME} {send_time!r} is not a sendTime in the format "
                f"{self.conventions.settings.send_time_format!r}",
                SIGNATURE_REFUSED,
            ) from None
        skew = sent_at - self.now()
        tolerance = self.conventions.settings.clock_skew_tolerance_s
        if abs(skew) > tolerance + 1.0:  # +1: date formats have one-second resolution
            raise _Denied(
                403,
                f"{HEADER_TIME} 时间戳过期 is {abs(skew):.0f} s "
                f"{'ahead of' if skew > 0 else 'behind'} the platform's clock (tolerance {tolerance:.0f} s)",
                TIMESTAMP_EXPIRED,
            )
        if not self.conventions.verify_sign(send_time, headers[HEADER_SIGN]):
            raise _Denied(
                403,
                f"签名验证失败 {HEADER_SIGN} does not verify (check orgAppSecret and the sign conventions)",
                SIGNATURE_REFUSED,
            )
        if len(headers[HEADER_REQUEST_ID]) > 64:
            raise _Denied(403, f"{HEADER_REQUEST_ID} longer than 64 characters")
        self.check_authorization(headers.get(HEADER_AUTHORIZATION) or "")

    def check_authorization(self, value: str) -> None:
        kind = self.config.auth_kind
        if not value:
            raise _Denied(401, "缺少 Authorization: missing Authorization")
        if kind == "static":
            if not secrets.compare_digest(value.encode(), self.config.ticket.encode()):
                raise _Denied(401, "ticket 无效 the Authorization ticket is not the one issued")
            return
        if kind == "oauth2":
            scheme, _, token = value.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise _Denied(401, "Authorization must be 'bearer <access_token>'")
        else:
            token = value
        if not self.token_valid(token.strip(), kind):
            raise _Denied(401, "令牌无效或已过期 the access token is unknown or expired")

    def open_body(self, body: bytes) -> tuple[object, str, bool]:
        """The payload, its JSON text as received (decrypted) and whether it came encrypted;
        ``_Denied`` for a body the key cannot open, ``ValueError`` for a body that is not JSON."""
        if not self.config.encrypt:
            text = body.decode("utf-8")
            return json.loads(text), text, False
        try:
            payload, text, encrypted = self.conventions.open_request_body(body)
        except CryptoError as exc:
            raise _Denied(
                403,
                f"解密失败 the body's data is not SM4 under orgAppSecret ({exc.message}); "
                "check the secret and [platform.conventions]",
            ) from None
        except (UnicodeDecodeError, ValueError):
            # Decrypted, but not JSON inside: the key is right only by accident, or the data is garbage.
            obj = json.loads(body.decode("utf-8"))  # ValueError when the outer body is not JSON either
            if isinstance(obj, dict) and set(obj) == {"data"}:
                raise _Denied(403, "解密失败 the decrypted data is not JSON: wrong key or conventions") from None
            raise
        if not encrypted:
            raise _Denied(403, '请求未加密 the body must be SM4-encrypted as {"data": ciphertext}')
        return payload, text, True

    # -- endpoints -----------------------------------------------------------------------------

    async def business(self, request: Request, endpoint: str) -> Response:
        path = request.url.path
        rid = request.headers.get(HEADER_REQUEST_ID)
        try:
            body = await request.body()
        except ClientDisconnect:  # the client gave up (its timeout, e.g. under the latency fault)
            self.store.log_request(
                at=time.time(),
                path=path,
                request_id=rid,
                msg="client went away before sending the whole body",
            )
            return Response(status_code=400)
        try:
            self.check_headers(request.headers)
            payload, text, encrypted = self.open_body(body)
        except _Denied as exc:
            log.info("request %s: %s refused (HTTP %d): %s", rid, path, exc.http_status, exc.msg)
            return self.envelope(
                exc.http_status, exc.http_status, exc.msg, rid, path=path, exception_code=exc.exception_code
            )
        except (UnicodeDecodeError, ValueError):
            payload = None  # not JSON: refused below like any body that is not an object
        if not isinstance(payload, dict):
            return self.envelope(
                200,
                400,
                "参数错误 parameter error: body: must be a JSON object",
                rid,
                path=path,
                exception_code=PARAMETER_ERROR,
            )
        if endpoint == "register":
            return self._register(payload, rid, path)
        return self._verification(payload, text, rid, path, encrypted=encrypted)

    def _parameter_error(self, problems: list[tuple[str, str]], rid: str | None, path: str) -> Response:
        listed = "; ".join(f"{field}: {rule}" for field, rule in problems)
        return self.envelope(
            200, 400, f"参数错误 parameter error: {listed}", rid, path=path, exception_code=PARAMETER_ERROR
        )

    def _register(self, payload: dict[str, Any], rid: str | None, path: str) -> Response:
        try:
            parse_registration(payload)
        except RecordError as exc:
            return self._parameter_error(exc.problems, rid, path)
        if not self.store.register(payload, rid or ""):
            return self.envelope(
                200,
                409,
                f"设备已登记 device already registered: {payload['machineCode']}",
                rid,
                path=path,
                exception_code=ALREADY_REGISTERED,
            )
        log.info("request %s: device %s registered", rid, payload["machineCode"])
        return self.envelope(200, 200, "成功", rid, path=path, exception_code=OK)

    def _verification(
        self, payload: dict[str, Any], text: str, rid: str | None, path: str, *, encrypted: bool
    ) -> Response:
        try:
            parse_verification(payload, long_term_end=self.conventions.settings.long_term_end_date)
        except RecordError as exc:
            return self._parameter_error(exc.problems, rid, path)
        if self.config.require_registration:
            device = self.store.registration(str(payload["machineCode"]))
            if device is None:
                return self.envelope(
                    200,
                    400,
                    "设备未登记 machineCode: device not registered (POST /machine/info first)",
                    rid,
                    path=path,
                    exception_code=DEVICE_NOT_REGISTERED,
                )
            if device["deviceNo"] != str(payload["deviceNo"]):
                return self._parameter_error(
                    [("deviceNo", "does not match the device registered under this machineCode")], rid, path
                )
            if device["status"] != 0:
                return self.envelope(
                    200,
                    400,
                    "设备已停用 machineCode: the device is registered as disabled (status 1)",
                    rid,
                    path=path,
                    exception_code=DEVICE_DISABLED,
                )
        self.store.add_verification(
            payload, rid or "", encrypted=encrypted, store_images=self.config.store_images, text=text
        )
        log.info(
            "request %s: verification of %s at %s stored",
            rid,
            mask_card_no(str(payload["cardNo"])),
            payload["verifyTime"],
        )
        return self.envelope(200, 200, "成功", rid, path=path, exception_code=OK)

    async def access_token(self, request: Request) -> Response:
        """Seed 003: GET /auth/accesstoken/create?appKey=..&appSecret=.."""
        path = request.url.path
        if request.method != "GET":
            return self._token_reply(path, 405, {"code": 405, "msg": "use GET", "data": None})
        key = request.query_params.get(self.config.token_key_param, "")
        secret = request.query_params.get(self.config.token_secret_param, "")
        if not (
            secrets.compare_digest(key.encode(), self.config.app_key.encode())
            and secrets.compare_digest(secret.encode(), self.config.app_secret.encode())
        ):
            return self._token_reply(path, 401, {"code": 401, "msg": "appKey 或 appSecret 错误", "data": None})
        token, lifetime = self.issue_token("token")
        return self._token_reply(
            path, 200, {"code": 200, "msg": "成功", "data": {"access_token": token, "expires_in": int(lifetime)}}
        )

    async def oauth2_token(self, request: Request) -> Response:
        """Seed 004: POST /connect/token, form grant_type=client_credentials, client_id, client_secret."""
        path = request.url.path
        if request.method != "POST":
            return self._token_reply(path, 405, {"error": "invalid_request", "error_description": "use POST"})
        form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        field = {k: v[0] for k, v in form.items() if v}
        if field.get("grant_type") != "client_credentials":
            return self._token_reply(path, 400, {"error": "unsupported_grant_type"})
        cid, csecret = field.get("client_id", ""), field.get("client_secret", "")
        if not (
            secrets.compare_digest(cid.encode(), self.config.client_id.encode())
            and secrets.compare_digest(csecret.encode(), self.config.client_secret.encode())
        ):
            return self._token_reply(path, 400, {"error": "invalid_client"})
        token, lifetime = self.issue_token("oauth2")
        reply: dict[str, Any] = {"access_token": token, "expires_in": int(lifetime), "token_type": "Bearer"}
        if field.get("scope"):
            reply["scope"] = field["scope"]
        return self._token_reply(path, 200, reply)

    def _token_reply(self, path: str, status: int, body: dict[str, Any]) -> Response:
        msg = str(body.get("msg") or body.get("error") or "token issued")
        self.store.log_request(
            at=time.time(),
            path=path,
            request_id=None,
            http_status=status,
            code=body.get("code") if isinstance(body.get("code"), int) else None,
            msg=msg,
        )
        return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


# --------------------------------------------------------------------------------------------------
# Faults, in front of the application


class FaultGate:
    """ASGI middleware that applies the active ``Faults`` before a request reaches the endpoints."""

    def __init__(self, app: ASGIApp, state: MockState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_mock"):
            await self.app(scope, receive, send)
            return
        faults = self.state.faults
        business = endpoint_of(scope["path"]) in ("register", "verification")
        if business and faults.latency_s:
            await asyncio.sleep(faults.latency_s)
        reply = self._fault_reply(faults, business)
        if reply is not None:
            await _read_body(receive)
            response = reply(_request_id(scope), scope["path"])
            await response(scope, receive, send)
        elif business and faults.drop_connection:  # the body is read, no answer goes back
            await _read_body(receive)
            self.state.store.log_request(
                at=time.time(),
                path=scope["path"],
                request_id=_request_id(scope),
                msg="fault: connection dropped",
            )
            await _abort(send)
        elif business and faults.truncated_reply:
            await self.app(scope, receive, _truncating(send))
        else:
            await self.app(scope, receive, send)

    def _fault_reply(self, faults: Faults, business: bool) -> Callable[[str | None, str], Response] | None:
        state = self.state
        if faults.down:
            return lambda rid, path: state.envelope(503, 503, "fault: platform down (服务不可用)", rid, path=path)
        if not business:
            return None
        if faults.drop_connection:  # handled by the caller; it wins over the faults below
            return None
        if faults.html_error:

            def html(rid: str | None, path: str) -> Response:
                state.store.log_request(
                    at=time.time(),
                    path=path,
                    request_id=rid,
                    http_status=200,
                    msg="fault: HTML error page",
                )
                return Response(_HTML_PAGE, status_code=200, media_type="text/html")

            return html
        if faults.status_5xx is not None:
            status = faults.status_5xx
            return lambda rid, path: state.envelope(status, status, f"fault: HTTP {status}", rid, path=path)
        if faults.throttle_retry_after_s is not None:
            after = faults.throttle_retry_after_s

            def throttled(rid: str | None, path: str) -> Response:
                resp = state.envelope(429, 429, "fault: too many requests (请求过于频繁)", rid, path=path)
                resp.headers["Retry-After"] = str(int(after)) if float(after).is_integer() else f"{after:g}"
                return resp

            return throttled
        if faults.error_rate and state.roll(faults.error_rate):
            status = faults.error_status
            return lambda rid, path: state.envelope(
                status, status, f"fault: random error (HTTP {status})", rid, path=path
            )
        return None


def _request_id(scope: Scope) -> str | None:
    wanted = HEADER_REQUEST_ID.encode("latin-1")
    for name, value in scope.get("headers", []):
        if name.lower() == wanted:
            return str(value.decode("latin-1"))
    return None


def _truncating(send: Send) -> Send:
    """A ``send`` that passes the response start and half of the body, then aborts the connection
    and ignores whatever the application sends after that."""
    state = {"cut": False}

    async def cut_send(message: Message) -> None:
        if state["cut"]:
            return
        if message["type"] == "http.response.body":
            body = message.get("body", b"")
            await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
            state["cut"] = True
            await _abort(send)
            return
        await send(message)

    return cut_send


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _abort(send: Send) -> None:
    """Close the TCP connection without an answer. uvicorn hands each request's ``send`` as a bound
    method of its request cycle, which holds the transport; with another server, fall back to a
    response cut short (the client sees the same: a connection closed mid-reply)."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is not None:
        transport.abort()
        for _ in range(3):  # let connection_lost run, so the server knows not to answer any more
            await asyncio.sleep(0)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
    await send({"type": "http.response.body", "body": b'{"code":', "more_body": False})


# --------------------------------------------------------------------------------------------------
# The application


def build_app(state: MockState) -> ASGIApp:
    """The ASGI application: admin endpoints under ``/_mock``, everything else by path suffix."""
    app = FastAPI(title="fvagent mock platform", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/_mock/faults")
    async def get_faults() -> JsonObject:
        return state.faults.model_dump()

    @app.post("/_mock/faults")
    async def post_faults(request: Request) -> Response:
        try:
            changes = json.loads(await request.body() or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object of fault settings")
            state.set_faults(Faults.model_validate({**state.faults.model_dump(), **changes}))
        except ValidationError as exc:
            errors = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
            return JSONResponse(
                {"error": "bad fault settings", "problems": errors, "known": list(Faults.model_fields)}, status_code=422
            )
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        log.warning("mock platform faults now: %s", _active(state.faults))
        return JSONResponse(state.faults.model_dump())

    @app.post("/_mock/tokens/expire")
    async def expire_tokens() -> dict[str, int]:
        return {"expired": state.expire_tokens()}

    @app.post("/_mock/reset")
    async def reset() -> dict[str, bool]:
        state.reset()
        return {"reset": True}

    @app.get("/_mock/records")
    async def records(kind: str = "verification", images: bool = False) -> Response:
        if kind == "registration":
            return JSONResponse(state.store.registrations())
        if kind != "verification":
            return JSONResponse({"error": "kind must be verification or registration"}, status_code=422)
        return JSONResponse(state.store.verifications(include_images=images))

    @app.get("/_mock/requests")
    async def requests(path: str | None = None) -> list[JsonObject]:
        # plain dicts: pydantic (the response model) takes no typing.TypedDict before Python 3.12
        return [dict(row) for row in state.store.requests(path)]

    @app.get("/_mock/stats")
    async def stats() -> JsonObject:
        return {
            **state.store.stats(),
            "faults": _active(state.faults),
            "now": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def platform(request: Request, path: str) -> Response:
        endpoint = endpoint_of(request.url.path)
        if endpoint in ("register", "verification"):
            if request.method != "POST":
                return PlainTextResponse("405 Method Not Allowed", status_code=405)
            return await state.business(request, endpoint)
        if endpoint == "token":
            return await state.access_token(request)
        if endpoint == "oauth2":
            return await state.oauth2_token(request)
        return PlainTextResponse("404 Not Found", status_code=404)

    return FaultGate(app, state)


def _active(faults: Faults) -> dict[str, Any]:
    """Only the faults that differ from none."""
    default = Faults()
    return {k: v for k, v in faults.model_dump().items() if getattr(default, k) != v}
