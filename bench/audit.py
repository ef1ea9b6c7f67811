"""Audit chain benchmark: how long `fvagent audit verify` takes on a clean outbox, what the chain adds
to enqueue, and what `PRAGMA secure_delete = ON` costs retention.

    .venv/bin/python bench/audit.py [--records 10000] [--purge-records 1000] [--keep DIR]

1. N records of about 258 KB (two synthetic JPEGs, as bench/backlog.py) are enqueued, each then
   claimed and accepted (three events each), so the chain holds 3 N events; then the whole chain is
   verified three times (warm page cache) and the daemon's bounded check at start once.
2. Retention's cost: M sent records have their photos erased and their rows purged, in one outbox
   with secure_delete on (the default) and one with it off.

Ends with one line:

    records=… events=… verify_s=… verify_tail_ms=… enqueue_p50_ms=… enqueue_p99_ms=… purge_secure_s=… purge_plain_s=…

Target (issue 12, 2-core machine): verify of 10,000 records <= 5 s.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def fill(box: object, n: int, images: list[tuple[str, str]]) -> list[float]:
    """Enqueue ``n`` records (latencies in ms), then send each: claim and accept in batches."""
    from tests.test_outbox_support import record

    latencies = []
    for i in range(n):
        payload = record(i)
        payload["headImg"], payload["cameraImg"] = images[i % len(images)]
        start = time.perf_counter()
        box.enqueue(payload, meta={"source": "bench", "reason": "ok", "distance": 0.3})  # type: ignore[attr-defined]
        latencies.append((time.perf_counter() - start) * 1000)
    while claims := box.claim(200):  # type: ignore[attr-defined]
        for claim in claims:
            box.finish(claim, "accepted", message="成功", request_id=f"R-{claim.id}")  # type: ignore[attr-defined]
    return latencies


def purge_seconds(workdir: Path, n: int, images: list[tuple[str, str]], secure: bool) -> float:
    from agent.config import StorageSettings
    from agent.outbox import Outbox
    from agent.outbox.retention import DAY_S

    with Outbox.open(StorageSettings(dir=workdir, max_bytes=8 * 1024**3)) as box:
        if not secure:
            box.db.conn.execute("PRAGMA secure_delete = OFF")
        fill(box, n, images)
        start = time.perf_counter()
        # 100 days on, as if the machine had been up all along (else the clock guard refuses the jump)
        result = box.housekeeping(time.time() + 100 * DAY_S, uptime_s=101 * DAY_S)
        took = time.perf_counter() - start
    assert result["rows_deleted"] == n, result
    return took


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--purge-records", type=int, default=1_000)
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)

    from backlog import photos

    from agent.audit.verify import verify_outbox
    from agent.config import StorageSettings
    from agent.outbox import Outbox

    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fvagent-audit-"))
    images = photos(16)
    try:
        t0 = time.perf_counter()
        with Outbox.open(StorageSettings(dir=workdir / "state", max_bytes=8 * 1024**3)) as box:
            latencies = sorted(fill(box, args.records, images))
        built = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in (workdir / "state").glob("outbox.db*"))
        p50, p99 = statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]
        print(
            f"built {args.records} sent records in {built:.0f} s ({size / 2**20:.0f} MiB); enqueue with the chain: "
            f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"
        )
        runs = []
        with Outbox.open(StorageSettings(dir=workdir / "state")) as box:
            for _ in range(3):
                start = time.perf_counter()
                report = verify_outbox(box)
                runs.append(time.perf_counter() - start)
                assert report.ok, report.summary()
            start = time.perf_counter()
            tail = verify_outbox(box, full=False)
            tail_ms = (time.perf_counter() - start) * 1000
            assert tail.ok, tail.summary()
        print(f"verify: {report.summary()}")
        print(
            f"verify: {', '.join(f'{r:.2f}' for r in runs)} s (median {statistics.median(runs):.2f} s); "
            f"the check at start ({tail.events} events) {tail_ms:.1f} ms"
        )
        secure = purge_seconds(workdir / "purge-secure", args.purge_records, images, secure=True)
        plain = purge_seconds(workdir / "purge-plain", args.purge_records, images, secure=False)
        print(
            f"retention (erase photos + purge rows) of {args.purge_records} sent records: secure_delete on "
            f"{secure:.2f} s, off {plain:.2f} s"
        )
        print(
            f"records={args.records} events={report.events} verify_s={statistics.median(runs):.2f} "
            f"verify_tail_ms={tail_ms:.1f} enqueue_p50_ms={p50:.2f} enqueue_p99_ms={p99:.2f} "
            f"purge_secure_s={secure:.2f} purge_plain_s={plain:.2f}"
        )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
