"""Authorization providers: static ticket, seed-003 access token, seed-004 OAuth2 client credentials."""

from __future__ import annotations

import json
import threading
from urllib.parse import parse_qs

import httpx
import pytest

from agent.config import AuthSettings
from agent.uplink.auth import (
    AccessTokenAuth,
    OAuth2ClientCredentials,
    StaticAuth,
    make_provider,
)
from core.errors import AuthError

TOKEN_URL = "http://127.0.0.1:9/auth/accesstoken/create"
OAUTH_URL = "http://127.0.0.1:9/connect/token"


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class TokenEndpoint:
    """A scriptable token endpoint: records requests, hands out token-1, token-2, ..."""

    def __init__(self, reply=None) -> None:  # type: ignore[no-untyped-def]
        self.requests: list[httpx.Request] = []
        self.reply = reply or (
            lambda n, req: httpx.Response(200, json={"access_token": f"token-{n}", "expires_in": 7200})
        )
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
            n = len(self.requests)
        return self.reply(n, request)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))


def token_settings(**kw: object) -> AuthSettings:
    base = dict(kind="token", token_url=TOKEN_URL, app_key="hosp-450100", app_secret="s3cret&=?")
    return AuthSettings(**{**base, **kw})


def oauth_settings(**kw: object) -> AuthSettings:
    base = dict(kind="oauth2", token_url=OAUTH_URL, client_id="fvagent-01", client_secret="c-secret")
    return AuthSettings(**{**base, **kw})


# ---- static ----------------------------------------------------------------------------------------


def test_static_sends_the_ticket_as_issued_and_never_refreshes() -> None:
    p = make_provider(AuthSettings(kind="static", ticket="ESB ticket/with+odd=chars"), client=httpx.Client())
    assert isinstance(p, StaticAuth)
    assert p.authorization() == "ESB ticket/with+odd=chars"
    assert p.invalidate("ESB ticket/with+odd=chars") is False
    assert p.refreshable is False
    assert "ticket/with" not in repr(p)


# ---- token (seed 003) ------------------------------------------------------------------------------


def test_token_is_fetched_with_get_and_the_configured_parameter_names() -> None:
    ep = TokenEndpoint()
    p = make_provider(token_settings(token_key_param="appid", token_secret_param="secret"), client=ep.client())
    assert isinstance(p, AccessTokenAuth)
    assert p.authorization() == "token-1"
    req = ep.requests[0]
    assert req.method == "GET"
    assert req.url.path == "/auth/accesstoken/create"
    assert parse_qs(req.url.query.decode()) == {"appid": ["hosp-450100"], "secret": ["s3cret&=?"]}


def test_token_is_cached_until_the_refresh_margin_then_refreshed() -> None:
    ep, clock = TokenEndpoint(), Clock()
    p = make_provider(token_settings(refresh_margin_s=300), client=ep.client(), clock=clock)
    assert p.authorization() == "token-1"
    clock.t += 7200 - 301
    assert p.authorization() == "token-1"
    assert len(ep.requests) == 1
    clock.t += 2  # now inside the margin: refresh ahead of expiry
    assert p.authorization() == "token-2"
    assert len(ep.requests) == 2


def test_token_without_expiry_lives_one_day_by_default_and_the_margin_is_capped() -> None:
    ep, clock = TokenEndpoint(lambda n, r: httpx.Response(200, json={"access_token": f"t{n}"})), Clock()
    p = make_provider(token_settings(refresh_margin_s=300), client=ep.client(), clock=clock)
    assert p.authorization() == "t1"
    clock.t += 86400 - 301
    assert p.authorization() == "t1"
    clock.t += 2
    assert p.authorization() == "t2"
    # a 60 s token with a 300 s margin: refreshed at half its life, not on every call
    ep2, clock2 = (
        TokenEndpoint(lambda n, r: httpx.Response(200, json={"access_token": f"u{n}", "expires_in": 60})),
        Clock(),
    )
    p2 = make_provider(token_settings(refresh_margin_s=300), client=ep2.client(), clock=clock2)
    assert [p2.authorization() for _ in range(5)] == ["u1"] * 5
    clock2.t += 31
    assert p2.authorization() == "u2"


@pytest.mark.parametrize(
    ("body", "field", "expires_field"),
    [
        ({"data": {"access_token": "nested", "expires_in": 100}}, "access_token", "expires_in"),
        ({"code": 200, "result": {"token": "nested"}, "ttl": 100}, "result.token", "ttl"),
        ({"accessToken": "nested", "expiresIn": "100"}, "accessToken", "expiresIn"),
    ],
)
def test_token_field_names_are_settings(body: dict, field: str, expires_field: str) -> None:
    ep, clock = TokenEndpoint(lambda n, r: httpx.Response(200, json=body)), Clock()
    p = make_provider(
        token_settings(token_field=field, token_expires_field=expires_field, refresh_margin_s=0),
        client=ep.client(),
        clock=clock,
    )
    assert p.authorization() == "nested"
    clock.t += 99
    p.authorization()
    assert len(ep.requests) == 1
    clock.t += 2
    p.authorization()
    assert len(ep.requests) == 2


def test_invalidate_drops_the_token_so_the_next_call_fetches_a_new_one() -> None:
    ep = TokenEndpoint()
    p = make_provider(token_settings(), client=ep.client())
    first = p.authorization()
    assert p.invalidate(first) is True
    assert p.authorization() == "token-2"
    # a stale credential (another thread already refreshed) does not drop the fresh token
    assert p.invalidate(first) is True
    assert p.authorization() == "token-2"
    assert len(ep.requests) == 2


