"""The unit under a real systemd (PID 1 of private namespaces, tests/system/nsboot.py): install.sh
from the offline bundle, the demo's setup with its secrets handed over by LoadCredential=, then
READY and STATUS=, /metrics with the token credential, restart after SIGKILL with nothing lost, a
SIGHUP reload, the watchdog killing a stopped (SIGSTOP) process, and a clean stop within
TimeoutStopSec. Skipped, with the reason, where the machine cannot boot such a systemd."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.system.nsboot import NamespacedSystemd, unavailable
from tests.waiting import wait_for

UNAVAILABLE = unavailable()
pytestmark = [pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no namespaced systemd here: {UNAVAILABLE}")]

FVAGENT = "/opt/fvagent/venv/bin/fvagent"
PYTHON = "/opt/fvagent/venv/bin/python"
TOKEN = "systest-api-token-0123456789abcdef"
CLI_CREDENTIALS = (
    "--property=LoadCredential=org_app_secret:fvagent.org_app_secret",
    "--property=LoadCredential=ticket:fvagent.ticket",
)
WATCHDOG_S = 6
TEST_DROP_IN = f"""# The system test's own timings: a short watchdog, quick restarts.
[Service]
WatchdogSec={WATCHDOG_S}
RestartSec=1
"""


@pytest.fixture
def system(tmp_path: Path, bundle: Path) -> Iterator[NamespacedSystemd]:
    srv = tmp_path / "upper" / "srv" / "systest"
    srv.mkdir(parents=True)
    shutil.copytree(bundle, srv / "bundle", symlinks=True)
    shutil.copy2(Path(__file__).with_name("make_config.py"), srv)
    ns = NamespacedSystemd(tmp_path)
    try:
        ns.start()
        yield ns
    finally:
        ns.stop()
    assert ns.proc is not None and ns.proc.poll() is not None, "the namespaced systemd is still running"


def until(condition: Any, timeout_s: float, what: str) -> Any:
    """wait_for at a pace that suits a command run through nsenter each time."""
    return wait_for(condition, timeout_s, what, interval_s=0.5)


def queue(ns: NamespacedSystemd) -> dict[str, Any]:
    # The secrets live in /etc/credstore only: a command-line fvagent gets them the service's way.
    out = ns.run(
        [
            "systemd-run",
            "--quiet",
            "--pipe",
            "--wait",
            *CLI_CREDENTIALS,
            FVAGENT,
            "queue",
            "stats",
            "--json",
            "--config",
            "/etc/fvagent/fvagent.toml",
        ]
    ).stdout
    return dict(json.loads(out))


def main_pid(ns: NamespacedSystemd) -> int:
    return int(ns.show("fvagent", "MainPID")["MainPID"])


def active(ns: NamespacedSystemd) -> dict[str, str] | None:
    props = ns.show("fvagent", "ActiveState", "SubState", "MainPID", "NRestarts", "StatusText")
    return props if props["ActiveState"] == "active" and props["SubState"] == "running" else None


def journal(ns: NamespacedSystemd) -> str:
    return ns.run(["journalctl", "--no-pager", "-o", "cat", "-u", "fvagent"], check=False).stdout


def test_the_unit_under_a_real_systemd(system: NamespacedSystemd) -> None:
    ns = system
    # Install from the bundle: offline by construction (this network namespace has only loopback).
    out = ns.run(["sh", "/srv/systest/bundle/deploy/install.sh", "--demo"], timeout=600).stdout
    assert "from the bundle, offline" in out
    ns.run(["sh", "-c", f"{FVAGENT} demo --write-config /var/lib/fvagent-demo/demo.toml --dir /var/lib/fvagent-demo"])
    ns.run(
        [
            PYTHON,
            "/srv/systest/make_config.py",
            "/var/lib/fvagent-demo/demo.toml",
            "/etc/fvagent/fvagent.toml",
            "/etc/fvagent-mock.toml",
            TOKEN,
        ]
    )
    config = ns.run(["cat", "/etc/fvagent/fvagent.toml"]).stdout
    assert "org_app_secret" not in config and "ticket =" not in config  # secrets come as credentials only
    ns.run(
        [
            "sh",
            "-c",
            "mkdir -p /etc/systemd/system/fvagent.service.d && cat > "
            "/etc/systemd/system/fvagent.service.d/90-systest.conf",
        ],
        input=TEST_DROP_IN,
    )
    ns.run(["systemctl", "daemon-reload"])
    ns.run(
        [
            "systemd-run",
            "--unit=fvagent-mock",
            "--property=StateDirectory=fvagent-mock",
            FVAGENT,
            "mock-platform",
            "--port",
            "8600",
            "--db",
            "/var/lib/fvagent-mock/mock.db",
            "--config",
            "/etc/fvagent-mock.toml",
        ]
    )
    until(
        lambda: (
            ns.run(
                [PYTHON, "-c", "import socket; socket.create_connection(('127.0.0.1', 8600), 1)"], check=False
            ).returncode
            == 0
        ),
        60,
        "the mock platform listening",
    )

    # READY: Type=notify makes `systemctl start` return only once READY=1 came.
    ns.run(["systemctl", "start", "fvagent"], timeout=150)
    props = until(lambda: active(ns), 10, "fvagent active (running)")
    assert "queue" in props["StatusText"] and "verified" in props["StatusText"], props
    creds = ns.run(["ls", "/run/credentials/fvagent.service"]).stdout.split()
    assert {"org_app_secret", "ticket", "token"} <= set(creds)

    # Records flow to the platform; /metrics answers with the token that came as a credential.
    until(lambda: queue(ns)["sent"] >= 3, 90, "three records accepted by the mock platform")
    scrape = (
        "import httpx, sys; r = httpx.get('http://127.0.0.1:8787/metrics', headers={'Authorization': "
        f"'Bearer {TOKEN}'}}); print(r.status_code); print(r.text)"
    )
    metrics = ns.run([PYTHON, "-c", scrape]).stdout
    assert metrics.startswith("200") and 'fvagent_outbox_records{state="sent"}' in metrics
    assert 'fvagent_uploads_total{outcome="accepted"}' in metrics
    status = ns.run(
        [PYTHON, "-c", "import httpx; print(httpx.get('http://127.0.0.1:8787/metrics').status_code)"]
    ).stdout
    assert status.strip() == "401"

    # SIGKILL: systemd restarts it; every record made before is still there and gets delivered.
    before = queue(ns)
    first_pid = main_pid(ns)
    rss_kb = int(ns.run(["sh", "-c", f"grep VmHWM /proc/{first_pid}/status | tr -dc 0-9"]).stdout)
    ns.run(["systemctl", "kill", "--kill-whom=main", "--signal=SIGKILL", "fvagent"])
    restarted = until(
        lambda: (p := active(ns)) and int(p["MainPID"]) != first_pid and p, 60, "fvagent restarted after SIGKILL"
    )
    assert int(restarted["NRestarts"]) >= 1
    until(
        lambda: (
            (q := queue(ns))["total"] >= before["total"] + 1
            and q["pending"] == 0
            and q["sending"] == 0
            and q["sent"] == q["total"]
        ),
        90,
        "every record, old and new, accepted after the restart",
    )
    delivered = ns.run(
        [
            PYTHON,
            "-c",
            "import sqlite3; print(sqlite3.connect('/var/lib/fvagent-mock/mock.db')"
            ".execute('SELECT COUNT(*) FROM verifications').fetchone()[0])",
        ]
    ).stdout
    assert int(delivered) >= before["sent"]

    # SIGHUP reload: the same process, the configuration read again.
    pid = main_pid(ns)
    ns.run(["systemctl", "reload", "fvagent"], timeout=60)
    until(lambda: "configuration reloaded" in journal(ns), 30, "the reload in the journal")
    assert main_pid(ns) == pid and active(ns)

    # The watchdog: a stopped process sends no WATCHDOG=1; systemd kills it and starts a new one.
    ns.run(["kill", "-STOP", str(pid)])
    until(
        lambda: (p := active(ns)) and int(p["MainPID"]) != pid and p,
        WATCHDOG_S + 60,
        "a new fvagent after the watchdog fired",
    )
    systemd_log = ns.run(["journalctl", "--no-pager", "-o", "cat", "_PID=1"], check=False).stdout
    assert "fvagent.service: Watchdog timeout" in systemd_log

    # Stop: within TimeoutStopSec, exit 0.
    started = time.monotonic()
    ns.run(["systemctl", "stop", "fvagent"], timeout=60)
    took = time.monotonic() - started
    props = ns.show("fvagent", "ActiveState", "Result", "ExecMainStatus", "TimeoutStopUSec")
    assert props["ActiveState"] == "inactive" and props["Result"] == "success" and props["ExecMainStatus"] == "0", props
    assert took < 20, f"stop took {took:.1f} s"
    print(f"systemd test: peak RSS of the daemon with the face engine {rss_kb / 1024:.0f} MiB; stop {took:.2f} s")
