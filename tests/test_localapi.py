"""The local API over a real server on loopback: relay in, results out, access rules, masking, the feed.

Synthetic identities only (GB 11643 check digits, invented names). The helpers at the top are
shared by the other tests/test_localapi*.py files and the operator-page end-to-end test.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from agent.config import Settings, parse_config
from agent.events import EventBus, OperatorState
from agent.localapi.backend import DeskBackend
from agent.localapi.server import LocalApiServer
from agent.status import DaemonState, LiveStatus, PlatformState, PlatformView, Status, build_status
from core import codes
from core.errors import LocalApiError
from core.images import encode_jpeg
from tests.waiting import wait_for

API_TOKEN = "api-token-for-tests-0123456789"
FULL_TOKEN = "full-data-token-for-tests-987654"


# --------------------------------------------------------------------------------------------------
# Helpers (imported by the other local API tests)


def make_id(birth: str = "19920315", seq: str = "024", region: str = "450103") -> str:
    first17 = region + birth + seq
    return first17 + codes.resident_id_check_digit(first17)


def synthetic_jpeg(seed: int, size: tuple[int, int] = (126, 102)) -> bytes:
    """A small real JPEG: a face-like oval on a coloured ground (no real person)."""
    h, w = size
    rng = np.random.default_rng(seed)
    frame = np.full((h, w, 3), rng.integers(120, 220, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    oval = ((yy - h * 0.45) / (h * 0.32)) ** 2 + ((xx - w / 2) / (w * 0.28)) ** 2 <= 1
    frame[oval] = (150, 180, 225)
    return encode_jpeg(frame)


def config_dict(tmp_path: Path, **local_api: Any) -> dict[str, Any]:
    """An agent that accepts relayed verifications (with API_TOKEN, as every change needs a
    credential); ``token=None`` leaves the token out."""
    api = {
        k: v
        for k, v in {"listen": "127.0.0.1:0", "relay": True, "token": API_TOKEN, **local_api}.items()
        if v is not None
    }
    return {
        "device": {
            "machine_code": "TSR-TEST-0001",
            "device_no": "SN0001",
            "manufacturer": "测试厂商",
            "model": "TSR-R3",
            "purchase_date": "2024-06-01",
            "dept_id": "D01",
            "dept_name": "妇产科",
            "register_user": "测试员",
            "operator": "默认员",
        },
        "platform": {
            "base_url": "http://127.0.0.1:9/api",
            "org_app_id": "app",
            "org_app_secret": "0123456789abcdef",
            "auth": {"kind": "static", "ticket": "ticket"},
            "environment": "test",
            "allow_plain_http": True,
        },
        "storage": {"dir": str(tmp_path / "state")},
        "card_reader": {"driver": "fake"},
        "camera": {"driver": "fake"},
        "face": {"mode": "relay"},
        "local_api": api,
    }


def make_settings(tmp_path: Path, **local_api: Any) -> Settings:
    return parse_config(config_dict(tmp_path, **local_api), validate_drivers=False)


def verification_body(
    *,
    name: str = "韦小梅",
    card_no: str | None = None,
    score: float = 0.86,
    result: int = 1,
    seed: int = 1,
    head: bytes | None = None,
    camera: bytes | None = None,
    when: dt.datetime | None = None,
) -> dict[str, Any]:
    """A valid relayed verification (spec field names) for a synthetic identity."""
    when = when or dt.datetime.now(dt.timezone(dt.timedelta(hours=8)))
    return {
        "realName": name,
        "cardType": 0,
        "cardNo": card_no or make_id(),
        "sexCode": "2",
        "sexName": "女",
        "nationalCode": "01",
        "nationalName": "汉",
        "birthday": "1992-03-15",
        "address": "广西壮族自治区南宁市青秀区测试路1号",
        "police": "南宁市公安局青秀分局",
        "cardStartDate": "2020-01-01",
        "cardEndDate": "2040-01-01",
        "headImg": base64.b64encode(head or synthetic_jpeg(seed)).decode(),
        "cameraImg": base64.b64encode(camera or synthetic_jpeg(seed + 100, (240, 200))).decode(),
        "faceScore": score,
        "faceResult": result,
        "verifyDate": when.strftime("%Y-%m-%d"),
        "verifyTime": when.strftime("%Y-%m-%d %H:%M:%S"),
        "certTimeoutStatus": 0,
    }


def same_picture(got: bytes | str, sent: bytes | str) -> bool:
    """Relayed photos are re-encoded (no metadata survives): the same picture, not the same bytes."""
    from core.images import decode_image

    a, b = (decode_image(base64.b64decode(x) if isinstance(x, str) else x) for x in (got, sent))
    return a.shape == b.shape and float(np.abs(a.astype(int) - b.astype(int)).mean()) < 4.0


def open_outbox(settings: Settings) -> Any:
    """The real outbox over the settings' state directory."""
    from agent.outbox import Outbox

    return Outbox.open(settings.storage)


