"""How fast the mock platform takes uploads from the real client over loopback.

Registers once, then sends N verification uploads (small generated JPEGs) with the real
``PlatformClient``, sequentially and from 4 threads, plain and SM4-encrypted, and prints requests
per second and the per-request latency. The mock runs in this process (a uvicorn thread), so both
sides share the CPU: the figures are a floor for a mock on its own machine.

    .venv/bin/python bench/mock_platform.py [--count 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.mock_platform import MockPlatform, MockPlatformConfig
from agent.mock_platform.samples import sample_registration, sample_verification
from agent.uplink.client import PlatformClient


def run(encrypt: bool, count: int, threads: int, db: Path) -> tuple[float, float]:
    with (
        MockPlatform(MockPlatformConfig(encrypt=encrypt), db) as mock,
        PlatformClient(mock.platform_settings()) as client,
    ):
        assert client.register_device(sample_registration()).accepted
        client.upload_verification(sample_verification(0))  # warm the connection pool
        latencies: list[float] = []

        def one(n: int) -> None:
            t0 = time.perf_counter()
            outcome = client.upload_verification(sample_verification(n))
            latencies.append(time.perf_counter() - t0)
            assert outcome.accepted, outcome

        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(1, count + 1)))
        elapsed = time.perf_counter() - t0
        assert mock.stats()["verifications"] == count + 1
    return count / elapsed, statistics.median(latencies) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args(argv)
    figures: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for encrypt in (False, True):
            for threads in (1, 4):
                rps, p50 = run(encrypt, args.count, threads, Path(tmp) / f"m{int(encrypt)}{threads}.db")
                name = f"{'sm4' if encrypt else 'plain'}_t{threads}"
                print(f"{name:10s} {args.count} uploads: {rps:7.1f} req/s, p50 {p50:6.1f} ms")
                figures[f"{name}_rps"] = f"{rps:.0f}"
                figures[f"{name}_p50_ms"] = f"{p50:.1f}"
    print(" ".join(f"{k}={v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
