"""`fvagent register`, `upload-file` and `probe` against a scripted platform on loopback."""

from __future__ import annotations

import base64
import http.server
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from agent.cli import main
from agent.config import ConventionSettings
from agent.uplink.conventions import Conventions
from core import codes
from tests.test_outbox_support import DEVICE_TOML

APP_ID = "HMPT450000000001"
SECRET = "Gx7#kP2!mQ9zR4tW"
CONFIG = (
    DEVICE_TOML
    + """
[platform]
base_url = "{url}"
environment = "test"
allow_plain_http = true
org_app_id = "{app_id}"
org_app_secret = "{secret}"
enabled = {enabled}

[platform.auth]
kind = "static"
ticket = "ESB-TICKET-1"
"""
)


def jpeg_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (40, 120, 200)).save(buf, "JPEG")
    return base64.b64encode(buf.getvalue()).decode()


def card_no() -> str:
    first17 = "45020319900101002"
    return first17 + codes.resident_id_check_digit(first17)


def record() -> dict[str, Any]:
    img = jpeg_b64()
    return {
        "realName": "韦测试",
        "cardType": 0,
        "cardNo": card_no(),
        "sexCode": "2",
        "sexName": "女",
        "nationalCode": "08",
        "nationalName": "壮",
        "operationUser": "覃护士",
        "birthday": "1990-01-01",
        "address": "广西壮族自治区南宁市青秀区测试路1号",
        "police": "南宁市公安局青秀分局",
        "cardStartDate": "2015-03-01",
        "cardEndDate": "2035-03-01",
        "headImg": img,
        "cameraImg": img,
        "faceScore": 0.86,
        "faceResult": 1,
        "verifyDate": "2024-06-11",
        "verifyTime": "2024-06-11 17:33:55",
        "certTimeoutStatus": 0,
        "deviceNo": "SN0001",
        "machineCode": "TS0001",
    }


