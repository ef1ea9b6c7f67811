"""The mock platform's own checks, over real HTTP on loopback: headers, signature, sendTime,
Authorization, SM4, every field, A2301/B2301, the admin endpoints, faults, persistence, the CLI.

Requests here are built by hand with ``Conventions`` (the agent's own signing code) so that each
can break exactly one thing; test_client_vs_mock.py drives the real ``PlatformClient``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.config import ConventionSettings
from agent.mock_platform import Faults, MockPlatform, MockPlatformConfig
from agent.mock_platform.samples import sample_registration, sample_verification
from agent.uplink.conventions import (
    HEADER_AUTHORIZATION,
    HEADER_ORG_APP_ID,
    HEADER_REQUEST_ID,
    HEADER_SIGN,
    HEADER_TIME,
    Conventions,
)

ROOT = Path(__file__).resolve().parent.parent
REGISTER = "/machine/info"
_HTTP = httpx.Client(timeout=10)  # one pool for the module: building a client per request costs ~30 ms
VERIFY = "/verification/pregnant_woman/first"


def send(
    mock: MockPlatform,
    path: str,
    payload: Any,
    *,
    secret: str | None = None,
    at: float | None = None,
    headers: dict[str, str | None] | None = None,
    body: bytes | None = None,
    encrypt: bool | None = None,
    authorization: str | None = None,
) -> httpx.Response:
    """One signed request to ``mock``; ``headers`` values replace (None removes) a header."""
    cfg = mock.config
    conv = Conventions(cfg.conventions, cfg.org_app_id, secret if secret is not None else cfg.org_app_secret)
    send_time = conv.send_time(at if at is not None else time.time())
    h: dict[str, str | None] = dict(
        conv.request_headers(uuid.uuid4().hex, send_time, authorization if authorization is not None else cfg.ticket)
    )
    for name, value in (headers or {}).items():
        h[name] = value
    if body is None:
        body = conv.request_body(payload, encrypt=cfg.encrypt if encrypt is None else encrypt)
    sent = {k: v for k, v in h.items() if v is not None}
    return _HTTP.post(mock.url + path, content=body, headers=sent)


def register(mock: MockPlatform, **kw: Any) -> httpx.Response:
    return send(mock, REGISTER, sample_registration(**kw))


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockPlatform]:
    with MockPlatform(MockPlatformConfig(), tmp_path_factory.mktemp("mock") / "mock.db") as m:
        yield m


@pytest.fixture
def fresh(mock: MockPlatform) -> MockPlatform:
    """The shared server, emptied, with the sample device registered."""
    mock.reset()
    assert register(mock).json()["exceptionCode"] == "00000"
    return mock


@pytest.fixture(scope="module")
def sm4_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockPlatform]:
    with MockPlatform(MockPlatformConfig(encrypt=True), tmp_path_factory.mktemp("sm4") / "mock.db") as m:
        yield m


# -- the envelope and the business answers ---------------------------------------------------------


def test_registration_is_accepted_with_the_spec_envelope_signed(mock: MockPlatform) -> None:
    mock.reset()
    before = int(time.time() * 1000)
    resp = register(mock)
    body = resp.json()
    assert resp.status_code == 200
    assert body["code"] == 200 and body["exceptionCode"] == "00000" and body["data"] is None
    assert set(body) == {"code", "msg", "exceptionCode", "requestId", "returnTime", "data"}
    assert body["requestId"] == resp.request.headers[HEADER_REQUEST_ID]
    assert before - 1000 <= body["returnTime"] <= int(time.time() * 1000) + 1000
    conv = Conventions(ConventionSettings(), mock.config.org_app_id, mock.config.org_app_secret)
    assert conv.verify_sign(resp.headers[HEADER_TIME], resp.headers[HEADER_SIGN])
    [reg] = mock.records("registration")
    assert reg["machineCode"] == "MOCK0001" and reg["payload"]["deptName"] == "妇产科"


def test_second_registration_is_b2301_and_keeps_the_first(fresh: MockPlatform) -> None:
    body = register(fresh, device_no="SN-OTHER").json()
    assert body["exceptionCode"] == "B2301" and body["code"] != 200
    [reg] = fresh.records("registration")
    assert reg["deviceNo"] == "SN-MOCK-0001"


def test_a_valid_verification_is_stored(fresh: MockPlatform) -> None:
    resp = send(fresh, VERIFY, sample_verification(3))
    assert resp.json()["exceptionCode"] == "00000"
    [rec] = fresh.records()
    assert rec["cardNo"] == sample_verification(3)["cardNo"] and rec["encrypted"] is False
    assert rec["payload"]["headImg"].startswith("<")  # images left out unless asked for
    assert fresh.records(include_images=True)[0]["payload"]["headImg"] == sample_verification(3)["headImg"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sexCode", "01"),
        ("cardNo", "450203199203011000"),
        ("faceScore", 1.5),
        ("verifyTime", "2024-06-11T08:00:00"),
        ("headImg", "aGVsbG8="),
        ("nationalCode", "99"),
        ("realName", "超" * 11),
    ],
)
def test_a_bad_field_is_a2301_naming_it_and_nothing_is_stored(fresh: MockPlatform, field: str, value: Any) -> None:
    body = send(fresh, VERIFY, sample_verification(1, **{field: value})).json()
    assert body["exceptionCode"] == "A2301" and body["code"] != 200
    assert f"{field}:" in body["msg"]
    assert fresh.records() == []


def test_every_bad_field_is_named_and_a_missing_one_too(fresh: MockPlatform) -> None:
    payload = sample_verification(1, faceResult=7, sexName="男")
    del payload["police"]
    msg = send(fresh, VERIFY, payload).json()["msg"]
    for field in ("faceResult:", "sexName:", "police:"):
        assert field in msg


def test_registration_fields_are_validated(fresh: MockPlatform) -> None:
    fresh.reset()
    body = send(fresh, REGISTER, sample_registration() | {"purchaseTime": "2024/01/02", "status": 5}).json()
    assert body["exceptionCode"] == "A2301" and "purchaseTime:" in body["msg"] and "status:" in body["msg"]
    assert fresh.records("registration") == []


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b""])
def test_a_body_that_is_no_json_object_is_a2301(fresh: MockPlatform, body: bytes) -> None:
    assert send(fresh, VERIFY, None, body=body).json()["exceptionCode"] == "A2301"


def test_an_unregistered_or_disabled_device_has_its_code_and_a_mismatch_is_a2301(mock: MockPlatform) -> None:
    mock.reset()
    body = send(mock, VERIFY, sample_verification(1)).json()
    assert body["exceptionCode"] == "A2304" and "machineCode:" in body["msg"]
    register(mock)
    body = send(mock, VERIFY, sample_verification(1, device_no="SN-ELSE")).json()
    assert body["exceptionCode"] == "A2301" and "deviceNo:" in body["msg"]
    register(mock, machine_code="OFF0001", status=1)
    body = send(mock, VERIFY, sample_verification(1, machine_code="OFF0001")).json()
    assert body["exceptionCode"] == "A2305" and "disabled" in body["msg"]
    assert mock.records() == []


# -- headers, signature, time, Authorization ---------------------------------------------------------


@pytest.mark.parametrize(
    "header", [HEADER_SIGN, HEADER_TIME, HEADER_REQUEST_ID, HEADER_ORG_APP_ID, HEADER_AUTHORIZATION]
)
def test_each_missing_header_is_refused_by_name(fresh: MockPlatform, header: str) -> None:
    resp = send(fresh, VERIFY, sample_verification(1), headers={header: None})
    expected = 401 if header == HEADER_AUTHORIZATION else 403
    assert resp.status_code == expected and resp.json()["code"] == expected
    assert header in resp.json()["msg"]
    assert fresh.records() == []


def test_a_wrong_signature_is_refused(fresh: MockPlatform) -> None:
    resp = send(fresh, VERIFY, sample_verification(1), secret="another-secret-1")
    assert resp.status_code == 403 and "签名" in resp.json()["msg"]
    resp = send(fresh, VERIFY, sample_verification(1), headers={HEADER_SIGN: "00" * 32})
    assert resp.status_code == 403
    assert fresh.records() == []


def test_the_signature_covers_the_time(fresh: MockPlatform) -> None:
    """A signature replayed with another sendTime does not verify."""
    conv = Conventions(ConventionSettings(), fresh.config.org_app_id, fresh.config.org_app_secret)
    old = conv.send_time(time.time() - 5)
    resp = send(fresh, VERIFY, sample_verification(1), headers={HEADER_SIGN: conv.sign(old)})
    assert resp.status_code == 403


def test_an_unknown_org_app_id_is_refused(fresh: MockPlatform) -> None:
    assert send(fresh, VERIFY, sample_verification(1), headers={HEADER_ORG_APP_ID: "SOMEONE-ELSE"}).status_code == 403


@pytest.mark.parametrize(("offset_s", "ok"), [(-200, True), (250, True), (-310, False), (400, False), (-86400, False)])
def test_send_time_must_be_within_the_tolerance(fresh: MockPlatform, offset_s: float, ok: bool) -> None:
    resp = send(fresh, VERIFY, sample_verification(1), at=time.time() + offset_s)
    assert (resp.json()["exceptionCode"] == "00000") is ok
    if not ok:
        assert resp.status_code == 403 and "hmpt-portal-time" in resp.json()["msg"]


def test_a_send_time_in_another_format_is_refused(fresh: MockPlatform) -> None:
    conv = Conventions(ConventionSettings(), fresh.config.org_app_id, fresh.config.org_app_secret)
    text = time.strftime("%Y%m%d%H%M%S")
    resp = send(fresh, VERIFY, sample_verification(1), headers={HEADER_TIME: text, HEADER_SIGN: conv.sign(text)})
    assert resp.status_code == 403 and "format" in resp.json()["msg"]


def test_a_wrong_ticket_is_401(fresh: MockPlatform) -> None:
    resp = send(fresh, VERIFY, sample_verification(1), authorization="NOT-THE-TICKET")
    assert resp.status_code == 401 and resp.json()["code"] == 401


def test_unknown_paths_are_404_and_a_base_url_prefix_works(fresh: MockPlatform) -> None:
    assert httpx.post(fresh.url + "/machine/other", content=b"{}").status_code == 404
    assert send(fresh, "/api/v1" + VERIFY, sample_verification(2)).json()["exceptionCode"] == "00000"
    assert httpx.get(fresh.url + REGISTER).status_code == 405


# -- SM4 ---------------------------------------------------------------------------------------------


def test_encrypted_body_is_opened_and_stored(sm4_mock: MockPlatform) -> None:
    sm4_mock.reset()
    assert register(sm4_mock).json()["exceptionCode"] == "00000"
    assert send(sm4_mock, VERIFY, sample_verification(4)).json()["exceptionCode"] == "00000"
    assert sm4_mock.records()[0]["encrypted"] is True


@pytest.mark.parametrize(
    "body",
    [
        b'{"data": "bm90IGJsb2NrIGFsaWduZWQ="}',  # base64, not whole blocks
        b'{"data": "%%% not base64"}',
        b'{"data": "AAAAAAAAAAAAAAAAAAAAAA=="}',  # one block of zeros: bad padding
    ],
)
def test_an_undecryptable_body_is_refused_not_a2301(sm4_mock: MockPlatform, body: bytes) -> None:
    resp = send(sm4_mock, REGISTER, None, body=body)
    assert resp.status_code == 403 and "解密失败" in resp.json()["msg"]


def test_a_body_encrypted_with_another_key_is_refused(sm4_mock: MockPlatform) -> None:
    other = Conventions(ConventionSettings(), sm4_mock.config.org_app_id, "another-secret-1")
    body = other.request_body(sample_registration(), encrypt=True)
    assert send(sm4_mock, REGISTER, None, body=body).status_code == 403


def test_a_plain_body_is_refused_when_encryption_is_on(sm4_mock: MockPlatform) -> None:
    resp = send(sm4_mock, REGISTER, sample_registration(), encrypt=False)
    assert resp.status_code == 403 and "加密" in resp.json()["msg"]


def test_an_encrypted_body_is_a2301_when_encryption_is_off(fresh: MockPlatform) -> None:
    body = send(fresh, VERIFY, sample_verification(1), encrypt=True).json()
    assert body["exceptionCode"] == "A2301" and "cardNo:" in body["msg"]


# -- token endpoints ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_mock() -> Iterator[MockPlatform]:
    with MockPlatform(MockPlatformConfig(auth_kind="token", token_lifetime_s=600)) as m:
        yield m


def test_access_token_endpoint_issues_tokens_that_authorize(token_mock: MockPlatform) -> None:
    url = token_mock.url + "/auth/accesstoken/create"
    assert httpx.get(url, params={"appKey": "demo-app-key", "appSecret": "wrong"}).status_code == 401
    reply = httpx.get(url, params={"appKey": "demo-app-key", "appSecret": "demo-app-secret"}).json()
    token = reply["data"]["access_token"]
    assert reply["data"]["expires_in"] == 600
    assert send(token_mock, REGISTER, sample_registration(), authorization=token).json()["code"] in (200, 409)
    assert send(token_mock, REGISTER, sample_registration(), authorization="made-up").status_code == 401
    assert token_mock.expire_tokens() >= 1
    assert send(token_mock, REGISTER, sample_registration(), authorization=token).status_code == 401


def test_oauth2_endpoint_follows_client_credentials() -> None:
    with MockPlatform(MockPlatformConfig(auth_kind="oauth2")) as m:
        url = m.url + "/connect/token"
        form = {"grant_type": "client_credentials", "client_id": "demo-client", "client_secret": "demo-client-secret"}
        assert httpx.post(url, data=form | {"grant_type": "password"}).json() == {"error": "unsupported_grant_type"}
        assert httpx.post(url, data=form | {"client_secret": "x"}).json() == {"error": "invalid_client"}
        reply = httpx.post(url, data=form).json()
        assert reply["token_type"].lower() == "bearer" and reply["expires_in"] == 86400
        token = reply["access_token"]
        assert send(m, REGISTER, sample_registration(), authorization=f"bearer {token}").json()["code"] == 200
        assert send(m, REGISTER, sample_registration(), authorization=token).status_code == 401  # no scheme
        # a token of the other kind's endpoint does not authorize here
        other = httpx.get(
            m.url + "/auth/accesstoken/create", params={"appKey": "demo-app-key", "appSecret": "demo-app-secret"}
        ).json()["data"]["access_token"]
        assert send(m, REGISTER, sample_registration(), authorization=f"bearer {other}").status_code == 401


# -- admin endpoints and faults --------------------------------------------------------------------------


def test_admin_faults_endpoint_sets_validates_and_clears(fresh: MockPlatform) -> None:
    bad = httpx.post(fresh.url + "/_mock/faults", json={"dwon": True})
    assert bad.status_code == 422 and "dwon" in json.dumps(bad.json())
    assert httpx.post(fresh.url + "/_mock/faults", json={"error_rate": 2}).status_code == 422
    assert httpx.post(fresh.url + "/_mock/faults", json={"down": True}).json()["down"] is True
    assert fresh.faults.down
    resp = send(fresh, VERIFY, sample_verification(1))
    assert resp.status_code == 503
    assert httpx.get(fresh.url + "/auth/accesstoken/create").status_code == 503  # down refuses everything
    assert httpx.get(fresh.url + "/_mock/stats").status_code == 200  # but not the admin endpoints
    httpx.post(fresh.url + "/_mock/faults", json={"down": False})
    assert send(fresh, VERIFY, sample_verification(1)).json()["exceptionCode"] == "00000"


def test_admin_records_and_stats_count_duplicates_and_requests(fresh: MockPlatform) -> None:
    for n in (1, 2, 1):
        assert send(fresh, VERIFY, sample_verification(n)).json()["exceptionCode"] == "00000"
    send(fresh, VERIFY, sample_verification(3, sexCode="01"))
    stats = httpx.get(fresh.url + "/_mock/stats").json()
    assert stats["verifications"] == 3 and stats["distinct_verifications"] == 2
    assert stats["duplicate_verifications"] == 1 and stats["registrations"] == 1
    assert stats["requests"] == 5 and stats["by_answer"]["200/A2301"] == 1
    assert stats["repeated_request_ids"] == 0
    records = httpx.get(fresh.url + "/_mock/records").json()
    assert [r["cardNo"] for r in records] == [sample_verification(n)["cardNo"] for n in (1, 2, 1)]
    assert "base64 characters" in records[0]["payload"]["cameraImg"]
    key = (records[0]["machineCode"], records[0]["cardNo"], records[0]["verifyTime"])
    assert fresh.duplicates() == {key: 2} and fresh.delivered()[key] == 2
    assert len(fresh.request_times("/first")) == 4
    assert (
        httpx.get(fresh.url + "/_mock/records", params={"kind": "registration"}).json()[0]["machineCode"] == "MOCK0001"
    )


def test_latency_delays_the_answer(fresh: MockPlatform) -> None:
    fresh.set_faults(latency_s=0.3)
    t0 = time.monotonic()
    assert send(fresh, VERIFY, sample_verification(1)).json()["exceptionCode"] == "00000"
    assert time.monotonic() - t0 >= 0.3
    fresh.set_faults(Faults())


def test_error_rate_fails_about_that_fraction(tmp_path: Path) -> None:
    with MockPlatform(MockPlatformConfig(seed=7, faults=Faults(error_rate=0.5), require_registration=False)) as m:
        statuses = [send(m, VERIFY, sample_verification(n)).status_code for n in range(40)]
    failed = statuses.count(500)
    assert failed + statuses.count(200) == 40
    assert 8 <= failed <= 32  # seed 7: deterministic, and far from all-or-nothing


def test_drop_connection_reads_the_body_and_answers_nothing(fresh: MockPlatform) -> None:
    fresh.set_faults(drop_connection=True)
    with pytest.raises(httpx.RemoteProtocolError):
        send(fresh, VERIFY, sample_verification(1))
    fresh.set_faults(Faults())
    [row] = [r for r in fresh.requests("/first")]
    assert row["http_status"] is None and "dropped" in row["msg"]
    assert fresh.records() == []


def test_bad_response_sign_and_unsigned_responses(fresh: MockPlatform) -> None:
    conv = Conventions(ConventionSettings(), fresh.config.org_app_id, fresh.config.org_app_secret)
    fresh.set_faults(bad_response_sign=True)
    resp = send(fresh, VERIFY, sample_verification(1))
    fresh.set_faults(Faults())
    assert resp.json()["exceptionCode"] == "00000"  # the request was taken: only the reply's signature is off
    assert not conv.verify_sign(resp.headers[HEADER_TIME], resp.headers[HEADER_SIGN])


# -- persistence and the CLI --------------------------------------------------------------------------------


def test_the_database_survives_a_restart_on_the_same_port(tmp_path: Path) -> None:
    db = tmp_path / "mock.db"
    with MockPlatform(MockPlatformConfig(), db) as first:
        port = first.port
        register(first)
        send(first, VERIFY, sample_verification(9))
    with MockPlatform(MockPlatformConfig(port=port), db) as second:
        assert second.url == f"http://127.0.0.1:{port}"
        assert register(second).json()["exceptionCode"] == "B2301"
        assert send(second, VERIFY, sample_verification(9)).json()["exceptionCode"] == "00000"
        assert second.stats()["duplicate_verifications"] == 1


def test_settings_helper_builds_a_matching_platform_section() -> None:
    cfg = MockPlatformConfig(auth_kind="oauth2", encrypt=True)
    with MockPlatform(cfg) as m:
        settings = m.platform_settings(enabled=False)
        assert settings.base_url == m.url and settings.encrypt and not settings.enabled
        assert settings.auth.kind == "oauth2" and settings.auth.token_url == m.url + "/connect/token"
        assert settings.org_app_secret.get_secret_value() == cfg.org_app_secret


def test_cli_serves_with_the_agent_configs_credentials_and_stops_on_sigterm(tmp_path: Path) -> None:
    agent_cfg = tmp_path / "fvagent.toml"
    agent_cfg.write_text(
        """
