"""A stand-in for the provincial platform: a real HTTP server that checks what the real one checks.

It serves ``POST /machine/info``, ``POST /verification/pregnant_woman/first``, the access-token
endpoint of seed 003 (``GET /auth/accesstoken/create``) and the OAuth2 endpoint of seed 004
(``POST /connect/token``); verifies the five headers, the HMAC-SM3 signature and sendTime with the
agent's own ``Conventions``; decrypts SM4 bodies; validates every field with ``core.records``;
answers 00000 / A2301 / B2301; signs its responses; keeps what it accepted in its own SQLite; and
injects faults on demand. See docs/mock-platform.md.

``MockPlatform`` runs it in a thread (tests, the demo); ``fvagent mock-platform`` runs it as a
process (technicians, benches).
"""

from agent.mock_platform.config import (
    DEMO_APP_KEY,
    DEMO_APP_SECRET,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_ORG_APP_ID,
    DEMO_ORG_APP_SECRET,
    DEMO_TICKET,
    Faults,
    MockPlatformConfig,
    platform_section,
    platform_settings,
)
from agent.mock_platform.server import MockPlatform

__all__ = [
    "DEMO_APP_KEY",
    "DEMO_APP_SECRET",
    "DEMO_CLIENT_ID",
    "DEMO_CLIENT_SECRET",
    "DEMO_ORG_APP_ID",
    "DEMO_ORG_APP_SECRET",
    "DEMO_TICKET",
    "Faults",
    "MockPlatform",
    "MockPlatformConfig",
    "platform_section",
    "platform_settings",
]
