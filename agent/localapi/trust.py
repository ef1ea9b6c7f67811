"""Who may do what on the local API: the one place for its access rules.

Threats: any web page open in the desk PC's browser (it can send no-cors POSTs and top-level
navigations to 127.0.0.1), any other local process or account (it can open loopback sockets), a
page that rebinds its DNS name to 127.0.0.1. The rules:

- every request: an ``Origin`` header that is not the page's own origin (``http://<Host>``) nor in
  ``[local_api] allowed_origins`` is 403; a body-carrying method (POST, PUT, PATCH, DELETE) needs
  ``Content-Type: application/json`` (415), at most ``max_body_bytes`` (413) and JSON nested at
  most ``MAX_JSON_DEPTH`` deep (400). ``BrowserGuard`` applies these to every route, so a future
  endpoint cannot forget them. CORS is never answered: no Access-Control-* header is ever sent;
- reads: ``Access.require_api`` (/v1) and ``Access.require_ui`` (/ui, the terminal's own screen);
- ``credential_write``: a call that creates or changes something through /v1 needs the bearer token
  in the ``Authorization`` header (never the page's cookie, which a browser attaches by itself) or a
  Unix-socket peer whose uid/gid is in ``allowed_uids``/``allowed_gids`` (SO_PEERCRED);
- ``page_write``: the operator page's own changes (/ui) need the page's own origin in ``Origin``
  (a browser always sends it on a PUT/POST and a page cannot forge it) and a caller the page's
  reads would accept.

Use them as FastAPI dependencies: ``@app.put("/ui/thing", dependencies=[Depends(page_write)])``;
they read the ``Access`` that ``create_app`` puts in ``app.state.access``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Literal

from fastapi import Request
from starlette import types as asgi

from agent.config import LocalApiSettings

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
TOKEN_COOKIE = "fvagent_token"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_JSON_DEPTH = 32
"""Deepest JSON nesting accepted in a request body (a verification is 1 deep)."""
Scope = Literal["anonymous", "local", "peer", "api", "full"]
"""anonymous: nobody we know; local: this machine's screen (loopback, loopback Host) or a Unix-socket
peer not in the allowed lists; peer: an allowed Unix-socket peer; api/full: the token / full-data token."""
PEER_CRED_KEY = "fvagent.peer_cred"
"""Key of the connection's (pid, uid, gid) in the ASGI scope's ``state`` (set by the Unix listener)."""


class Denied(Exception):
    """A request refused by the access rules: ``status``, a message and the fix."""

    def __init__(self, status: int, message: str, hint: str | None = None) -> None:
        self.status, self.message, self.hint = status, message, hint
        super().__init__(message)


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def host_name(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def peer_cred(scope: Mapping[str, object]) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the Unix-socket peer, or ``None`` on TCP."""
    state = scope.get("state") or {}
    value = state.get(PEER_CRED_KEY) if isinstance(state, dict) else None
    if value is None:
        return None
    pid, uid, gid = value
    return int(pid), int(uid), int(gid)


def own_origin(headers: Mapping[str, str]) -> str | None:
    """The origin the operator page has when served to this request: ``http://<Host>``."""
    host = (headers.get("host") or "").strip().lower()
    return f"http://{host}" if host else None


CREDENTIAL_HINT = (
    "send 'Authorization: Bearer <token>' with [local_api] token (or token_file, or the systemd "
    'credential token), or call over listen = "unix:PATH" as a user in [local_api] allowed_uids '
    "or allowed_gids"
)


