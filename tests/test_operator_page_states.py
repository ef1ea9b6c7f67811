"""Each state of the operator page in headless Chromium at the desk's 1024x600, over the real local
API server and outbox: what the nurse reads for 未通过 (with the hand-over mark) and 未核验, the
return to 请刷身份证 after ``[local_api] result_display_s``, the banner when the daemon goes away,
the operator dialog, the grey-zone retry prompt, and the follow-up list.

Screenshots (1024x600 and 1920x1080) go to test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import datetime as dt
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.events import STATUS
from agent.localapi.server import LocalApiServer
from core.clock import CHINA_TZ
from tests.test_localapi import API_TOKEN, Agent, make_settings, verification_body
from tests.test_operator_page_e2e import CHROMIUM, browser, page  # noqa: F401 - fixtures
from tests.test_outbox_support import write_config
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (make setup-test)")


def _open(page: Any, agent: Agent) -> None:
    page.goto(agent.url + "/")
    page.wait_for_selector("#conn:has-text('实时连接正常')", timeout=5000)
    page.wait_for_selector(f"#operator:text-is('{agent.operator.get()}')", timeout=5000)  # the first status


def _post(agent: Agent, **kw: Any) -> int:
    r = httpx.post(
        agent.url + "/v1/verifications",
        json=verification_body(**kw),
        timeout=10,
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    )
    assert r.status_code == 202, r.text
    return int(r.json()["id"])


def _fits(page: Any, width: int, height: int) -> None:
    size = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
    assert size == [width, height], f"the page overflows the {width}x{height} screen: {size}"


def _box(page: Any, selector: str) -> dict[str, float]:
    box = page.locator(selector).bounding_box()
    assert box is not None, f"{selector} is not laid out"
    return box


def _set_capture(agent: Agent, capture: dict[str, Any]) -> None:
    """What the face session reports during a grey-zone retry: the status carries ``capture``."""
    plain = type(agent.backend).page_status.__get__(agent.backend)
    agent.backend.page_status = lambda: {**plain(), "capture": capture}  # type: ignore[method-assign]
    agent.events.publish(STATUS, {"capture": capture["phase"]})  # the feed sends a fresh status at once


def test_failed_result_says_what_to_do_and_keeps_the_hand_over(tmp_path: Path, page: Any, artifacts_dir: Path) -> None:
    with Agent(make_settings(tmp_path)) as agent:
        agent.operator.set("李护士")
        _open(page, agent)
        record_id = _post(agent, name="覃春燕", score=0.42, result=0)
        page.wait_for_selector(f"#verdict[data-id='{record_id}']", timeout=5000)
        assert page.inner_text("#f-result") == "未通过"
        assert page.inner_text("#f-advice") == "请继续办理分娩登记；本次核验未通过，请按规定通知公安机关核查。"
        assert page.inner_text("#f-reason") == "原因：终端比对未通过（分数 0.42）"
        button = _box(page, "#handover-btn")
        assert button["height"] >= 48 and button["width"] >= 120  # a finger, not a mouse pointer
        _fits(page, 1024, 600)
        page.screenshot(path=str(artifacts_dir / "page-failed-1024x600.png"))
        # a tap opens a confirmation (a stray touch must not record a hand-over); cancel leaves nothing
        page.click("#handover-btn")
        assert "覃**" in page.inner_text("#handover-text") and "李护士" in page.inner_text("#handover-text")
        page.click("#handover-cancel")
        assert page.locator("#handover-dialog").is_hidden()
        assert agent.outbox.handovers([record_id]) == {}
        page.click("#handover-btn")
        t0 = time.time()
        page.click("#handover-ok")
        page.wait_for_selector("#handover-mark:has-text('李护士')", timeout=5000)
        mark = agent.outbox.handovers([record_id])[record_id]
        assert mark.operator == "李护士" and t0 - 1 <= mark.at <= time.time()
        shown = dt.datetime.fromtimestamp(mark.at, CHINA_TZ).strftime("%m-%d %H:%M")
        assert page.inner_text("#handover-mark") == f"已移交公安核查 · 李护士 · {shown}"
        assert page.locator("#handover-btn").is_hidden()
        page.screenshot(path=str(artifacts_dir / "page-failed-handed-over-1024x600.png"))
        # after a reload (still within result_display_s) the mark is read back from the outbox
        page.reload()
        page.wait_for_selector(f"#verdict[data-id='{record_id}']", timeout=5000)
        assert page.inner_text("#handover-mark") == f"已移交公安核查 · 李护士 · {shown}"
        assert page.locator("#handover-btn").is_hidden()
        # the large screen uses its space: result and photos grow, nothing overflows
        small_photo, small_verdict = _box(page, "#head-frame"), _box(page, "#f-result")
        page.set_viewport_size({"width": 1920, "height": 1080})
        big_photo, big_verdict = _box(page, "#head-frame"), _box(page, "#f-result")
        assert (
            big_photo["height"] >= 1.7 * small_photo["height"]
            and big_verdict["height"] >= 1.5 * small_verdict["height"]
        )
        _fits(page, 1920, 1080)
        page.screenshot(path=str(artifacts_dir / "page-failed-1920x1080.png"))
        assert not page.js_errors, page.js_errors


def test_not_verified_result_says_what_to_retry(tmp_path: Path, page: Any, artifacts_dir: Path) -> None:
    with Agent(make_settings(tmp_path)) as agent:
        _open(page, agent)
        record_id = _post(agent, score=0.0, result=2)
        page.wait_for_selector(f"#verdict[data-id='{record_id}']", timeout=5000)
        assert page.inner_text("#f-result") == "未核验"
        advice = page.inner_text("#f-advice")
        for step in ("请重新将身份证放在读卡器上", "请产妇正对摄像头", "联系技术人员"):
            assert step in advice, advice
        assert page.locator("#handover-btn").is_hidden()  # retry first: nothing to hand over yet
        assert page.inner_text("#f-score") == "—"
        _fits(page, 1024, 600)
        page.screenshot(path=str(artifacts_dir / "page-not-verified-1024x600.png"))
        page.set_viewport_size({"width": 1920, "height": 1080})
        _fits(page, 1920, 1080)
        page.screenshot(path=str(artifacts_dir / "page-not-verified-1920x1080.png"))
        assert not page.js_errors, page.js_errors


def test_the_page_returns_to_waiting_after_result_display_s(tmp_path: Path, page: Any, artifacts_dir: Path) -> None:
    display_s = 2.0
    with Agent(make_settings(tmp_path, result_display_s=display_s)) as agent:
        _open(page, agent)
        assert page.locator("#empty").is_visible() and page.inner_text("#empty .hint") == "请刷身份证"
        page.screenshot(path=str(artifacts_dir / "page-waiting-1024x600.png"))
        t0 = time.monotonic()
        record_id = _post(agent, score=0.93, result=1)
        page.wait_for_selector(f"#verdict[data-id='{record_id}']", timeout=5000)
        assert page.locator("#empty").is_hidden()
        page.wait_for_selector("#empty", state="visible", timeout=(display_s + 5) * 1000)
        shown_for = time.monotonic() - t0
        assert display_s - 0.5 <= shown_for <= display_s + 4, shown_for
        assert page.locator("#latest").is_hidden()
        assert page.locator(f"#list li[data-id='{record_id}']").is_visible()  # still in the history
        # a page opened later replays the record into the history, never as the current result
        page.reload()
        page.wait_for_selector(f"#list li[data-id='{record_id}']", timeout=5000)
        assert page.locator("#empty").is_visible() and page.locator("#latest").is_hidden()
        assert not page.js_errors, page.js_errors


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_banner_covers_the_page_when_the_daemon_goes_away(tmp_path: Path, page: Any, artifacts_dir: Path) -> None:
    port = _free_port()
    settings = make_settings(tmp_path, listen=f"127.0.0.1:{port}")
    with Agent(settings) as agent:
        _open(page, agent)
        record_id = _post(agent, score=0.3, result=0)
        page.wait_for_selector(f"#verdict[data-id='{record_id}']", timeout=5000)
        assert page.locator("#offline").is_hidden()
        agent.server.stop()
        t0 = time.monotonic()
        page.wait_for_selector("#offline", state="visible", timeout=5000)
        assert time.monotonic() - t0 < 3.0
        banner = _box(page, "#offline")
        assert (banner["x"], banner["y"], banner["width"], banner["height"]) == (0, 0, 1024, 600)  # over everything
        assert page.inner_text("#offline .title") == "核验服务无响应"
        assert page.evaluate("() => document.elementFromPoint(300, 200).closest('#offline') !== null")
        page.screenshot(path=str(artifacts_dir / "page-daemon-gone-1024x600.png"))
        # the daemon comes back on its port: the page reconnects and the banner goes by itself
        agent.server = LocalApiServer(settings.local_api, agent.backend)
        agent.server.start()
        page.wait_for_selector("#offline", state="hidden", timeout=10000)
        assert page.inner_text("#conn") == "实时连接正常"


def test_operator_dialog_has_large_targets_and_no_browser_prompt(
    tmp_path: Path, page: Any, artifacts_dir: Path
) -> None:
    browser_dialogs: list[str] = []
    page.on("dialog", lambda d: (browser_dialogs.append(d.type), d.dismiss()))
    with Agent(make_settings(tmp_path)) as agent:
        _open(page, agent)
        page.click("#change-op")
        assert page.locator("#op-dialog").is_visible()
        assert page.input_value("#op-input") == "默认员"
        for target in ("#op-input", "#op-ok", "#op-cancel"):
            assert _box(page, target)["height"] >= 56, target
        page.screenshot(path=str(artifacts_dir / "page-operator-dialog-1024x600.png"))
        page.fill("#op-input", "   ")
        page.click("#op-ok")
        assert page.inner_text("#op-error") == "请输入操作员姓名" and page.locator("#op-dialog").is_visible()
        page.fill("#op-input", "王\u0007护士")  # a control character: the API's rule is shown in the dialog
        page.click("#op-ok")
        page.wait_for_selector("#op-error:has-text('未能更换')", timeout=5000)
        assert agent.operator.get() == "默认员"
        assert [e for e in page.js_errors if "422" not in e] == [], page.js_errors  # the refused PUT only
        page.js_errors.clear()
        page.click("#op-cancel")
        assert page.locator("#op-dialog").is_hidden() and page.inner_text("#operator") == "默认员"
        page.click("#change-op")
        page.fill("#op-input", "王护士")
        page.press("#op-input", "Enter")
        page.wait_for_selector("#op-dialog", state="hidden", timeout=5000)
        page.wait_for_selector("#operator:text-is('王护士')", timeout=5000)
        assert agent.operator.get() == "王护士"
        assert not browser_dialogs, browser_dialogs
        assert not page.js_errors, page.js_errors


def test_grey_zone_retry_asks_to_face_the_camera(tmp_path: Path, page: Any, artifacts_dir: Path) -> None:
    with Agent(make_settings(tmp_path)) as agent:
        _open(page, agent)
        until = (dt.datetime.now(CHINA_TZ) + dt.timedelta(seconds=4)).isoformat(timespec="seconds")
        _set_capture(agent, {"phase": "retry", "until": until})
        page.wait_for_selector("#retry", state="visible", timeout=5000)
        assert page.inner_text("#retry .hint") == "请正对摄像头，再核验一次"
        assert page.locator("#empty").is_hidden() and page.locator("#latest").is_hidden()
        wait_for(lambda: "秒" in page.inner_text("#retry-left"), 3, "the countdown")
        _fits(page, 1024, 600)
        page.screenshot(path=str(artifacts_dir / "page-retry-1024x600.png"))
        _set_capture(agent, {"phase": "idle"})
        page.wait_for_selector("#retry", state="hidden", timeout=5000)
        assert page.locator("#empty").is_visible()
        assert not page.js_errors, page.js_errors


def test_follow_up_list_through_cli_and_page(
    tmp_path: Path, page: Any, artifacts_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from agent.cli import main
    from agent.outbox import Outbox
    from tests.test_outbox_support import record, storage

    yesterday = dt.datetime.now(CHINA_TZ) - dt.timedelta(days=1)
    with Outbox.open(storage(tmp_path), clock=lambda: yesterday.timestamp()) as old_box:
        old = old_box.enqueue(
            {**record(7, verify_time=yesterday.replace(tzinfo=None)), "faceResult": 0, "faceScore": 0.2},
            meta={"source": "reader", "reason": "no match"},
        )
    with Agent(make_settings(tmp_path)) as agent:
        failed = _post(agent, name="覃春燕", seed=1, score=0.41, result=0)
        unverified = _post(agent, name="黄丽", seed=2, score=0.0, result=2)
        _post(agent, name="陆芳", seed=3, score=0.95, result=1)
        agent.operator.set("李护士")
        agent.backend.mark_handed_over(failed)
        # the CLI, beside the running agent
        cfg = write_config(tmp_path / "fvagent.toml", state_dir=tmp_path / "state")
        today = dt.datetime.now(CHINA_TZ).strftime("%Y-%m-%d")
        assert main(["queue", "ls", "--result", "0,2", "--since", today, "--json", "-c", str(cfg)]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [it["id"] for it in listed] == [unverified, failed]
        assert listed[1]["handover"]["operator"] == "李护士" and listed[0]["handover"] is None
        # the page: 近7天 by default, then 今天
        _open(page, agent)
        page.click("#show-followups")
        page.wait_for_selector(f"#fu-rows tr[data-id='{old}']", timeout=5000)
        assert page.locator("#live").is_hidden()
        assert [int(x) for x in page.locator("#fu-rows tr").evaluate_all("rs => rs.map(r => r.dataset.id)")] == [
            unverified,
            failed,
            old,
        ]
        row = page.locator(f"#fu-rows tr[data-id='{failed}']")
        assert "覃**" in row.inner_text() and "未通过" in row.inner_text() and "李护士" in row.inner_text()
        assert "待上传" in row.inner_text()
        assert page.inner_text("#fu-count") == "共 3 条，未移交 2 条"
        assert verification_body()["cardNo"] not in page.content()
        _fits(page, 1024, 600)
        page.screenshot(path=str(artifacts_dir / "page-followups-1024x600.png"))
        page.click("#followups .chip[data-days='1']")
        page.wait_for_selector(f"#fu-rows tr[data-id='{old}']", state="detached", timeout=5000)
        assert page.locator("#fu-rows tr").count() == 2
        # hand over from the list
        page.click(f"#fu-rows tr[data-id='{unverified}'] button")
        page.click("#handover-ok")
        page.wait_for_selector(f"#fu-rows tr[data-id='{unverified}'] td.mark:has-text('李护士')", timeout=5000)
        assert agent.outbox.handovers([unverified])[unverified].operator == "李护士"
        assert page.inner_text("#fu-count") == "共 2 条，未移交 0 条"
        page.set_viewport_size({"width": 1920, "height": 1080})
        _fits(page, 1920, 1080)
        page.screenshot(path=str(artifacts_dir / "page-followups-1920x1080.png"))
        # a new card tap brings the live view back, with the new result
        newest = _post(agent, seed=4, score=0.9, result=1)
        page.wait_for_selector(f"#verdict[data-id='{newest}']", timeout=5000)
        assert page.locator("#followups-view").is_hidden()
        assert not page.js_errors, page.js_errors


@pytest.mark.slow
def test_a_banner_covers_the_page_when_the_daemon_hangs(tmp_path: Path, page: Any) -> None:
    """A daemon that keeps the connection open but stops answering (a hung process): the feed's
    status every 5 s stops, and after 15 s of silence the page says so; an answer clears it."""
    import threading

    with Agent(make_settings(tmp_path)) as agent:
        _open(page, agent)
        hung = threading.Event()
        plain = agent.backend.page_status

        def stalled() -> dict[str, Any]:
            hung.wait(60)
            return plain()

        agent.backend.page_status = stalled  # type: ignore[method-assign]
        t0 = time.monotonic()
        page.wait_for_selector("#offline", state="visible", timeout=30000)
        silent = time.monotonic() - t0
        assert 9 <= silent <= 25, silent  # the last status came up to 5 s before t0
        agent.backend.page_status = plain  # type: ignore[method-assign]
        hung.set()
        page.wait_for_selector("#offline", state="hidden", timeout=10000)
        assert not page.js_errors, page.js_errors
