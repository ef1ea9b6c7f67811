"""The local HTTP API and the operator page, as a FastAPI app over a ``DeskBackend``.

Who may do what (the rules live in ``agent.localapi.trust``; docs/local-api.md explains them):
- ``/v1/*`` reads: with ``[local_api] token`` configured, every call needs ``Authorization: Bearer
  <token>`` (or the full-data token); without one, calls from this machine are open. Results are
  masked unless the caller presents ``full_data_token``; photos only with it.
- ``/v1/*`` writes (relay POST, PUT /v1/operator): always a credential (``trust.credential_write``),
  even on loopback. The relay POST exists only with ``[face] mode`` relay/both and ``[local_api] relay``.
- ``/`` (the page) and ``/openapi.json`` hold no personal data and are always served.
- ``/ui/*`` reads (the page's live feed, photos of the last 10 minutes): loopback callers without a
  token (the terminal's own screen), anyone else with a valid token (header, or the ``fvagent_token``
  cookie the page sets). ``/ui`` writes come from the page's own origin only (``trust.page_write``).
- Every request: a foreign ``Origin`` is 403, a body must be JSON (415), bounded and shallow
  (``trust.BrowserGuard``). A caller without a token must name a loopback host in ``Host``, so a web
  page that rebinds its DNS name to 127.0.0.1 cannot read the feed.

Nothing here logs a query string, a body or a photo: the access log is off and requests are logged
by method, path and status only.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, BeforeValidator, Field
from pydantic.json_schema import JsonSchemaValue
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent.config import LocalApiSettings
from agent.events import VERIFICATION
from agent.localapi.backend import (
    DeskBackend,
    IdempotencyConflict,
    NotFound,
    RelayRateLimited,
    VerificationView,
)
from agent.localapi.trust import (
    Access,
    BrowserGuard,
    Denied,
    credential_write,
    page_write,
)
from agent.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from core.clock import CHINA_TZ
from core.errors import OutboxError, RecordError, StorageFull
from core.records import OPERATOR_MAX_LEN, OPERATOR_PATTERN, JsonObject, VerificationRecord

log = logging.getLogger(__name__)

MAX_ID = 2**63 - 1
UI_PHOTO_MAX_AGE_S = 600.0
"""The page shows a record's photos for 10 minutes after it was committed; later only /v1 with the
full-data token has them."""
SSE_STATUS_INTERVAL_S = 5.0
SSE_REPLAY = 8
"""Verifications a newly connected page gets at once."""


# --------------------------------------------------------------------------------------------------
# Response models (they make the OpenAPI document precise enough for schemathesis)


class Problem(BaseModel):
    field: str
    rule: str


class ErrorOut(BaseModel):
    """Every error: a message, the fix when there is one, and one entry per bad field."""

    error: str
    hint: str | None = None
    problems: list[Problem] = []


class Accepted(BaseModel):
    id: int = Field(description="The local outbox id of the committed verification")


class VerificationList(BaseModel):
    items: list[VerificationView]


class OperatorIn(BaseModel):
    # the operationUser rule (core.records.validate_operator), as the OpenAPI document states it
    operator: str = Field(
        min_length=1,
        max_length=OPERATOR_MAX_LEN,
        pattern=OPERATOR_PATTERN,
        description=f"operationUser for the following verifications, 1..{OPERATOR_MAX_LEN} characters",
    )


class OperatorOut(BaseModel):
    operator: str


RELAY_DEFAULTED_FIELDS = ("operationUser", "deviceNo", "machineCode")
"""Fields a relayed verification may leave out: the current operator and this device's own."""


