"""After `make demo` the commands the demo prints work as written: typed from the checkout, with
nothing but the system's PATH (the venv is not activated), they start the mock platform and the
agent. Run in a private network namespace so the demo's fixed ports are our own."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.system.nsboot import offline_unavailable

ROOT = Path(__file__).resolve().parents[1]
FVAGENT = ROOT / ".venv" / "bin" / "fvagent"
NO_NETNS = offline_unavailable()


@pytest.mark.skipif(not FVAGENT.exists(), reason="needs the checkout's .venv (make setup-test)")
@pytest.mark.skipif(NO_NETNS is not None, reason=f"needs a private network namespace for the demo's ports: {NO_NETNS}")
def test_the_printed_commands_work_as_written(tmp_path: Path) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": str(tmp_path)}
    config = tmp_path / "demo.toml"
    # As `make demo` runs it: from the checkout, by the venv's relative path.
    wrote = subprocess.run(
        [".venv/bin/fvagent", "demo", "--write-config", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert wrote.returncode == 0, wrote.stderr
    run_cmd = re.search(r"run it with: (.+? run --config \S+)", wrote.stdout).group(1)  # type: ignore[union-attr]
    assert run_cmd.startswith(".venv/bin/fvagent ")
    mock_cmd = next(
        line.removeprefix("#").strip() for line in config.read_text().splitlines() if " mock-platform --port " in line
    )
    assert mock_cmd.startswith(str(FVAGENT))  # the file's comment holds the absolute path
    script = (
        f"ip link set lo up; {mock_cmd} > {tmp_path}/mock.log 2>&1 & mock=$!; "
        f"{run_cmd} > {tmp_path}/run.log 2>&1 & agent=$!; "
        f"for i in $(seq 900); do grep -q 'verification 2 committed' {tmp_path}/run.log && break; sleep 0.1; done; "
        "kill -TERM $agent; wait $agent; kill -TERM $mock; wait $mock"
    )
    # A private PID namespace too: whatever happens, no process outlives unshare (--kill-child).
    subprocess.run(
        ["unshare", "--net", "--pid", "--fork", "--kill-child", "sh", "-c", script], cwd=ROOT, env=env, timeout=120
    )
    log = (tmp_path / "run.log").read_text()
    assert "running (config" in log, log[-3000:]
    assert "verification 2 committed" in log and "accepted" in log, log[-3000:]
