"""The deploy kit: the unit passes `systemd-analyze verify`, the udev rules cover the spec's readers,
install.sh lays out the files with the right modes and uninstall.sh keeps the outbox unless asked."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SPEC = ROOT.parent / "shared" / "spec" / "idcard-reader-protocol.md"


def _unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    # systemd allows repeated keys (DeviceAllow, LoadCredential): keep the text for those checks.
    text = (DEPLOY / "fvagent.service").read_text()
    parser.read_string(re.sub(r"^(DeviceAllow|LoadCredential|Environment)=.*$", "", text, flags=re.M))
    return parser


def test_unit_has_the_promised_settings() -> None:
    text = (DEPLOY / "fvagent.service").read_text()
    service = _unit()["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStart"].startswith("/opt/fvagent/venv/bin/fvagent run")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["User"] == "fvagent" and service["Group"] == "fvagent"
    assert service["StateDirectory"] == "fvagent" and service["ConfigurationDirectory"] == "fvagent"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes" and service["NoNewPrivileges"] == "yes"
    assert service["DevicePolicy"] == "closed"
    assert service["Restart"] == "on-failure"
    assert int(service["WatchdogSec"]) >= 10
    assert int(service["TimeoutStopSec"]) > 10  # our own stop takes at most 10 s
    assert service["RestartPreventExitStatus"] == "2"
    for device in ("char-ttyUSB", "char-ttyACM", "char-usb_device", "char-video4linux"):
        assert re.search(rf"^DeviceAllow={device} rw$", text, re.M), device
    # every secret key of the config can come in as a credential of the same name
    from agent.config import _SECRET_NAMES

    credentials = set(re.findall(r"^LoadCredential=([a-z_]+):", text, re.M))
    assert set(_SECRET_NAMES) <= credentials
    assert "outbox_key" in credentials


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (deploy/system-deps.sh test installs systemd)",
)
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart's binary exists: check a copy whose ExecStart points at this
    # checkout's fvagent (same unit otherwise). The shipped path is checked above.
    exe = ROOT / ".venv" / "bin" / "fvagent"
    if not exe.exists():
        exe = Path(shutil.which("fvagent") or "/bin/true")
    unit = tmp_path / "fvagent.service"
    unit.write_text((DEPLOY / "fvagent.service").read_text().replace("/opt/fvagent/venv/bin/fvagent", str(exe)))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if "fvagent.service" in line or "Unknown" in line or "Invalid" in line
    ]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr


def test_udev_rules_cover_the_spec_readers_and_cameras() -> None:
    rules = (DEPLOY / "70-fvagent.rules").read_text()
    pairs = {("0400", "c35a"), ("0483", "5652"), ("0483", "5750"), ("28e9", "028a")}
    if SPEC.exists():  # the VID:PIDs named in §8 of the reader protocol
        section = SPEC.read_text().split("## 8.")[1].split("## 9.")[0]
        found = {(v.lower(), p.lower()) for v, p in re.findall(r"0x([0-9A-Fa-f]{4}):0x([0-9A-Fa-f]{4})", section)}
        found |= {(v.lower(), p.lower()) for v, p in re.findall(r"\*\*([0-9A-Fa-f]{4}):([0-9A-Fa-f]{4})\*\*", section)}
        assert found and found <= pairs | found
        pairs |= found
    for vid, pid in pairs:
        usb = rf'SUBSYSTEM=="usb".*ATTR\{{idVendor\}}=="{vid}", ATTR\{{idProduct\}}=="{pid}".*GROUP="fvagent"'
        tty = rf'SUBSYSTEM=="tty".*ATTRS\{{idVendor\}}=="{vid}", ATTRS\{{idProduct\}}=="{pid}"'
        assert re.search(usb, rules), f"{vid}:{pid} usb"
        assert re.search(tty, rules), f"{vid}:{pid} tty"
    assert 'SUBSYSTEM=="video4linux"' in rules
    # every rule line is KEY op "value" pairs separated by commas
    pair = r'[A-Z]+(\{[A-Za-z_]+\})?(==|!=|\+=|=|:=)"[^"]*"'
    for line in rules.splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(rf"{pair}(, {pair})*", line), line


def test_scripts_are_valid_sh() -> None:
    for script in ("install.sh", "uninstall.sh"):
        subprocess.run(["sh", "-n", str(DEPLOY / script)], check=True, timeout=30)
        assert os.access(DEPLOY / script, os.X_OK), f"{script} is not executable"


def _sh(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(DEPLOY / script), *args], capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )


def test_install_and_uninstall_staged(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    env = {"DESTDIR": str(dest), "FVAGENT_PREFIX": "/opt/fva"}
    proc = _sh("install.sh", "--no-venv", env=env)
    assert proc.returncode == 0, proc.stderr
    config = dest / "etc/fvagent/fvagent.toml"
    assert config.read_text() == (DEPLOY / "fvagent.example.toml").read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert stat.S_IMODE((dest / "etc/fvagent").stat().st_mode) == 0o750
    assert stat.S_IMODE((dest / "etc/credstore").stat().st_mode) == 0o700
    unit = (dest / "etc/systemd/system/fvagent.service").read_text()
    assert "ExecStart=/opt/fva/venv/bin/fvagent run" in unit and "/opt/fvagent" not in unit
    assert (dest / "etc/udev/rules.d/70-fvagent.rules").is_file()
    assert (dest / "opt/fva/docs/operations.md").is_file()

    # A second install keeps the technician's config.
    config.write_text("# edited\n")
    assert _sh("install.sh", "--no-venv", env=env).returncode == 0
    assert config.read_text() == "# edited\n"

    # Uninstall keeps the outbox and the config ...
    outbox = dest / "var/lib/fvagent/outbox.db"
    outbox.parent.mkdir(parents=True)
    outbox.write_bytes(b"records")
    proc = _sh("uninstall.sh", env=env)
    assert proc.returncode == 0, proc.stderr
    assert not (dest / "etc/systemd/system/fvagent.service").exists()
    assert not (dest / "opt/fva").exists()
    assert outbox.read_bytes() == b"records" and config.exists()
    # ... --purge refuses while it cannot prove everything was delivered ...
    proc = _sh("uninstall.sh", "--purge", env=env)
    assert proc.returncode == 1 and "not delivered" in proc.stderr
    assert outbox.exists()
    # ... and --purge --yes deletes it.
    assert _sh("uninstall.sh", "--purge", "--yes", env=env).returncode == 0
    assert not outbox.exists() and not config.exists()


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run fvagent as another user than the credentials' owner",
)
def test_an_unreadable_credential_is_a_clear_error_not_a_traceback() -> None:
    # What systemd in a container whose root mount is private hands the service: a credentials
    # directory it made (root, 0700) that the service's user cannot open.
    import sys
    import tempfile

    from agent.service import samples
    from tests.test_service import config_doc

    work = Path(tempfile.mkdtemp(prefix="fvagent-cred-"))
    try:
        work.chmod(0o755)
        doc = config_doc(work, {"live": []}, camera={"driver": "fake", "images": []})
        del doc["platform"]["org_app_secret"]
        config = work / "fvagent.toml"
        config.write_text(samples.toml_text(doc), encoding="utf-8")
        config.chmod(0o644)
        creds = work / "credentials"
        creds.mkdir(mode=0o700)
        (creds / "org_app_secret").write_text("0123456789abcdef\n")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "CREDENTIALS_DIRECTORY": str(creds),
            "PYTHONPATH": str(ROOT),
        }
        proc = subprocess.run(
            [
                "setpriv",
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                sys.executable,
                "-m",
                "agent",
                "config",
                "check",
                str(config),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=work,
        )
    finally:
        shutil.rmtree(work)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    assert "systemd credential 'org_app_secret'" in out and "permission denied" in out
    assert "mount --make-rshared /" in out and "org_app_secret_file" in out


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (deploy/system-deps.sh test installs systemd)",
)
def test_systemd_analyze_security_exposure_is_at_most_2() -> None:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(DEPLOY / "fvagent.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for fvagent\.service: ([0-9.]+)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    assert float(found.group(1)) <= 2.0, proc.stdout


def test_installer_writes_the_network_allow_list(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc" / "fvagent").mkdir(parents=True)
    (root / "etc" / "fvagent" / "fvagent.toml").write_text('[platform]\nbase_url = "http://127.0.0.1:8600/api"\n')
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DESTDIR": str(root), "FVAGENT_IP_ALLOW": "10.1.2.3/32"}
    proc = subprocess.run(
        ["sh", str(DEPLOY / "install.sh"), "--no-venv"], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dropin = (root / "etc/systemd/system/fvagent.service.d/10-network.conf").read_text()
    allowed = re.findall(r"^IPAddressAllow=(\S+)$", dropin, re.M)
    assert allowed[0] == "localhost" and "127.0.0.1" in allowed and "10.1.2.3/32" in allowed
    assert "IPAddressDeny=any" in (DEPLOY / "fvagent.service").read_text()
