"""The uploader against PlatformClient over httpx.MockTransport: registration, the four outcome classes,
backoff, the switch, pause on blocked until the configuration changes, order, and the run loop."""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.config import Settings, load_config
from agent.delivery import RateLimiter, Uploader
from agent.outbox import Outbox
from agent.uplink.client import PlatformClient
from core.backoff import Backoff, full_jitter
from core.errors import OutboxError, StorageFull
from tests.test_outbox_support import record, write_config
from tests.waiting import wait_for

Reply = Callable[[httpx.Request, dict[str, Any]], httpx.Response | None]


class FakePlatform:
    """A MockTransport handler that records every request and answers per a scriptable rule."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any], str, float]] = []
        self.rule: Reply | None = None
        self.lock = threading.Lock()
        self.clock: Callable[[], float] = time.time
        """The platform's clock (returnTime): a test that moves the uploader's clock moves this one too."""

    def envelope(
        self,
        request: httpx.Request,
        code: int = 200,
        exception_code: str = "00000",
        msg: str = "ok",
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        rid = request.headers["hmpt-portal-request-id"]
        return httpx.Response(
            status,
            headers=headers,
            json={
                "code": code,
                "msg": msg,
                "exceptionCode": exception_code,
                "requestId": rid,
                "returnTime": int(self.clock() * 1000),
                "data": None,
            },
        )

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        with self.lock:
            self.requests.append((request.url.path, body, request.headers["hmpt-portal-request-id"], time.monotonic()))
        if self.rule is not None:
            answer = self.rule(request, body)
            if answer is not None:
                return answer
        return self.envelope(request)

    def paths(self) -> list[str]:
        return [p.rsplit("/", 2)[-1] if "machine" in p else "upload" for p, *_ in self.requests]

    def uploads(self) -> list[dict[str, Any]]:
        return [body for path, body, *_ in self.requests if path.endswith("/first")]


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    cfg = write_config(tmp_path / "fvagent.toml", state_dir=tmp_path / "state", url="http://platform.test/api", **kw)
    return load_config(cfg, validate_drivers=False)


@pytest.fixture
def env(tmp_path: Path) -> Any:
    class Env:
        platform = FakePlatform()
        settings = _settings(tmp_path)
        outbox = Outbox.open(settings.storage)
        uploaders: list[Uploader] = []

        def uploader(self, settings: Settings | None = None, **kw: Any) -> Uploader:
            s = settings or self.settings
            up = Uploader(
                self.outbox,
                lambda p: PlatformClient(p, transport=httpx.MockTransport(self.platform)),
                s.platform,
                s.uploader,
                s.device,
                rng=random.Random(7),
                **kw,
            )
            self.uploaders.append(up)
            return up

    e = Env()
    yield e
    for up in e.uploaders:
        up.close()
    e.outbox.close()


def test_registers_before_the_first_upload_then_sends_oldest_first(env: Any, tmp_path: Path) -> None:
    ids = [env.outbox.enqueue(record(n)) for n in range(6)]
    (tmp_path / "one").mkdir()
    up = env.uploader(_settings(tmp_path / "one", concurrency=1))  # one at a time: arrival order is send order
    assert up.drain_once() == 6
    assert env.platform.paths()[0] == "info"
    assert [b["cardNo"] for b in env.platform.uploads()] == [record(n)["cardNo"] for n in range(6)]
    assert env.platform.uploads()[0] == record(0)
    assert all(env.outbox.get(i).state == "sent" for i in ids)
    reg = env.outbox.registration_state()
    assert reg["registered"] and reg["outcome"] == "accepted"
    # a second uploader (a restart) does not register again: the state lives in the database
    env.outbox.enqueue(record(9))
    assert env.uploader().drain_once() == 1
    assert env.platform.paths().count("info") == 1
    assert up.last_success is not None and up.snapshot()["state"] in ("sending", "idle")


def test_already_registered_b2301_counts_as_registered(env: Any) -> None:
    env.platform.rule = lambda req, body: (
        env.platform.envelope(req, code=500, exception_code="B2301", msg="设备已登记")
        if "machine" in req.url.path
        else None
    )
    env.outbox.enqueue(record(1))
    assert env.uploader().drain_once() == 1
    assert env.outbox.registration_state()["registered"]


def test_device_change_registers_again(env: Any, tmp_path: Path) -> None:
    env.outbox.enqueue(record(1))
    up = env.uploader()
    up.drain_once()
    new_device = env.settings.device.model_copy(update={"dept_name": "产科二病区"})
    up.update_settings(device_settings=new_device)
    env.outbox.enqueue(record(2))
    up.drain_once()
    infos = [body for path, body, *_ in env.platform.requests if "machine" in path]
    assert [b["deptName"] for b in infos] == ["妇产科", "产科二病区"]


def test_records_queue_while_registration_fails_and_flow_once_it_works(env: Any) -> None:
    down = {"on": True}
    env.platform.rule = lambda req, body: httpx.Response(503) if down["on"] else None
    for n in range(3):
        env.outbox.enqueue(record(n))
    up = env.uploader()
    assert up.drain_once() == 0
    assert env.platform.uploads() == [] and env.outbox.stats()["pending"] == 3
    assert not env.outbox.registration_state()["registered"]
    down["on"] = False
    deadline = time.monotonic() + 10
    while env.outbox.stats()["sent"] < 3 and time.monotonic() < deadline:
        up.drain_once()
        time.sleep(0.02)
    assert env.outbox.stats()["sent"] == 3


def test_registration_rejected_keeps_records_pending_until_device_is_fixed(env: Any) -> None:
    # An unregistered device's uploads would all come back A2301: none may be sent (and marked rejected)
    # before the platform took the registration.
    env.platform.rule = lambda req, body: (
        env.platform.envelope(req, code=400, exception_code="A2301", msg="deptId 不存在")
        if "machine" in req.url.path and body["deptId"] == "D01"
        else None
    )
    ids = [env.outbox.enqueue(record(n)) for n in range(3)]
    up = env.uploader()
    assert up.drain_once() == 0
    assert env.platform.paths() == ["info"] and env.platform.uploads() == []
    assert env.outbox.stats()["pending"] == 3 and env.outbox.stats()["rejected"] == 0
    snap = up.snapshot()
    assert snap["state"] == "paused" and "registration rejected" in snap["paused_reason"]
    assert "fix [device]" in snap["paused_reason"] and "deptId" in snap["paused_reason"]
    assert not env.outbox.registration_state()["registered"]
    assert up.drain_once() == 0 and env.platform.paths() == ["info"]  # no retry storm on the registration
    up.update_settings(device_settings=env.settings.device.model_copy(update={"dept_id": "D02"}))
    assert up.drain_once() == 3
    assert all(env.outbox.get(i).state == "sent" for i in ids)


def test_registration_refused_credentials_block_everything(env: Any) -> None:
    env.platform.rule = lambda req, body: httpx.Response(403, text="forbidden") if "machine" in req.url.path else None
    env.outbox.enqueue(record(1))
    up = env.uploader()
    assert up.drain_once() == 0
    assert env.platform.uploads() == [] and env.outbox.stats()["pending"] == 1
    assert up.blocked and up.snapshot()["state"] == "blocked"
    assert up.snapshot()["blocked_reason"].startswith("registration:")
    assert env.outbox.get_state("blocked")["reason"].startswith("registration:")  # survives a restart


def test_a_failing_registration_refresh_does_not_stop_uploads(env: Any) -> None:
    env.outbox.enqueue(record(1))
    now = [time.time()]
    env.platform.clock = lambda: now[0]
    up = env.uploader(clock=lambda: now[0])
    assert up.drain_once() == 1
    registered_at = env.outbox.registration_state()["at"]
    env.platform.rule = lambda req, body: httpx.Response(503) if "machine" in req.url.path else None
    now[0] += env.settings.uploader.register_refresh_h * 3600 + 60  # the daily refresh is due
    later = env.outbox.enqueue(record(2))
    up.drain_once()  # the refresh fails: a short global backoff, as after any failure
    assert env.platform.paths()[-1] == "info"
    now[0] += env.settings.uploader.backoff_initial_s * 2  # past that backoff, before the next refresh try
    assert env.settings.uploader.backoff_initial_s * 2 < env.settings.uploader.backoff_max_s
    up.drain_once()
    assert env.platform.paths()[-2:] == ["info", "upload"]
    assert env.outbox.get(later).state == "sent"
    reg = env.outbox.registration_state()
    assert reg["registered"] and reg["outcome"] == "retryable" and reg["at"] == registered_at


def test_a_failing_platform_is_probed_one_record_at_a_time(env: Any) -> None:
    failing = {"on": True}

    def rule(req: httpx.Request, body: dict[str, Any]) -> httpx.Response | None:
        if failing["on"] and "/first" in req.url.path:
            time.sleep(0.05)  # a slow failure: the round's other requests are under way before it is known
            return httpx.Response(502)
        return None

    env.platform.rule = rule
    for n in range(8):
        env.outbox.enqueue(record(n))
    up = env.uploader()
    concurrency = env.settings.uploader.concurrency
    assert concurrency > 1
    rounds: list[int] = []
    deadline = time.monotonic() + 20
    while len(rounds) < 4 and time.monotonic() < deadline:
        if n := up.step().sent:
            rounds.append(n)
        time.sleep(0.005)
    assert 1 <= rounds[0] <= concurrency and rounds[1:] == [1, 1, 1]  # found out; then one probe per round
    failing["on"] = False
    while env.outbox.stats()["sent"] < 8 and time.monotonic() < deadline:
        if n := up.step().sent:
            rounds.append(n)
        time.sleep(0.005)
    assert env.outbox.stats()["sent"] == 8
    assert max(rounds[4:]) == concurrency  # after a success, full speed again


def test_switched_off_sends_nothing_and_keeps_queueing(tmp_path: Path, env: Any) -> None:
    off = _settings(tmp_path, enabled=False)
    for n in range(3):
        env.outbox.enqueue(record(n))
    up = env.uploader(off)
    assert up.drain_once() == 0
    assert env.platform.requests == [] and env.outbox.stats()["pending"] == 3
    assert up.snapshot()["state"] == "disabled" and "enabled = false" in up.paused_reason
    up.update_settings(platform_settings=env.settings.platform)
    assert up.drain_once() == 3


def test_rejected_is_kept_with_the_reason_and_not_retried(env: Any) -> None:
    env.platform.rule = lambda req, body: (
        env.platform.envelope(req, code=500, exception_code="A2301", msg="参数错误: cardNo")
        if body.get("cardNo") == record(1)["cardNo"]
        else None
    )
    bad = env.outbox.enqueue(record(1))
    good = env.outbox.enqueue(record(2))
    up = env.uploader()
    up.drain_once()
    row = env.outbox.get(bad)
    assert row.state == "rejected" and "A2301" in row.last_error and row.last_outcome == "rejected"
    assert env.outbox.get(good).state == "sent"
    assert up.drain_once() == 0
    assert len(env.platform.uploads()) == 2


def test_blocked_pauses_everything_until_the_platform_config_changes(env: Any, tmp_path: Path) -> None:
    env.platform.rule = lambda req, body: httpx.Response(403, text="forbidden") if "/first" in req.url.path else None
    for n in range(5):
        env.outbox.enqueue(record(n))
    up = env.uploader()
    up.drain_once()
    sent_while_blocked = len(env.platform.uploads())
    assert 1 <= sent_while_blocked <= env.settings.uploader.concurrency
    assert up.blocked and up.snapshot()["state"] == "blocked" and "403" in up.snapshot()["blocked_reason"]
    assert env.outbox.stats()["pending"] == 5 and env.outbox.stats()["rejected"] == 0
    assert up.drain_once() == 0 and len(env.platform.uploads()) == sent_while_blocked
    # A restart with the same configuration stays paused (the pause is in the database) ...
    again = env.uploader()
    assert again.blocked and again.drain_once() == 0
    # ... a changed [platform] lifts it.
    env.platform.rule = None
    (tmp_path / "new").mkdir()
    fixed = _settings(tmp_path / "new")
    fixed = fixed.model_copy(update={"platform": fixed.platform.model_copy(update={"org_app_id": "APP0002"})})
    again.update_settings(platform_settings=fixed.platform)
    assert not again.blocked
    assert again.drain_once() == 5 and env.outbox.stats()["sent"] == 5


def test_retryable_backs_off_with_full_jitter_and_keeps_every_request_id(env: Any) -> None:
    fails = {"n": 2}

    def rule(req: httpx.Request, body: dict[str, Any]) -> httpx.Response | None:
        if "/first" in req.url.path and fails["n"] > 0:
            fails["n"] -= 1
            return httpx.Response(502)
        return None

    # the uploader's clock only moves when the test moves it: a loaded machine cannot make the
    # record due again inside one drain
    env.platform.rule = rule
    rid = env.outbox.enqueue(record(1))
    now = [time.time()]  # after the commit, which made the record due at the real time
    env.platform.clock = lambda: now[0]
    up = env.uploader(clock=lambda: now[0])
    assert up.drain_once() == 1
    row = env.outbox.get(rid)
    assert row.state == "pending" and row.last_outcome == "retryable" and "502" in row.last_error
    assert row.request_id == env.platform.requests[-1][2]  # the attempt that just failed, traceable
    assert now[0] <= row.next_attempt_at <= now[0] + env.settings.uploader.backoff_initial_s
    assert up.snapshot()["state"] == "backoff"
    assert up.drain_once() == 0  # not due yet

    now[0] = row.next_attempt_at + 0.001
    assert up.drain_once() == 1
    row = env.outbox.get(rid)
    assert row.attempts == 2 and row.last_outcome == "retryable"
    assert row.request_id == env.platform.requests[-1][2]  # the latest
    # the second backoff is drawn from twice the first range
    assert row.next_attempt_at <= now[0] + 2 * env.settings.uploader.backoff_initial_s

    now[0] = row.next_attempt_at + 0.001
    assert up.drain_once() == 1
    assert env.outbox.get(rid).state == "sent"
    attempts = env.outbox.attempts(rid)
    assert [a.outcome for a in attempts] == ["retryable", "retryable", "accepted"]
    sent_ids = [r for p, b, r, _ in env.platform.requests if p.endswith("/first")]
    assert [a.request_id for a in attempts] == sent_ids and len(set(sent_ids)) == 3
    assert env.outbox.get(rid).request_id == sent_ids[-1]


def test_retry_after_is_honoured(env: Any) -> None:
    env.platform.rule = lambda req, body: (
        httpx.Response(429, headers={"Retry-After": "30"}) if "/first" in req.url.path else None
    )
    rid = env.outbox.enqueue(record(1))
    up = env.uploader()
    start = time.time()
    up.drain_once()
    # backoff_max_s is 0.5 in the test config: Retry-After is honoured up to that ceiling
    assert env.outbox.get(rid).next_attempt_at >= start + 0.5 - 0.01
    assert up.snapshot()["backoff_until"] >= start + 0.5 - 0.01


def test_full_jitter_bounds() -> None:
    rng = random.Random(1)
    for attempt in range(1, 12):
        ceiling = min(300.0, 2.0 * 2 ** (attempt - 1))
        values = [full_jitter(attempt, 2.0, 300.0, rng) for _ in range(200)]
        assert all(0 <= v <= ceiling for v in values)
        assert max(values) > ceiling * 0.8 and min(values) < ceiling * 0.2  # the whole range (full jitter)


def test_the_uploaders_backoff_counts_an_episode_and_draws_each_delay_on_the_curve() -> None:
    # core.backoff.Backoff as the uploader uses it: failed() for the global backoff, delay(attempt)
    # for a record's own, succeeded() when the platform answers again.
    backoff = Backoff(2.0, 300.0, jitter=random.Random(3))
    ceilings = [min(300.0, 2.0 * 2 ** (n - 1)) for n in range(1, 11)]
    assert all(0 <= backoff.failed() <= ceiling for ceiling in ceilings) and backoff.failures == 10
    assert all(0 <= backoff.delay(9) <= 300.0 for _ in range(100)) and backoff.failures == 10  # no count
    backoff.succeeded()
    assert backoff.failures == 0 and backoff.failed() <= 2.0
    plain = Backoff(0.5, 3.0)  # no jitter: the curve itself
    assert [plain.failed() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    with pytest.raises(ValueError, match="initial_s <= max_s"):
        Backoff(5.0, 1.0)


def test_rate_limiter_spaces_requests_evenly() -> None:
    limiter = RateLimiter(20.0)
    stamps = []
    for _ in range(10):
        limiter.wait()
        stamps.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert min(gaps) >= 0.05 - 0.003
    assert stamps[-1] - stamps[0] >= 9 * 0.05 - 0.01


def test_run_loop_drains_new_records_and_stops(env: Any) -> None:
    up = env.uploader()
    stop = threading.Event()
    thread = threading.Thread(target=up.run, args=(stop,))
    thread.start()
    try:
        ids = [env.outbox.enqueue(record(n)) for n in range(10)]
        deadline = time.monotonic() + 10
        while env.outbox.stats()["sent"] < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert all(env.outbox.get(i).state == "sent" for i in ids)
        # one uploader per outbox
        with pytest.raises(OutboxError, match="already uploading"):
            Uploader(env.outbox, lambda p: None, env.settings.platform, env.settings.uploader, env.settings.device).run(
                threading.Event()
            )
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive() and up.snapshot()["state"] == "stopped"


class FakeTime:
    """The uploader's clocks, moved only by the uploader's own timed waits: minutes of backoff pass
    in a moment of real time, so a test can run the production loop through them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wall_start = time.time()
        self._passed = 0.0

    def time(self) -> float:
        with self._lock:
            return self._wall_start + self._passed

    def monotonic(self) -> float:
        with self._lock:
            return self._passed

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        if event.wait(0.001):  # a moment of real time lets the workers run
            return True
        with self._lock:
            self._passed += timeout_s
        return event.is_set()


