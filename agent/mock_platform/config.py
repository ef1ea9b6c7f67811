"""What the mock platform is told at start: credentials, auth kind, conventions, faults.

The demo credentials below are the ones ``fvagent mock-platform`` uses when no agent config is
given; they are documented in docs/mock-platform.md and are worthless anywhere else.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.config import ConventionSettings, PlatformSettings
from core.records import JsonObject

DEMO_ORG_APP_ID = "DEMO-ORG-APP"
DEMO_ORG_APP_SECRET = "demo-secret-0001"  # 16 characters: an SM4 key under sm4_key_mode = "auto"
DEMO_TICKET = "DEMO-ESB-TICKET"
DEMO_APP_KEY = "demo-app-key"
DEMO_APP_SECRET = "demo-app-secret"
DEMO_CLIENT_ID = "demo-client"
DEMO_CLIENT_SECRET = "demo-client-secret"

PATH_REGISTER = "/machine/info"
PATH_VERIFICATION = "/verification/pregnant_woman/first"
PATH_ACCESS_TOKEN = "/auth/accesstoken/create"
PATH_OAUTH2_TOKEN = "/connect/token"


class Faults(BaseModel):
    """Fault injection. Unless noted, a fault applies to the two business endpoints only, so a
    test can break uploads while tokens still work; ``down`` applies to every non-admin path."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    down: bool = False
    """Refuse everything (HTTP 503, token endpoints included): the platform is out."""
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Fraction of business requests that fail with ``error_status`` (random, see ``seed``)."""
    error_status: int = Field(default=500, ge=500, le=599)
    """The HTTP status of an ``error_rate`` failure (a JSON envelope with the same code)."""
    status_5xx: int | None = Field(default=None, ge=500, le=599)
    """Every business request answers this 5xx status."""
    throttle_retry_after_s: float | None = Field(default=None, ge=0)
    """Every business request answers 429 with ``Retry-After`` set to this many seconds."""
    latency_s: float = Field(default=0.0, ge=0.0, le=600.0)
    """Added before every business request is answered."""
    drop_connection: bool = False
    """Read the whole request body, then close the connection without answering."""
    truncated_reply: bool = False
    """Process the request (an upload is stored), then send only half of the answer's body and
    close the connection: the agent cannot know it was accepted."""
    html_error: bool = False
    """Answer HTTP 200 with an HTML error page (a proxy or gateway page) instead of the envelope."""
    bad_response_sign: bool = False
    """Sign responses with a wrong signature."""
    reject_tokens: bool = False
    """Treat every token as expired (401) even right after issuing it."""


class MockPlatformConfig(BaseModel):
    """The mock platform's credentials and behaviour. The defaults are the demo credentials."""

    model_config = ConfigDict(extra="forbid")

    org_app_id: str = DEMO_ORG_APP_ID
    org_app_secret: str = DEMO_ORG_APP_SECRET
    auth_kind: Literal["static", "token", "oauth2"] = "static"
    """Which Authorization the business endpoints expect (as ``[platform.auth] kind``)."""
    ticket: str = DEMO_TICKET
    """static: the ESB ticket, compared as is."""
    app_key: str = DEMO_APP_KEY
    """token: the app key the access-token endpoint accepts."""
    app_secret: str = DEMO_APP_SECRET
    """token: the app secret the access-token endpoint accepts."""
    token_key_param: str = "appKey"
    token_secret_param: str = "appSecret"
    client_id: str = DEMO_CLIENT_ID
    """oauth2: the client_id the /connect/token endpoint accepts."""
    client_secret: str = DEMO_CLIENT_SECRET
    token_lifetime_s: float = Field(default=86400.0, gt=0)
    """Lifetime of an issued token (seed 003: one day)."""
    conventions: ConventionSettings = ConventionSettings()
    """The open conventions, read exactly as the agent reads them (``agent.uplink.conventions``)."""
    encrypt: bool = False
    """Request bodies must be SM4-encrypted ``{"data": ...}`` (and plain JSON is refused)."""
    sign_responses: bool = True
    """Put ``hmpt-portal-sign``/``hmpt-portal-time`` on every response."""
    store_images: bool = True
    """Keep headImg/cameraImg/fingerCollectImg in the database (False: only their length, for long
    benches where a few GB of photos would only cost time)."""
    require_registration: bool = True
    """Refuse a verification whose machineCode/deviceNo was not registered (A2301)."""
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    """0: pick a free port."""
    faults: Faults = Faults()
    """Faults active from the start."""
    seed: int | None = None
    """Seed of the ``error_rate`` dice (None: random)."""
    clock_offset_s: float = 0.0
    """The platform's clock minus the real one: returnTime, its signatures and its sendTime check
    use it (a platform, or a terminal, whose clock is off)."""


def platform_section(config: MockPlatformConfig, url: str, **overrides: object) -> JsonObject:
    """The agent's ``[platform]`` table (with ``auth`` and ``conventions``) that talks to a mock
    platform at ``url`` configured by ``config``; ``overrides`` replace top-level keys
    (e.g. ``enabled=False``). Ready for TOML or ``PlatformSettings.model_validate``."""
    auth: dict[str, Any] = {"kind": config.auth_kind}
    if config.auth_kind == "static":
        auth["ticket"] = config.ticket
    elif config.auth_kind == "token":
        auth.update(
            token_url=url + PATH_ACCESS_TOKEN,
            app_key=config.app_key,
            app_secret=config.app_secret,
            token_key_param=config.token_key_param,
            token_secret_param=config.token_secret_param,
        )
    else:
        auth.update(token_url=url + PATH_OAUTH2_TOKEN, client_id=config.client_id, client_secret=config.client_secret)
    section: dict[str, Any] = {
        "base_url": url,
        "org_app_id": config.org_app_id,
        "org_app_secret": config.org_app_secret,
        "encrypt": config.encrypt,
        "auth": auth,
        "conventions": config.conventions.model_dump(),
        "environment": "test",  # a mock: records of the fake drivers may go to it
        "allow_plain_http": url.startswith("http://"),  # the mock serves plain HTTP on loopback
    }
    section.update(overrides)
    return section


def platform_settings(config: MockPlatformConfig, url: str, **overrides: object) -> PlatformSettings:
    """``PlatformSettings`` for an agent that talks to the mock platform at ``url``."""
    return PlatformSettings.model_validate(platform_section(config, url, **overrides))
