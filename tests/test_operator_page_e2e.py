"""The operator page end to end in headless Chromium: a card tap appears on the page within 5 s.

- ``test_card_tap_appears_on_the_page``: the daemon (``agent.service.Service``) runs in-process with
  its real loops, outbox, uploader and local API; the camera is the registered ``fake`` driver over
  the sample images; the card reader is the service tests' scripted reader, which the test "taps";
  the platform answers through ``httpx.MockTransport``.
- ``test_relayed_verification_appears_on_the_page``: a terminal's relayed post over the real local
  API server and outbox; the operator is changed from the page.
- ``test_card_tap_appears_on_the_page_of_fvagent_run`` (slow): the real ``fvagent run`` process with
  the daemon test's drop-directory plugin reader, the fake camera, the dlib engine and the mock
  platform (SM4 on); the page's URL comes from the daemon's status file; the record is followed
  until the mock platform has it (已上传 on the page).

The browser is Debian's chromium driven by playwright (never `playwright install`). Screenshots of
the page are saved under test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_localapi import (
    API_TOKEN,
    Agent,
    make_settings,
    synthetic_jpeg,
    verification_body,
)
from tests.waiting import daemon_api_url, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TAP_DEADLINE_S = 5.0

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() or shutil.which("chromium") is None,
    reason="needs Debian's chromium (apt-get install chromium; make setup-test does it)",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1024, "height": 600}, locale="zh-CN", timezone_id="Asia/Shanghai")
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    pg.js_errors = errors  # type: ignore[attr-defined]
    try:
        yield pg
    finally:
        context.close()


def face_images() -> tuple[bytes, bytes]:
    """Two real photos of one person from ../shared/data/faces when present, else synthetic ones."""
    from tests.conftest import FACES

    if FACES.is_dir():
        for person in sorted(p for p in FACES.iterdir() if p.is_dir()):
            photos = sorted(person.glob("*.jpg"))
            if len(photos) >= 2:
                return photos[0].read_bytes(), photos[1].read_bytes()
    return synthetic_jpeg(11), synthetic_jpeg(12, (240, 200))


def assert_photo_shown(page: Any, frame: str) -> None:
    """The photo in ``#frame`` loaded and decoded (the page's CSP forbids eval, so no wait_for_function)."""
    img = page.wait_for_selector(f"#{frame} img", timeout=5000)
    deadline = time.monotonic() + 5
    while img.get_property("naturalWidth").json_value() == 0:
        assert time.monotonic() < deadline, f"the photo in #{frame} did not load"
        time.sleep(0.05)


def test_relayed_verification_appears_on_the_page(tmp_path: Path, page: Any, artifacts_dir: Path) -> None:
    head, camera = face_images()
    with Agent(make_settings(tmp_path)) as agent:
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(agent.url + "/")
        page.wait_for_selector("#conn:has-text('实时连接正常')", timeout=5000)
        # the feed's first status event may come just after its "open": wait for it, do not race it
        page.wait_for_selector("#operator:text-is('默认员')", timeout=5000)
        body = verification_body(name="覃春燕", score=0.42, result=0, head=head, camera=camera)
        import httpx

        t0 = time.monotonic()
        relay = {"Authorization": f"Bearer {API_TOKEN}"}  # the terminal's credential
        record_id = httpx.post(agent.url + "/v1/verifications", json=body, headers=relay, timeout=10).json()["id"]
        page.wait_for_selector(f"#list li[data-id='{record_id}']", timeout=TAP_DEADLINE_S * 1000)
        shown_after = time.monotonic() - t0
        assert shown_after < TAP_DEADLINE_S
        assert page.inner_text("#f-name") == "覃**"
        assert page.inner_text("#f-result") == "未通过"
        assert "0.42" in page.inner_text("#f-reason")
        assert body["cardNo"] not in page.content()
        assert_photo_shown(page, "head-frame")
        page.wait_for_selector("#queue:text-is('1')", timeout=5000)  # the status bar follows the queue
        # the desk changes the operator from the page's own dialog
        page.click("#change-op")
        page.fill("#op-input", "李护士")
        page.click("#op-ok")
        page.wait_for_selector("#operator:text-is('李护士')", timeout=5000)
        assert agent.operator.get() == "李护士"
        page.screenshot(path=str(artifacts_dir / "operator-page-relay.png"))
        # a full list still fits the terminal's 1024x600 screen without scrolling
        with httpx.Client(base_url=agent.url, headers=relay, timeout=10) as c:
            for i in range(8):
                reason_case = {"score": 0.0, "result": 2} if i % 2 else {"score": 0.93, "result": 1}
                assert (
                    c.post("/v1/verifications", json=verification_body(seed=20 + i, **reason_case)).status_code == 202
                )
        page.wait_for_selector("#list li:nth-child(7)", timeout=5000)
        assert page.locator("#list li").count() == 7
        width, height = page.evaluate(
            "() => [document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
        )
        assert (width, height) == (1024, 600), (width, height)
        page.screenshot(path=str(artifacts_dir / "operator-page-full-list.png"))
        assert not page.js_errors, page.js_errors
        # offline: the page, its feed, photos and operator change all come from the agent itself
        foreign = [url for url in requested if not url.startswith(agent.url + "/") and not url.startswith("data:")]
        assert not foreign, foreign
        assert any("/ui/events" in url for url in requested) and any("/ui/photos/" in url for url in requested)


