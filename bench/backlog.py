"""Backlog benchmark: enqueue N records of about 250 KB (two real JPEGs), then drain them to the mock
platform over loopback with SM4 encryption on the wire.

    .venv/bin/python bench/backlog.py [--records 10000] [--concurrency 4] [--keep DIR]

The mock platform (``agent.mock_platform.MockPlatform``, SM4 required) runs as its own process, so the
peak RSS printed is the agent's alone (outbox + uploader + client). Prints enqueue p50/p99, drain records/s and peak
RSS, and ends with one line:

    enqueue_p99_ms=… drain_rps=… peak_rss_mb=…

Targets (issue 3, 2-core machine): enqueue p99 <= 20 ms, drain >= 100 records/s, peak RSS <= 200 MB.
The photos are synthetic (gradients and noise encoded with core.images.encode_jpeg), never faces.
"""

from __future__ import annotations

import argparse
import base64
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SECRET = "0123456789abcdef"  # a 16-byte orgAppSecret: the SM4 key as is
APP_ID = "BENCH0001"
TICKET = "ESB-BENCH"


def photos(pairs: int) -> list[tuple[str, str]]:
    """``pairs`` distinct pairs of real JPEGs of about 95 KB each (base64 about 125 KB)."""
    import numpy as np

    from core.images import encode_jpeg

    out = []
    for i in range(pairs):
        pair = []
        for j in range(2):
            rng = np.random.default_rng(i * 2 + j)
            h, w = 360, 480
            ramp = np.linspace(0, 255, h * w).reshape(h, w)
            frame = np.stack([ramp, ramp[::-1], np.roll(ramp, 40 * (i + j))], axis=-1)
            frame = (frame + rng.normal(0, 50, (h, w, 3))).clip(0, 255).astype(np.uint8)
            pair.append(base64.b64encode(encode_jpeg(frame, quality=85)).decode("ascii"))
        out.append((pair[0], pair[1]))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, url: str, state: Path, concurrency: int) -> None:
    path.write_text(
        f"""\
[device]
machine_code = "TS0001"
device_no = "SN0001"
manufacturer = "德生实名易"
model = "TSR-R3"
purchase_date = 2024-01-02
dept_id = "D01"
dept_name = "妇产科"
register_user = "管理员"
operator = "覃护士"

[platform]
base_url = "{url}"
environment = "test"
allow_plain_http = true
org_app_id = "{APP_ID}"
org_app_secret = "{SECRET}"
encrypt = true

[platform.auth]
kind = "static"
ticket = "{TICKET}"

[storage]
dir = "{state}"
max_bytes = {8 * 1024**3}

[uploader]
max_rps = 1000
concurrency = {concurrency}
backoff_initial_s = 0.1
backoff_max_s = 2.0
""",
        encoding="utf-8",
    )


_MOCK = """
import sys, time
from agent.mock_platform import MockPlatform, MockPlatformConfig
config = MockPlatformConfig(org_app_id=sys.argv[1], org_app_secret=sys.argv[2], ticket=sys.argv[3], encrypt=True,
                            port=int(sys.argv[4]))
MockPlatform(config, sys.argv[5]).start()
while True:
    time.sleep(3600)
"""


def start_mock(workdir: Path, port: int) -> tuple[subprocess.Popen[bytes], str, str]:
    """The mock platform (agent.mock_platform, encryption required) as its own process, so its
    memory is not counted as the agent's. Returns (process, base URL, description)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _MOCK, APP_ID, SECRET, TICKET, str(port), str(workdir / "mock-platform.db")], cwd=ROOT
    )
    return proc, f"http://127.0.0.1:{port}", "agent.mock_platform.MockPlatform (encrypt=True)"


def wait_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"the mock platform did not listen on port {port} within {timeout_s} s")


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)

    from agent.config import load_config
    from agent.delivery import Uploader
    from agent.outbox import Outbox
    from agent.uplink.client import PlatformClient
    from tests.test_outbox_support import record

    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fvagent-backlog-"))
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    mock, url, what = start_mock(workdir, port)
    try:
        wait_port(port, 30)
        print(f"platform: {what}, {url}, its own process")
        cfg = workdir / "fvagent.toml"
        write_config(cfg, url, workdir / "state", args.concurrency)
        settings = load_config(cfg, validate_drivers=False)
        images = photos(16)
        payloads_bytes = len(str(record(0, photo_b64=images[0][0])))
        print(
            f"records: {args.records}, each about {payloads_bytes / 1024:.0f} KB of JSON (two JPEGs of "
            f"{len(base64.b64decode(images[0][0])) / 1024:.0f} KB); SM4 on the wire; concurrency {args.concurrency}"
        )

        box = Outbox.open(settings.storage)
        latencies = []
        t0 = time.perf_counter()
        for n in range(args.records):
            head, cam = images[n % len(images)]
            payload = record(n)
            payload["headImg"], payload["cameraImg"] = head, cam
            start = time.perf_counter()
            box.enqueue(payload, meta={"source": "bench"})
            latencies.append((time.perf_counter() - start) * 1000)
        enqueue_s = time.perf_counter() - t0
        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        db_bytes = sum(p.stat().st_size for p in (workdir / "state").glob("outbox.db*"))
        print(
            f"enqueue: {args.records / enqueue_s:.0f} records/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
            f"max {latencies[-1]:.1f} ms; outbox {db_bytes / 2**20:.0f} MiB on disk"
        )
        rss_before_drain = rss_mb()

        peak = [rss_before_drain]
        stop_sampler = threading.Event()

        def sample() -> None:
            while not stop_sampler.wait(0.05):
                peak[0] = max(peak[0], rss_mb())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        uploader = Uploader(box, PlatformClient, settings.platform, settings.uploader, settings.device)
        stop = threading.Event()
        thread = threading.Thread(target=uploader.run, args=(stop,))
        t1 = time.perf_counter()
        thread.start()
        last_report = t1
        while True:
            stats = box.stats()
            if stats["sent"] + stats["rejected"] >= args.records:
                break
            if time.perf_counter() - last_report > 10:
                last_report = time.perf_counter()
                print(
                    f"  draining: {stats['sent']} sent after {last_report - t1:.0f} s "
                    f"(uploader {uploader.snapshot()['state']})",
                    flush=True,
                )
            time.sleep(0.25)
        drain_s = time.perf_counter() - t1
        stop.set()
        thread.join(60)
        stop_sampler.set()
        sampler.join()
        stats = box.stats()
        box.close()
        drain_rps = stats["sent"] / drain_s
        peak_rss = max(peak[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(
            f"drain: {stats['sent']} sent, {stats['rejected']} rejected in {drain_s:.1f} s = {drain_rps:.0f} records/s"
        )
        print(
            f"RSS: {rss_before_drain:.0f} MB before the drain, peak {peak_rss:.0f} MB (the agent's process; "
            "the mock platform runs apart)"
        )
        print(
            f"targets: enqueue p99 <= 20 ms {'met' if p99 <= 20 else 'MISSED'}; drain >= 100 rec/s "
            f"{'met' if drain_rps >= 100 else 'MISSED'}; peak RSS <= 200 MB {'met' if peak_rss <= 200 else 'MISSED'}"
        )
        print(f"enqueue_p99_ms={p99:.2f} drain_rps={drain_rps:.0f} peak_rss_mb={peak_rss:.0f}")
    finally:
        mock.terminate()
        try:
            mock.wait(10)
        except subprocess.TimeoutExpired:
            mock.kill()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
