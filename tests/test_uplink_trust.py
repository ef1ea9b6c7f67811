"""Issues 10.7 and 16.2 through the real uploader and outbox: errors by code (not keyword), a device
the platform does not know is registered again, [device] status = 1 holds uploads, after-first
survives a restart, and a wrong clock on either side is learnt from the replies and corrected."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.config import ConventionSettings, Settings, load_config
from agent.delivery import Uploader
from agent.mock_platform import MockPlatform, MockPlatformConfig
from agent.outbox import Outbox
from agent.status import clock_offset_alert
from agent.uplink.client import PlatformClient
from agent.uplink.clock import PlatformClock
from agent.uplink.conventions import Conventions
from tests.test_outbox_support import record, write_config
from tests.waiting import wait_for

DAY = 86400.0
APP_ID, SECRET, TICKET = "APP0001", "0123456789abcdef", "ESB-TICKET-1"  # as write_config writes them


class Platform:
    """A MockTransport handler: ``upload(request, n)`` answers the n-th upload (None: success)."""

    def __init__(self) -> None:
        self.conv = Conventions(ConventionSettings(), APP_ID, SECRET)
        self.sign = True
        self.upload: Callable[[httpx.Request, int], httpx.Response | None] = lambda req, n: None
        self.paths: list[str] = []

    def envelope(
        self, req: httpx.Request, code: int = 200, exception_code: str = "00000", msg: str = "成功", status: int = 200
    ) -> httpx.Response:
        headers = self.conv.response_headers(self.conv.send_time(time.time())) if self.sign else {}
        return httpx.Response(
            status,
            headers=headers,
            json={
                "code": code,
                "msg": msg,
                "exceptionCode": exception_code,
                "requestId": req.headers["hmpt-portal-request-id"],
                "returnTime": int(time.time() * 1000),
                "data": None,
            },
        )

    def __call__(self, req: httpx.Request) -> httpx.Response:
        self.paths.append("register" if "machine" in req.url.path else "upload")
        if self.paths[-1] == "upload":
            answer = self.upload(req, self.paths.count("upload"))
            if answer is not None:
                return answer
        return self.envelope(req)


def _settings(tmp_path: Path, url: str = "http://platform.test/api", device_extra: str = "") -> Settings:
    cfg = write_config(tmp_path / "fvagent.toml", state_dir=tmp_path / "state", url=url, concurrency=1)
    if device_extra:
        text = cfg.read_text(encoding="utf-8").replace("[platform]", device_extra + "\n[platform]", 1)
        cfg.write_text(text, encoding="utf-8")
    return load_config(cfg, validate_drivers=False)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Any]:
    class Env:
        platform = Platform()
        settings = _settings(tmp_path)
        outbox = Outbox.open(settings.storage)
        made: list[Uploader] = []

        def uploader(self, settings: Settings | None = None, **kw: Any) -> Uploader:
            s = settings or self.settings
            up = Uploader(
                self.outbox,
                lambda p: PlatformClient(p, transport=httpx.MockTransport(self.platform)),
                s.platform,
                s.uploader,
                s.device,
                rng=random.Random(1),
                **kw,
            )
            self.made.append(up)
            return up

    e = Env()
    yield e
    for up in e.made:
        up.close()
    e.outbox.close()


def _drain(up: Uploader, rounds: int = 4) -> None:
    for _ in range(rounds):
        up.drain_once()
        time.sleep(0.55)  # past backoff_max_s


# ---- 10.7: by code, not by keyword -------------------------------------------------------------------


def test_the_word_renzheng_in_a_message_does_not_pause_uploads(env: Any) -> None:
    env.platform.upload = lambda req, n: (
        env.platform.envelope(req, 400, "E0400", "认证核验结果: 照片不清晰") if n == 1 else None
    )
    bad, good = env.outbox.enqueue(record(1)), env.outbox.enqueue(record(2))
    up = env.uploader()
    _drain(up, 1)
    assert not up.blocked and up.snapshot()["state"] != "blocked"
    assert env.outbox.get(bad).state == "rejected" and env.outbox.get(good).state == "sent"


@pytest.mark.parametrize(("exception_code", "what"), [("A2304", "not registered"), ("A2305", "disabled")])
def test_device_not_registered_or_disabled_registers_again_and_retries_the_record(
    env: Any, exception_code: str, what: str
) -> None:
    env.platform.upload = lambda req, n: (
        env.platform.envelope(req, 400, exception_code, f"设备 {what}") if n == 1 else None
    )
    record_id = env.outbox.enqueue(record(1))
    up = env.uploader()
    _drain(up)
    assert env.outbox.get(record_id).state == "sent"
    assert env.platform.paths == ["register", "upload", "register", "upload"]
    assert [a.outcome for a in env.outbox.attempts(record_id)] == ["unregistered", "accepted"]


def test_device_status_1_holds_uploads_with_the_reason(env: Any, tmp_path: Path) -> None:
    (tmp_path / "off").mkdir()
    disabled = env.settings.model_copy(update={"device": env.settings.device.model_copy(update={"status": 1})})
    record_id = env.outbox.enqueue(record(1))
    up = env.uploader(disabled)
    _drain(up, 1)
    assert "upload" not in env.platform.paths and env.outbox.get(record_id).state == "pending"
    assert "status = 1" in (up.paused_reason or "") and "停用" in (up.paused_reason or "")
    up.update_settings(device_settings=env.settings.device)
    _drain(up, 1)
    assert env.outbox.get(record_id).state == "sent"


# ---- 10.4: after-first survives a restart ------------------------------------------------------------


def test_after_first_an_unsigned_reply_is_refused_also_after_a_restart(env: Any) -> None:
    first = env.outbox.enqueue(record(1))
    env.uploader().drain_once()  # signed replies: registration and the upload
    assert env.outbox.get(first).state == "sent"
    env.platform.sign = False  # a forger without the secret
    second = env.outbox.enqueue(record(2))
    up = env.uploader()  # a restart: a new uploader on the same outbox
    _drain(up, 2)
    row = env.outbox.get(second)
    assert row.state == "pending" and "after-first" in (row.last_error or "")
    assert up.snapshot()["clock"]["platform_signs_replies"] is True


def test_through_the_daemons_counting_client_too_the_clock_and_after_first_reach_the_real_client(env: Any) -> None:
    # The service hands the uploader a CountingClient around each PlatformClient: what the uploader
    # gives its client (the shared platform clock, "this platform signs") must pass the wrapper.
    from agent.events import EventBus
    from agent.metrics import CountingClient, Metrics

    metrics = Metrics(EventBus(), dict)
    made: list[PlatformClient] = []

    def counting(platform: Any) -> CountingClient:
        made.append(PlatformClient(platform, transport=httpx.MockTransport(env.platform)))
        return CountingClient(made[-1], metrics)

    s = env.settings
    up = Uploader(env.outbox, counting, s.platform, s.uploader, s.device, rng=random.Random(1))
    env.made.append(up)
    first = env.outbox.enqueue(record(1))
    up.drain_once()  # signed replies
    assert env.outbox.get(first).state == "sent"
    assert made[-1].platform_clock is up.platform_clock and made[-1].expect_signed
    env.platform.sign = False  # a forger without the secret
    second = env.outbox.enqueue(record(2))
    _drain(up, 2)
    row = env.outbox.get(second)
    assert row.state == "pending" and "after-first" in (row.last_error or "")


def test_a_platform_that_never_signs_is_served_under_after_first(env: Any) -> None:
    env.platform.sign = False
    record_id = env.outbox.enqueue(record(1))
    env.uploader().drain_once()
    assert env.outbox.get(record_id).state == "sent"


# ---- 16.2: the platform's clock ----------------------------------------------------------------------


@pytest.fixture
def skewed_mock(tmp_path: Path) -> Iterator[MockPlatform]:
    config = MockPlatformConfig(
        org_app_id=APP_ID, org_app_secret=SECRET, ticket=TICKET, clock_offset_s=-400 * DAY
    )  # as if our clock were 400 days ahead
    with MockPlatform(config, tmp_path / "mock.db") as mock:
        yield mock


def test_timestamp_expired_is_a_clock_outcome_retried_with_the_platforms_time_and_delivered(
    skewed_mock: MockPlatform, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, url=skewed_mock.url)
    record_id = None
    with Outbox.open(settings.storage) as outbox:
        record_id = outbox.enqueue(record(1))
        up = Uploader(
            outbox, PlatformClient, settings.platform, settings.uploader, settings.device, rng=random.Random(1)
        )
        try:
            _drain(up, 3)
            snap = up.snapshot()
        finally:
            up.close()
        assert outbox.get(record_id).state == "sent"
        assert not snap["blocked"] and snap["clock"]["offset_s"] == pytest.approx(-400 * DAY, abs=5)
        answers = [r["exception_code"] for r in skewed_mock.requests()]
        assert answers[0] == "A2302" and "A2303" not in answers  # expired once, never "credentials"
    assert len(skewed_mock.records()) == 1
    alert = clock_offset_alert(snap["clock"]["offset_s"], settings.device.max_clock_offset_s)
    assert alert is not None and "ahead of" in alert and "timedatectl" in alert


def test_a_wrong_local_clock_with_a_platform_that_does_not_check_it_is_learnt_from_two_replies(env: Any) -> None:
    ahead = 400 * DAY
    up = env.uploader(clock=lambda: time.time() + ahead)
    record_id = env.outbox.enqueue(record(1))
    # The replies carry the real time: to our clock they look 400 days stale, until two replies at
    # least CONFIRM_GAP_S apart agree on the offset (the platform's clock ran with ours meanwhile).
    deadline = time.monotonic() + 15
    while env.outbox.get(record_id).state != "sent" and time.monotonic() < deadline:
        up.drain_once()
        time.sleep(0.55)
    assert env.outbox.get(record_id).state == "sent"
    assert up.platform_clock.offset_s == pytest.approx(-ahead, abs=60)
    # the first replies (to the registration) were judged stale against our wrong clock, and retried
    assert env.platform.paths.count("register") >= 2


def test_a_step_needs_confirmation_a_fixed_replayed_time_never_gives_one() -> None:
    local, mono = [1_800_000_000.0], [0.0]
    pc = PlatformClock(300, clock=lambda: local[0], monotonic=lambda: mono[0])
    replayed = local[0] - 3 * DAY  # a signed reply captured three days ago, sent again and again
    for _ in range(5):
        assert not pc.is_fresh(replayed, local[0])
        pc.observe(replayed, local[0], local[0])
        local[0] += 10
        mono[0] += 10
    assert pc.offset_s is None
    pc.observe(1_400_000_000.0, local[0], local[0], expired=True)  # 2014: before the interface existed
    assert pc.offset_s is None


def test_a_verification_captured_meanwhile_keeps_the_offset_in_its_meta(tmp_path: Path) -> None:
    import datetime as dt

    from agent.service.verification import Verifier
    from core.card import IdCard
    from core.codes import resident_id_check_digit

    first17 = "45030219920405002"
    card = IdCard(
        card_type="0",
        name="蓝测试",
        sex_code="2",
        birth_date=dt.date(1992, 4, 5),
        card_no=first17 + resident_id_check_digit(first17),
        valid_from=dt.date(2022, 6, 1),
        valid_to=dt.date(2042, 6, 1),
        nation_code="08",
        address="广西壮族自治区桂林市示例街3号",
        authority="桂林市公安局",
    )
    settings = _settings(tmp_path)
    with Outbox.open(settings.storage) as outbox:
        verifier = Verifier(
            settings,
            outbox,
            camera=lambda: None,
            engine=lambda: None,
            operator=lambda: "覃护士",
            clock_offset=lambda: -400 * DAY,
        )
        done = verifier.verify(card)
        assert done.outbox_id is not None
        assert outbox.get(done.outbox_id).meta["clock_offset_s"] == pytest.approx(-400 * DAY)


# ---- 16.7: a stuck request stops the heartbeat -------------------------------------------------------


def test_a_request_stuck_past_its_deadline_stops_the_heartbeat(env: Any) -> None:
    release = threading.Event()

    class HungClient:  # a DNS lookup that never returns: no socket timeout applies
        def register_device(self, payload: dict[str, Any]) -> Any:
            return PlatformClient(env.settings.platform, transport=httpx.MockTransport(env.platform)).register_device(
                payload
            )

        def upload_verification(self, payload: dict[str, Any]) -> Any:
            release.wait(30)
            raise RuntimeError("released")

        def abort(self) -> None:
            pass  # what hangs here is no connection an abort could cut

        def close(self) -> None:
            pass

    s = env.settings.model_copy(
        update={"platform": env.settings.platform.model_copy(update={"timeout_s": 0.3, "connect_timeout_s": 0.2})}
    )
    up = Uploader(env.outbox, lambda p: HungClient(), s.platform, s.uploader, s.device)
    up.stuck_grace_s = 0.5
    env.made.append(up)
    env.outbox.enqueue(record(1))
    beats: list[float] = []
    stop = threading.Event()
    runner = threading.Thread(target=up.run, args=(stop,), kwargs={"heartbeat": lambda: beats.append(time.monotonic())})
    runner.start()
    try:
        wait_for(lambda: beats and time.monotonic() - beats[-1] > 1.5, 10, "the heartbeat to stop")
    finally:
        release.set()
        stop.set()
        runner.join(10)
    assert json.dumps(up.snapshot(), default=str)


def test_queue_show_shows_the_offset_beside_the_local_verify_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import main

    settings = _settings(tmp_path)
    with Outbox.open(settings.storage) as outbox:
        record_id = outbox.enqueue(record(1), meta={"clock_offset_s": -400 * DAY})
    assert main(["queue", "show", str(record_id), "-c", str(tmp_path / "fvagent.toml")]) == 0
    out = capsys.readouterr().out
    assert f"verifyTime {record(1)['verifyTime']} is the local clock's" in out
    assert "34560000 s ahead of the platform's" in out
