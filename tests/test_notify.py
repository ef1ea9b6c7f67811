"""The sd_notify protocol over a real AF_UNIX datagram socket, with and without systemd-python."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.service.notify import Notifier, watchdog_interval


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    # AF_UNIX paths are limited to 108 bytes: a short directory, not pytest's long tmp_path.
    directory = tempfile.mkdtemp(prefix="fvn")
    path = os.path.join(directory, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5.0)
    try:
        yield path, sock
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(directory)


def _fields(data: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in data.decode().splitlines())


def test_own_socket_sends_ready_status_and_watchdog(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    notifier = Notifier(path, backend="socket", environ={})
    assert notifier.enabled and notifier.backend == "socket"
    assert notifier.ready("queue 0\nreader ok")
    ready = _fields(sock.recv(4096))
    assert ready["READY"] == "1"
    assert ready["MAINPID"] == str(os.getpid())
    assert ready["STATUS"] == "queue 0 reader ok"  # one line: fields are newline-separated
    assert notifier.watchdog()
    assert _fields(sock.recv(4096)) == {"WATCHDOG": "1"}
    assert notifier.reloading()
    reload = _fields(sock.recv(4096))
    assert reload["RELOADING"] == "1" and int(reload["MONOTONIC_USEC"]) > 0
    assert notifier.stopping("bye")
    assert _fields(sock.recv(4096)) == {"STOPPING": "1", "STATUS": "bye"}
    notifier.close()


def test_abstract_namespace_socket() -> None:
    name = f"fvagent-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5.0)
    try:
        assert Notifier("@" + name, backend="socket", environ={}).status("hello")
        assert sock.recv(100) == b"STATUS=hello"
    finally:
        sock.close()


def test_with_systemd_python(notify_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("systemd.daemon", reason="systemd-python (the journald extra) is not installed")
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier(backend="auto")
    assert notifier.backend == "systemd-python"
    assert notifier.ready("up")
    fields = _fields(sock.recv(4096))
    assert fields["READY"] == "1" and fields["STATUS"] == "up"


def test_without_systemd_python_in_a_subprocess(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    code = textwrap.dedent("""
        import sys
        sys.modules["systemd"] = None  # as if systemd-python were not installed
        from agent.service.notify import Notifier
        n = Notifier(backend="auto")
        assert n.backend == "socket", n.backend
        assert n.ready("no module")
        assert n.watchdog()
    """)
    env = {**os.environ, "NOTIFY_SOCKET": path}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert _fields(sock.recv(4096))["STATUS"] == "no module"
    assert _fields(sock.recv(4096)) == {"WATCHDOG": "1"}


def test_no_socket_is_a_quiet_no_op() -> None:
    notifier = Notifier(backend="socket", environ={})
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.watchdog() is False


def test_unreachable_socket_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.service.notify")
    notifier = Notifier(str(tmp_path / "gone.sock"), backend="socket", environ={})
    assert notifier.status("a") is False
    assert notifier.status("b") is False
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "cannot notify" in r.getMessage()]
    assert len(warnings) == 1  # logged once, then quietly


def test_watchdog_interval_from_environment() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "2000000"}) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None  # meant for another pid
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    assert watchdog_interval({}) is None
    assert Notifier("/x", backend="socket", environ={"WATCHDOG_USEC": "500000"}).watchdog_interval_s == 0.5