# Any: pydantic's JsonSchemaValue (what model_json_schema returns) is dict[str, Any].
def verification_body_schema(model: type[VerificationRecord] = VerificationRecord) -> JsonSchemaValue:
    """The relay POST's request schema: ``model``'s own JSON Schema (every field rule carries its
    pattern, length or enum), with the fields the relay fills in no longer required and no null
    defaults."""
    schema = model.model_json_schema()
    for rule in schema["properties"].values():
        # an optional field is left out rather than sent as null (the OpenAPI document drops null defaults)
        if rule.get("default", ...) is None:
            del rule["default"]
    schema["required"] = [name for name in schema.get("required", []) if name not in RELAY_DEFAULTED_FIELDS]
    schema["description"] = (
        "A verification with the platform spec's field names (the JSON `fvagent upload-file` "
        "takes), validated exactly like a captured record: GB 11643 check digit, code tables, "
        "JPEG images, cross-field rules. operationUser defaults to the current operator; "
        "deviceNo and machineCode default to this device's and must match it when given."
    )
    return schema


VERIFICATION_BODY_SCHEMA = verification_body_schema()

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing or unknown bearer token"},
    403: {
        "model": ErrorOut,
        "description": "the token does not allow this; (without a token configured) the "
        "caller is not this machine, or the call changes something and no "
        "credential is configured; or the request's Origin is foreign",
    },
    503: {"model": ErrorOut, "description": "the outbox or the state directory cannot be used now"},
}


