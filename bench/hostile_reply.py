"""Memory and time of one upload whose reply is a 50 MB body, against a forged platform on loopback.

Run: .venv/bin/python bench/hostile_reply.py [--runs N]
Each run is a fresh process (RSS is per process): the client sends one verification, the server
answers HTTP 200 with a signed success envelope padded to 50 MB and no Content-Length. Prints one
line per run, then one line of key=value pairs (medians): RSS growth in MiB, seconds, the outcome.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ONE_RUN = """
import json, socket, time, psutil
from tests.forged_platform import APP_ID, SECRET, ForgedPlatform, envelope, http_reply, signed_headers
from agent.config import PlatformSettings
from agent.uplink.client import PlatformClient
pad = b"x" * (1 << 20)
def fifty(req):
    head = envelope(req.request_id)[:-1] + b',"pad":"'
    def write(conn):
        conn.sendall(http_reply(200, b"", signed_headers(), length=False) + head)
        for _ in range(50):
            conn.sendall(pad)
        conn.sendall(b'"}')
    return write
with ForgedPlatform() as fp:
    fp.upload = fifty
    p = PlatformSettings(base_url=fp.url, org_app_id=APP_ID, org_app_secret=SECRET, timeout_s=20,
                         allow_plain_http=True, auth={"kind": "static", "ticket": "T"})
    before = psutil.Process().memory_info().rss
    t = time.monotonic()
    with PlatformClient(p) as c:
        out = c.upload_verification({"realName": "x"})
    print(json.dumps({"rss_mib": (psutil.Process().memory_info().rss - before) / 2**20,
                      "s": time.monotonic() - t, "outcome": out.kind.value}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    results = []
    for _ in range(args.runs):
        out = subprocess.run(
            [sys.executable, "-c", ONE_RUN],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(results[-1])
    outcomes = sorted({r["outcome"] for r in results})
    print(
        f"rss_growth_mib={statistics.median(r['rss_mib'] for r in results):.1f} "
        f"seconds={statistics.median(r['s'] for r in results):.2f} outcome={'/'.join(outcomes)} runs={args.runs}"
    )


if __name__ == "__main__":
    main()
