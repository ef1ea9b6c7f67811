"""Every outcome class, end to end: the real ``PlatformClient`` against the real mock platform over
loopback, for each auth kind, with and without SM4, and under every fault the mock can inject.

One server per (auth kind, SM4) pair for the whole module; each test resets it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.config import ConventionSettings, PlatformSettings
from agent.mock_platform import Faults, MockPlatform, MockPlatformConfig
from agent.mock_platform.samples import sample_registration, sample_verification
from agent.uplink.client import PlatformClient
from core.outcome import OutcomeKind

ACCEPTED, REJECTED, BLOCKED, RETRYABLE = (
    OutcomeKind.ACCEPTED,
    OutcomeKind.REJECTED,
    OutcomeKind.BLOCKED,
    OutcomeKind.RETRYABLE,
)
KINDS = [(auth, sm4) for auth in ("static", "token", "oauth2") for sm4 in (False, True)]


def kind_ids(kinds: list[tuple[str, bool]]) -> list[str]:
    return [f"{a}-{'sm4' if s else 'plain'}" for a, s in kinds]


def only(*auth_kinds: str) -> pytest.MarkDecorator:
    """Run a test against the servers of these auth kinds only (tokens exist only for token/oauth2)."""
    kinds = [k for k in KINDS if k[0] in auth_kinds]
    return pytest.mark.parametrize("server", kinds, ids=kind_ids(kinds), indirect=True)


@pytest.fixture(scope="module", params=KINDS, ids=kind_ids(KINDS))
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockPlatform]:
    auth, sm4 = request.param
    with MockPlatform(
        MockPlatformConfig(auth_kind=auth, encrypt=sm4), tmp_path_factory.mktemp(f"{auth}{int(sm4)}") / "mock.db"
    ) as m:
        yield m


@pytest.fixture
def mock(server: MockPlatform) -> MockPlatform:
    server.reset()
    return server


def client_for(mock: MockPlatform, **overrides: Any) -> PlatformClient:
    return PlatformClient(mock.platform_settings(**overrides))


def registered(mock: MockPlatform, **overrides: Any) -> PlatformClient:
    client = client_for(mock, **overrides)
    assert client.register_device(sample_registration()).kind is ACCEPTED
    return client


def business_requests(mock: MockPlatform) -> list[dict[str, Any]]:
    return mock.requests("/first") + mock.requests("/machine/info")


# -- the four outcomes, for every auth kind with and without SM4 ---------------------------------------


def test_accepted_registration_and_upload_reach_the_platforms_database(mock: MockPlatform) -> None:
    with registered(mock) as client:
        outcome = client.upload_verification(sample_verification(1))
    assert outcome.kind is ACCEPTED and outcome.exception_code == "00000"
    assert outcome.platform_request_id == outcome.request_id
    [rec] = mock.records(include_images=True)
    assert rec["payload"] == sample_verification(1) and rec["encrypted"] is mock.config.encrypt
    assert rec["request_id"] == outcome.request_id


def test_b2301_counts_as_registered(mock: MockPlatform) -> None:
    with registered(mock) as client:
        again = client.register_device(sample_registration())
    assert again.kind is ACCEPTED and again.exception_code == "B2301"
    assert len(mock.records("registration")) == 1


def test_a2301_is_rejected_with_the_field_named(mock: MockPlatform) -> None:
    with registered(mock) as client:
        outcome = client.upload_verification(sample_verification(1, nationalCode="77"))
    assert outcome.kind is REJECTED and outcome.exception_code == "A2301"
    assert "nationalCode" in outcome.message
    assert mock.records() == []


def test_an_unregistered_device_is_told_to_register_not_rejected(mock: MockPlatform) -> None:
    with client_for(mock) as client:
        outcome = client.upload_verification(sample_verification(1))
    assert outcome.kind is OutcomeKind.UNREGISTERED and outcome.exception_code == "A2304"


def test_wrong_org_app_secret_is_blocked(mock: MockPlatform) -> None:
    with client_for(mock, org_app_secret="wrong-secret-016") as client:
        outcome = client.register_device(sample_registration())
    assert outcome.kind is BLOCKED
    assert mock.records("registration") == []


def test_wrong_credentials_are_blocked(mock: MockPlatform) -> None:
    auth = mock.platform_section()["auth"]
    field = {"static": "ticket", "token": "app_secret", "oauth2": "client_secret"}[mock.config.auth_kind]
    with client_for(mock, auth=auth | {field: "not-the-right-one"}) as client:
        outcome = client.register_device(sample_registration())
    assert outcome.kind is BLOCKED
    assert mock.records("registration") == []


def test_a_clock_far_off_is_a_clock_outcome_and_the_retry_carries_the_platforms_time(mock: MockPlatform) -> None:
    with PlatformClient(mock.platform_settings(), clock=lambda: time.time() - 1000) as client:
        outcome = client.register_device(sample_registration())
        assert outcome.kind is OutcomeKind.CLOCK and outcome.exception_code == "A2302"
        assert client.platform_clock.offset_s == pytest.approx(1000, abs=5)
        assert client.register_device(sample_registration()).kind is ACCEPTED


def test_platform_down_is_retryable(mock: MockPlatform) -> None:
    with registered(mock) as client:
        mock.set_faults(down=True)
        outcome = client.upload_verification(sample_verification(1))
        mock.set_faults(Faults())
        assert outcome.kind is RETRYABLE and outcome.http_status == 503
        assert client.upload_verification(sample_verification(1)).kind is ACCEPTED
    assert len(mock.records()) == 1


def test_platform_stopped_is_retryable(tmp_path: Any) -> None:
    """Connection refused: the platform's process is gone."""
    m = MockPlatform(MockPlatformConfig(), tmp_path / "m.db").start()
    settings = m.platform_settings()
    m.close()
    with PlatformClient(settings) as client:
        outcome = client.register_device(sample_registration())
    assert outcome.kind is RETRYABLE and "network error" in outcome.message


