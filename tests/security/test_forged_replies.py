"""Issue 10: a reply that is not the platform's acceptance never marks a record sent.

A forged-reply server on loopback answers registration as the real platform does (signed), then
answers the upload with a forgery. The real uploader, outbox and platform client run against it;
afterwards the record must still be unsent, and memory bounded.
"""

from __future__ import annotations

import datetime as dt
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.delivery import Uploader
from agent.outbox import Outbox
from agent.uplink.client import PlatformClient
from tests.forged_platform import (
    ForgedPlatform,
    Request,
    envelope,
    http_reply,
    other_request_id,
    signed_headers,
)
from tests.test_outbox_support import record

STALE_2017 = dt.datetime(2017, 3, 1, 8, 0, tzinfo=dt.UTC).timestamp()


@pytest.fixture
def forged(tmp_path: Path) -> Iterator[Any]:
    from tests.forged_platform import agent_config

    platform = ForgedPlatform()

    class Env:
        server = platform
        settings = agent_config(
            tmp_path / "fvagent.toml", url=platform.url, state_dir=tmp_path / "state", timeout_s=3.0
        )
        outbox = Outbox.open(settings.storage)

        def drain(self, rounds: int = 3) -> Uploader:
            """The daemon's uploader, several rounds (as the retries would), against the forged server."""
            s = self.settings
            up = Uploader(
                self.outbox, lambda p: PlatformClient(p), s.platform, s.uploader, s.device, rng=random.Random(3)
            )
            try:
                for _ in range(rounds):
                    up.drain_once()
                    time.sleep(0.6)  # past the record's and the global backoff (backoff_max_s = 0.5)
            finally:
                up.close()
            return up

    env = Env()
    yield env
    env.outbox.close()
    platform.close()


def _not_sent(env: Any, record_id: int) -> None:
    row = env.outbox.get(record_id)
    assert row.state != "sent", f"record marked sent on a forged reply: {row}"
    assert env.server.uploads(), "the forged server never saw the upload"


def _forged_case(answer: Callable[[Request], Any]) -> Callable[[Any], None]:
    def run(env: Any) -> None:
        record_id = env.outbox.enqueue(record(1))
        env.server.upload = answer
        env.drain()
        _not_sent(env, record_id)

    return run


FORGERIES: dict[str, Callable[[Request], Any]] = {
    # a redirect (a captive portal, a hostile box) whose body says success
    "302 with code 200": lambda req: http_reply(
        302, envelope(req.request_id), {"Location": "http://127.0.0.1:9/login", **signed_headers()}
    ),
    "404 with code 200": lambda req: http_reply(404, envelope(req.request_id), signed_headers()),
    # registration was signed: this platform signs, so an unsigned success is not believed
    "unsigned after signed": lambda req: http_reply(200, envelope(req.request_id)),
    "wrong requestId": lambda req: http_reply(200, envelope(other_request_id()), signed_headers()),
    # the signature covers orgAppId + time only: our own headers sent back "verify"
    "our request's signature copied back": lambda req: http_reply(
        200,
        envelope(req.request_id),
        {"hmpt-portal-sign": req.headers["hmpt-portal-sign"], "hmpt-portal-time": req.headers["hmpt-portal-time"]},
    ),
    # a genuinely signed reply captured in 2017, replayed
    "stale sendTime from 2017": lambda req: http_reply(
        200, envelope(req.request_id, return_time_s=STALE_2017), signed_headers(STALE_2017)
    ),
}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_a_forged_reply_never_marks_the_record_sent(forged: Any, name: str) -> None:
    _forged_case(FORGERIES[name])(forged)


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def test_a_50_mb_reply_is_abandoned_and_memory_stays_bounded(forged: Any) -> None:
    pad = b"x" * (1 << 20)

    def fifty_mb(req: Request) -> Callable[[socket.socket], None]:
        head = envelope(req.request_id)[:-1] + b',"pad":"'

        def write(conn: socket.socket) -> None:
            size = len(head) + 50 * len(pad) + 2
            conn.sendall(
                http_reply(200, b"", signed_headers(), length=False).replace(
                    b"\r\n\r\n", f"\r\nContent-Length: {size}\r\n\r\n".encode()
                )
                + head
            )
            for _ in range(50):
                conn.sendall(pad)
            conn.sendall(b'"}')

        return write

    def fifty_mb_unannounced(req: Request) -> Callable[[socket.socket], None]:
        head = envelope(req.request_id)[:-1] + b',"pad":"'

        def write(conn: socket.socket) -> None:  # no Content-Length: the body ends when the socket does
            conn.sendall(http_reply(200, b"", signed_headers(), length=False) + head)
            for _ in range(50):
                conn.sendall(pad)
            conn.sendall(b'"}')

        return write

    before = _rss()
    record_id = forged.outbox.enqueue(record(1))
    for answer in (fifty_mb, fifty_mb_unannounced):
        forged.server.upload = answer
        forged.drain(rounds=1)
        _not_sent(forged, record_id)
    grown = _rss() - before
    assert grown < 30 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB reading a 50 MB reply"


def test_a_one_byte_per_second_trickle_is_abandoned_at_the_whole_request_deadline(forged: Any) -> None:
    # timeout_s = 3: the whole request, not each read (each byte comes well within 3 s)
    forged.server.upload = lambda req: (http_reply(200, envelope(req.request_id), signed_headers()), 1.0)
    record_id = forged.outbox.enqueue(record(1))
    s = forged.settings
    up = Uploader(forged.outbox, lambda p: PlatformClient(p), s.platform, s.uploader, s.device, rng=random.Random(3))
    done = threading.Event()
    started = time.monotonic()

    def one_round() -> None:
        up.step()
        up.wait_for_requests()
        done.set()

    threading.Thread(target=one_round, daemon=True).start()
    finished = done.wait(s.platform.timeout_s + 5)
    took = time.monotonic() - started
    try:
        assert finished, f"the upload was still reading the trickle after {took:.0f} s (timeout_s = 3)"
        _not_sent(forged, record_id)
        assert forged.outbox.get(record_id).state == "pending"  # retried later
    finally:
        forged.server.close()  # ends a trickle still being read (before the fix)
        done.wait(10)
        up.close()


def test_nested_json_in_a_reply_is_refused_without_a_crash(forged: Any, caplog: pytest.LogCaptureFixture) -> None:
    deep = b"[" * 30000 + b"]" * 30000  # 60 KB: under the size cap, far deeper than the parser's stack
    forged.server.upload = lambda req: http_reply(
        200, b'{"code":200,"requestId":"%s","x":%s}' % (req.request_id.encode(), deep), signed_headers()
    )
    record_id = forged.outbox.enqueue(record(1))
    forged.drain(rounds=1)
    _not_sent(forged, record_id)
    row = forged.outbox.get(record_id)
    assert row.state == "pending" and "nested too deeply" in (row.last_error or ""), row
    assert "Traceback" not in caplog.text and "unexpectedly" not in caplog.text
