"""`fvagent doctor`: one line per check, OK/WARN/FAIL with the fix, exit 1 on any FAIL."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.cli import main
from agent.service import samples
from agent.service.doctor import FAIL, OK, WARN, Check, run_checks

pytest.importorskip("skimage", reason="the sample face comes from scikit-image (the demo extra)")


def _config(tmp_path: Path, images: dict[str, Any], **sections: dict[str, Any]) -> Path:
    doc: dict[str, Any] = {
        "device": {
            "machine_code": "DOC-1",
            "device_no": "1",
            "manufacturer": "测试厂商",
            "model": "T",
            "purchase_date": "2024-06-01",
            "dept_id": "1",
            "dept_name": "妇产科",
            "register_user": "测试员",
            "operator": "测试",
        },
        "platform": {
            "base_url": "http://127.0.0.1:9/api",
            "org_app_id": "APP",
            "org_app_secret_file": str(tmp_path / "secret"),
            "timeout_s": 2.0,
            "connect_timeout_s": 1.0,
            "auth": {"kind": "static", "ticket": "T"},
            "environment": "test",
            "allow_plain_http": True,
        },
        "storage": {"dir": str(tmp_path / "state")},
        "card_reader": {"driver": "fake"},
        "camera": {"driver": "fake", "images": [str(images["live"][0])], "fps": 0},
        "face": {"mode": "relay"},
    }
    for name, values in sections.items():
        doc[name] = {**doc[name], **values}
    secret = tmp_path / "secret"
    if not secret.exists():
        secret.write_text("0123456789abcdef")
        secret.chmod(0o600)
    path = tmp_path / "fvagent.toml"
    path.write_text(samples.toml_text(doc), encoding="utf-8")
    path.chmod(0o640)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return samples.write_images(tmp_path_factory.mktemp("faces"))


def _platform(skew_s: float = 0.0) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "code": 200,
                "msg": "成功",
                "exceptionCode": "B2301",
                "requestId": request.headers["hmpt-portal-request-id"],
                "returnTime": int((time.time() - skew_s) * 1000),
                "data": None,
            },
        )

    return httpx.MockTransport(handler)


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name.split(" (")[0]: c for c in checks}


def test_healthy_bench_setup(tmp_path: Path, images: dict[str, Any]) -> None:
    path = _config(tmp_path, images)
    checks = by_name(run_checks(path, transport=_platform()))
    assert checks["config"].level == OK
    assert checks["secrets"].level == OK and "file" in checks["secrets"].detail
    assert checks["daemon"].level == WARN and "not running" in checks["daemon"].detail
    assert checks["free disk"].level == OK
    assert checks["outbox"].level == OK
    assert checks["camera"].level == WARN and "SIMULATED" in checks["camera"].detail  # fake: not for go-live
    assert checks["face model"].level == OK  # relay mode
    assert checks["platform"].level == OK and "registered" in checks["platform"].detail
    assert checks["clock"].level == OK
    assert FAIL not in {c.level for name, c in checks.items() if name != "card reader"}


def test_clock_skew_fails_beyond_the_tolerance(tmp_path: Path, images: dict[str, Any]) -> None:
    checks = by_name(run_checks(_config(tmp_path, images), transport=_platform(skew_s=900)))
    clock = checks["clock"]
    assert clock.level == FAIL and "ahead of" in clock.detail and "timedatectl" in (clock.fix or "")


def test_unreachable_platform_and_missing_camera_fail_with_fixes(tmp_path: Path, images: dict[str, Any]) -> None:
    path = _config(tmp_path, images, camera={"fault": "disappears"}, face={"mode": "compute"})
    checks = run_checks(path)  # base_url points at port 9: refused
    named = by_name(checks)
    assert named["platform"].level == FAIL and "VPN" in (named["platform"].fix or "")
    assert named["camera"].level == FAIL and named["camera"].fix
    assert named["face model"].level == OK and "loaded" in named["face model"].detail
    for check in checks:
        line = check.line()
        assert line.startswith(check.level)
        if check.level != OK:
            assert "-> fix: " in line


def test_a_readable_secret_file_fails_with_the_chmod(
    tmp_path: Path, images: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path, images)
    (tmp_path / "secret").chmod(0o644)
    assert main(["doctor", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("FAIL") and "chmod 600" in first
    assert out.strip().endswith("1 checks: 1 failed, 0 warning(s)")


def test_reader_probe_reports_simulated_and_missing_readers(tmp_path: Path, images: dict[str, Any]) -> None:
    checks = by_name(run_checks(_config(tmp_path, images), transport=_platform()))
    reader = checks["card reader"]
    assert reader.level == WARN and "SIMULATED" in reader.detail and "real reader" in (reader.fix or "")
    path = _config(tmp_path, images, card_reader={"fixtures_dir": str(tmp_path / "no-such-dir")})
    missing = by_name(run_checks(path, transport=_platform()))["card reader"]
    assert missing.level == FAIL and "no-such-dir" in missing.detail and missing.fix


def test_config_file_permissions(tmp_path: Path, images: dict[str, Any]) -> None:
    path = _config(tmp_path, images)  # platform.auth.ticket is inline in it
    path.chmod(0o644)
    readable = run_checks(path, transport=_platform())
    warned = [c for c in readable if c.name == "config permissions"]
    assert [c.level for c in warned] == [WARN]
    assert "ticket" in warned[0].detail and f"chmod 640 {path}" in warned[0].detail
    assert "secrets" not in by_name(readable)  # no OK line for secrets others can read
    path.chmod(0o666)
    writable = [c for c in run_checks(path, transport=_platform()) if c.name == "config permissions"]
    assert FAIL in {c.level for c in writable}
    assert any(c.level == FAIL and c.fix == f"chmod o-w {path}" for c in writable)


def test_clock_fails_past_max_clock_offset_s_within_the_reply_tolerance(tmp_path: Path, images: dict[str, Any]) -> None:
    checks = by_name(run_checks(_config(tmp_path, images), transport=_platform(skew_s=150)))
    assert checks["platform"].level == OK  # 150 s is within max_reply_skew_s: the reply is believed
    clock = checks["clock"]
    assert clock.level == FAIL and "max_clock_offset_s = 120" in clock.detail and "timedatectl" in (clock.fix or "")


def test_timestamp_expired_is_retried_with_the_platforms_time_and_the_clock_fails(
    tmp_path: Path, images: dict[str, Any]
) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["hmpt-portal-time"])
        platform_now = time.time() - 3600  # our clock is an hour ahead
        body = {
            "code": 200,
            "msg": "成功",
            "exceptionCode": "B2301",
            "data": None,
            "requestId": request.headers["hmpt-portal-request-id"],
            "returnTime": int(platform_now * 1000),
        }
        if abs(int(seen[-1]) / 1000 - platform_now) > 300:
            return httpx.Response(403, json={**body, "code": 403, "exceptionCode": "A2302", "msg": "时间戳过期"})
        return httpx.Response(200, json=body)

    checks = by_name(run_checks(_config(tmp_path, images), transport=httpx.MockTransport(handler)))
    assert len(seen) == 2 and checks["platform"].level == OK
    assert checks["clock"].level == FAIL and "时间戳过期" in checks["clock"].detail
