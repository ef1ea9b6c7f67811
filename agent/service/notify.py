"""The systemd notify protocol (sd_notify): READY=1, STATUS=, WATCHDOG=1, RELOADING=1, STOPPING=1.

systemd passes ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace) to a
``Type=notify`` service; the service sends newline-separated ``KEY=VALUE`` datagrams to it. With
systemd-python installed (the ``journald`` extra) ``systemd.daemon.notify`` sends them; without it
fvagent speaks the protocol itself over an AF_UNIX datagram socket, which is all sd_notify does.
Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op, so the daemon runs the same in a
terminal.

``$WATCHDOG_USEC`` (set by ``WatchdogSec=``) gives the watchdog interval; ``$WATCHDOG_PID``, when
set, names the process systemd expects pings from.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def _systemd_notify() -> Callable[[str], object] | None:
    """``systemd.daemon.notify`` when systemd-python is importable, else ``None``."""
    try:
        # By name: systemd-python is an optional extra and ships no type hints.
        daemon = importlib.import_module("systemd.daemon")
    except ImportError:
        return None
    notify: Callable[[str], object] = daemon.notify
    return notify


class Notifier:
    """Sends sd_notify messages to ``socket_path`` (default ``$NOTIFY_SOCKET``).

    ``backend`` is ``"auto"`` (systemd-python when installed, else our own socket code),
    ``"systemd"`` or ``"socket"``. Sending never raises: a failed send is logged once at warning
    level, then at debug, because a missing supervisor must never stop the daemon.
    """

    def __init__(
        self, socket_path: str | None = None, *, backend: str = "auto", environ: dict[str, str] | None = None
    ) -> None:
        env = os.environ if environ is None else environ
        self.socket_path = socket_path if socket_path is not None else env.get("NOTIFY_SOCKET") or None
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._warned = False
        self._sd_notify = _systemd_notify() if backend in ("auto", "systemd") else None
        if backend == "systemd" and self._sd_notify is None:
            log.warning("systemd-python is not installed; speaking the notify protocol directly")
        # systemd.daemon.notify reads $NOTIFY_SOCKET itself: use it only when that is our target.
        if self._sd_notify is not None and env.get("NOTIFY_SOCKET") != self.socket_path:
            self._sd_notify = None
        self.backend = "systemd-python" if self._sd_notify is not None else "socket"
        self.watchdog_interval_s = watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        """True when a supervisor listens (``$NOTIFY_SOCKET`` set)."""
        return bool(self.socket_path)

    def send(self, **fields: object) -> bool:
        """Send one message of ``KEY=VALUE`` lines (``send(READY=1, STATUS="ok")``). True when sent."""
        if not self.enabled or not fields:
            return False
        text = "\n".join(f"{key}={_one_line(value)}" for key, value in fields.items())
        try:
            if self._sd_notify is not None:
                ok = bool(self._sd_notify(text))
                if not ok:
                    raise OSError("sd_notify returned false")
            else:
                self._send_socket(text.encode("utf-8"))
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify systemd at %s: %s", self.socket_path, exc)
                self._warned = True
            else:
                log.debug("cannot notify systemd at %s: %s", self.socket_path, exc)
            return False
        return True

    def _send_socket(self, data: bytes) -> None:
        assert self.socket_path
        address = self.socket_path
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        with self._lock:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(True)
                self._sock.settimeout(1.0)
            self._sock.sendto(data, address)

    # -- the messages the daemon sends -----------------------------------------------------------
    def ready(self, status: str | None = None) -> bool:
        fields: dict[str, object] = {"READY": 1}
        if status:
            fields["STATUS"] = status
        return self.send(MAINPID=os.getpid(), **fields)

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd >= 253 match the reload with its READY=1.
        return self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self, status: str | None = None) -> bool:
        fields: dict[str, object] = {"STOPPING": 1}
        if status:
            fields["STATUS"] = status
        return self.send(**fields)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def watchdog_interval(environ: dict[str, str] | os._Environ[str] | None = None) -> float | None:
    """The watchdog interval in seconds from ``$WATCHDOG_USEC``, or ``None`` when there is no watchdog
    for this process (unset, invalid, or ``$WATCHDOG_PID`` names another process)."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
    return value / 1e6 if value > 0 else None


def _one_line(value: object) -> str:
    """A STATUS value must stay on one line: the protocol separates fields by newlines."""
    return str(value).replace("\n", " ").replace("\r", " ")
