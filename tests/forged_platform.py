"""A hostile platform on loopback for the reply-trust and stop tests (no tests here).

``ForgedPlatform`` is a real HTTP server (raw sockets, so it can answer in ways no framework
allows: a trickle, a 50 MB body, a redirect with a success body). Registration is answered as the
real platform would (signed, our requestId, the current time); each verification upload is
answered by ``self.upload``, a function of the request returning the raw reply bytes to send and
the pause between bytes. ``agent_config`` writes an agent config that talks to it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import ConventionSettings, Settings, load_config
from agent.uplink.conventions import Conventions
from core.errors import ConfigError
from tests.test_outbox_support import DEVICE_TOML

APP_ID = "APP0001"
SECRET = "0123456789abcdef"
CONVENTIONS = Conventions(ConventionSettings(), APP_ID, SECRET)


class Request:
    def __init__(self, path: str, headers: dict[str, str], body: bytes) -> None:
        self.path, self.headers, self.body = path, headers, body

    @property
    def request_id(self) -> str:
        return self.headers.get("hmpt-portal-request-id", "")


def envelope(
    request_id: str | None,
    *,
    code: int = 200,
    exception_code: str = "00000",
    msg: str = "成功",
    return_time_s: float | None = None,
    **extra: Any,
) -> bytes:
    return json.dumps(
        {
            "code": code,
            "msg": msg,
            "exceptionCode": exception_code,
            "requestId": request_id,
            "returnTime": int((time.time() if return_time_s is None else return_time_s) * 1000),
            "data": None,
            **extra,
        },
        ensure_ascii=False,
    ).encode("utf-8")


def signed_headers(at: float | None = None) -> dict[str, str]:
    """The response signature headers the genuine platform would send at ``at`` (now)."""
    return CONVENTIONS.response_headers(CONVENTIONS.send_time(time.time() if at is None else at))


def http_reply(status: int, body: bytes, headers: dict[str, str] | None = None, *, length: bool = True) -> bytes:
    reason = {200: "OK", 302: "Found", 404: "Not Found"}.get(status, "Whatever")
    lines = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json;charset=UTF-8", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def genuine(req: Request) -> bytes:
    """What the real platform answers: success, signed, our requestId, the current time."""
    return http_reply(200, envelope(req.request_id), signed_headers())


Answer = Callable[[Request], "bytes | tuple[bytes, float] | Callable[[socket.socket], None]"]


class ForgedPlatform:
    """``upload(request)`` returns reply bytes, ``(bytes, seconds_per_byte)`` for a trickle, or a
    function that writes to the socket itself (a 50 MB stream)."""

    def __init__(self) -> None:
        self.upload: Answer = genuine
        self.register: Answer = genuine
        self.requests: list[Request] = []
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/api"
        self._thread = threading.Thread(target=self._serve, daemon=True, name="forged-platform")
        self._thread.start()

    def uploads(self) -> list[Request]:
        return [r for r in self.requests if r.path.endswith("/first")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def __enter__(self) -> ForgedPlatform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            while len(body) < int(headers.get("content-length", "0")):
                chunk = conn.recv(1 << 20)
                if not chunk:
                    return
                body += chunk
            req = Request(path, headers, body)
            self.requests.append(req)
            answer = (self.upload if path.endswith("/first") else self.register)(req)
            if callable(answer):
                answer(conn)
            elif isinstance(answer, tuple):
                reply, pause = answer
                for i in range(len(reply)):
                    if self._stop.is_set():
                        return
                    conn.sendall(reply[i : i + 1])
                    self._stop.wait(pause)
            else:
                conn.sendall(answer)
        except OSError:
            pass  # the agent gave up on us: that is the point
        finally:
            conn.close()


def other_request_id() -> str:
    return uuid.uuid4().hex


def agent_config(path: Path, *, url: str, state_dir: Path, timeout_s: float = 3.0, extra: str = "") -> Settings:
    """Write an agent config for ``url`` at ``path`` and load it. Keys other branches may require
    for a loopback test platform (a plain-http permission, a test environment) are added only when
    the configuration asks for them, so the same test runs before and after those changes."""
    text = (
        DEVICE_TOML
        + f"""
[platform]
base_url = "{url}"
org_app_id = "{APP_ID}"
org_app_secret = "{SECRET}"
timeout_s = {timeout_s}
connect_timeout_s = 2
{{platform_extra}}
[platform.auth]
kind = "static"
ticket = "ESB-TICKET-1"

[storage]
dir = "{state_dir}"

[uploader]
backoff_initial_s = 0.05
backoff_max_s = 0.5
max_rps = 200
concurrency = 1
poll_interval_s = 0.2
"""
        + extra
    )
    platform_extra = ""
    for _ in range(3):
        path.write_text(text.replace("{platform_extra}", platform_extra), encoding="utf-8")
        try:
            return load_config(path, validate_drivers=False)
        except ConfigError as exc:
            keys = " ".join(f"{p} {r}" for p, r in exc.problems)
            if "allow_plain_http" in keys and "allow_plain_http" not in platform_extra:
                platform_extra += "allow_plain_http = true\n"
            elif "environment" in keys and "environment" not in platform_extra:
                platform_extra += 'environment = "test"\n'
            else:
                raise
    return load_config(path, validate_drivers=False)
