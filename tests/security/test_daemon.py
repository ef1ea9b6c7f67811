"""Attacks through the daemon and its configuration: simulated people sent to the real platform,
a second daemon on the same outbox, a careless installer's config, a plain-HTTP platform.

Real processes (`fvagent run`, `fvagent config check`), the real mock platform on loopback, real
outboxes. Synthetic identities only (the fake reader's shipped sample cards).
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.config import parse_config
from agent.mock_platform import MockPlatform
from agent.service import samples
from core.errors import ConfigError
from tests.test_localapi import API_TOKEN, open_outbox, verification_body
from tests.waiting import daemon_api_url, wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "fvagent.example.toml"
SIMULATED_HELD_REASON = "simulated record: not sent to a production platform"
"""The held reason issue 10 names."""
FAKE_CARDS = 3
"""The fake reader's shipped sample cards, each presented once."""


@pytest.fixture
def mock() -> Iterator[MockPlatform]:
    platform = MockPlatform().start()
    try:
        yield platform
    finally:
        platform.stop()


def agent_doc(tmp_path: Path, mock: MockPlatform, *, environment: str) -> dict[str, Any]:
    """Fake reader and camera, relay mode (no face engine to load), relay ingest on, the mock platform."""
    return {
        "device": {
            "machine_code": "SEC-TSR-0001",
            "device_no": "0001",
            "manufacturer": "测试厂商",
            "model": "T-1",
            "purchase_date": "2024-06-01",
            "dept_id": "0601",
            "dept_name": "妇产科",
            "register_user": "测试员",
            "operator": "测试护士",
        },
        "platform": {**mock.platform_section(), "environment": environment, "timeout_s": 3.0, "connect_timeout_s": 1.0},
        "storage": {"dir": str(tmp_path / "state")},
        "uploader": {"backoff_initial_s": 0.05, "backoff_max_s": 0.3, "poll_interval_s": 0.05, "max_rps": 100.0},
        "card_reader": {"driver": "fake", "poll_interval_s": 0.05},
        "camera": {"driver": "fake", "fps": 0},
        "face": {"mode": "relay"},
        "local_api": {"listen": "127.0.0.1:0", "relay": True, "token": API_TOKEN},
        "logging": {"level": "INFO", "journald": "off"},
    }


def delivered_cards(mock: MockPlatform) -> set[str]:
    return {card for _, card, _ in mock.delivered()}


def relay_one(url: str, seed: int) -> dict[str, Any]:
    body = verification_body(seed=seed, when=dt.datetime.now(dt.timezone(dt.timedelta(hours=8))))
    r = httpx.post(url + "/v1/verifications", json=body, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=10)
    assert r.status_code == 202, r.text
    return body


# -- 10.5: simulated data never reaches a real platform -----------------------------------------------


def test_fake_driver_records_are_held_never_sent_to_a_production_platform(tmp_path: Path, mock: MockPlatform) -> None:
    from agent.service.service import Service

    settings = parse_config(agent_doc(tmp_path, mock, environment="production"))
    service = Service(settings)
    service.start()
    try:
        wait_for(lambda: service.outbox.stats()["held"] >= FAKE_CARDS, 30, "the fake cards committed")
        # a real (relayed) verification after them is delivered: the uploader had its turn at every row
        real = relay_one(service.local_api.url, seed=41)
        wait_for(lambda: real["cardNo"] in delivered_cards(mock), 30, "the relayed verification delivered")
        stats = service.outbox.stats()
        status = service.status()
    finally:
        service.stop()
    assert delivered_cards(mock) == {real["cardNo"]}  # not one invented person
    assert stats["held_simulated"] == FAKE_CARDS and stats["sent"] == 1
    assert status.queue.int_extra("held_simulated") == FAKE_CARDS
    assert any("simulated record(s) held" in alert for alert in status.alerts)
    outbox = open_outbox(settings)
    try:
        held = outbox.list("held")
        assert len(held) == FAKE_CARDS and all(r.simulated and r.held_reason == SIMULATED_HELD_REASON for r in held)
        with pytest.raises(Exception, match="held"):
            outbox.retry(held[0].id)  # and no operator action sends one
    finally:
        outbox.close()


def test_simulated_records_queued_in_test_are_held_once_the_platform_is_production(
    tmp_path: Path, mock: MockPlatform
) -> None:
    from agent.service.service import Service

    test_settings = parse_config(agent_doc(tmp_path, mock, environment="test"))
    outbox = open_outbox(test_settings)
    payload = {"cardNo": "450103199203150247", "realName": "测试"}
    queued = outbox.enqueue(payload, simulated=True)
    outbox.close()
    production = parse_config(
        {
            **agent_doc(tmp_path, mock, environment="production"),
            "card_reader": {"driver": "fake", "sequence": ["01-resident"], "poll_interval_s": 5.0},
        }
    )
    service = Service(production, start_local_api=False)
    service.start()
    try:
        row = service.outbox.get(queued)
    finally:
        service.stop()
    assert row is not None and row.state == "held" and row.held_reason == SIMULATED_HELD_REASON
    assert "450103199203150247" not in delivered_cards(mock)


