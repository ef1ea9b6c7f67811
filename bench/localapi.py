"""Benchmark of the local API: relay posts to durable 202, and the live feed's delay.

Starts the real server on loopback over a real outbox in a temporary state directory, posts N
relayed verifications (two synthetic JPEGs of about 60 KB each, as a terminal would send) one after
another, and measures the time to each 202 (which includes the durable commit). A page-like client
reads the server-sent-events feed meanwhile; the delay from the 202 to the verification arriving on
the feed is measured too. Ends with one line of key=value pairs.

    .venv/bin/python bench/localapi.py [N]
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config import parse_config  # noqa: E402
from agent.events import EventBus, OperatorState  # noqa: E402
from agent.localapi import DeskBackend, LocalApiServer  # noqa: E402
from agent.outbox import Outbox  # noqa: E402
from agent.status import collect_status  # noqa: E402
from core import codes  # noqa: E402
from core.images import encode_jpeg  # noqa: E402

BENCH_TOKEN = "bench-token-0123456789"


def jpeg(seed: int, h: int, w: int) -> bytes:
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    frame[:] = (frame.astype(np.uint16) // 4 + 100).astype(np.uint8)  # noisy, so JPEG stays large
    return encode_jpeg(frame, quality=80)


def body(i: int, head: str, camera: str) -> dict[str, Any]:
    first17 = "450103" + "19920315" + f"{i % 1000:03d}"
    now = dt.datetime.now(dt.timezone(dt.timedelta(hours=8)))
    return {
        "realName": "韦测试",
        "cardType": 0,
        "cardNo": first17 + codes.resident_id_check_digit(first17),
        "sexCode": "2",
        "sexName": "女",
        "nationalCode": "01",
        "nationalName": "汉",
        "birthday": "1992-03-15",
        "address": "广西壮族自治区南宁市测试路1号",
        "police": "南宁市公安局",
        "cardStartDate": "2020-01-01",
        "cardEndDate": "2040-01-01",
        "headImg": head,
        "cameraImg": camera,
        "faceScore": 0.8,
        "faceResult": 1,
        "verifyDate": now.strftime("%Y-%m-%d"),
        "verifyTime": now.strftime("%Y-%m-%d %H:%M:%S"),
        "certTimeoutStatus": 0,
    }


def bench_settings(state_dir: str, **local_api: Any) -> Any:
    """Settings of a bench agent: its state in ``state_dir``, the local API on a free loopback port."""
    return parse_config(
        {
            "device": {
                "machine_code": "BENCH-0001",
                "device_no": "SN1",
                "manufacturer": "测试",
                "model": "M",
                "purchase_date": "2024-01-01",
                "dept_id": "D",
                "dept_name": "妇产科",
                "register_user": "测试",
                "operator": "测试员",
            },
            "platform": {
                "base_url": "http://127.0.0.1:9",
                "org_app_id": "a",
                "org_app_secret": "0123456789abcdef",
                "auth": {"kind": "static", "ticket": "t"},
                "environment": "test",
                "allow_plain_http": True,
            },
            "storage": {"dir": state_dir},
            "face": {"mode": "relay"},
            "local_api": {"listen": "127.0.0.1:0", **local_api},
        },
        validate_drivers=False,
    )


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    with tempfile.TemporaryDirectory() as tmp:
        settings = bench_settings(
            tmp,
            relay=True,
            token=BENCH_TOKEN,
            max_relay_per_min=6000,
            max_unsent_relayed=1_000_000,
            relay_reserve_bytes=0,
        )
        outbox = Outbox.open(settings.storage)
        events = EventBus()
        backend = DeskBackend(
            settings,
            outbox,
            events,
            OperatorState.for_settings(settings),
            status_provider=lambda: collect_status(settings, outbox=outbox),
        )
        server = LocalApiServer(settings.local_api, backend)
        server.start()
        head = base64.b64encode(jpeg(1, 320, 260)).decode()
        camera = base64.b64encode(jpeg(2, 480, 360)).decode()
        arrived: dict[int, float] = {}
        opened = threading.Event()

        def feed() -> None:
            with httpx.Client(timeout=httpx.Timeout(5, read=60)) as c, c.stream("GET", server.url + "/ui/events") as r:
                kind = None
                for line in r.iter_lines():
                    opened.set()
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind == "verification":
                        arrived[json.loads(line[6:])["id"]] = time.perf_counter()
                    if len(arrived) >= n:
                        return

        reader = threading.Thread(target=feed, daemon=True)
        reader.start()
        opened.wait(10)
        post_ms: list[float] = []
        answered: dict[int, float] = {}
        with httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {BENCH_TOKEN}"}) as c:
            for i in range(n):
                b = body(i, head, camera)
                t0 = time.perf_counter()
                r = c.post("/v1/verifications", json=b)
                t1 = time.perf_counter()
                assert r.status_code == 202, r.text
                post_ms.append((t1 - t0) * 1000)
                answered[r.json()["id"]] = t1
        reader.join(30)
        server.stop()
        getattr(outbox, "close", lambda: None)()
    feed_ms = [max(0.0, (arrived[i] - answered[i]) * 1000) for i in answered if i in arrived]
    body_kb = len(json.dumps(body(0, head, camera)).encode()) / 1024
    q = statistics.quantiles(post_ms, n=100)
    fq = statistics.quantiles(feed_ms, n=100) if len(feed_ms) > 1 else [float("nan")] * 99
    print(f"relayed posts: {n}, body {body_kb:.0f} KB each")
    print(f"POST -> 202 (durable): p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms, max {max(post_ms):.1f} ms")
    print(f"202 -> on the page's feed: p50 {fq[49]:.1f} ms, p99 {fq[98]:.1f} ms ({len(feed_ms)}/{n} arrived)")
    print(
        f"post_p50_ms={q[49]:.1f} post_p99_ms={q[98]:.1f} feed_p50_ms={fq[49]:.1f} feed_p99_ms={fq[98]:.1f} "
        f"feed_delivered={len(feed_ms)}/{n}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
