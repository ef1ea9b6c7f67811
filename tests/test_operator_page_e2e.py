"""The operator page end to end in headless Chromium: a card tap appears on the page within 5 s.

The agent side is real: the local API server on loopback, a real outbox in tmp_path, the registered
fake card reader and fake camera, and a small capture loop that does what the service's
verification loop does (card -> record -> durable commit -> event). The browser is Debian's
chromium driven by playwright (never `playwright install`). A screenshot of the page is saved
under test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import base64
import datetime as dt
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.events import VERIFICATION
from agent.records import build_verification
from tests.test_localapi import Agent, make_settings, synthetic_jpeg, verification_body

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TAP_DEADLINE_S = 5.0

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() or shutil.which("chromium") is None,
                                reason="needs Debian's chromium (apt-get install chromium; make setup-test does it)")


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
    context = browser.new_context(viewport={"width": 1024, "height": 600}, locale="zh-CN",
                                  timezone_id="Asia/Shanghai")
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


class CaptureLoop:
    """What the service's verification loop does, minus the face engine: read a card from the
    reader, build the record (the terminal's score), commit it, then announce it on the bus."""

    def __init__(self, agent: Agent, reader: Any, camera_jpeg: bytes) -> None:
        self.agent, self.reader, self.camera_jpeg = agent, reader, camera_jpeg
        self.stop = threading.Event()
        self.committed: list[int] = []
        self.thread = threading.Thread(target=self._run, name="capture", daemon=True)

    def _run(self) -> None:
        with self.reader:
            while not self.stop.is_set():
                card = self.reader.read_card(0.3)
                if card is None:
                    continue
                record = build_verification(
                    card, head_jpeg=card.photo_jpeg, camera_jpeg=self.camera_jpeg,
                    face_score=0.91, face_result=1, operator=self.agent.operator.get(),
                    verified_at=dt.datetime.now(dt.timezone(dt.timedelta(hours=8))),
                    device=self.agent.settings.device)
                record_id = self.agent.outbox.enqueue(record.to_payload(), simulated=card.simulated)
                self.committed.append(record_id)
                self.agent.events.publish(VERIFICATION, {"id": record_id, "source": "reader",
                                                         "simulated": card.simulated})

    def __enter__(self) -> CaptureLoop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def test_relayed_verification_appears_on_the_page(tmp_path: Path, page: Any, artifacts_dir: Path) -> None:
    head, camera = face_images()
    with Agent(make_settings(tmp_path)) as agent:
        page.goto(agent.url + "/")
        page.wait_for_selector("#conn:has-text('实时连接正常')", timeout=5000)
        assert page.inner_text("#operator") == "默认员"
        body = verification_body(name="覃春燕", score=0.42, result=0, head=head, camera=camera)
        import httpx

        t0 = time.monotonic()
        record_id = httpx.post(agent.url + "/v1/verifications", json=body, timeout=10).json()["id"]
        page.wait_for_selector(f"#list li[data-id='{record_id}']", timeout=TAP_DEADLINE_S * 1000)
        shown_after = time.monotonic() - t0
        assert shown_after < TAP_DEADLINE_S
        assert page.inner_text("#f-name") == "覃**"
        assert page.inner_text("#f-result") == "未通过"
        assert "0.42" in page.inner_text("#f-reason")
        assert body["cardNo"] not in page.content()
        page.wait_for_function("document.querySelector('#head-frame img') && document.querySelector('#head-frame img').naturalWidth > 0",
                               timeout=5000)
        page.wait_for_selector("#queue:text-is('1')", timeout=5000)  # the status bar follows the queue
        page.screenshot(path=str(artifacts_dir / "operator-page-relay.png"))
        assert not page.js_errors, page.js_errors
