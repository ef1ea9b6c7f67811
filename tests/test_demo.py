"""`fvagent demo`: the README's main command, end to end, and `--write-config`."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest

from agent.service import samples
from tests.waiting import wait_for

pytest.importorskip("skimage", reason="the demo's face comes from scikit-image (the demo extra)")

ROOT = Path(__file__).resolve().parents[1]


def fvagent(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )


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


@pytest.mark.slow
def test_written_config_runs_as_its_header_says(tmp_path: Path) -> None:
    """The two commands the written file names: the mock platform with --config FILE, then
    `fvagent run --config FILE`; the fake reader cycles the sample cards and they are delivered."""
    target = tmp_path / "demo.toml"
    assert fvagent("demo", "--write-config", str(target), timeout=60).returncode == 0
    platform_port, api_port = free_port(), free_port()
    text = target.read_text(encoding="utf-8")  # the bench ports may be taken on this machine
    text = text.replace("http://127.0.0.1:8600", f"http://127.0.0.1:{platform_port}")
    text = text.replace("127.0.0.1:8787", f"127.0.0.1:{api_port}")
    target.write_text(text, encoding="utf-8")
    # the header names this fvagent as it was started (here `python -m agent`): runnable as written
    header = [line for line in text.splitlines() if line.startswith("#   ")]
    assert any(" -m agent mock-platform --port 8600" in line for line in header)
    assert any(line.endswith(f" -m agent run --config {target}") for line in header)

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    mock = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "mock-platform",
            "--port",
            str(platform_port),
            "--db",
            str(tmp_path / "mock.db"),
            "--config",
            str(target),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(target)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def two_stored() -> list[dict[str, object]]:
        assert agent.poll() is None, agent.communicate()[1]
        assert mock.poll() is None, mock.communicate()[1]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{platform_port}/_mock/records", timeout=5) as r:
                stored: list[dict[str, object]] = json.loads(r.read())
        except OSError:
            return []  # the mock is still starting
        return stored if len(stored) >= 2 else []

    try:
        stored = wait_for(two_stored, 60, "two of the fake reader's cards on the mock platform", interval_s=0.2)
        assert {rec["cardNo"] for rec in stored} <= {p.card_no for p in samples.PEOPLE}
    finally:
        agent.terminate()
        mock.terminate()
        agent_err = agent.communicate(timeout=30)[1]
        mock.communicate(timeout=30)
    assert agent.returncode == 0, agent_err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_passes_only_when_every_captured_record_was_delivered() -> None:
    from agent.service.demo import DemoResult

    def table(result: DemoResult) -> dict[str, str]:
        return {k.strip(): v for k, v in re.findall(r"^\| (.+?)\s+\|\s+(.+?) \|$", result.table(), re.M)}

    latencies = [0.1 * i for i in range(1, 21)]  # 100..2000 ms
    everything = DemoResult(captured=20, queued_during_outage=6, delivered=20, latencies=latencies)
    assert everything.ok
    rows = table(everything)
    assert rows["delivered"] == "20 of 20" and rows["rejected"] == "0" and "not delivered" not in rows
    assert rows["verification latency p50"] == "1050 ms" and rows["verification latency p95"] == "1900 ms"

    short = DemoResult(captured=20, delivered=19, not_delivered=1, latencies=latencies)
    assert not short.ok and table(short)["not delivered"] == "1"
    refused = DemoResult(captured=20, delivered=19, rejected={"B0201: cardNo check digit": 1}, latencies=latencies)
    assert not refused.ok
    rows = table(refused)
    assert rows["rejected"] == "1" and rows["- B0201: cardNo check digit"] == "1"  # each reason on its own row
    assert not DemoResult().ok  # nothing captured is not a success