def running_daemon(platform: PlatformState) -> LiveStatus:
    """A running daemon's live status, as if its uploader saw the platform in ``platform``."""
    reachable = {PlatformState.OK: True, PlatformState.DOWN: False}.get(platform)
    return LiveStatus(
        pid=os.getpid(),
        state=DaemonState.RUNNING,
        started_at=time.time(),
        updated_at=time.time(),
        config=None,
        platform=PlatformView(platform, reachable=reachable, blocked=platform is PlatformState.BLOCKED),
        uploader={},
        hardware={},
        last_verification=None,
        verifications=0,
        local_api_url=None,
        local_api_error=None,
        loops={},
        alerts=(),
    )


class Agent:
    """The pieces the service wires together: outbox, event bus, operator, backend, server."""

    def __init__(self, settings: Settings, *, platform: PlatformState = PlatformState.OK) -> None:
        self.settings = settings
        self.outbox = open_outbox(settings)
        self.events = EventBus()
        self.operator = OperatorState.for_settings(settings)
        self.live = running_daemon(platform)
        """What the status says the daemon knows (a daemon in this process)."""
        self.served: list[Status] = []
        self.backend = DeskBackend(
            settings, self.outbox, self.events, self.operator, status_provider=self.status, status_ttl_s=0
        )
        self.server = LocalApiServer(settings.local_api, self.backend)

    def status(self) -> Status:
        status = build_status(
            self.settings, outbox=self.outbox, live=dataclasses.replace(self.live, updated_at=time.time())
        )
        self.served.append(status)
        return status

    def __enter__(self) -> Agent:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        close = getattr(self.outbox, "close", None)
        if close:
            close()

    @property
    def url(self) -> str:
        return self.server.url


# --------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    with Agent(make_settings(tmp_path)) as a:
        yield a


@pytest.fixture
def tokened(tmp_path: Path) -> Iterator[Agent]:
    with Agent(make_settings(tmp_path, token=API_TOKEN, full_data_token=FULL_TOKEN)) as a:
        yield a


def client(a: Agent, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=a.url, headers=headers, timeout=10)


# --------------------------------------------------------------------------------------------------
# Relay in


def test_post_commits_then_answers_202_with_the_id(agent: Agent) -> None:
    body = verification_body()
    with client(agent, API_TOKEN) as c:
        r = c.post("/v1/verifications", json=body)
    assert r.status_code == 202, r.text
    record_id = r.json()["id"]
    assert isinstance(record_id, int)
    # durable before the answer: a second, independent outbox sees the row
    other = open_outbox(agent.settings)
    try:
        stored = other.payload(record_id)
    finally:
        getattr(other, "close", lambda: None)()
    assert stored["cardNo"] == body["cardNo"]
    assert stored["operationUser"] == "默认员"  # filled from the operator state
    assert stored["machineCode"] == "TSR-TEST-0001" and stored["deviceNo"] == "SN0001"
    assert same_picture(stored["headImg"], body["headImg"])


def test_idempotency_key_returns_the_same_id(agent: Agent) -> None:
    body = verification_body()
    with client(agent, API_TOKEN) as c:
        first = c.post("/v1/verifications", json=body, headers={"Idempotency-Key": "term-1-abc"})
        again = c.post("/v1/verifications", json=body, headers={"Idempotency-Key": "term-1-abc"})
        other = c.post("/v1/verifications", json=body, headers={"Idempotency-Key": "term-1-abd"})
    assert first.status_code == again.status_code == other.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert other.json()["id"] != first.json()["id"]
    assert agent.events.last_seq == 2  # the retried post is not announced twice
    with client(agent, API_TOKEN) as c:
        reused = c.post(
            "/v1/verifications", json=verification_body(score=0.5, result=0), headers={"Idempotency-Key": "term-1-abc"}
        )
    assert reused.status_code == 409
    assert reused.json()["problems"][0]["field"] == "Idempotency-Key"


