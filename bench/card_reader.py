"""Card reader figures: codec decode rate, and tap-to-card latency of the real sam-serial driver
over the pty SAM simulator (pty, 115200 setting; a pty does not pace bytes like a real UART, so the
wire time of a real 1295-byte answer, ~113 ms at 115200 8N1, comes on top).

    .venv/bin/python bench/card_reader.py [--taps 30]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers import registry
from drivers.card_reader import codec
from drivers.card_reader.fake import SAMPLES_DIR, load_fixtures
from drivers.card_reader.simulator import SYNTHETIC_WLT, SamSimulator


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--taps", type=int, default=30)
    args = ap.parse_args()
    cards = load_fixtures(SAMPLES_DIR)
    frames = [codec.read_response(c, SYNTHETIC_WLT) for c in cards]
    n = 3000
    t0 = time.perf_counter()
    for i in range(n):
        codec.decode_read_response(frames[i % 3])
    decode_us = (time.perf_counter() - t0) / n * 1e6
    print(f"codec: decode_read_response {decode_us:.1f} us per 1295-byte frame")
    lat = []
    with tempfile.TemporaryDirectory() as d, SamSimulator(Path(d) / "tty") as sim:
        opts = {"port": str(sim.port), "baudrate": 115200, "poll_interval_s": 0.3}
        with registry.create("card_reader", "sam-serial", opts) as reader:
            for i in range(args.taps):
                sim.remove()
                reader.read_card(0.0)  # the driver sees the field empty
                # The card arrives at a random moment of the polling cycle, as a person taps it.
                timer = threading.Timer(
                    random.uniform(0.0, 0.3),
                    lambda c=cards[i % 3]: (presented.append(time.monotonic()), sim.present(c)),
                )
                presented: list[float] = []
                timer.start()
                card = reader.read_card(5.0)
                assert card is not None
                lat.append((time.monotonic() - presented[0]) * 1000)
    lat.sort()
    p50, p95 = statistics.median(lat), lat[int(0.95 * (len(lat) - 1))]
    print(
        f"sam-serial over pty: tap-to-card p50 {p50:.0f} ms, p95 {p95:.0f} ms, max {lat[-1]:.0f} ms "
        f"({args.taps} taps, poll_interval_s 0.3)"
    )
    print(f"decode_us={decode_us:.1f} tap_p50_ms={p50:.0f} tap_p95_ms={p95:.0f} tap_max_ms={lat[-1]:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