def test_failed_early_refresh_keeps_the_still_valid_token_then_fails_after_expiry() -> None:
    clock = Clock()

    def reply(n: int, r: httpx.Request) -> httpx.Response:
        if n == 1:
            return httpx.Response(200, json={"access_token": "only", "expires_in": 1000})
        return httpx.Response(503)

    ep = TokenEndpoint(reply)
    p = make_provider(token_settings(refresh_margin_s=300), client=ep.client(), clock=clock)
    assert p.authorization() == "only"
    clock.t += 800  # inside the margin, endpoint down: keep the old token
    assert p.authorization() == "only"
    clock.t += 201  # expired: no token to fall back on
    with pytest.raises(AuthError) as err:
        p.authorization()
    assert err.value.retryable is True


@pytest.mark.parametrize(
    ("response", "retryable", "words"),
    [
        (httpx.Response(500), True, "HTTP 500"),
        (httpx.Response(429), True, "HTTP 429"),
        (httpx.Response(401, json={"error": "invalid_client"}), False, "invalid_client"),
        (httpx.Response(403), False, "refused the credentials"),
        (httpx.Response(400, json={"error": "invalid_grant"}), False, "invalid_grant"),
        (httpx.Response(302, headers={"Location": "/login"}), False, "redirect"),
        (httpx.Response(200, text="<html>gateway</html>"), True, "not JSON"),
        (httpx.Response(200, json=["a"]), True, "not an object"),
        (httpx.Response(200, json={"code": 1001, "msg": "appKey invalid"}), False, "appKey invalid"),
        (httpx.Response(200, json={"token": "x"}), False, "token_field"),
    ],
)
def test_token_endpoint_failures_say_whether_to_retry(response: httpx.Response, retryable: bool, words: str) -> None:
    p = make_provider(token_settings(), client=TokenEndpoint(lambda n, r: response).client())
    with pytest.raises(AuthError, match=words) as err:
        p.authorization()
    assert err.value.retryable is retryable
    assert "s3cret" not in str(err.value)


@pytest.mark.parametrize(
    "exc", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("cut")]
)
def test_token_endpoint_network_errors_are_retryable(exc: Exception) -> None:
    def boom(n: int, r: httpx.Request) -> httpx.Response:
        raise exc

    p = make_provider(token_settings(), client=TokenEndpoint(boom).client())
    with pytest.raises(AuthError) as err:
        p.authorization()
    assert err.value.retryable is True


def test_concurrent_callers_cause_one_fetch() -> None:
    started = threading.Event()
    release = threading.Event()

    def slow(n: int, r: httpx.Request) -> httpx.Response:
        started.set()
        assert release.wait(5)
        return httpx.Response(200, json={"access_token": f"token-{n}", "expires_in": 7200})

    ep = TokenEndpoint(slow)
    p = make_provider(token_settings(), client=ep.client())
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(p.authorization())) for _ in range(8)]
    for t in threads:
        t.start()
    assert started.wait(5)
    release.set()
    for t in threads:
        t.join(5)
    assert results == ["token-1"] * 8
    assert len(ep.requests) == 1


# ---- oauth2 (seed 004) -----------------------------------------------------------------------------


def test_oauth2_posts_the_client_credentials_form_and_sends_bearer() -> None:
    ep = TokenEndpoint(
        lambda n, r: httpx.Response(
            200, json={"access_token": f"at-{n}", "expires_in": 3600, "token_type": "Bearer", "scope": "upload"}
        )
    )
    p = make_provider(oauth_settings(scope="upload"), client=ep.client())
    assert isinstance(p, OAuth2ClientCredentials)
    assert p.authorization() == "bearer at-1"
    req = ep.requests[0]
    assert req.method == "POST"
    assert req.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(req.content.decode()) == {
        "grant_type": ["client_credentials"],
        "client_id": ["fvagent-01"],
        "client_secret": ["c-secret"],
        "scope": ["upload"],
    }


def test_oauth2_without_scope_omits_it_and_honours_expires_in() -> None:
    clock = Clock()
    ep = TokenEndpoint(
        lambda n, r: httpx.Response(200, json={"access_token": f"at-{n}", "expires_in": 1200, "token_type": "bearer"})
    )
    p = make_provider(oauth_settings(refresh_margin_s=60), client=ep.client(), clock=clock)
    assert p.authorization() == "bearer at-1"
    assert "scope" not in parse_qs(ep.requests[0].content.decode())
    clock.t += 1200 - 61
    assert p.authorization() == "bearer at-1"
    clock.t += 2
    assert p.authorization() == "bearer at-2"
    assert p.invalidate("bearer at-2") is True
    assert p.authorization() == "bearer at-3"


def test_oauth2_refused_client_is_not_retryable() -> None:
    ep = TokenEndpoint(
        lambda n, r: httpx.Response(
            400, content=json.dumps({"error": "invalid_client"}).encode(), headers={"content-type": "application/json"}
        )
    )
    p = make_provider(oauth_settings(), client=ep.client())
    with pytest.raises(AuthError, match="client_id/client_secret|invalid_client") as err:
        p.authorization()
    assert err.value.retryable is False
    assert "client_id/client_secret" in (err.value.hint or "")
