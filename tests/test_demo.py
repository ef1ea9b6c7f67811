"""`fvagent demo`: the README's main command, end to end, and `--write-config`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent.service import samples

pytest.importorskip("skimage", reason="the demo's face comes from scikit-image (the demo extra)")
pytest.importorskip("agent.mock_platform", reason="the mock platform (issue 2) is not there yet")

ROOT = Path(__file__).resolve().parents[1]


def fvagent(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)


@pytest.mark.slow
def test_demo_delivers_everything_through_an_outage(tmp_path: Path) -> None:
    proc = fvagent("demo", "--count", "12", "--dir", str(tmp_path / "demo"))
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "platform DOWN" in out and "platform back UP" in out
    progress = re.findall(r"^\s+\[\s*\d+/12\] .*$", out, re.M)
    assert len(progress) == 12
    table = dict(re.findall(r"^\| (.+?)\s+\|\s+(.+?) \|$", out, re.M))
    assert table["captured"] == "12"
    assert int(table["queued during the outage"]) >= 3
    assert table["delivered"] == "12 of 12"
    assert table["rejected"] == "0"
    ones, zeros, twos = (int(v) for v in table["faceResult 1 / 0 / 2"].split(" / "))
    assert twos >= 2 and ones >= 8  # the card shown to a camera without a face, every sixth
    assert re.fullmatch(r"\d+ ms", table["verification latency p50"])
    assert re.fullmatch(r"\d+ ms", table["verification latency p95"])
    assert "no face" in out  # the reason of the faceResult 2 verifications
    for person in samples.PEOPLE:  # masked on screen
        assert person.card_no not in out and person.name not in out


def test_write_config_gives_a_valid_reusable_config(tmp_path: Path) -> None:
    pytest.importorskip("drivers.card_reader.fake", reason="the fake card reader (issue 4) is not there yet")
    target = tmp_path / "demo.toml"
    proc = fvagent("demo", "--write-config", str(target), timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = tomllib.loads(target.read_text(encoding="utf-8"))
    assert doc["card_reader"]["driver"] == "fake" and doc["camera"]["driver"] == "fake"
    assert doc["platform"]["base_url"].startswith("http://127.0.0.1:")
    for image in doc["camera"]["images"]:
        assert Path(image).is_file()
    check = fvagent("config", "check", str(target), timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert oct(target.stat().st_mode & 0o777) == "0o600"