# -- 10.6: one daemon per outbox ------------------------------------------------------------------------


def test_a_second_fvagent_run_exits_2_and_the_first_keeps_working(tmp_path: Path, mock: MockPlatform) -> None:
    import json

    config = tmp_path / "fvagent.toml"
    config.write_text(samples.toml_text(agent_doc(tmp_path, mock, environment="test")), encoding="utf-8")
    config.chmod(0o600)
    status_file = tmp_path / "state" / "status.json"
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        url = wait_for(
            lambda: daemon_api_url(first, status_file, tmp_path / "first.log"), 60, "the first daemon running"
        )
        wait_for(lambda: len(delivered_cards(mock)) >= FAKE_CARDS, 30, "the first daemon's fake cards delivered")
        outbox = open_outbox(parse_config(agent_doc(tmp_path, mock, environment="test")))
        before = outbox.stats()["total"]
        second = subprocess.run(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2, second.stderr
        assert f"already running (pid {first.pid})" in second.stderr
        assert outbox.stats()["total"] == before  # its reader loop never ran: no duplicate verification
        outbox.close()
        assert json.loads(status_file.read_text(encoding="utf-8"))["pid"] == first.pid
        real = relay_one(url, seed=77)  # the first still takes verifications and uploads them
        wait_for(lambda: real["cardNo"] in delivered_cards(mock), 30, "the first daemon delivering after the second")
        assert first.poll() is None
    finally:
        first.terminate()
        first.wait(30)
        log.close()
    assert first.returncode == 0


# -- 10.5 and 10.4 (config): the careless installer -------------------------------------------------------


def _check(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "config", "check", str(path), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_config_check_fails_on_the_examples_placeholders(tmp_path: Path) -> None:
    """A technician who copies the example and fills in nothing does not get "valid"."""
    done = _check(EXAMPLE)
    assert done.returncode == 2
    for key in (
        "device.machine_code",
        "platform.org_app_id",
        "platform.org_app_secret",
        "platform.auth.ticket",
        "platform.base_url",
    ):
        assert f"  {key}: " in done.stderr, key
    assert "change-me-16byte" not in done.stderr  # a secret's value is never echoed


def test_the_example_installs_the_real_drivers_and_fakes_fail_in_production(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert 'driver = "sam-serial"' in text and 'driver = "opencv"' in text
    assert all(line.lstrip().startswith("#") for line in text.splitlines() if 'driver = "fake"' in line)
    filled = (
        text.replace("change-me-machine-code", "GX-TSR-450103-0007")
        .replace("change-me-serial", "0007")
        .replace("change-me-org-app-id", "HMPT450000000001")
        .replace("change-me-16byte", "Gx7#kP2!mQ9zR4tW")
        .replace("change-me-esb-ticket", "esb-0123456789")
        .replace("gfe.example.gov.cn", "gfe.gxwjw.test")
    )
    real = tmp_path / "real.toml"
    real.write_text(filled, encoding="utf-8")
    real.chmod(0o600)
    assert _check(real, "--no-drivers").returncode == 0, _check(real, "--no-drivers").stderr
    fake = tmp_path / "fake.toml"
    fake.write_text(filled.replace('driver = "sam-serial"', 'driver = "fake"'), encoding="utf-8")
    fake.chmod(0o600)
    done = _check(fake)
    assert done.returncode == 2
    assert "card_reader.driver: " in done.stderr and 'environment = "test"' in done.stderr
    test_env = tmp_path / "test.toml"
    test_env.write_text(
        filled.replace('driver = "sam-serial"', 'driver = "fake"').replace(
            "\n[platform]\n", '\n[platform]\nenvironment = "test"\n', 1
        ),
        encoding="utf-8",
    )
    test_env.chmod(0o600)
    assert _check(test_env, "--no-drivers").returncode == 0


def test_plain_http_platform_needs_allow_plain_http_and_then_warns(tmp_path: Path, mock: MockPlatform) -> None:
    doc = agent_doc(tmp_path, mock, environment="test")
    doc["platform"].pop("allow_plain_http")
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    assert any(key == "platform.base_url" and "allow_plain_http" in rule for key, rule in err.value.problems)
    doc["platform"]["allow_plain_http"] = True
    path = tmp_path / "http.toml"
    path.write_text(samples.toml_text(doc), encoding="utf-8")
    path.chmod(0o600)
    done = _check(path)
    assert done.returncode == 0, done.stderr
    assert "warning: platform.base_url" in done.stderr and "plain HTTP" in done.stderr