def test_every_bad_field_is_listed(agent: Agent) -> None:
    body = verification_body()
    body["cardNo"] = body["cardNo"][:-1] + ("0" if body["cardNo"][-1] != "0" else "1")  # wrong check digit
    body["faceScore"] = 1.7
    body["verifyTime"] = "yesterday"
    del body["headImg"]
    body["machineCode"] = "SOMEONE-ELSE"
    body["colour"] = "blue"
    with client(agent, API_TOKEN) as c:
        r = c.post("/v1/verifications", json=body)
    assert r.status_code == 422
    fields = {p["field"] for p in r.json()["problems"]}
    assert {"cardNo", "faceScore", "verifyTime", "headImg", "machineCode", "colour"} <= fields, r.json()
    assert agent.outbox.stats().get("pending", 0) == 0  # nothing stored
    assert agent.events.last_seq == 0
    # the rules never quote the card number
    assert body["cardNo"] not in r.text


def test_relay_consistency_rules_apply(agent: Agent) -> None:
    with client(agent, API_TOKEN) as c:
        r = c.post("/v1/verifications", json=verification_body(score=0.7, result=2))
    assert r.status_code == 422
    assert [p["field"] for p in r.json()["problems"]] == ["faceScore"]
    assert "faceResult is 2" in r.json()["problems"][0]["rule"]


@pytest.mark.parametrize(
    ("content", "ctype", "status"),
    [
        (b"{not json", "application/json", 422),
        (b"[1, 2]", "application/json", 422),
        (b"realName=x", "application/x-www-form-urlencoded", 415),
    ],
)
def test_bad_bodies_are_refused_clearly(agent: Agent, content: bytes, ctype: str, status: int) -> None:
    with client(agent, API_TOKEN) as c:
        r = c.post("/v1/verifications", content=content, headers={"Content-Type": ctype})
    assert r.status_code == status
    assert r.json()["error"]


def test_oversized_body_is_refused(tmp_path: Path) -> None:
    with Agent(make_settings(tmp_path, max_body_bytes=64 * 1024)) as a, client(a) as c:
        body = verification_body(camera=synthetic_jpeg(3, (600, 600)) + b"\0" * 70_000)
        r = c.post("/v1/verifications", json=body)
    assert r.status_code == 413


# --------------------------------------------------------------------------------------------------
# Results out, masking and tokens


def test_results_are_masked_by_default(agent: Agent) -> None:
    body = verification_body(name="韦小梅")
    with client(agent, API_TOKEN) as c:
        record_id = c.post("/v1/verifications", json=body).json()["id"]
        one = c.get(f"/v1/verifications/{record_id}")
        listed = c.get("/v1/verifications", params={"cardNo": body["cardNo"]})
        missing = c.get("/v1/verifications/999999")
    assert one.status_code == 200
    view = one.json()
    assert view["masked"] is True
    assert view["record"]["realName"] == "韦**"
    assert view["record"]["cardNo"] == body["cardNo"][:4] + "*" * 10 + body["cardNo"][-4:]
    assert view["record"]["faceScore"] == pytest.approx(0.86) and view["record"]["faceResult"] == 1
    assert view["state"] == "pending"
    for private in ("address", "birthday", "headImg", "cameraImg", "police"):
        assert private not in view["record"]
    assert body["cardNo"] not in one.text and "韦小梅" not in one.text
    assert listed.status_code == 200
    assert [v["id"] for v in listed.json()["items"]] == [record_id]
    assert body["cardNo"] not in listed.text
    assert missing.status_code == 404