class Access:
    """Decides a request's scope from its bearer token, its peer (address or Unix credentials) and
    its Host header, and answers the trust questions of this module."""

    def __init__(self, settings: LocalApiSettings) -> None:
        self.token = settings.token.get_secret_value() if settings.token else None
        self.full = settings.full_data_token.get_secret_value() if settings.full_data_token else None
        self.trusted_hosts = set(LOOPBACK_HOSTS) | {settings.host.lower()}
        self.allowed_origins = frozenset(settings.allowed_origins)
        self.allowed_uids = frozenset(settings.allowed_uids)
        self.allowed_gids = frozenset(settings.allowed_gids)

    # -- who is calling -------------------------------------------------------------------------------
    def _bearer(self, request: Request) -> str | None:
        auth = request.headers.get("authorization")
        if auth is None:
            return None
        kind, _, value = auth.partition(" ")
        if kind.lower() != "bearer" or not value.strip():
            raise Denied(401, "Authorization must be 'Bearer <token>'")
        return value.strip()

    def _token_scope(self, given: str) -> Scope:
        if self.full and hmac.compare_digest(given.encode(), self.full.encode()):
            return "full"
        if self.token and hmac.compare_digest(given.encode(), self.token.encode()):
            return "api"
        raise Denied(
            401,
            "the bearer token is not recognised",
            hint="use [local_api] token (or full_data_token) from the agent's configuration",
        )

    def scope(self, request: Request) -> Scope:
        """The caller's scope for reads (header or cookie token). Raises ``Denied`` for a token that
        matches nothing."""
        given = self._bearer(request)
        if given is None:
            given = request.cookies.get(TOKEN_COOKIE) or None
        if given is not None:
            return self._token_scope(given)
        return self._anonymous_scope(request)

    def _anonymous_scope(self, request: Request) -> Scope:
        cred = peer_cred(request.scope)
        if cred is not None:
            _, uid, gid = cred
            return "peer" if uid in self.allowed_uids or gid in self.allowed_gids else "local"
        peer = request.client.host if request.client else None
        if is_loopback(peer) and host_name(request.headers.get("host", "")) in self.trusted_hosts:
            return "local"
        return "anonymous"

    def require_api(self, request: Request) -> Scope:
        """For /v1 reads: a token when one is configured; without one, a local caller."""
        scope = self.scope(request)
        if scope in ("api", "full", "peer"):
            return scope
        if self.token is None:
            if scope == "local":
                return scope
            raise Denied(
                403,
                "this API answers only this machine, addressed as 127.0.0.1 or localhost",
                hint="call it on the terminal itself; for other machines set [local_api] token and listen",
            )
        raise Denied(
            401,
            "this endpoint needs 'Authorization: Bearer <token>'",
            hint="the token is [local_api] token in the agent's configuration",
        )

    def require_ui(self, request: Request) -> Scope:
        """For /ui reads: a local caller (the terminal's screen) or any valid token."""
        scope = self.scope(request)
        if scope == "anonymous":
            raise Denied(401, "the operator page's data is only for this terminal or a caller with the token")
        return scope

    # -- writes ---------------------------------------------------------------------------------------
    def require_credential(self, request: Request) -> Scope:
        """A call that creates or changes something: the token in the Authorization header, or an
        allowed Unix-socket peer. Being on loopback is not enough: any local process or web page is."""
        given = self._bearer(request)
        if given is not None:
            return self._token_scope(given)
        cred = peer_cred(request.scope)
        if cred is not None:
            _, uid, gid = cred
            if uid in self.allowed_uids or gid in self.allowed_gids:
                return "peer"
            raise Denied(
                403,
                f"this Unix-socket peer (uid {uid}, gid {gid}) may not make changes",
                hint="add its uid to [local_api] allowed_uids or its group to allowed_gids",
            )
        if self.token is None:
            raise Denied(
                403, "this call changes something and needs a credential, which is not configured", hint=CREDENTIAL_HINT
            )
        raise Denied(401, "this call changes something and needs 'Authorization: Bearer <token>'", hint=CREDENTIAL_HINT)

    def require_page_origin(self, request: Request) -> Scope:
        """The operator page's own change: its own origin in Origin, from a caller its reads accept."""
        origin = (request.headers.get("origin") or "").rstrip("/").lower()
        if not origin:
            raise Denied(
                403,
                "this call is the operator page's own and must come from the page (no Origin header)",
                hint="use the page, or the /v1 API with the token",
            )
        if not self.origin_allowed(request):
            raise Denied(403, f"origin {origin} is not the operator page's")
        return self.require_ui(request)

    def origin_allowed(self, request: Request) -> bool:
        """No Origin (not a browser, or a same-origin GET), the page's own, or an allowed one."""
        origin = request.headers.get("origin")
        if origin is None:
            return True
        origin = origin.rstrip("/").lower()
        return origin == own_origin(request.headers) or origin in self.allowed_origins


def _access(request: Request) -> Access:
    access: Access = request.app.state.access
    return access


def credential_write(request: Request) -> Scope:
    """FastAPI dependency for every call that creates or changes something through /v1."""
    return _access(request).require_credential(request)


def page_write(request: Request) -> Scope:
    """FastAPI dependency for every change the operator page itself makes (/ui)."""
    return _access(request).require_page_origin(request)


# --------------------------------------------------------------------------------------------------
# Browser-proofing every request


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # unrolled: one C loop per run
_BRACKETS = re.compile(rb"[\[\]{}]")


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays/objects in JSON text (strings are skipped, so a bracket inside a
    name or a photo does not count); cheap enough for a 12 MB body."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_JSON_STRING.sub(b"", raw)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _is_json(content_type: str) -> bool:
    ctype = content_type.split(";")[0].strip().lower()
    return ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))


class BrowserGuard:
    """ASGI middleware: the per-request rules every route gets (foreign Origin 403; a body needs JSON
    (415), within ``max_body_bytes`` (413), nested at most ``MAX_JSON_DEPTH`` (400)). The body is read
    here and replayed to the route, so the limits hold for routes that parse it themselves too."""

    def __init__(self, app: asgi.ASGIApp, *, access: Access, max_body_bytes: int) -> None:
        self.app = app
        self.access = access
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if not self.access.origin_allowed(request):
            origin = request.headers.get("origin", "")
            await _refuse(
                send,
                403,
                f"requests from origin {origin} are refused: this API serves only its own page",
                "add the origin to [local_api] allowed_origins if it is a trusted local application",
            )
            return
        if scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        ctype = request.headers.get("content-type", "")
        if not _is_json(ctype):
            await _refuse(
                send,
                415,
                f"the body must be application/json, not {ctype.split(';')[0].strip() or 'empty'}",
                "send Content-Type: application/json",
            )
            return
        too_large = (
            413,
            f"the body is larger than {self.max_body_bytes} bytes",
            "photos must be JPEG of at most 3 MB each",
        )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _refuse(send, *too_large)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                await _refuse(send, *too_large)
                return
        data = bytes(body)
        if json_depth(data) > MAX_JSON_DEPTH:
            await _refuse(
                send,
                400,
                f"the JSON body is nested more than {MAX_JSON_DEPTH} levels deep",
                "a verification is one flat JSON object",
            )
            return
        replayed = False

        async def replay() -> asgi.Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _refuse(send: asgi.Send, status: int, message: str, hint: str | None) -> None:
    body = json.dumps({"error": message, "hint": hint, "problems": []}, ensure_ascii=False).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                (b"x-content-type-options", b"nosniff"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
