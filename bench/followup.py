"""The follow-up list over a full outbox: how long `queue ls --result 0,2` and GET /ui/followups take.

    .venv/bin/python bench/followup.py [--records N] [--runs R]

Fills a temporary outbox with N synthetic verifications (every tenth failed, every twentieth not
verified, small photos) and times ``follow_ups`` (the code behind both) for: the whole outbox
(limit 200, what the page's 全部 asks for) and since today (everything here is today). Prints the
median of R runs and ends with one line of key=value pairs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import StorageSettings
from agent.localapi.followup import follow_ups
from agent.outbox import Outbox
from tests.test_outbox_support import record

SHANGHAI = dt.timezone(dt.timedelta(hours=8))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Outbox.open(StorageSettings(dir=Path(tmp) / "state")) as box:
        for n in range(args.records):
            result = 0 if n % 10 == 0 else 2 if n % 20 == 5 else 1
            box.enqueue(
                {**record(n), "faceResult": result, "faceScore": 0.3 if result == 0 else 0.9 * (result == 1)},
                meta={"source": "reader", "reason": "no match" if result == 0 else None},
            )
        today = dt.datetime.now(SHANGHAI).replace(hour=0, minute=0, second=0, microsecond=0)
        timings: dict[str, list[float]] = {"all_limit200": [], "since_today_limit500": []}
        found = {}
        for _ in range(args.runs):
            for name, kw in (
                ("all_limit200", {"limit": 200}),
                ("since_today_limit500", {"since": today, "limit": 500}),
            ):
                t0 = time.perf_counter()
                items = follow_ups(box, threshold=0.75, **kw)  # type: ignore[arg-type]
                timings[name].append(time.perf_counter() - t0)
                found[name] = len(items)
    for name, values in timings.items():
        print(f"{name}: {found[name]} items, median {statistics.median(values) * 1000:.0f} ms over {args.runs} runs")
    print(
        f"records={args.records} "
        + " ".join(f"{name}_ms={statistics.median(v) * 1000:.0f}" for name, v in timings.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
