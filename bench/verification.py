"""Verification benchmark: card read -> card photo -> live frames -> dlib score -> record -> durable commit.

Runs the daemon's ``Service`` in this process (real outbox on disk, real dlib engine, the fake camera
at 15 fps over frames of the public-domain astronaut portrait) and presents N sample cards one after
another through a fed reader. The platform is switched off (``[platform] enabled = false``) so the
figures are the desk's own path: what a mother waits for. Prints p50/p95/max latency, the commit
share of it, and peak RSS; ends with one line of key=value pairs.

    .venv/bin/python bench/verification.py [N]
"""

from __future__ import annotations

import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.config import parse_config  # noqa: E402
from agent.service import samples  # noqa: E402
from agent.service.demo import _fed_reader, demo_config  # noqa: E402
from agent.service.notify import Notifier  # noqa: E402
from agent.service.service import Service  # noqa: E402


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    with tempfile.TemporaryDirectory(prefix="fvagent-bench-") as tmp:
        base = Path(tmp)
        images = samples.write_images(base / "faces")
        doc = demo_config(base, "http://127.0.0.1:9", images)
        doc["platform"]["enabled"] = False
        settings = parse_config(doc, validate_drivers=False)
        reader = _fed_reader()
        service = Service(
            settings, reader=reader, notifier=Notifier(backend="socket", environ={}), start_local_api=False
        )
        t0 = time.monotonic()
        service.start()
        startup = time.monotonic() - t0
        photo = images["card"].read_bytes()
        people = [p for p in samples.PEOPLE if p.sees_face]
        latencies: list[float] = []
        last_seen: dict[str, float] = {}
        try:
            for i in range(count):
                person = people[i % len(people)]
                wait = last_seen.get(person.card_no, 0.0) + 1.05 - time.monotonic()
                if wait > 0:  # one card at most once a second (the record's natural key)
                    time.sleep(wait)
                last_seen[person.card_no] = time.monotonic()
                before = service.verifications
                reader.queue.append(samples.sample_card(person, photo))
                while service.verifications == before:
                    time.sleep(0.002)
                done = service.last_verification
                assert done is not None and done.outbox_id is not None, done
                latencies.append(done.latency_s)
        finally:
            service.stop()
    lat = sorted(latencies)
    p50 = statistics.median(lat) * 1000
    p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))] * 1000
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{count} verifications (compute mode, fake camera 15 fps, platform off)")
    print(f"startup to READY: {startup:.2f} s (outbox, drivers, dlib models)")
    print(f"card -> durable commit: p50 {p50:.0f} ms, p95 {p95:.0f} ms, max {lat[-1] * 1000:.0f} ms")
    print(f"peak RSS {rss_mb:.0f} MB")
    print(
        f"verify_p50_ms={p50:.0f} verify_p95_ms={p95:.0f} verify_max_ms={lat[-1] * 1000:.0f} "
        f"startup_s={startup:.2f} peak_rss_mb={rss_mb:.0f}"
    )


if __name__ == "__main__":
    main()