def test_find_by_card_and_since(agent: Agent) -> None:
    card_a, card_b = make_id(seq="031"), make_id(seq="042")
    china = dt.timezone(dt.timedelta(hours=8))
    with client(agent, API_TOKEN) as c:
        ids_a = [
            c.post("/v1/verifications", json=verification_body(card_no=card_a, seed=i)).json()["id"] for i in range(3)
        ]
        c.post("/v1/verifications", json=verification_body(card_no=card_b))
        by_card = c.get("/v1/verifications", params={"cardNo": card_a}).json()["items"]
        limited = c.get("/v1/verifications", params={"cardNo": card_a, "limit": 2}).json()["items"]
        future = (dt.datetime.now(china) + dt.timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
        none_since = c.get("/v1/verifications", params={"cardNo": card_a, "since": future}).json()["items"]
        past = (dt.datetime.now(china) - dt.timedelta(hours=1)).isoformat()
        all_since = c.get("/v1/verifications", params={"cardNo": card_a, "since": past}).json()["items"]
        bad_since = c.get("/v1/verifications", params={"since": "last tuesday"})
        epoch_since = c.get("/v1/verifications", params={"since": "0.0"})  # not a Unix timestamp
        date_since = c.get("/v1/verifications", params={"cardNo": card_a, "since": "2000-01-01"})
    assert sorted(v["id"] for v in by_card) == sorted(ids_a)
    assert [v["id"] for v in by_card] == sorted(ids_a, reverse=True)  # newest first
    assert len(limited) == 2
    assert none_since == []
    assert len(all_since) == 3
    assert bad_since.status_code == 422 and bad_since.json()["problems"][0]["field"] == "since"
    assert epoch_since.status_code == 422 and epoch_since.json()["problems"][0]["field"] == "since"
    assert date_since.status_code == 200 and len(date_since.json()["items"]) == 3


def test_token_required_on_every_v1_endpoint(tokened: Agent) -> None:
    calls = [
        ("GET", "/v1/status"),
        ("GET", "/v1/verifications"),
        ("GET", "/v1/verifications/1"),
        ("PUT", "/v1/operator"),
        ("POST", "/v1/verifications"),
        ("GET", "/v1/operator"),
    ]
    with client(tokened) as anon, client(tokened, "wrong-token") as wrong:
        for method, path in calls:
            for c in (anon, wrong):
                r = c.request(method, path, json={"operator": "李护士"})
                assert r.status_code == 401, (method, path, r.status_code)
                assert r.headers["www-authenticate"] == "Bearer"
        assert anon.get("/openapi.json").status_code == 200  # the schema holds no personal data
        assert anon.get("/").status_code == 200


def test_full_data_token_unmasks(tokened: Agent) -> None:
    body = verification_body(name="韦小梅")
    with client(tokened, API_TOKEN) as api, client(tokened, FULL_TOKEN) as full:
        record_id = api.post("/v1/verifications", json=body).json()["id"]
        masked = api.get(f"/v1/verifications/{record_id}").json()
        plain = full.get(f"/v1/verifications/{record_id}").json()
        photos = full.get(f"/v1/verifications/{record_id}", params={"photos": "true"}).json()
        refused = api.get(f"/v1/verifications/{record_id}", params={"photos": "true"})
    assert masked["masked"] and masked["record"]["realName"] == "韦**"
    assert not plain["masked"]
    assert plain["record"]["realName"] == "韦小梅" and plain["record"]["cardNo"] == body["cardNo"]
    assert plain["record"]["address"] == body["address"]
    assert "headImg" not in plain["record"]
    assert same_picture(photos["record"]["headImg"], body["headImg"])
    assert refused.status_code == 403


def test_status_is_the_status_document(agent: Agent) -> None:
    agent.live = running_daemon(PlatformState.DOWN)
    with client(agent, API_TOKEN) as c:
        r = c.get("/v1/status")
    assert r.status_code == 200 and r.json() == agent.served[-1].to_json()
    assert r.json()["platform"]["state"] == "down" and r.json()["platform"]["reachable"] is False


def test_operator_put_changes_following_verifications(agent: Agent) -> None:
    with client(agent, API_TOKEN) as c:
        assert c.get("/v1/operator").json() == {"operator": "默认员"}
        r = c.put("/v1/operator", json={"operator": "李护士"})
        assert r.status_code == 200 and r.json() == {"operator": "李护士"}
        bad = c.put("/v1/operator", json={"operator": "x" * 11})
        record_id = c.post("/v1/verifications", json=verification_body()).json()["id"]
    assert bad.status_code == 422 and bad.json()["problems"][0]["field"] == "operator"
    assert agent.outbox.payload(record_id)["operationUser"] == "李护士"
    assert OperatorState.for_settings(agent.settings).get() == "李护士"  # persisted


# --------------------------------------------------------------------------------------------------
# The page's data: loopback only (or a token), photos included


def test_ui_photos_served_to_loopback_and_refused_to_foreign_host(agent: Agent) -> None:
    head = synthetic_jpeg(7)
    with client(agent, API_TOKEN) as writer:
        record_id = writer.post("/v1/verifications", json=verification_body(head=head)).json()["id"]
    with client(agent) as c:
        r = c.get(f"/ui/photos/{record_id}/head")
        assert r.status_code == 200 and same_picture(r.content, head)
        assert r.headers["content-type"] == "image/jpeg"
        assert "no-store" in r.headers["cache-control"]
        # a page that rebinds its own DNS name to 127.0.0.1 gets nothing
        rebound = c.get(f"/ui/photos/{record_id}/head", headers={"Host": "evil.example:8787"})
        assert rebound.status_code == 401
        assert c.get(f"/ui/photos/{record_id}/nose").status_code == 422
        assert c.get("/ui/photos/424242/head").status_code == 404


def test_ui_needs_token_when_caller_is_not_local(tokened: Agent) -> None:
    with client(tokened) as c:
        record_id = c.post(
            "/v1/verifications", json=verification_body(), headers={"Authorization": f"Bearer {API_TOKEN}"}
        ).json()["id"]
        foreign = {"Host": "terminal-7.hospital.example"}
        assert c.get(f"/ui/photos/{record_id}/head", headers=foreign).status_code == 401
        c.cookies.set("fvagent_token", API_TOKEN)
        ok = c.get(f"/ui/photos/{record_id}/head", headers=foreign)
        assert ok.status_code == 200


def read_sse(url: str, stop: Any, out: list[tuple[str, dict[str, Any]]], headers: dict[str, str] | None = None) -> None:
    with httpx.Client(timeout=httpx.Timeout(10, read=30)) as c, c.stream("GET", url, headers=headers or {}) as r:
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind:
                out.append((kind, json.loads(line[6:])))
            if stop():
                return


def test_feed_streams_masked_verifications_with_photo_links(agent: Agent) -> None:
    got: list[tuple[str, dict[str, Any]]] = []
    done = threading.Event()
    reader = threading.Thread(target=read_sse, args=(agent.url + "/ui/events", done.is_set, got), daemon=True)
    reader.start()
    wait_for(lambda: any(k == "status" for k, _ in got), 5, "the first status event")
    body = verification_body(name="韦小梅", score=0.31, result=0)
    with client(agent, API_TOKEN) as c:
        record_id = c.post("/v1/verifications", json=body).json()["id"]
    item = wait_for(lambda: next((d for k, d in got if k == "verification"), None), 5, "the verification event")
    done.set()
    assert item["id"] == record_id
    assert item["name"] == "韦**" and item["cardNo"].count("*") == 10
    assert item["result"] == 0 and item["resultText"] == "未通过"
    assert "0.31" in item["reason"]
    assert item["photos"]["head"] == f"/ui/photos/{record_id}/head"
    status = next(d for k, d in got if k == "status")
    assert status["operator"] == "默认员" and status["platform"] == "ok"
    assert "queueDepth" in status


def test_feed_replays_recent_verifications_to_a_new_page(agent: Agent) -> None:
    with client(agent, API_TOKEN) as c:
        ids = [c.post("/v1/verifications", json=verification_body(seed=i)).json()["id"] for i in range(3)]
    got: list[tuple[str, dict[str, Any]]] = []
    stop = threading.Event()
    threading.Thread(target=read_sse, args=(agent.url + "/ui/events", stop.is_set, got), daemon=True).start()
    wait_for(lambda: len([1 for k, _ in got if k == "verification"]) == 3, 5, "three replayed verifications")
    stop.set()
    assert [d["id"] for k, d in got if k == "verification"] == ids


# --------------------------------------------------------------------------------------------------
# Server lifecycle and privacy of the logs


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        settings = make_settings(tmp_path)
        settings = settings.model_copy(
            update={"local_api": settings.local_api.model_copy(update={"listen": f"127.0.0.1:{port}"})}
        )
        server = LocalApiServer(settings.local_api, object())
        with pytest.raises(LocalApiError) as err:
            server.start(timeout_s=5)
        assert str(port) in str(err.value) and err.value.hint
    finally:
        holder.close()


def test_stop_ends_open_feeds_quickly(agent: Agent) -> None:
    got: list[tuple[str, dict[str, Any]]] = []
    threading.Thread(target=read_sse, args=(agent.url + "/ui/events", lambda: False, got), daemon=True).start()
    wait_for(lambda: got, 5, "the feed to open")
    started = time.monotonic()
    agent.server.stop()
    assert time.monotonic() - started < 4
    assert not agent.server.running


def test_logs_hold_no_personal_data(agent: Agent, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    body = verification_body(name="韦小梅")
    with client(agent, API_TOKEN) as c:
        record_id = c.post("/v1/verifications", json=body).json()["id"]
        c.get("/v1/verifications", params={"cardNo": body["cardNo"]})
        c.get(f"/ui/photos/{record_id}/head")
    ours = [r for r in caplog.records if r.name.startswith(("agent", "uvicorn", "fastapi", "starlette"))]
    assert ours, "expected some log output to check"
    text = "\n".join(r.getMessage() for r in ours)
    assert body["cardNo"] not in text and "韦小梅" not in text and body["headImg"][:40] not in text


def test_unknown_query_parameter_is_refused(agent: Agent) -> None:
    with client(agent, API_TOKEN) as c:
        r = c.get("/v1/verifications", params={"cardno": make_id()})  # misspelt: must not list every card
    assert r.status_code == 422
    assert r.json()["problems"][0]["field"] == "cardno"


def test_feed_item_speaks_chinese_and_shows_unsaved_captures(agent: Agent) -> None:
    from agent.events import Event

    with client(agent, API_TOKEN) as c:
        record_id = c.post("/v1/verifications", json=verification_body(score=0.42, result=0)).json()["id"]
    reader_event = Event(
        1,
        "verification",
        {
            "id": record_id,
            "source": "reader",
            "reason": "no match: best distance 0.612 over 3 frame(s), score 0.42",
            "reasonCode": "no_match",
        },
        time.time(),
    )
    item = agent.backend.feed_item(reader_event)
    assert item is not None
    assert item["reason"].startswith("人证比对不一致") and "0.42" in item["reason"] and "0.75" in item["reason"]
    assert item["reasonDetail"].startswith("no match")
    no_face = agent.backend.feed_item(
        Event(
            2,
            "verification",
            {
                "id": record_id,
                "source": "reader",
                "reason": "no usable frame in 5.0 s (12 frames: no face 12)",
                "reasonCode": "no_face_live",
            },
            time.time(),
        )
    )
    assert no_face is not None and no_face["reason"] == "未采集到合格的人脸画面（未检测到人脸）"
    # a capture that could not be stored: shown from the event, masked whatever was sent
    unsaved = agent.backend.feed_item(
        Event(
            3,
            "verification",
            {
                "id": None,
                "name": "韦小梅",
                "cardNo": make_id(),
                "result": 2,
                "score": 0.0,
                "error": "disk full",
                "source": "reader",
            },
            time.time(),
        )
    )
    assert unsaved is not None
    assert unsaved["state"] == "unsaved" and unsaved["error"] == "记录未能保存，请通知技术人员"
    assert unsaved["errorDetail"] == "disk full"
    assert unsaved["name"] == "韦**" and unsaved["cardNo"].count("*") == 10
    assert unsaved["photos"] == {"head": None, "camera": None}
    assert agent.backend.feed_item(Event(4, "verification", {"id": 987654}, time.time())) is None


def test_feed_resumes_after_last_event_id_and_ignores_ids_of_an_earlier_run(agent: Agent) -> None:
    with client(agent, API_TOKEN) as c:
        ids = [c.post("/v1/verifications", json=verification_body(seed=i)).json()["id"] for i in range(3)]
    second = agent.events.recent("verification", 3)[1]
    for last_id, expected in (
        (f"{agent.events.instance_id}.{second.seq}", ids[2:]),
        (f"0badcafe.{second.seq}", ids),
    ):  # another run's id: replay the recent ones
        got: list[tuple[str, dict[str, Any]]] = []
        stop = threading.Event()
        threading.Thread(
            target=read_sse,
            args=(agent.url + "/ui/events", stop.is_set, got),
            kwargs={"headers": {"Last-Event-ID": last_id}},
            daemon=True,
        ).start()
        wait_for(
            lambda: any(k == "status" for k, _ in got[1:]) or len(got) > len(expected),
            8,
            "the replay and the next status",
        )
        stop.set()
        assert [d["id"] for k, d in got if k == "verification"] == expected


def test_without_token_only_this_machine_may_call(tmp_path: Path) -> None:
    with Agent(make_settings(tmp_path, token=None)) as agent, client(agent) as c:
        r = c.get("/v1/status", headers={"Host": "rebound.example"})
    assert r.status_code == 403 and "127.0.0.1" in r.json()["error"]


def test_answers_do_not_wait_for_delayed_acks(agent: Agent) -> None:
    # Regression: a listening socket made without proto=TCP made asyncio skip TCP_NODELAY, and every
    # answer waited ~40 ms for the client's delayed ACK.
    times = []
    with client(agent, API_TOKEN) as c:
        for _ in range(11):
            t0 = time.perf_counter()
            assert c.get("/v1/operator").status_code == 200
            times.append(time.perf_counter() - t0)
    assert sorted(times)[5] < 0.025, f"median {sorted(times)[5] * 1000:.0f} ms"


# --------------------------------------------------------------------------------------------------
# [local_api] settings


@pytest.mark.parametrize(
    ("local_api", "key", "words"),
    [
        ({"listen": "0.0.0.0:8787", "token": None}, "local_api", "requires token"),
        ({"token": "same-secret-1234", "full_data_token": "same-secret-1234"}, "local_api", "must differ"),
        ({"listen": "127.0.0.1:99999"}, "local_api.listen", "host:port"),
        ({"max_body_bytes": 1024}, "local_api.max_body_bytes", ""),
    ],
)
def test_local_api_settings_refuse_unsafe_values(
    tmp_path: Path, local_api: dict[str, Any], key: str, words: str
) -> None:
    from core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        make_settings(tmp_path, **local_api)
    assert any(path.startswith(key) and words in rule for path, rule in err.value.problems), err.value.problems


def test_local_api_listens_on_loopback_by_default(tmp_path: Path) -> None:
    doc = config_dict(tmp_path)
    del doc["local_api"]
    settings = parse_config(doc, validate_drivers=False).local_api
    assert settings.enabled and settings.host == "127.0.0.1" and settings.token is None and not settings.relay


def test_operator_page_loads_nothing_from_elsewhere() -> None:
    """The page works offline: no asset, script, stylesheet, font or connection outside its own origin."""
    import html.parser
    import re
    from importlib import resources

    page = resources.files("agent.localapi").joinpath("static/index.html").read_text(encoding="utf-8")
    assert not re.search(r"\b(?:https?|wss?|ftp):|(?<![:\w])//[\w.-]+\.\w", page), "an absolute URL in the page"
    assert not re.search(r"@import|url\(", page, re.I), "CSS that loads a resource"

    class Links(html.parser.HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.urls: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.urls += [v or "" for k, v in attrs if k in ("src", "href", "action", "poster", "srcset", "data")]

    links = Links()
    links.feed(page)
    assert all(u.startswith(("data:", "/", "#")) and not u.startswith("//") for u in links.urls), links.urls
    # what the script asks for: only paths on this server
    requested = re.findall(r"(?:EventSource|fetch)\(\s*[\"']([^\"']*)", page)
    assert requested and all(u.startswith("/ui/") for u in requested), requested


def test_off_loopback_with_token_is_allowed_and_token_file_is_read(tmp_path: Path) -> None:
    secret = tmp_path / "api_token"
    secret.write_text("file-token-abcdef\n", encoding="utf-8")
    secret.chmod(0o600)
    settings = make_settings(tmp_path, listen="0.0.0.0:0", token=None, token_file=str(secret))
    assert settings.local_api.token is not None and settings.local_api.token.get_secret_value() == "file-token-abcdef"
    assert settings.local_api.port == 0 and settings.local_api.host == "0.0.0.0"