def _error(
    status: int,
    message: str,
    *,
    hint: str | None = None,
    problems: list[tuple[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": message, "hint": hint, "problems": [{"field": f, "rule": r} for f, r in problems or []]}
    return JSONResponse(body, status_code=status, headers=headers)


def _calendar_time_only(value: Any) -> Any:
    """Refuse a bare number for ``since``: pydantic would read it as a Unix timestamp, which the
    documented formats do not include, and a desk client sending one has a bug worth showing."""
    if isinstance(value, str) and not re.match(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        raise ValueError("must be a time like 2026-12-02 09:30:00 or 2026-12-02 (ISO 8601)")
    return value


class _BadQuery(Exception):
    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("unknown query parameters")


def _only_params(request: Request, *allowed: str) -> None:
    """Refuse unknown query parameters: a misspelt ``cardno`` must not silently list every card."""
    unknown = sorted({k for k in request.query_params if k not in allowed})
    if unknown:
        rule = f"unknown query parameter; allowed: {', '.join(allowed) or 'none'}"
        raise _BadQuery([(name or "(empty name)", rule) for name in unknown])


# --------------------------------------------------------------------------------------------------
# The app


def create_app(backend: DeskBackend, settings: LocalApiSettings) -> FastAPI:
    """The local API and operator page over ``backend``, with the access rules of ``settings``.

    ``app.state.shutdown`` is an ``asyncio``-independent flag (a ``threading.Event``) that ends the
    live feeds; ``LocalApiServer.stop()`` sets it.
    """
    access = Access(settings)
    app = FastAPI(
        title="fvagent local API",
        version="1",
        description="Relay verifications in, results out to the registration desk, the operator page's feed.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.shutdown = threading.Event()
    app.state.backend = backend
    app.state.access = access
    page_html = resources.files("agent.localapi").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.middleware("http")
    async def _log_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.monotonic()
        response = await call_next(request)
        # path only: query strings can hold a card number
        log.debug(
            "%s %s -> %d (%.0f ms)",
            request.method,
            request.url.path,
            response.status_code,
            (time.monotonic() - started) * 1000,
        )
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    app.add_middleware(BrowserGuard, access=access, max_body_bytes=settings.max_body_bytes)
    relay_open = settings.relay and backend.settings.face.mode in ("relay", "both")

    @app.exception_handler(Denied)
    async def _denied(request: Request, exc: Denied) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.message, hint=exc.hint, headers=headers)

    @app.exception_handler(OutboxError)
    async def _outbox_error(request: Request, exc: OutboxError) -> JSONResponse:
        log.error("%s %s: outbox error: %s", request.method, request.url.path, exc.message)
        return _error(503, "the outbox cannot be read now", hint=exc.hint)

    @app.exception_handler(_BadQuery)
    async def _bad_query(request: Request, exc: _BadQuery) -> JSONResponse:
        return _error(422, "the request has unknown query parameters", problems=exc.problems)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
            problems.append((".".join(loc) or "(request)", err.get("msg", "invalid")))
        return _error(422, f"the request has {len(problems)} error(s)", problems=problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's "error parsing the body": one answer for every bad body
            return _error(422, "the body is not valid JSON", problems=[("(body)", str(exc.detail))])
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    # -- the page ---------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(
            page_html,
            headers={
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'unsafe-inline'; "
                "script-src 'unsafe-inline'; connect-src 'self'",
                "Referrer-Policy": "no-referrer",
            },
        )

    # -- /v1 --------------------------------------------------------------------------------------
    @app.post(
        "/v1/verifications",
        status_code=202,
        response_model=Accepted,
        summary="Relay a verification the terminal scored itself",
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": VERIFICATION_BODY_SCHEMA}}}
        },
        responses={
            **ERRORS,
            413: {"model": ErrorOut, "description": "body too large"},
            409: {"model": ErrorOut, "description": "Idempotency-Key already used for a different verification"},
            404: {"model": ErrorOut, "description": "relaying is off; the hint names the settings"},
            415: {"model": ErrorOut, "description": "body is not JSON"},
            422: {
                "model": ErrorOut,
                "description": "every bad field, as (field, rule); verifyTime too far from the agent's clock",
            },
            429: {"model": ErrorOut, "description": "more than [local_api] max_relay_per_min"},
            507: {
                "model": ErrorOut,
                "description": "the disk is full, the space left is kept for "
                "this device's captures, or too many relayed "
                "verifications wait: nothing was stored",
            },
        },
    )
    async def post_verification(
        request: Request,
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                min_length=1,
                max_length=200,
                pattern=r"^[\x21-\x7e]+$",
                description="a retried post with the same key returns the same id",
            ),
        ] = None,
    ) -> JSONResponse:
        if not relay_open:
            return _error(
                404,
                "relaying verifications is off on this agent",
                hint='it needs [face] mode = "relay" or "both" and [local_api] relay = true',
            )
        credential_write(request)
        _only_params(request)
        raw = await request.body()  # BrowserGuard checked its type, size and depth
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(422, "the body is not valid JSON", problems=[("(body)", f"not valid JSON: {exc}")])
        try:
            record_id = await run_in_threadpool(backend.submit, body, idempotency_key=idempotency_key)
        except RecordError as exc:
            return _error(422, exc.message, hint=exc.hint, problems=exc.problems)
        except RelayRateLimited as exc:
            return _error(429, str(exc), hint="[local_api] max_relay_per_min", headers={"Retry-After": "60"})
        except IdempotencyConflict as exc:
            return _error(
                409,
                str(exc),
                hint="use a new Idempotency-Key for each verification",
                problems=[("Idempotency-Key", "already used for a different verification")],
            )
        except StorageFull as exc:
            return _error(507, str(exc), hint=exc.hint)
        except OutboxError as exc:
            log.error("relayed verification not stored: %s", exc)
            return _error(503, "the verification could not be stored", hint=exc.hint)
        return JSONResponse({"id": record_id}, status_code=202)

    @app.get(
        "/v1/verifications/{record_id}",
        response_model=VerificationView,
        summary="One verification by its local id",
        responses={
            **ERRORS,
            404: {"model": ErrorOut, "description": "no such verification"},
            422: {"model": ErrorOut, "description": "bad parameters"},
        },
    )
    async def get_verification(
        request: Request,
        record_id: Annotated[int, Path(ge=1, le=MAX_ID)],
        photos: Annotated[bool, Query(description="include headImg/cameraImg (full-data token only)")] = False,
    ) -> VerificationView | JSONResponse:
        scope = access.require_api(request)
        _only_params(request, "photos")
        if photos and scope != "full":
            raise Denied(403, "photos need the full-data token", hint="[local_api] full_data_token")
        try:
            return await run_in_threadpool(backend.verification, record_id, full=scope == "full", photos=photos)
        except NotFound as exc:
            return _error(404, str(exc))

    @app.get(
        "/v1/verifications",
        response_model=VerificationList,
        summary="Recent verifications, newest first, optionally of one card and since a time",
        responses={**ERRORS, 422: {"model": ErrorOut, "description": "bad parameters"}},
    )
    async def list_verifications(
        request: Request,
        cardNo: Annotated[str | None, Query(min_length=1, max_length=18, pattern=r"^[0-9A-Za-z]+$")] = None,
        since: Annotated[
            dt.datetime | None,
            BeforeValidator(_calendar_time_only),
            Query(
                description="ISO 8601 time, yyyy-MM-dd HH:mm:ss or yyyy-MM-dd; Asia/Shanghai time when it has no offset"
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> dict[str, list[VerificationView]]:
        scope = access.require_api(request)
        _only_params(request, "cardNo", "since", "limit")
        since_dt = since if since is None or since.tzinfo is not None else since.replace(tzinfo=CHINA_TZ)
        items = await run_in_threadpool(backend.find, card_no=cardNo, since=since_dt, limit=limit, full=scope == "full")
        return {"items": items}

    @app.get(
        "/v1/status",
        summary="The same document as `fvagent status --json`",
        responses={**ERRORS, 200: {"content": {"application/json": {"schema": {"type": "object"}}}}},
    )
    async def get_status(request: Request) -> JSONResponse:
        access.require_api(request)
        _only_params(request)
        return JSONResponse(await run_in_threadpool(lambda: backend.status().to_json()))

    @app.get("/v1/operator", response_model=OperatorOut, summary="The current operationUser", responses=ERRORS)
    async def get_operator(request: Request) -> dict[str, str]:
        access.require_api(request)
        _only_params(request)
        return {"operator": backend.get_operator()}

    @app.put(
        "/v1/operator",
        response_model=OperatorOut,
        summary="Set the operationUser for the following verifications",
        responses={**ERRORS, 422: {"model": ErrorOut, "description": "bad operator"}},
    )
    async def put_operator(
        request: Request, body: OperatorIn, _: Annotated[str, Depends(credential_write)]
    ) -> dict[str, str] | JSONResponse:
        _only_params(request)
        return await _set_operator(body.operator)

    async def _set_operator(name: str) -> dict[str, str] | JSONResponse:
        try:
            return {"operator": await run_in_threadpool(backend.set_operator, name)}
        except RecordError as exc:
            return _error(422, exc.message, problems=exc.problems)
        except OSError as exc:
            log.error("operator not saved: %s", exc)
            return _error(
                503, "the operator could not be saved", hint="check the state directory's permissions and free space"
            )

    @app.get("/metrics", include_in_schema=False)
    async def get_metrics(request: Request) -> Response:
        # The /v1 rule, so a [local_api] token that guards the API guards the metrics too.
        access.require_api(request)
        if backend.metrics is None:
            return _error(404, "this agent serves no metrics", hint="GET /metrics is served by `fvagent run`")
        body = await run_in_threadpool(backend.metrics.render)
        return Response(body, media_type=METRICS_CONTENT_TYPE)

    # -- /ui: the page's data -------------------------------------------------------------------
    @app.get("/ui/status", include_in_schema=False)
    async def ui_status(request: Request) -> JsonObject:
        access.require_ui(request)
        return await run_in_threadpool(backend.page_status)

    # response_model=None: the answer is the operator or an error response, not one model
    @app.put("/ui/operator", include_in_schema=False, response_model=None)
    async def ui_operator(
        request: Request, body: OperatorIn, _: Annotated[str, Depends(page_write)]
    ) -> dict[str, str] | JSONResponse:
        return await _set_operator(body.operator)

    @app.get("/ui/followups", include_in_schema=False)
    async def ui_followups(
        request: Request,
        since: Annotated[dt.date | None, Query(description="yyyy-MM-dd, China time; default: every stored one")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 200,
    ) -> dict[str, list[JsonObject]]:
        access.require_ui(request)
        _only_params(request, "since", "limit")
        since_dt = dt.datetime.combine(since, dt.time(), CHINA_TZ) if since is not None else None
        return {"items": await run_in_threadpool(backend.follow_ups, since=since_dt, limit=limit)}

    # response_model=None: the answer is the mark or an error response, not one model
    @app.post("/ui/verifications/{record_id}/handover", include_in_schema=False, response_model=None)
    async def ui_handover(
        request: Request, record_id: Annotated[int, Path(ge=1, le=MAX_ID)], _: Annotated[str, Depends(page_write)]
    ) -> JsonObject | JSONResponse:
        _only_params(request)
        try:
            return await run_in_threadpool(backend.mark_handed_over, record_id)
        except NotFound as exc:
            return _error(404, str(exc))
        except RecordError as exc:
            return _error(422, exc.message, problems=exc.problems)

    @app.get("/ui/photos/{record_id}/{which}", include_in_schema=False)
    async def ui_photo(
        request: Request, record_id: Annotated[int, Path(ge=1, le=MAX_ID)], which: Literal["head", "camera"]
    ) -> Response:
        access.require_ui(request)
        try:
            data = await run_in_threadpool(backend.photo, record_id, which, max_age_s=UI_PHOTO_MAX_AGE_S)
        except NotFound as exc:
            return _error(404, str(exc))
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, no-store"})

    @app.get("/ui/events", include_in_schema=False)
    async def ui_events(request: Request) -> Response:
        access.require_ui(request)
        # the browser resends the last id it saw on reconnect: "<bus instance>.<seq>"; an id from an
        # earlier run of the agent (another instance) means "start afresh"
        instance, _, last_seq = (request.headers.get("last-event-id") or "").partition(".")
        replay_after: int | None
        if instance == backend.events.instance_id and last_seq.isdigit():
            replay_after = int(last_seq)
        else:
            recent = backend.events.recent(VERIFICATION, SSE_REPLAY)
            replay_after = recent[0].seq - 1 if recent else None
        sub = backend.events.subscribe(replay_after=replay_after)
        return StreamingResponse(
            _sse(request, backend, sub, app.state.shutdown),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    if access.token is not None:
        _declare_bearer(app)
    return app


def _declare_bearer(app: FastAPI) -> None:
    """Say in the OpenAPI document that every /v1 operation needs the bearer token."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:  # Any: FastAPI's app.openapi returns dict[str, Any]
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            doc.setdefault("components", {})["securitySchemes"] = {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "[local_api] token; full_data_token also unmasks personal data",
                }
            }
            for path, ops in doc.get("paths", {}).items():
                if path.startswith("/v1/"):
                    for op in ops.values():
                        op["security"] = [{"bearer": []}]
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


async def _sse(request: Request, backend: DeskBackend, sub: Any, shutdown: Any) -> Any:
    """The live feed: a status first, then each verification as it is committed, a status every few
    seconds (it doubles as a keep-alive), until the client leaves or the server stops."""
    try:
        yield "retry: 2000\n\n"
        yield _sse_frame("status", await run_in_threadpool(backend.page_status))
        next_status = time.monotonic() + SSE_STATUS_INTERVAL_S
        while not shutdown.is_set():
            event = await sub.next_event(min(1.0, max(0.0, next_status - time.monotonic())))
            if event is not None:
                if event.kind == VERIFICATION:
                    try:
                        item = await run_in_threadpool(backend.feed_item, event)
                    except Exception as exc:  # one unreadable row must not end every page's feed
                        log.warning("verification event %d not shown on the page: %s", event.seq, type(exc).__name__)
                        item = None
                    if item is not None:
                        yield _sse_frame(VERIFICATION, item, event_id=f"{backend.events.instance_id}.{event.seq}")
                    next_status = min(next_status, time.monotonic() + 0.5)  # the queue depth just changed
                else:
                    next_status = 0.0  # any other event (operator, status) refreshes the status bar
            if sub.dropped:
                log.debug("a slow page missed %d events", sub.dropped)
                sub.dropped = 0
            if time.monotonic() >= next_status:
                if await request.is_disconnected():
                    break
                yield _sse_frame("status", await run_in_threadpool(backend.page_status))
                next_status = time.monotonic() + SSE_STATUS_INTERVAL_S
    finally:  # also when the client leaves (the task is cancelled) or the server stops
        sub.close()


def _sse_frame(kind: str, data: dict[str, Any], *, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


__all__ = ["create_app"]
