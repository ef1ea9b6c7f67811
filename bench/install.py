"""Benchmark of the offline install: deploy/install.sh from the release bundle into a fresh prefix.

Builds the bundle for this machine's architecture and this Python (deploy/release.py, downloads
cached in build/release/), unpacks it, then runs install.sh N times, each into a new staging
directory (DESTDIR) inside a private network namespace (no network at all), with and without
--demo. Needs root (unshare --net). Ends with one line of key=value pairs.

    .venv/bin/python bench/install.py [N]
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "deploy" / "release.py"),
                "--arch",
                platform.machine(),
                "--python",
                python,
                "--dist",
                str(work),
            ],
            check=True,
            capture_output=True,
        )
        (tarball,) = work.glob("fvagent-*.tar.gz")
        size_mib = tarball.stat().st_size / 2**20
        with tarfile.open(tarball) as tar:
            tar.extractall(work / "unpacked", filter="data")
        (bundle,) = (work / "unpacked").iterdir()
        figures: dict[str, list[float]] = {"default": [], "demo": []}
        for i in range(n):
            for kind, args in (("default", []), ("demo", ["--demo"])):
                stage = work / f"stage-{kind}-{i}"
                env = {
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "DESTDIR": str(stage),
                    "FVAGENT_PREFIX": "/opt/fvagent",
                    "FVAGENT_PYTHON": sys.executable,
                }
                t0 = time.monotonic()
                subprocess.run(
                    ["unshare", "--net", "sh", str(bundle / "deploy" / "install.sh"), *args],
                    check=True,
                    capture_output=True,
                    env=env,
                )
                figures[kind].append(time.monotonic() - t0)
                shutil.rmtree(stage)
    default, demo = statistics.median(figures["default"]), statistics.median(figures["demo"])
    print(f"bundle {tarball.name}: {size_mib:.0f} MiB; {n} installs of each kind, offline, into a fresh prefix")
    print(f"install.sh: median {default:.1f} s; install.sh --demo: median {demo:.1f} s")
    print(f"bundle_mib={size_mib:.0f} install_s={default:.1f} install_demo_s={demo:.1f} runs={n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