def test_the_run_loop_rides_out_a_failing_platform_and_delivers_each_record_exactly_once(tmp_path: Path) -> None:
    # run() itself, on a fake clock: the backoff (20 s doubling to 60 s) would take minutes of real time.
    settings = _settings(tmp_path, backoff_initial_s=20.0, backoff_max_s=60.0)
    platform = FakePlatform()
    lock = threading.Lock()
    failures_left = [5]
    accepted: list[str] = []

    def rule(req: httpx.Request, body: dict[str, Any]) -> httpx.Response | None:
        if "/first" not in req.url.path:
            return None
        with lock:
            if failures_left[0] > 0:
                failures_left[0] -= 1
                return httpx.Response(503)
            accepted.append(body["cardNo"])
        return None

    platform.rule = rule
    with Outbox.open(settings.storage) as box:
        ids = [box.enqueue(record(n)) for n in range(6)]
        fake = FakeTime()  # from now on: the records are due
        platform.clock = fake.time
        up = Uploader(
            box,
            lambda p: PlatformClient(p, transport=httpx.MockTransport(platform)),
            settings.platform,
            settings.uploader,
            settings.device,
            clock=fake.time,
            monotonic=fake.monotonic,
            wait_event=fake.wait,
            rng=random.Random(7),
        )
        backoff_until: list[float] = []

        def heartbeat() -> None:
            if (until := up.snapshot()["backoff_until"]) is not None:
                backoff_until.append(until)

        stop = threading.Event()
        thread = threading.Thread(target=up.run, args=(stop,), kwargs={"heartbeat": heartbeat})
        thread.start()
        try:
            wait_for(lambda: box.stats()["sent"] == 6, 60, "every record to be delivered")
        finally:
            stop.set()
            thread.join(10)
        assert not thread.is_alive() and up.snapshot()["state"] == "stopped"
        assert failures_left == [0] and backoff_until and fake.time() > max(backoff_until)  # backed off, waited it out
        assert sorted(accepted) == sorted(record(n)["cardNo"] for n in range(6))  # each once, none twice
        outcomes = [a.outcome for i in ids for a in box.attempts(i)]
        assert outcomes.count("accepted") == 6 and outcomes.count("retryable") == 5
        assert [row.state for row in map(box.get, ids) if row is not None] == ["sent"] * 6


