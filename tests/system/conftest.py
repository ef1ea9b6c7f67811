"""The release bundle the system tests install: built once per session by deploy/release.py for
this machine's architecture and this Python, its downloads cached in build/release/."""

from __future__ import annotations

import platform
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unpacked bundle directory (fvagent-VERSION-linux-ARCH/)."""
    arch = platform.machine()
    if arch not in ("x86_64", "aarch64"):
        pytest.skip(f"release bundles are built for x86_64 and aarch64, not {arch}")
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    dist = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "release.py"), "--arch", arch, "--python", python, "--dist", str(dist)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tarball,) = dist.glob(f"fvagent-*-linux-{arch}.tar.gz")
    unpacked = tmp_path_factory.mktemp("bundle")
    with tarfile.open(tarball) as tar:
        tar.extractall(unpacked, filter="data")
    (root,) = unpacked.iterdir()
    root.chmod(0o755)
    return root
