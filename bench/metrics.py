"""Benchmark of GET /metrics: one Prometheus scrape, end to end over loopback.

Starts the real local API server over a real outbox holding N relayed verifications (posted
through the API, so the verification counters are fed too), with the status document collected
from that outbox as the daemon does (``collect_status``), a token configured, then scrapes /metrics
S times one after another with the token. Ends with one line of key=value pairs.

    .venv/bin/python bench/metrics.py [N] [S]
"""

from __future__ import annotations

import base64
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.events import EventBus, OperatorState  # noqa: E402
from agent.localapi import DeskBackend, LocalApiServer  # noqa: E402
from agent.metrics import Metrics  # noqa: E402
from agent.outbox import Outbox  # noqa: E402
from agent.status import collect_status  # noqa: E402
from bench.localapi import bench_settings, body, jpeg  # noqa: E402

TOKEN = "bench-metrics-token-0123456789"


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    scrapes = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    with tempfile.TemporaryDirectory() as tmp:
        settings = bench_settings(  # relay on: the records are posted the way a terminal posts them
            tmp, relay=True, token=TOKEN, max_relay_per_min=6000, max_unsent_relayed=1_000_000, relay_reserve_bytes=0
        )
        outbox = Outbox.open(settings.storage)
        events = EventBus()
        metrics = Metrics(events, lambda: collect_status(settings, outbox=outbox).to_json())
        backend = DeskBackend(
            settings,
            outbox,
            events,
            OperatorState.for_settings(settings),
            status_provider=lambda: collect_status(settings, outbox=outbox),
            metrics=metrics,
        )
        server = LocalApiServer(settings.local_api, backend)
        server.start()
        head = base64.b64encode(jpeg(1, 320, 260)).decode()
        camera = base64.b64encode(jpeg(2, 480, 360)).decode()
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=server.url, timeout=30, headers=auth) as c:
            for i in range(n):
                r = c.post("/v1/verifications", json=body(i, head, camera))
                assert r.status_code == 202, r.text
            scrape_ms: list[float] = []
            size = 0
            for _ in range(scrapes):
                t0 = time.perf_counter()
                r = c.get("/metrics")
                scrape_ms.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200, r.text
                size = len(r.content)
        server.stop()
        outbox.close()
    q = statistics.quantiles(scrape_ms, n=100)
    print(f"outbox records: {n}; scrapes: {scrapes}; exposition {size} bytes")
    print(f"GET /metrics: p50 {statistics.median(scrape_ms):.1f} ms, p99 {q[98]:.1f} ms, max {max(scrape_ms):.1f} ms")
    print(
        f"records={n} scrapes={scrapes} scrape_p50_ms={statistics.median(scrape_ms):.1f} "
        f"scrape_p99_ms={q[98]:.1f} bytes={size}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
