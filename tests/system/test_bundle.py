"""The offline bundle: install.sh from the unpacked x86_64 (or aarch64) bundle into a fresh prefix
with no network at all (a private network namespace, pip --no-index, a proxy that leads nowhere),
then `fvagent --version`, `fvagent doctor` and the demo from that install."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.system.nsboot import offline_unavailable

OFFLINE_UNAVAILABLE = offline_unavailable()


def test_bundle_is_complete_and_checksummed(bundle: Path) -> None:
    info = dict(line.split("=", 1) for line in (bundle / "bundle.txt").read_text().splitlines())
    assert info["pythons"].split() == [f"{sys.version_info[0]}.{sys.version_info[1]}"]
    wheels = sorted(p.name for p in (bundle / "wheels").glob("*.whl"))
    for name in (
        "fvagent-",
        "dlib_bin-",
        "opencv_python_headless-",
        "cryptography-",
        "numpy-",
        "prometheus_client-",
        "face_recognition_models-",
        "scikit_image-",
    ):
        assert any(w.startswith(name) for w in wheels), f"{name}* missing from the wheel house"
    for rel in (
        "deploy/install.sh",
        "deploy/fvagent.service",
        "deploy/monitoring/fvagent-alerts.yml",
        "docs/operations.md",
        "CHANGELOG.md",
    ):
        assert (bundle / rel).is_file(), rel
    listed = {}
    for line in (bundle / "SHA256SUMS").read_text().splitlines():
        digest, rel = line.split("  ", 1)
        listed[rel] = digest
    files = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {"SHA256SUMS"}
    assert files == set(listed)
    rel = "deploy/install.sh"
    assert hashlib.sha256((bundle / rel).read_bytes()).hexdigest() == listed[rel]


@pytest.mark.skipif(OFFLINE_UNAVAILABLE is not None, reason=str(OFFLINE_UNAVAILABLE))
def test_install_offline_into_a_fresh_prefix_then_doctor_and_demo(bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    prefix = "/opt/fvagent-test"
    # No network: a fresh network namespace has only a loopback that is down; the proxy variables
    # would catch a pip that still tried; the host's pip configuration is not read.
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DESTDIR": str(root),
        "FVAGENT_PREFIX": prefix,
        "FVAGENT_PYTHON": sys.executable,
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "LANG": "C.UTF-8",
    }
    started = time.monotonic()
    proc = subprocess.run(
        ["unshare", "--net", "sh", str(bundle / "deploy" / "install.sh"), "--demo"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    seconds = time.monotonic() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert f"covers Python {python}" in out and "offline" in out
    assert "Downloading" not in out and "Collecting" not in out
    print(f"offline bundle install into a fresh prefix: {seconds:.1f} s")

    fvagent = root / prefix.lstrip("/") / "venv" / "bin" / "fvagent"
    version = subprocess.run([str(fvagent), "--version"], capture_output=True, text=True, timeout=60)
    info = dict(line.split("=", 1) for line in (bundle / "bundle.txt").read_text().splitlines())
    assert version.stdout.strip() == f"fvagent {info['version']}"
    work = tmp_path / "demo"
    config = work / "demo.toml"
    run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": str(tmp_path)}
    wrote = subprocess.run(
        [str(fvagent), "demo", "--write-config", str(config), "--dir", str(work)],
        capture_output=True,
        text=True,
        timeout=120,
        env=run_env,
    )
    assert wrote.returncode == 0, wrote.stdout + wrote.stderr
    doctor = subprocess.run(
        [str(fvagent), "doctor", "--config", str(config)], capture_output=True, text=True, timeout=180, env=run_env
    )
    # The demo's platform is not started here: doctor reports it unreachable, the rest passes or
    # warns (fake drivers, no daemon yet); the installed face engine and its models load.
    said = doctor.stdout + doctor.stderr
    assert "Traceback" not in said
    assert re.search(r"^OK +config: ", doctor.stdout, re.M) and re.search(
        r"^OK +face model: dlib loaded", doctor.stdout, re.M
    ), said
    assert re.search(r"^\d+ checks: 1 failed", doctor.stdout, re.M) and re.search(
        r"^FAIL +platform: ", doctor.stdout, re.M
    ), said
    demo = subprocess.run(
        [str(fvagent), "demo", "--count", "6", "--dir", str(tmp_path / "demo-run")],
        capture_output=True,
        text=True,
        timeout=300,
        env=run_env,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "delivered" in demo.stdout


def test_install_refuses_a_python_the_bundle_does_not_cover(bundle: Path, tmp_path: Path) -> None:
    fake = tmp_path / "python9"
    fake.write_text("#!/bin/sh\necho 3.9\n")
    fake.chmod(0o755)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DESTDIR": str(tmp_path / "root"),
        "FVAGENT_PYTHON": str(fake),
    }
    proc = subprocess.run(
        ["sh", str(bundle / "deploy" / "install.sh")], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 1
    assert "Python 3.9; this bundle covers Python" in proc.stderr and "FVAGENT_PYTHON" in proc.stderr
    assert not (tmp_path / "root" / "opt").exists() or not any((tmp_path / "root" / "opt").rglob("venv"))
    shutil.rmtree(tmp_path / "root", ignore_errors=True)