[device]
machine_code = "MOCK0001"
device_no = "SN-MOCK-0001"
manufacturer = "演示厂商"
model = "DEMO-R3"
purchase_date = 2024-01-02
dept_id = "D-OB-01"
dept_name = "妇产科"
register_user = "设备管理员"
operator = "演示护士"

[platform]
base_url = "http://127.0.0.1:9"
allow_plain_http = true
org_app_id = "SITE-APP-7"
org_app_secret = "site-secret-0007"
encrypt = true

[platform.auth]
kind = "static"
ticket = "SITE-TICKET"

[storage]
dir = "state"
""",
        encoding="utf-8",
    )
    agent_cfg.chmod(0o600)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "mock-platform",
            "--port",
            "0",
            "--db",
            str(tmp_path / "cli.db"),
            "--config",
            str(agent_cfg),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Ctrl-C" in line or not line:
                break
        text = "".join(lines)
        url = text.split("listening on ", 1)[1].split()[0]
        assert "site-secret-0007" not in text and "SITE-TICKET" not in text  # secrets stay in the config
        assert f'base_url = "{url}"' in text
        cfg = MockPlatformConfig(
            org_app_id="SITE-APP-7", org_app_secret="site-secret-0007", ticket="SITE-TICKET", encrypt=True
        )
        probe = MockPlatform(cfg)  # only to borrow send(): point it at the CLI's server
        probe._port = int(url.rsplit(":", 1)[1])
        assert send(probe, REGISTER, sample_registration()).json()["exceptionCode"] == "00000"
        probe.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0


def test_store_images_off_keeps_only_their_length() -> None:
    with MockPlatform(MockPlatformConfig(store_images=False, require_registration=False)) as m:
        assert send(m, VERIFY, sample_verification(1)).json()["exceptionCode"] == "00000"
        [rec] = m.records(include_images=True)
    assert rec["payload"]["headImg"] == f"<{len(sample_verification(1)['headImg'])} base64 characters>"
    assert rec["payload"]["cardNo"] == sample_verification(1)["cardNo"]


def test_cli_names_a_port_in_use(tmp_path: Path) -> None:
    with MockPlatform() as busy:
        proc = subprocess.run(
            [sys.executable, "-m", "agent", "mock-platform", "--port", str(busy.port), "--db", str(tmp_path / "m.db")],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
    assert proc.returncode == 1
    assert f"127.0.0.1:{busy.port}" in proc.stderr and "--port" in proc.stderr


def test_truncated_reply_stores_the_record_then_cuts_the_answer(fresh: MockPlatform) -> None:
    fresh.set_faults(truncated_reply=True)
    with pytest.raises(httpx.RemoteProtocolError):
        send(fresh, VERIFY, sample_verification(1))
    fresh.set_faults(Faults())
    assert len(fresh.records()) == 1