def test_run_requeues_records_a_crash_left_in_sending(env: Any) -> None:
    rid = env.outbox.enqueue(record(1))
    env.outbox.claim(1)  # as if the process died mid-request
    up = env.uploader()
    stop = threading.Event()
    thread = threading.Thread(target=up.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while env.outbox.get(rid).state != "sent" and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(10)
    assert [a.outcome for a in env.outbox.attempts(rid)] == ["interrupted", "accepted"]


class DiskFullOnFinish(Outbox):
    """An outbox whose disk is full when the next ``full`` results are stored (capture is unaffected)."""

    full = 0

    def finish(self, *args: Any, **kw: Any) -> None:
        if self.full:
            self.full -= 1
            raise StorageFull("the disk is full: cannot record the upload result; nothing stored was changed")
        super().finish(*args, **kw)


def test_a_result_that_cannot_be_stored_is_kept_and_stored_later_not_resent(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    platform = FakePlatform()
    with DiskFullOnFinish.open(settings.storage) as box:
        up = Uploader(
            box,
            lambda p: PlatformClient(p, transport=httpx.MockTransport(platform)),
            settings.platform,
            settings.uploader,
            settings.device,
            rng=random.Random(7),
        )
        try:
            rid = box.enqueue(record(1))
            box.full = 1
            assert up.step().sent == 1
            assert up.wait_for_requests(10)
            assert len(platform.uploads()) == 1
            assert box.get(rid).state == "sending"  # type: ignore[union-attr]  # accepted, not yet written
            assert up.snapshot()["state"] == "paused" and "disk is full" in up.snapshot()["paused_reason"]
            up.step()  # space is back: the kept result is stored first
            row = box.get(rid)
            assert row is not None and row.state == "sent" and row.request_id == platform.requests[-1][2]
            assert up.drain_once() == 0 and len(platform.uploads()) == 1  # never sent a second time
        finally:
            up.close()


def test_a_record_altered_on_disk_is_set_aside_not_sent(env: Any) -> None:
    import sqlite3

    bad = env.outbox.enqueue(record(1))
    good = env.outbox.enqueue(record(2))
    conn = sqlite3.connect(env.outbox.path)
    blob = bytearray(conn.execute("SELECT data FROM payloads WHERE record_id = ?", (bad,)).fetchone()[0])
    blob[20] ^= 0xFF
    conn.execute("UPDATE payloads SET data = ? WHERE record_id = ?", (bytes(blob), bad))
    conn.commit()
    conn.close()
    env.uploader().drain_once()
    row = env.outbox.get(bad)
    assert row.state == "rejected" and row.last_outcome == "local" and "does not open" in row.last_error
    assert env.outbox.get(good).state == "sent"
    assert [b["cardNo"] for b in env.platform.uploads()] == [record(2)["cardNo"]]