# -- tokens -------------------------------------------------------------------------------------------


@only("token", "oauth2")
def test_an_expired_token_is_refreshed_and_the_request_resent_once(mock: MockPlatform) -> None:
    with registered(mock) as client:
        fetched = client.auth.fetch_count  # type: ignore[attr-defined]
        assert mock.expire_tokens() >= 1
        outcome = client.upload_verification(sample_verification(1))
        assert outcome.kind is ACCEPTED
        assert client.auth.fetch_count == fetched + 1  # type: ignore[attr-defined]
    uploads = mock.requests("/first")
    assert [r["http_status"] for r in uploads] == [401, 200]
    assert len(mock.records()) == 1


@only("token", "oauth2")
def test_a_token_rejected_twice_blocks_without_a_third_try(mock: MockPlatform) -> None:
    with registered(mock) as client:
        mock.set_faults(reject_tokens=True)
        outcome = client.upload_verification(sample_verification(1))
    assert outcome.kind is BLOCKED
    assert [r["http_status"] for r in mock.requests("/first")] == [401, 401]


@only("static")
def test_static_ticket_rejected_is_blocked_without_a_resend(mock: MockPlatform) -> None:
    auth = mock.platform_section()["auth"] | {"ticket": "OLD-TICKET"}
    with client_for(mock, auth=auth) as client:
        assert client.register_device(sample_registration()).kind is BLOCKED
    assert len(mock.requests("/machine/info")) == 1


@only("token", "oauth2")
def test_token_endpoint_down_is_retryable(mock: MockPlatform) -> None:
    mock.set_faults(down=True)
    with client_for(mock) as client:
        outcome = client.register_device(sample_registration())
    assert outcome.kind is RETRYABLE and "Authorization" in outcome.message


# -- every fault mode -------------------------------------------------------------------------------------

FAULTS: list[tuple[str, dict[str, Any], str]] = [
    ("error_rate", {"error_rate": 1.0}, "HTTP 500"),
    ("5xx", {"status_5xx": 502}, "HTTP 502"),
    ("429", {"throttle_retry_after_s": 7}, "HTTP 429"),
    ("html_error", {"html_error": True}, "unreadable"),
    ("drop_connection", {"drop_connection": True}, "network error"),
    ("bad_response_sign", {"bad_response_sign": True}, "bad response signature"),
    ("truncated_reply", {"truncated_reply": True}, "network error"),
    ("down", {"down": True}, "HTTP 503"),
]