class Platform:
    """A tiny real HTTP server on 127.0.0.1 that checks the signature and answers as scripted."""

    def __init__(self) -> None:
        self.conv = Conventions(ConventionSettings(), APP_ID, SECRET)
        self.received: list[tuple[str, dict[str, str], Any]] = []
        self.answer: Callable[[str, Any], tuple[int, dict[str, Any]]] = lambda path, body: (200, {})
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                body = json.loads(raw)
                outer.received.append((self.path, dict(self.headers), body))
                rid = self.headers["hmpt-portal-request-id"]
                if not outer.conv.verify_sign(self.headers["hmpt-portal-time"], self.headers["hmpt-portal-sign"]):
                    status, env = 401, {"code": 401, "msg": "签名错误", "exceptionCode": "E0401"}
                else:
                    status, env = outer.answer(self.path, body)
                full = {
                    "code": 200,
                    "msg": "成功",
                    "exceptionCode": "00000",
                    "requestId": rid,
                    "returnTime": int(time.time() * 1000),
                    "data": None,
                    **env,
                }
                data = json.dumps(full, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json;charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def plat() -> Iterator[Platform]:
    p = Platform()
    yield p
    p.close()


def write_config(tmp_path: Path, url: str, *, enabled: bool = True, secret: str = SECRET) -> str:
    path = tmp_path / "fvagent.toml"
    path.write_text(
        CONFIG.format(url=url, app_id=APP_ID, secret=secret, enabled=str(enabled).lower()), encoding="utf-8"
    )
    return str(path)


def test_register_accepted(plat: Platform, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["register", "--config", write_config(tmp_path, plat.url)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "outcome:    accepted" in out and "message:    成功" in out
    ((path, headers, body),) = plat.received
    assert path == "/api/machine/info"
    assert body["machineCode"] == "TS0001" and body["deptName"] == "妇产科" and "registerTime" in body
    assert f"requestId:  {headers['hmpt-portal-request-id']}" in out


def test_register_already_registered_is_accepted(
    plat: Platform, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plat.answer = lambda path, body: (200, {"code": 500, "exceptionCode": "B2301", "msg": "设备已登记"})
    assert main(["register", "-c", write_config(tmp_path, plat.url)]) == 0
    assert "already registered" in capsys.readouterr().out


def test_register_with_a_wrong_secret_is_blocked(
    plat: Platform, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["register", "-c", write_config(tmp_path, plat.url, secret="wrong-secret-000")])
    out = capsys.readouterr().out
    assert rc == 4 and "outcome:    blocked" in out and "configuration is wrong" in out


def test_register_with_the_platform_down_is_retryable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = Platform()
    url = p.url
    p.close()
    assert main(["register", "-c", write_config(tmp_path, url)]) == 5
    assert "outcome:    retryable" in capsys.readouterr().out


def test_switched_off_sends_nothing_and_says_so(
    plat: Platform, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, plat.url, enabled=False)
    rec = tmp_path / "rec.json"
    rec.write_text(json.dumps(record(), ensure_ascii=False), encoding="utf-8")
    assert main(["register", "-c", cfg]) == 6
    assert main(["upload-file", "-c", cfg, str(rec)]) == 6
    err = capsys.readouterr().err
    assert err.count("the platform is switched off") == 2 and "enabled = true" in err
    assert plat.received == []


def test_upload_file_valid_record_accepted(plat: Platform, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = tmp_path / "rec.json"
    rec.write_text(json.dumps(record(), ensure_ascii=False), encoding="utf-8")
    assert main(["upload-file", "-c", write_config(tmp_path, plat.url), str(rec)]) == 0
    out = capsys.readouterr().out
    assert "outcome:    accepted" in out
    assert card_no() not in out and "韦测试" not in out  # masked on screen
    ((path, _, body),) = plat.received
    assert path == "/api/verification/pregnant_woman/first"
    assert body["cardNo"] == card_no() and body["faceScore"] == 0.86


def test_upload_file_rejected_by_the_platform_exits_3(
    plat: Platform, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plat.answer = lambda path, body: (200, {"code": 400, "exceptionCode": "A2301", "msg": "police 不能为空"})
    rec = tmp_path / "rec.json"
    rec.write_text(json.dumps(record(), ensure_ascii=False), encoding="utf-8")
    assert main(["upload-file", "-c", write_config(tmp_path, plat.url), str(rec)]) == 3
    out = capsys.readouterr().out
    assert "outcome:    rejected" in out and "police" in out and "correct it" in out


def test_upload_file_refuses_a_bad_record_locally(
    plat: Platform, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = record() | {"faceScore": 1.5, "cardNo": card_no()[:-1] + ("0" if card_no()[-1] != "0" else "1")}
    rec = tmp_path / "rec.json"
    rec.write_text(json.dumps(bad, ensure_ascii=False), encoding="utf-8")
    assert main(["upload-file", "-c", write_config(tmp_path, plat.url), str(rec)]) == 1
    err = capsys.readouterr().err
    assert "faceScore" in err and "cardNo" in err
    assert plat.received == []


def _with_outbox(cfg: str, state_dir: Path) -> str:
    with open(cfg, "a", encoding="utf-8") as fh:
        fh.write(f'\n[storage]\ndir = "{state_dir}"\n')
    return cfg


def _rejected(box: Any, payload: dict[str, Any]) -> int:
    record_id = box.enqueue(payload)
    [claim] = box.claim(1)
    box.finish(
        claim, "rejected", message="A2301 parameter error: police", request_id="req-rejected", exception_code="A2301"
    )
    return record_id


def _open_outbox(cfg: str) -> Any:
    from agent.config import load_config
    from agent.outbox import Outbox

    return Outbox.open(load_config(cfg, validate_drivers=False).storage)


def test_upload_file_accepted_marks_the_rejected_original_sent(
    plat: Platform, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _with_outbox(write_config(tmp_path, plat.url), tmp_path / "state")
    with _open_outbox(cfg) as box:
        original = _rejected(box, record() | {"police": ""})
        other_time = _rejected(box, record() | {"verifyTime": "2024-06-11 17:40:01"})  # another verification
    rec = tmp_path / "rec.json"
    rec.write_text(json.dumps(record(), ensure_ascii=False), encoding="utf-8")

    plat.answer = lambda path, body: (200, {"code": 400, "exceptionCode": "A2301", "msg": "police 不能为空"})
    assert main(["upload-file", "-c", cfg, str(rec)]) == 3  # refused again: nothing is marked
    assert "marked sent" not in capsys.readouterr().out
    with _open_outbox(cfg) as box:
        assert box.get(original).state == "rejected"  # type: ignore[union-attr]

    plat.answer = lambda path, body: (200, {})
    assert main(["upload-file", "-c", cfg, str(rec)]) == 0
    out = capsys.readouterr().out
    request_id = plat.received[-1][1]["hmpt-portal-request-id"]
    assert f"rejected record(s) {original} marked sent" in out and f"requestId {request_id}" in out
    assert "queue resolve" not in out and card_no() not in out
    with _open_outbox(cfg) as box:
        row = box.get(original)
        assert row is not None and row.state == "sent" and row.request_id == request_id
        assert [a.outcome for a in box.attempts(original)] == ["rejected", "accepted"]
        assert box.get(other_time).state == "rejected"  # type: ignore[union-attr]


def test_upload_file_with_no_matching_rejected_record_names_queue_resolve(
    plat: Platform, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _with_outbox(write_config(tmp_path, plat.url), tmp_path / "state")
    rec = tmp_path / "rec.json"
    rec.write_text(json.dumps(record(), ensure_ascii=False), encoding="utf-8")
    assert main(["upload-file", "-c", cfg, str(rec)]) == 0
    out, err = capsys.readouterr()
    assert "outbox" not in out + err and not (tmp_path / "state").exists()  # no outbox yet: none is made

    with _open_outbox(cfg) as box:
        box.enqueue(record())
        [claim] = box.claim(1)
        box.finish(claim, "accepted", message="ok", request_id="req-first")
    assert main(["upload-file", "-c", cfg, str(rec)]) == 0
    assert "outbox:" not in capsys.readouterr().out  # nothing rejected: nothing to say

    first17 = "45020319900101003"  # the fix corrected the card number: the key no longer matches
    with _open_outbox(cfg) as box:
        typo = _rejected(box, record() | {"cardNo": first17 + codes.resident_id_check_digit(first17)})
    assert main(["upload-file", "-c", cfg, str(rec)]) == 0
    out = capsys.readouterr().out
    request_id = plat.received[-1][1]["hmpt-portal-request-id"]
    [hint] = [line for line in out.splitlines() if line.startswith("outbox:")]
    assert "1 rejected record(s) remain" in hint and f"fvagent queue resolve ID --request-id {request_id}" in hint
    with _open_outbox(cfg) as box:
        assert box.get(typo).state == "rejected"  # type: ignore[union-attr]


def test_upload_file_accepted_with_an_unreadable_outbox_warns_and_exits_0(
    plat: Platform, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _with_outbox(write_config(tmp_path, plat.url), tmp_path / "state")
    with _open_outbox(cfg) as box:
        _rejected(box, record() | {"police": ""})
    (tmp_path / "state" / "outbox.key").unlink()  # e.g. lost, or readable by the service user only
    rec = tmp_path / "rec.json"
    rec.write_text(json.dumps(record(), ensure_ascii=False), encoding="utf-8")
    assert main(["upload-file", "-c", cfg, str(rec)]) == 0
    out, err = capsys.readouterr()
    assert "outcome:    accepted" in out
    assert "warning: the upload was accepted, but the outbox could not be checked" in err
    assert "fvagent queue resolve ID --request-id" in err
    assert not (tmp_path / "state" / "outbox.key").exists()  # no new key was made


@pytest.mark.parametrize(("content", "words"), [("{not json", "not valid JSON"), ("[1]", "not an object")])
def test_upload_file_bad_json_names_the_file(
    plat: Platform, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, words: str
) -> None:
    rec = tmp_path / "rec.json"
    rec.write_text(content, encoding="utf-8")
    assert main(["upload-file", "-c", write_config(tmp_path, plat.url), str(rec)]) == 1
    err = capsys.readouterr().err
    assert words in err and "rec.json" in err
    assert main(["upload-file", "-c", write_config(tmp_path, plat.url), str(tmp_path / "missing.json")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_probe_prints_every_convention_with_the_configured_value_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, "http://127.0.0.1:9/api")
    assert main(["probe", "-c", cfg, "--at", "1718091555.072", "--request-id", "ab" * 16]) == 0
    out = capsys.readouterr().out
    conv = Conventions(ConventionSettings(), APP_ID, SECRET)
    assert f"hmpt-portal-sign: {conv.sign('1718091555072')}" in out
    assert "hmpt-portal-request-id: " + "ab" * 16 in out
    assert "ESB-TICKET-1" not in out and SECRET not in out
    sections = [line.split()[1] for line in out.splitlines() if line.startswith("## ") and "(changes" in line]
    assert sections == [
        "send_time_format",
        "sign_key_encoding",
        "sign_output",
        "sm4_key_mode",
        "padding",
        "cipher_encoding",
        "json_ensure_ascii",
    ]
    block = out.split("## send_time_format")[1].split("##")[0]
    assert block.index("'epoch_ms'") < block.index("'epoch_s'") < block.index("'yyyy-MM-dd HH:mm:ss'")
    assert "time=2024-06-11 15:39:15" in block
    sign_b64 = Conventions(ConventionSettings(sign_output="base64"), APP_ID, SECRET).sign("1718091555072")
    assert sign_b64 in out
    assert "(not possible:" in out.split("## sm4_key_mode")[1].split("##")[0]  # hex32 with a non-hex secret


def test_probe_with_a_payload_file_uses_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, "http://127.0.0.1:9/api")
    sample = tmp_path / "sample.json"
    sample.write_text('{"cardNo": "x", "realName": "样例"}', encoding="utf-8")
    assert main(["probe", "-c", cfg, "--payload", str(sample), "--full"]) == 0
    out = capsys.readouterr().out
    assert "POST http://127.0.0.1:9/api/verification/pregnant_woman/first" in out
    assert 'body (plain):     {"cardNo":"x","realName":"样例"}' in out
    conv = Conventions(ConventionSettings(), APP_ID, SECRET)
    assert conv.encrypt_data('{"cardNo":"x","realName":"样例"}'.encode()) in out


def test_probe_all_lists_every_combination(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, "http://127.0.0.1:9/api", secret="00112233445566778899aabbccddeeff")
    assert main(["probe", "-c", cfg, "--at", "1718091555", "--all", "--full"]) == 0
    out = capsys.readouterr().out
    signs = out.split("## every signature")[1].split("## every data")[0].strip().splitlines()[1:]
    datas = out.split("## every data")[1].strip().splitlines()[1:]
    assert len(signs) == 4 * 2 * 3 and len(datas) == 6 * 2 * 3 * 2
    conv = Conventions(
        ConventionSettings(send_time_format="yyyyMMddHHmmss", sign_key_encoding="hex", sign_output="hex_upper"),
        APP_ID,
        "00112233445566778899aabbccddeeff",
    )
    assert f"yyyyMMddHHmmss | hex | hex_upper | 20240611153915 | {conv.sign('20240611153915')}" in out
