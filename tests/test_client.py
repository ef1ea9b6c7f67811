"""PlatformClient: the wire format, and every outcome class from every kind of reply.

Unit tests use httpx.MockTransport; the transport-level failures (refused connection, truncated
body, TLS) run against real sockets on 127.0.0.1. The end-to-end tests against the mock platform
server live with it (agent/mock_platform).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import http.server
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.config import ConventionSettings, PlatformSettings
from agent.uplink.client import PATH_REGISTER, PATH_VERIFICATION, PlatformClient
from agent.uplink.conventions import Conventions
from core.errors import CryptoError, PlatformDisabled
from core.outcome import Outcome, OutcomeKind

APP_ID = "HMPT450000000001"
SECRET = "Gx7#kP2!mQ9zR4tW"
NOW = 1_718_091_555.0
ACCEPTED, REJECTED, BLOCKED, RETRYABLE = (
    OutcomeKind.ACCEPTED,
    OutcomeKind.REJECTED,
    OutcomeKind.BLOCKED,
    OutcomeKind.RETRYABLE,
)


def gb11643(body17: str) -> str:
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    return body17 + "10X98765432"[sum(int(c) * w for c, w in zip(body17, weights, strict=True)) % 11]


CARD_NO = gb11643("45010219900101002")  # synthetic
REGISTRATION = {
    "deptId": "D01",
    "deptName": "妇产科",
    "machineManufacturer": "德生实名易",
    "machineMode": "TSR-R3",
    "purchaseTime": "2024-01-02",
    "machineCode": "TS0001",
    "deviceNo": "0001",
    "status": 0,
    "registerUser": "管理员",
    "registerTime": "2024-06-11T15:39:15",
}
VERIFICATION = {"realName": "韦小红", "cardType": 0, "cardNo": CARD_NO, "faceScore": 0.86}


def platform(**kw: Any) -> PlatformSettings:
    conventions = kw.pop("conventions", {})
    auth = kw.pop("auth", {"kind": "static", "ticket": "ESB-TICKET-1"})
    base = dict(
        base_url="http://127.0.0.1:9/api",
        org_app_id=APP_ID,
        org_app_secret=SECRET,
        auth=auth,
        conventions=conventions,
        allow_plain_http=True,
    )
    return PlatformSettings(**{**base, **kw})


def envelope(
    code: int = 200, exception_code: str = "00000", msg: str = "成功", request_id: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "code": code,
        "msg": msg,
        "exceptionCode": exception_code,
        "requestId": request_id,
        "returnTime": int(NOW * 1000),
        "data": None,
        **extra,
    }


class FakePlatform:
    """A MockTransport handler that checks what a real platform checks and answers as scripted.

    ``reply(request, n)`` returns the response; the default is success echoing the request id.
    """

    def __init__(
        self,
        reply: Callable[[httpx.Request, int], httpx.Response] | None = None,
        conventions: ConventionSettings | None = None,
    ) -> None:
        self.conv = Conventions(conventions or ConventionSettings(), APP_ID, SECRET)
        self.requests: list[httpx.Request] = []
        self.reply = reply or (lambda req, n: httpx.Response(200, json=envelope(request_id=rid(req))))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return _echo_request_id(self.reply(request, len(self.requests)), request)

    def client(self, settings: PlatformSettings | None = None, **kw: Any) -> PlatformClient:
        return PlatformClient(settings or platform(), transport=httpx.MockTransport(self), clock=lambda: NOW, **kw)


def _echo_request_id(response: httpx.Response, request: httpx.Request) -> httpx.Response:
    """A scripted envelope whose requestId is None answers the request it is given, as the platform does."""
    if not isinstance(response.stream, httpx.ByteStream):
        return response
    try:
        body = json.loads(response.read())
    except ValueError:
        return response
    if not isinstance(body, dict) or "requestId" not in body or body["requestId"] is not None:
        return response
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    return httpx.Response(response.status_code, headers=headers, json={**body, "requestId": rid(request)})


def rid(request: httpx.Request) -> str:
    return request.headers["hmpt-portal-request-id"]


def answer(response: httpx.Response | Callable[[httpx.Request], httpx.Response]) -> FakePlatform:
    return FakePlatform(lambda req, n: response(req) if callable(response) else response)


def outcome_of(
    response: httpx.Response | Callable[[httpx.Request], httpx.Response],
    *,
    registration: bool = False,
    settings: PlatformSettings | None = None,
) -> Outcome:
    with answer(response).client(settings) as c:
        return c.register_device(REGISTRATION) if registration else c.upload_verification(VERIFICATION)


# ---- the request on the wire -----------------------------------------------------------------------


def test_request_carries_the_five_headers_signed_and_compact_utf8_json() -> None:
    fake = FakePlatform()
    with fake.client() as c:
        out = c.register_device(REGISTRATION)
    assert out.kind is ACCEPTED
    (req,) = fake.requests
    assert req.method == "POST"
    assert req.url == "http://127.0.0.1:9/api/machine/info"
    h = req.headers
    assert h["hmpt-portal-time"] == "1718091554000"  # SEND_TIME_LEAD_S before the clock
    assert fake.conv.verify_sign(h["hmpt-portal-time"], h["hmpt-portal-sign"])
    assert len(h["hmpt-portal-request-id"]) == 32 and int(h["hmpt-portal-request-id"], 16) >= 0
    assert h["hmpt-portal-org-app-id"] == APP_ID
    assert h["authorization"] == "ESB-TICKET-1"
    assert h["content-type"].startswith("application/json")
    assert req.content == json.dumps(REGISTRATION, ensure_ascii=False, separators=(",", ":")).encode()
    assert out.request_id == rid(req) == out.platform_request_id
    assert out.return_time_ms == int(NOW * 1000)
    assert out.message == "成功"


def test_verification_goes_to_its_endpoint() -> None:
    fake = FakePlatform()
    with fake.client() as c:
        assert c.upload_verification(VERIFICATION).accepted
    assert fake.requests[0].url.path == "/api" + PATH_VERIFICATION
    assert PATH_REGISTER == "/machine/info"


def test_every_call_has_a_fresh_request_id_time_and_signature() -> None:
    now = [NOW]
    fake = FakePlatform(
        lambda req, n: httpx.Response(200, json=envelope(request_id=rid(req), returnTime=int(now[0] * 1000)))
    )
    with PlatformClient(platform(), transport=httpx.MockTransport(fake), clock=lambda: now[0]) as c:
        for t in (NOW, NOW + 1.5, NOW + 3):
            now[0] = t
            c.upload_verification(VERIFICATION)
    ids = {rid(r) for r in fake.requests}
    times = [r.headers["hmpt-portal-time"] for r in fake.requests]
    signs = {r.headers["hmpt-portal-sign"] for r in fake.requests}
    assert len(ids) == 3 and len(signs) == 3
    assert times == ["1718091554000", "1718091555500", "1718091557000"]


def test_encrypted_body_is_data_holding_sm4_of_the_json() -> None:
    fake = FakePlatform()
    with fake.client(platform(encrypt=True)) as c:
        assert c.upload_verification(VERIFICATION).accepted
    body = json.loads(fake.requests[0].content)
    assert list(body) == ["data"]
    payload, text, encrypted = fake.conv.open_request_body(fake.requests[0].content)
    assert payload == VERIFICATION and encrypted and json.loads(text) == VERIFICATION


def test_conventions_settings_shape_the_request() -> None:
    cs = {
        "send_time_format": "yyyy-MM-dd HH:mm:ss",
        "sign_output": "base64",
        "cipher_encoding": "hex_upper",
        "json_ensure_ascii": True,
    }
    fake = FakePlatform(conventions=ConventionSettings(**cs))
    with fake.client(platform(encrypt=True, conventions=cs)) as c:
        assert c.register_device(REGISTRATION).accepted
    req = fake.requests[0]
    assert req.headers["hmpt-portal-time"] == "2024-06-11 15:39:14"
    assert fake.conv.verify_sign("2024-06-11 15:39:14", req.headers["hmpt-portal-sign"])
    data = json.loads(req.content)["data"]
    assert data == data.upper() and bytes.fromhex(data)
    assert fake.conv.decrypt_data(data) == json.dumps(REGISTRATION, separators=(",", ":")).encode()


def test_encrypt_with_a_secret_that_is_no_sm4_key_fails_at_construction() -> None:
    with pytest.raises(CryptoError, match="sm4_key_mode"):
        PlatformClient(
            platform(encrypt=True, org_app_secret="not-sixteen-bytes-long"),
            transport=httpx.MockTransport(FakePlatform()),
        )
    # without encryption the same secret is fine (it only signs)
    PlatformClient(
        platform(org_app_secret="not-sixteen-bytes-long"), transport=httpx.MockTransport(FakePlatform())
    ).close()


def test_switched_off_platform_sends_nothing() -> None:
    fake = FakePlatform()
    with fake.client(platform(enabled=False)) as c:
        with pytest.raises(PlatformDisabled, match="enabled = false"):
            c.upload_verification(VERIFICATION)
        with pytest.raises(PlatformDisabled):
            c.register_device(REGISTRATION)
    assert fake.requests == []


# ---- accepted / rejected ---------------------------------------------------------------------------


def test_b2301_counts_as_registered_on_registration_only() -> None:
    dup = httpx.Response(200, json=envelope(500, "B2301", "设备已登记"))
    out = outcome_of(dup, registration=True)
    assert out.kind is ACCEPTED and out.exception_code == "B2301" and "设备已登记" in out.message
    assert outcome_of(dup).kind is RETRYABLE  # code 500 on an upload: not a registration answer
    assert outcome_of(httpx.Response(200, json=envelope(200, "B2301", "?"))).kind is REJECTED


@pytest.mark.parametrize("code", [200, 400, 500])
def test_a2301_is_rejected_whatever_the_code(code: int) -> None:
    out = outcome_of(httpx.Response(200, json=envelope(code, "A2301", "cardNo 格式错误")))
    assert out.kind is REJECTED and out.exception_code == "A2301" and "cardNo" in out.message


def test_an_id_number_quoted_in_the_platforms_message_is_masked() -> None:
    # The message is logged, shown in status and kept in the outbox's unencrypted columns.
    card_no = "450203199001011234"
    out = outcome_of(httpx.Response(200, json=envelope(200, "A2301", f"cardNo {card_no} 与姓名不符")))
    assert out.kind is REJECTED and card_no not in out.message and "4502**********1234" in out.message
    assert card_no not in str(out)


def test_a2301_in_a_http_400_envelope_is_rejected() -> None:
    assert outcome_of(httpx.Response(400, json=envelope(400, "A2301", "参数错误"))).kind is REJECTED


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, REJECTED),
        (413, REJECTED),
        (422, REJECTED),
        (409, REJECTED),
        (404, BLOCKED),
        (405, BLOCKED),
        (302, BLOCKED),
        (410, BLOCKED),
    ],
)
def test_http_errors_without_an_envelope(status: int, kind: OutcomeKind) -> None:
    out = outcome_of(httpx.Response(status, text="<html><body><h1>Error</h1></body></html>"))
    assert out.kind is kind and out.http_status == status
    assert "<h1>" not in out.message


@pytest.mark.parametrize(("code", "kind"), [(500, RETRYABLE), (503, RETRYABLE), (400, REJECTED), (300, REJECTED)])
def test_exception_code_00000_with_a_failing_code_is_never_accepted(code: int, kind: OutcomeKind) -> None:
    # code decides before exceptionCode: taking this for accepted would mark an undelivered record sent
    out = outcome_of(httpx.Response(200, json=envelope(code, "00000", "系统繁忙")))
    assert out.kind is kind and out.code == code


def test_other_business_failures_are_rejected_and_accepted_needs_both_codes() -> None:
    assert outcome_of(httpx.Response(200, json=envelope(300, "C0001", "数据重复"))).kind is REJECTED
    assert outcome_of(httpx.Response(200, json=envelope(200, "X9999", "事务失败"))).kind is REJECTED
    # without our requestId and a time, a success body is not an acceptance
    bare = outcome_of(httpx.Response(200, json={"code": 200, "msg": "ok"}))
    assert bare.kind is RETRYABLE and bare.failed_check == "request_id"
    assert outcome_of(httpx.Response(200, json=envelope(code="200"))).kind is ACCEPTED  # type: ignore[arg-type]


# ---- blocked ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_http_401_403_block_and_static_auth_does_not_resend(status: int) -> None:
    fake = answer(httpx.Response(status, text="Unauthorized"))
    with fake.client() as c:
        out = c.upload_verification(VERIFICATION)
    assert out.kind is BLOCKED and out.http_status == status
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("code", "exception_code", "msg"),
    [(401, "E0001", "未授权"), (403, "E0001", "forbidden"), (400, "A2303", "签名验证失败")],
)
def test_credential_rejection_in_the_envelope_blocks_by_code(code: int, exception_code: str, msg: str) -> None:
    out = outcome_of(httpx.Response(200, json=envelope(code, exception_code, msg)))
    assert out.kind is BLOCKED, out


@pytest.mark.parametrize(
    ("code", "kind", "msg"),
    [
        (500, RETRYABLE, "签名验证失败"),
        (300, REJECTED, "invalid sign"),
        (400, REJECTED, "ticket 无效"),
        (400, REJECTED, "认证核验结果有误"),
        (500, RETRYABLE, "orgAppId 不存在"),
    ],
)
def test_words_in_the_message_never_block(code: int, kind: OutcomeKind, msg: str) -> None:
    # the spec's own endpoint is 人证核验结果上传: a keyword would pause every upload
    out = outcome_of(httpx.Response(200, json=envelope(code, "E0001", msg)))
    assert out.kind is kind, out


def test_failing_to_get_a_token_blocks_or_retries() -> None:
    auth = {"kind": "oauth2", "token_url": "http://127.0.0.1:9/connect/token", "client_id": "c", "client_secret": "s"}

    def handler(status: int) -> Callable[[httpx.Request, int], httpx.Response]:
        return lambda req, n: (
            httpx.Response(status) if req.url.path == "/connect/token" else httpx.Response(200, json=envelope())
        )

    for status, kind in ((401, BLOCKED), (400, BLOCKED), (503, RETRYABLE)):
        fake = FakePlatform(handler(status))
        with fake.client(platform(auth=auth)) as c:
            out = c.upload_verification(VERIFICATION)
        assert out.kind is kind, (status, out)
        assert [r.url.path for r in fake.requests] == ["/connect/token"]


# ---- token refresh and resend ----------------------------------------------------------------------


TOKEN_AUTH = {
    "kind": "token",
    "token_url": "http://127.0.0.1:9/auth/accesstoken/create",
    "app_key": "k",
    "app_secret": "s",
}


def token_platform(reject: Callable[[str], bool]) -> FakePlatform:
    """Hands out tok-1, tok-2, ... and rejects a request whose token ``reject`` says is bad (HTTP 401)."""
    issued: list[str] = []

    def reply(req: httpx.Request, n: int) -> httpx.Response:
        if req.url.path == "/auth/accesstoken/create":
            issued.append(f"tok-{len(issued) + 1}")
            return httpx.Response(200, json={"access_token": issued[-1], "expires_in": 86400})
        if reject(req.headers["authorization"]):
            return httpx.Response(401, json=envelope(401, "T0001", "access_token 已过期"))
        return httpx.Response(200, json=envelope(request_id=rid(req)))

    return FakePlatform(reply)


def test_token_rejected_once_is_refreshed_and_the_request_resent_once() -> None:
    fake = token_platform(lambda tok: tok == "tok-1")
    with fake.client(platform(auth=TOKEN_AUTH)) as c:
        out = c.upload_verification(VERIFICATION)
    assert out.kind is ACCEPTED
    paths = [r.url.path for r in fake.requests]
    assert paths == [
        "/auth/accesstoken/create",
        "/api" + PATH_VERIFICATION,
        "/auth/accesstoken/create",
        "/api" + PATH_VERIFICATION,
    ]
    first, second = fake.requests[1], fake.requests[3]
    assert first.headers["authorization"] == "tok-1" and second.headers["authorization"] == "tok-2"
    assert rid(first) != rid(second)  # a resend is a new request
    assert out.request_id == rid(second)


def test_token_rejected_twice_blocks_without_a_third_try() -> None:
    fake = token_platform(lambda tok: True)
    with fake.client(platform(auth=TOKEN_AUTH)) as c:
        out = c.upload_verification(VERIFICATION)
    assert out.kind is BLOCKED
    assert [r.url.path for r in fake.requests].count("/api" + PATH_VERIFICATION) == 2


def test_token_error_in_a_http_200_envelope_also_refreshes() -> None:
    def reply(req: httpx.Request, n: int) -> httpx.Response:
        if req.url.path == "/auth/accesstoken/create":
            return httpx.Response(200, json={"access_token": f"tok-{n}"})
        if req.headers["authorization"] == "tok-1":
            return httpx.Response(200, json=envelope(401, "T0002", "token invalid"))
        return httpx.Response(200, json=envelope())

    fake = FakePlatform(reply)
    with fake.client(platform(auth=TOKEN_AUTH)) as c:
        assert c.upload_verification(VERIFICATION).kind is ACCEPTED
    assert len(fake.requests) == 4


# ---- retryable -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectTimeout("t"),
        httpx.ReadTimeout("t"),
        httpx.WriteTimeout("t"),
        httpx.PoolTimeout("t"),
        httpx.ConnectError("[Errno -2] Name or service not known"),
        httpx.ReadError("reset"),
        httpx.RemoteProtocolError("peer closed"),
        httpx.ProxyError("proxy"),
    ],
)
def test_network_errors_are_retryable_and_never_raise(exc: Exception) -> None:
    def boom(req: httpx.Request) -> httpx.Response:
        raise exc

    out = outcome_of(boom)
    assert out.kind is RETRYABLE and out.http_status is None
    assert type(exc).__name__ in out.message


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_5xx_and_408_are_retryable(status: int) -> None:
    out = outcome_of(httpx.Response(status, text="<html>Bad Gateway</html>"))
    assert out.kind is RETRYABLE and out.http_status == status


def test_429_honours_retry_after_in_seconds_and_as_a_date() -> None:
    out = outcome_of(httpx.Response(429, headers={"Retry-After": "30"}))
    assert out.kind is RETRYABLE and out.retry_after_s == 30
    when = email.utils.format_datetime(dt.datetime.fromtimestamp(NOW + 120, dt.UTC), usegmt=True)
    out = outcome_of(httpx.Response(503, headers={"Retry-After": when}))
    assert out.kind is RETRYABLE and out.retry_after_s == pytest.approx(120)
    assert outcome_of(httpx.Response(429, headers={"Retry-After": "soon"})).retry_after_s is None


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>502 Bad Gateway</body></html>",
        b"",
        b'{"code": 200, "msg": "ok"',
        b"[1, 2]",
        b'{"msg": "no code"}',
        b"\xff\xfe",
        b'{"code": "abc"}',
    ],
)
def test_unreadable_replies_are_retryable(body: bytes) -> None:
    out = outcome_of(httpx.Response(200, content=body))
    assert out.kind is RETRYABLE and "unreadable reply" in out.message


def test_envelope_5xx_and_429_codes_are_retryable() -> None:
    assert outcome_of(httpx.Response(200, json=envelope(500, "E9999", "系统异常"))).kind is RETRYABLE
    assert outcome_of(httpx.Response(200, json=envelope(429, "E0429", "too many requests"))).kind is RETRYABLE
    throttled = outcome_of(
        httpx.Response(200, headers={"Retry-After": "12"}, json=envelope(429, "E0429", "too many requests"))
    )
    assert throttled.kind is RETRYABLE and throttled.retry_after_s == 12


def test_a_redirect_is_not_followed() -> None:
    # Following it would send the signed request (and the personal data) wherever the Location says.
    fake = answer(httpx.Response(302, headers={"Location": "http://elsewhere.test/login"}))
    with fake.client() as c:
        out = c.upload_verification(VERIFICATION)
    assert out.kind is BLOCKED and out.http_status == 302 and "base_url" in out.message
    assert [str(r.url) for r in fake.requests] == ["http://127.0.0.1:9/api" + PATH_VERIFICATION]


# ---- response signature ----------------------------------------------------------------------------


def signed(
    conv: Conventions, body: dict[str, Any], time_str: str = "1718091555123", sign: str | None = None
) -> httpx.Response:
    headers = conv.response_headers(time_str)
    if sign is not None:
        headers["hmpt-portal-sign"] = sign
    return httpx.Response(200, json=body, headers=headers)


def test_a_good_response_signature_passes_and_a_bad_one_is_retryable() -> None:
    conv = Conventions(ConventionSettings(), APP_ID, SECRET)
    assert outcome_of(signed(conv, envelope())).kind is ACCEPTED
    bad = outcome_of(signed(conv, envelope(), sign="0" * 64))
    assert bad.kind is RETRYABLE and "signature" in bad.message
    other = Conventions(ConventionSettings(), APP_ID, "another-secret-0")
    assert outcome_of(signed(other, envelope())).kind is RETRYABLE
    only_sign = httpx.Response(200, json=envelope(), headers={"hmpt-portal-sign": conv.sign("1")})
    assert outcome_of(only_sign).kind is RETRYABLE


def test_the_signature_is_checked_before_the_envelope() -> None:
    conv = Conventions(ConventionSettings(), APP_ID, "another-secret-0")
    # a forged A2301 must not make us drop the record as rejected
    assert outcome_of(signed(conv, envelope(400, "A2301", "参数错误"))).kind is RETRYABLE


def test_verify_response_sign_required_and_off() -> None:
    required = platform(conventions={"verify_response_sign": "required"})
    off = platform(conventions={"verify_response_sign": "off"})
    unsigned = httpx.Response(200, json=envelope())
    assert outcome_of(unsigned, settings=required).kind is RETRYABLE
    assert outcome_of(unsigned).kind is ACCEPTED  # auto: unsigned replies pass
    conv = Conventions(ConventionSettings(), APP_ID, SECRET)
    assert outcome_of(signed(conv, envelope()), settings=required).kind is ACCEPTED
    assert outcome_of(signed(conv, envelope(), sign="0" * 64), settings=off).kind is ACCEPTED


# ---- response data ---------------------------------------------------------------------------------


def test_encrypted_response_data_is_decrypted_and_a_failure_does_not_override_the_envelope(
    caplog: pytest.LogCaptureFixture,
) -> None:
    conv = Conventions(ConventionSettings(), APP_ID, SECRET)
    good = envelope(data=conv.encrypt_data(b'{"ok":true}'))
    assert outcome_of(httpx.Response(200, json=good)).message == "成功"
    wrong = Conventions(ConventionSettings(), APP_ID, "another-secret-0").encrypt_data(b'{"ok":true}')
    caplog.set_level(logging.WARNING, logger="agent.uplink.client")
    out = outcome_of(httpx.Response(200, json=envelope(data=wrong)))
    assert out.kind is ACCEPTED and "not decryptable" in out.message
    assert "could not be decrypted" in caplog.text
    forced = platform(conventions={"response_encrypted": "true"})
    out = outcome_of(httpx.Response(200, json=envelope(400, "A2301", "参数错误", data="plain")), settings=forced)
    assert out.kind is REJECTED and "not decryptable" in out.message


# ---- privacy ---------------------------------------------------------------------------------------


def test_logs_and_outcomes_hold_no_personal_data(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    out = outcome_of(httpx.Response(200, json=envelope(400, "A2301", f"cardNo {CARD_NO} 校验位错误 韦小红")))
    assert out.kind is REJECTED
    assert CARD_NO not in out.message and CARD_NO[:4] + "**********" + CARD_NO[-4:] in out.message
    assert CARD_NO not in caplog.text
    assert out.request_id in caplog.text


def test_names_and_addresses_quoted_by_the_platform_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    payload = {**VERIFICATION, "address": "广西壮族自治区南宁市青秀区测试路1号", "birthday": "1990-01-01"}
    msg = (
        f"参数错误: 韦小红 的地址 广西壮族自治区南宁市青秀区测试路1号 与 cardNo {CARD_NO} 不符 (1990-01-01); "
        "姓名:覃某某 address=柳州市某路2号"
    )
    with answer(httpx.Response(200, json=envelope(400, "A2301", msg))).client() as c:
        out = c.upload_verification(payload)
    assert out.kind is REJECTED
    for personal in ("韦小红", "广西壮族自治区南宁市青秀区测试路1号", CARD_NO, "1990-01-01", "覃某某", "柳州市某路2号"):
        assert personal not in out.message and personal not in caplog.text, personal
    assert "韦**" in out.message and "覃**" in out.message


# ---- real sockets ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_is_retryable() -> None:
    with PlatformClient(platform(base_url=f"http://127.0.0.1:{free_port()}")) as c:
        out = c.upload_verification(VERIFICATION)
    assert out.kind is RETRYABLE and "ConnectError" in out.message


@pytest.fixture
def raw_server() -> Iterator[Callable[[bytes], str]]:
    """A one-shot TCP server on loopback that reads a request and answers ``raw`` bytes, then closes."""
    servers: list[socket.socket] = []

    def start(raw: bytes) -> str:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        servers.append(srv)

        def serve() -> None:
            conn, _ = srv.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    )
                )
                while len(body) < length:
                    body += conn.recv(65536)
                conn.sendall(raw)

        threading.Thread(target=serve, daemon=True).start()
        return f"http://127.0.0.1:{srv.getsockname()[1]}"

    yield start
    for s in servers:
        s.close()


def test_truncated_body_is_retryable(raw_server: Callable[[bytes], str]) -> None:
    body = json.dumps(envelope()).encode()
    url = raw_server(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:20]
    )
    with PlatformClient(platform(base_url=url)) as c:
        out = c.upload_verification(VERIFICATION)
    assert out.kind is RETRYABLE


def test_connection_dropped_after_the_body_is_read_is_retryable(raw_server: Callable[[bytes], str]) -> None:
    with PlatformClient(platform(base_url=raw_server(b""))) as c:
        out = c.upload_verification(VERIFICATION)
    assert out.kind is RETRYABLE and "RemoteProtocolError" in out.message


# ---- TLS: verification always on, ca_bundle and client certificates honoured ----------------------


def _make_pki(tmp: Path) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def cert(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Certificate | None,
        issuer_key: ec.EllipticCurvePrivateKey,
        *,
        ca: bool,
        usage: Any = None,
    ) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        b = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer.subject if issuer else name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            b = b.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        else:
            import ipaddress

            b = b.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
            )
            b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            assert issuer is not None
            b = b.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        return b.sign(issuer_key, hashes.SHA256())

    out: dict[str, Path] = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("fvagent test CA", ca_key, None, ca_key, ca=True)
    for name, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        k = ec.generate_private_key(ec.SECP256R1())
        c = cert(f"fvagent test {name}", k, ca, ca_key, ca=False, usage=usage)
        out[f"{name}_cert"] = tmp / f"{name}.pem"
        out[f"{name}_cert"].write_bytes(c.public_bytes(serialization.Encoding.PEM))
        out[f"{name}_key"] = tmp / f"{name}.key"
        out[f"{name}_key"].write_bytes(key_pem(k))
    out["ca"] = tmp / "ca.pem"
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return out


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[Callable[..., tuple[str, dict[str, Path]]]]:
    servers: list[http.server.HTTPServer] = []
    pki = _make_pki(tmp_path)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps(
                envelope(request_id=self.headers["hmpt-portal-request-id"], returnTime=int(time.time() * 1000))
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    def start(*, require_client_cert: bool = False) -> tuple[str, dict[str, Path]]:
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(pki["server_cert"], pki["server_key"])
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(pki["ca"])
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        servers.append(srv)
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return f"https://127.0.0.1:{srv.server_address[1]}", pki

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_tls_untrusted_certificate_is_retryable_and_ca_bundle_makes_it_trusted(tls_server: Any) -> None:
    url, pki = tls_server()
    with PlatformClient(platform(base_url=url)) as c:
        out = c.upload_verification(VERIFICATION)
    assert out.kind is RETRYABLE and "CERTIFICATE_VERIFY_FAILED" in out.message
    with PlatformClient(platform(base_url=url, ca_bundle=pki["ca"])) as c:
        assert c.upload_verification(VERIFICATION).kind is ACCEPTED


def test_tls_client_certificate_is_presented_when_configured(tls_server: Any) -> None:
    url, pki = tls_server(require_client_cert=True)
    with PlatformClient(platform(base_url=url, ca_bundle=pki["ca"])) as c:
        assert c.upload_verification(VERIFICATION).kind is RETRYABLE
    with PlatformClient(
        platform(base_url=url, ca_bundle=pki["ca"], client_cert=pki["client_cert"], client_key=pki["client_key"])
    ) as c:
        assert c.upload_verification(VERIFICATION).kind is ACCEPTED


# ---- threads ---------------------------------------------------------------------------------------


def test_one_client_serves_several_threads_with_one_token_fetch() -> None:
    fake = token_platform(lambda tok: False)
    outcomes: list[Outcome] = []
    with fake.client(platform(auth=TOKEN_AUTH)) as c:
        threads = [
            threading.Thread(target=lambda: outcomes.append(c.upload_verification(VERIFICATION))) for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert [o.kind for o in outcomes] == [ACCEPTED] * 6
    assert len({o.request_id for o in outcomes}) == 6
    assert [r.url.path for r in fake.requests].count("/auth/accesstoken/create") == 1


def test_a_body_that_claims_gzip_but_is_not_is_retryable() -> None:
    out = outcome_of(
        lambda req: httpx.Response(
            200, stream=httpx.ByteStream(b"not gzip at all"), headers={"Content-Encoding": "gzip"}
        )
    )
    assert out.kind is RETRYABLE and "DecodingError" in out.message


def test_a_non_ascii_credential_blocks_instead_of_raising() -> None:
    out = outcome_of(
        httpx.Response(200, json=envelope()), settings=platform(auth={"kind": "static", "ticket": "票据-1"})
    )
    assert out.kind is BLOCKED and "not ASCII" in out.message
