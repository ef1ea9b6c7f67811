"""Where the ``Authorization`` header comes from: ``[platform.auth] kind``.

- ``static``: the ESB ticket issued by the health commission, sent as is (the platform spec).
- ``token``: an access-token endpoint as in seed 003 (``GET /auth/accesstoken/create``, a token valid
  about one day). The seed names neither parameters nor fields, so fvagent assumes, with settings for
  each name::

      GET {token_url}?{token_key_param}={app_key}&{token_secret_param}={app_secret}
      -> 200 {"access_token": "...", "expires_in": 86400}     (or the same inside "data": {...})

  The token is sent as the whole ``Authorization`` value. With no ``expires_in`` it is taken to live
  ``token_lifetime_s`` (one day).
- ``oauth2``: an OAuth2 client-credentials grant at an auth center as in seed 004::

      POST {token_url}  (application/x-www-form-urlencoded)
           grant_type=client_credentials&client_id=...&client_secret=...[&scope=...]
      -> 200 {"access_token": "...", "expires_in": 3600, "token_type": "bearer"}

  sent as ``Authorization: bearer <access_token>``.

Token providers fetch lazily, refresh ``refresh_margin_s`` before expiry (at most half the lifetime
ahead), and drop the token when the platform rejects it (``invalidate``) so the client can fetch a new
one and resend once. They are thread-safe: one lock serialises fetching, so several uploader threads
wanting a token at once cause one request. A failed fetch raises ``AuthError`` with ``retryable``
telling the client whether to back off (network, 5xx, unreadable reply) or block (credentials refused).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from agent.config import AuthSettings
from core.errors import AuthError

log = logging.getLogger(__name__)


class AuthProvider:
    """The source of the ``Authorization`` header value."""

    kind = "base"
    refreshable = False
    """Whether ``invalidate`` can lead to a different credential (worth one resend)."""

    def authorization(self) -> str:
        """The header value to send now. Raises ``AuthError``."""
        raise NotImplementedError

    def invalidate(self, credential: str) -> bool:
        """The platform rejected ``credential``: forget it. True when a resend may get a new one."""
        return False

    def close(self) -> None:
        """Release resources (nothing by default; the HTTP client belongs to the caller)."""


class StaticAuth(AuthProvider):
    """The ESB ticket, sent as issued."""

    kind = "static"

    def __init__(self, ticket: str) -> None:
        self._ticket = ticket

    def authorization(self) -> str:
        return self._ticket

    def __repr__(self) -> str:
        return "StaticAuth(ticket=********)"


class _TokenAuth(AuthProvider):
    """Shared machinery of the token kinds: cache, expiry, refresh, thread safety."""

    refreshable = True
    prefix = ""

    def __init__(self, settings: AuthSettings, *, client: httpx.Client, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._client = client
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self._refresh_at = 0.0
        self.fetch_count = 0
        """How many times the token endpoint was asked (for status and tests)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(token_url={self.settings.token_url!r}, has_token={self._token is not None})"

    def authorization(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._refresh_at:
                try:
                    self._store(*self._fetch(), now=now)
                except AuthError as exc:
                    # Refreshing ahead of time failed: the current token is still good, keep using it.
                    if self._token is not None and now < self._expires_at:
                        log.warning("token refresh failed, keeping the current token until it expires: %s", exc)
                    else:
                        raise
            assert self._token is not None
            return self.prefix + self._token

    def invalidate(self, credential: str) -> bool:
        with self._lock:
            if self._token is not None and self.prefix + self._token == credential:
                log.info("the platform rejected the %s token; a new one will be fetched", self.kind)
                self._token = None
            # Either we dropped it, or another thread already replaced it: a resend is worth it.
            return True

    def _store(self, token: str, lifetime_s: float, *, now: float) -> None:
        margin = min(self.settings.refresh_margin_s, lifetime_s / 2)
        self._token = token
        self._expires_at = now + lifetime_s
        self._refresh_at = now + lifetime_s - margin
        log.info("got a %s token valid for %.0f s", self.kind, lifetime_s)

    def _fetch(self) -> tuple[str, float]:
        raise NotImplementedError

    def _exchange(self, request: httpx.Request) -> tuple[str, float]:
        """Send the token request and read ``(token, lifetime_s)`` from the reply."""
        self.fetch_count += 1
        url = self.settings.token_url
        try:
            resp = self._client.send(request)
        except httpx.TimeoutException as exc:
            raise AuthError(f"token endpoint {url} timed out", retryable=True) from exc
        except httpx.TransportError as exc:
            raise AuthError(f"token endpoint {url} unreachable: {type(exc).__name__}: {exc}", retryable=True) from exc
        status = resp.status_code
        if status == 429 or status >= 500:
            raise AuthError(f"token endpoint {url} answered HTTP {status}", retryable=True, http_status=status)
        if status >= 400:
            raise AuthError(
                f"token endpoint {url} refused the credentials (HTTP {status}{_oauth_error(resp)})",
                retryable=False,
                http_status=status,
                hint="check [platform.auth] "
                + ("client_id/client_secret" if self.kind == "oauth2" else "app_key/app_secret"),
            )
        if status >= 300:
            raise AuthError(
                f"token endpoint {url} answered HTTP {status} (a redirect)",
                retryable=False,
                http_status=status,
                hint="check [platform.auth] token_url",
            )
        try:
            body = resp.json()
        except ValueError as exc:
            raise AuthError(f"token endpoint {url} sent a reply that is not JSON", retryable=True) from exc
        if not isinstance(body, dict):
            raise AuthError(f"token endpoint {url} sent JSON that is not an object", retryable=True)
        token = _lookup(body, self.settings.token_field)
        if not isinstance(token, str) or not token:
            code, msg = body.get("code"), body.get("msg") or body.get("message") or body.get("error_description")
            if code not in (None, 0, 200, "0", "200"):
                raise AuthError(
                    f"token endpoint {url} refused: code {code}: {msg}",
                    retryable=False,
                    hint="check [platform.auth] credentials",
                )
            raise AuthError(
                f"token endpoint {url} reply has no {self.settings.token_field!r} ([platform.auth] token_field)",
                retryable=False,
                hint="set [platform.auth] token_field to the field that holds the token",
            )
        lifetime = _lookup(body, self.settings.token_expires_field)
        try:
            lifetime_s = float(lifetime) if lifetime is not None else self.settings.token_lifetime_s
        except (TypeError, ValueError):
            lifetime_s = self.settings.token_lifetime_s
        if lifetime_s <= 0:
            lifetime_s = self.settings.token_lifetime_s
        return token, lifetime_s


class AccessTokenAuth(_TokenAuth):
    """Seed 003: GET the token endpoint with the app key and secret as query parameters."""

    kind = "token"

    def _fetch(self) -> tuple[str, float]:
        s = self.settings
        assert s.token_url and s.app_key and s.app_secret
        params = {s.token_key_param: s.app_key, s.token_secret_param: s.app_secret.get_secret_value()}
        return self._exchange(self._client.build_request("GET", s.token_url, params=params))


class OAuth2ClientCredentials(_TokenAuth):
    """Seed 004: POST grant_type=client_credentials to the auth center; ``bearer <token>``."""

    kind = "oauth2"
    prefix = "bearer "

    def _fetch(self) -> tuple[str, float]:
        s = self.settings
        assert s.token_url and s.client_id and s.client_secret
        form = {
            "grant_type": "client_credentials",
            "client_id": s.client_id,
            "client_secret": s.client_secret.get_secret_value(),
        }
        if s.scope:
            form["scope"] = s.scope
        return self._exchange(
            self._client.build_request("POST", s.token_url, data=form, headers={"Accept": "application/json"})
        )


def make_provider(
    settings: AuthSettings, *, client: httpx.Client, clock: Callable[[], float] = time.time
) -> AuthProvider:
    """The provider for ``[platform.auth]``; token kinds use ``client`` (its transport and TLS settings)."""
    if settings.kind == "static":
        assert settings.ticket is not None  # AuthSettings validates this
        return StaticAuth(settings.ticket.get_secret_value())
    if settings.kind == "token":
        return AccessTokenAuth(settings, client=client, clock=clock)
    return OAuth2ClientCredentials(settings, client=client, clock=clock)


def _lookup(body: dict[str, Any], field: str) -> Any:
    """``field`` in ``body``: dotted for nesting; a plain name also under a ``data`` object."""
    value: Any = body
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None and "." not in field and isinstance(body.get("data"), dict):
        value = body["data"].get(field)
    return value


def _oauth_error(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return ""
    if isinstance(body, dict) and body.get("error"):
        return f": {body['error']}"
    return ""