@pytest.mark.parametrize(("name", "faults", "says"), FAULTS, ids=[f[0] for f in FAULTS])
def test_each_fault_is_retryable_then_recovers(
    mock: MockPlatform, name: str, faults: dict[str, Any], says: str
) -> None:
    with registered(mock) as client:
        mock.set_faults(**faults)
        outcome = client.upload_verification(sample_verification(1))
        mock.set_faults(Faults())
        assert outcome.kind is RETRYABLE, outcome
        assert says in outcome.message
        if name == "429":
            assert outcome.retry_after_s == 7
        again = client.upload_verification(sample_verification(1))
        assert again.kind is ACCEPTED
    # a bad response signature or a cut reply hides an accepted request: that one arrives twice
    assert len(mock.records()) == (2 if name in ("bad_response_sign", "truncated_reply") else 1)


def test_latency_within_the_timeout_is_accepted_beyond_it_retryable(mock: MockPlatform) -> None:
    with registered(mock, timeout_s=0.3) as client:
        mock.set_faults(latency_s=0.1)
        t0 = time.monotonic()
        assert client.upload_verification(sample_verification(1)).kind is ACCEPTED
        assert time.monotonic() - t0 >= 0.1
        mock.set_faults(latency_s=0.6)
        outcome = client.upload_verification(sample_verification(2))
        mock.set_faults(Faults())
    assert outcome.kind is RETRYABLE and "timed out" in outcome.message


# -- conventions --------------------------------------------------------------------------------------------


def test_non_default_conventions_agree_end_to_end(tmp_path: Any) -> None:
    conventions = ConventionSettings(
        send_time_format="yyyy-MM-dd HH:mm:ss",
        sign_output="base64",
        sm4_key_mode="sm3_trunc16",
        cipher_encoding="hex_upper",
        json_ensure_ascii=True,
        verify_response_sign="required",
    )
    cfg = MockPlatformConfig(org_app_secret="a secret that is not sixteen bytes", conventions=conventions, encrypt=True)
    with MockPlatform(cfg, tmp_path / "m.db") as m, PlatformClient(m.platform_settings()) as client:
        assert client.register_device(sample_registration()).kind is ACCEPTED
        assert client.upload_verification(sample_verification(5)).kind is ACCEPTED
        # a client reading one convention differently is refused as a whole: blocked
        other = PlatformSettings.model_validate(
            m.platform_section(conventions=conventions.model_dump() | {"sign_output": "hex"})
        )
        with PlatformClient(other) as wrong:
            assert wrong.upload_verification(sample_verification(6)).kind is BLOCKED
    assert len(m.records()) == 1


def test_unsigned_responses_are_retryable_when_the_signature_is_required(tmp_path: Any) -> None:
    cfg = MockPlatformConfig(sign_responses=False, require_registration=False)
    with MockPlatform(cfg, tmp_path / "m.db") as m:
        strict = m.platform_section(conventions={"verify_response_sign": "required"})
        with PlatformClient(PlatformSettings.model_validate(strict)) as client:
            assert client.upload_verification(sample_verification(1)).kind is RETRYABLE
        with PlatformClient(m.platform_settings()) as client:  # auto: no signature, nothing to check
            assert client.upload_verification(sample_verification(2)).kind is ACCEPTED


def test_an_outage_and_back_at_the_same_url(tmp_path: Any) -> None:
    """stop() then start() on the same object: connection refused in between, then the same URL
    serves again with what it stored."""
    with MockPlatform(MockPlatformConfig(), tmp_path / "m.db") as m, PlatformClient(m.platform_settings()) as client:
        url = m.url
        assert client.register_device(sample_registration()).kind is ACCEPTED
        m.stop()
        assert client.upload_verification(sample_verification(1)).kind is RETRYABLE
        m.start()
        assert m.url == url
        assert client.upload_verification(sample_verification(1)).kind is ACCEPTED
        assert len(m.records("registration")) == 1 and len(m.records()) == 1