def test_card_tap_appears_on_the_page(tmp_path: Path, page: Any, artifacts_dir: Path) -> None:
    pytest.importorskip("skimage", reason="the sample face comes from scikit-image (the demo extra)")
    from agent.config import load_config
    from agent.service import samples
    from agent.service.notify import Notifier
    from agent.service.service import Service
    from tests.test_service import Platform, ScriptedReader, config_doc, write_config

    images = samples.write_images(tmp_path / "faces")
    doc = config_doc(tmp_path, images, local_api={"enabled": True, "listen": "127.0.0.1:0"})
    settings = load_config(write_config(tmp_path / "fvagent.toml", doc), validate_drivers=False)
    reader, platform = ScriptedReader(), Platform()
    import httpx

    service = Service(
        settings,
        reader=reader,
        transport=httpx.MockTransport(platform),
        notifier=Notifier(backend="socket", environ={}),
    )
    service.start()
    try:
        assert service.local_api is not None, service._local_api_error
        page.goto(service.local_api.url + "/")
        page.wait_for_selector("#conn:has-text('实时连接正常')", timeout=5000)
        person = samples.PEOPLE[0]
        t0 = time.monotonic()
        reader.present(
            samples.sample_card(person, images["card"].read_bytes(), terminal_score=0.91, terminal_result=1)
        )  # the tap
        page.wait_for_selector("#list li[data-id]", timeout=TAP_DEADLINE_S * 1000)
        assert time.monotonic() - t0 < TAP_DEADLINE_S
        assert page.inner_text("#f-name") == person.name[0] + "**"
        assert page.inner_text("#f-card") == person.card_no[:4] + "*" * 10 + person.card_no[-4:]
        assert page.inner_text("#f-result") == "通过"
        assert page.inner_text("#f-score") == "0.91"
        assert "模拟数据" in page.inner_text("#latest-title")  # fake drivers are never mistaken for real
        html = page.content()
        assert person.card_no not in html and person.name not in html
        for frame in ("head-frame", "camera-frame"):
            assert_photo_shown(page, frame)
        # a face that cannot be verified shows the reason in Chinese
        reader.present(
            samples.sample_card(samples.PEOPLE[1], images["card"].read_bytes(), terminal_score=0.35, terminal_result=0)
        )
        page.wait_for_selector("#list li:nth-child(2)", timeout=TAP_DEADLINE_S * 1000)
        assert page.inner_text("#f-result") == "未通过"
        assert "终端比对未通过" in page.inner_text("#f-reason")
        page.wait_for_selector("#platform-dot.ok", timeout=10000)
        page.wait_for_selector("#f-state:text-is('已上传')", timeout=10000)  # the page follows the upload
        page.screenshot(path=str(artifacts_dir / "operator-page.png"))
        assert not page.js_errors, page.js_errors
    finally:
        service.stop()


@pytest.mark.slow
def test_card_tap_appears_on_the_page_of_fvagent_run(tmp_path: Path, page: Any, artifacts_dir: Path) -> None:
    """The real `fvagent run` process (fake camera, a drop-directory plugin reader, the mock platform,
    the dlib engine): a card tapped appears on the page within 5 s."""
    import os
    import signal
    import subprocess
    import sys

    pytest.importorskip("skimage", reason="the sample face comes from scikit-image (the demo extra)")
    # the daemon test's plugin reader, config and mock platform
    from agent.service import samples
    from tests.test_e2e_daemon import ROOT, _config, _install_plugin, _start_mock, _tap

    platform = _start_mock(tmp_path)
    doc = _config(tmp_path, platform.section())
    doc["local_api"] = {"enabled": True, "listen": "127.0.0.1:0"}
    config = tmp_path / "fvagent.toml"
    config.write_text(samples.toml_text(doc), encoding="utf-8")
    config.chmod(0o600)
    plugin = _install_plugin(tmp_path / "plugin")
    drop, photo = tmp_path / "drop", tmp_path / "faces" / "card-photo.jpg"
    drop.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(plugin)])}
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)
    status_file = Path(doc["storage"]["dir"]) / "status.json"
    with open(tmp_path / "daemon.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = wait_for(
                lambda: daemon_api_url(proc, status_file, tmp_path / "daemon.log"),
                60,
                "the daemon reporting its local API (the face engine loads first)",
            )
            page.goto(url + "/")
            page.wait_for_selector("#conn:has-text('实时连接正常')", timeout=5000)
            person = samples.PEOPLE[2]
            t0 = time.monotonic()
            _tap(drop, person, photo, 1)
            page.wait_for_selector("#list li[data-id]", timeout=TAP_DEADLINE_S * 1000)
            assert time.monotonic() - t0 < TAP_DEADLINE_S
            assert page.inner_text("#f-card") == person.card_no[:4] + "*" * 10 + person.card_no[-4:]
            assert page.inner_text("#f-result") in ("通过", "未通过", "未核验")
            assert "模拟数据" in page.inner_text("#latest-title")
            assert_photo_shown(page, "head-frame")
            page.wait_for_selector("#f-state:text-is('已上传')", timeout=20000)  # delivered to the mock platform
            assert person.card_no in {key[1] for key in platform.delivered()}
            page.screenshot(path=str(artifacts_dir / "operator-page-daemon.png"))
            assert person.card_no not in page.content()
            assert not page.js_errors, page.js_errors
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            platform.stop()
