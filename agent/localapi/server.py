"""``LocalApiServer``: the local API served by uvicorn in a background thread of the service."""

from __future__ import annotations

import grp
import logging
import os
import socket
import stat
import struct
import threading
import time
from typing import Any

from agent.config import LocalApiSettings
from core.errors import LocalApiError

log = logging.getLogger(__name__)


class LocalApiServer:
    """Runs ``create_app(backend, settings)`` on ``settings.listen`` in a daemon thread.

    ``start(timeout_s)`` binds the socket in the caller's thread (so a taken port is a clear
    ``LocalApiError`` at once), starts uvicorn and returns when it accepts connections, or raises
    ``LocalApiError`` after ``timeout_s``. ``stop(timeout_s)`` ends the live feeds, lets requests in
    flight finish and joins the thread; it is idempotent. ``url`` is the base URL once started
    (port 0 in ``listen`` picks a free port).
    """

    def __init__(self, settings: LocalApiSettings, backend: Any) -> None:
        self.settings = settings
        self.backend = backend
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._app: Any = None
        self._sock: socket.socket | None = None
        self._port: int | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        if self._port is None:
            raise LocalApiError("the local API is not started")
        if self.settings.unix_path is not None:
            return f"unix:{self.settings.unix_path}"
        host = self.settings.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and bool(self._server and self._server.started)

    def start(self, timeout_s: float = 10.0) -> None:
        if self._thread is not None:
            return
        import uvicorn

        from agent.localapi.app import create_app

        # uvicorn's access log prints query strings, which can hold a card number: never let it speak
        logging.getLogger("uvicorn.access").disabled = True
        if self.settings.unix_path is not None:
            self._sock = self._bind_unix()
            self._port = 0
        else:
            self._sock = self._bind()
            self._port = self._sock.getsockname()[1]
        self._app = create_app(self.backend, self.settings)
        config = uvicorn.Config(
            self._app,
            log_config=None,
            access_log=False,  # our own request log never shows a query string
            lifespan="off",
            timeout_graceful_shutdown=3,
            server_header=False,
            h11_max_incomplete_event_size=64 * 1024,
            http=_peer_cred_protocol(),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="local-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                self._cleanup()
                raise LocalApiError(f"the local API stopped while starting on {self.settings.listen}: {self._error}")
            if time.monotonic() > deadline:
                self.stop()
                raise LocalApiError(f"the local API did not start within {timeout_s:.0f} s on {self.settings.listen}")
            time.sleep(0.02)
        log.info("local API and operator page at %s", self.url)

    def _bind(self) -> socket.socket:
        host, port = self.settings.host, self.settings.port
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, _, proto, _, addr = infos[0]
            # proto must say TCP: asyncio sets TCP_NODELAY on accepted sockets only then, and without
            # it every response waits ~40 ms for a delayed ACK (Nagle)
            sock = socket.socket(family, socket.SOCK_STREAM, proto or socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind(addr)
            sock.listen(64)
            sock.setblocking(False)
        except OSError as exc:
            raise LocalApiError(
                f"the local API cannot listen on {self.settings.listen}: {exc.strerror or exc}",
                hint="another program holds the port: change [local_api] listen, or stop the other program "
                "(ss -ltnp shows it)",
            ) from exc
        return sock

    def _bind_unix(self) -> socket.socket:
        """The Unix socket of ``listen = "unix:PATH"``: mode 0660, group ``socket_group``; a stale
        socket file left by a killed agent is replaced (any other file there is an error)."""
        path = self.settings.unix_path
        assert path is not None
        where = self.settings.listen
        try:
            gid = grp.getgrnam(self.settings.socket_group).gr_gid if self.settings.socket_group else -1
        except KeyError as exc:
            raise LocalApiError(
                f"[local_api] socket_group {self.settings.socket_group!r} is not a group here",
                hint="create the group (groupadd) or fix socket_group",
            ) from exc
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() or path.is_symlink():
                if not stat.S_ISSOCK(path.lstat().st_mode):
                    raise LocalApiError(
                        f"the local API cannot listen on {where}: {path} exists and is not a socket",
                        hint="remove that file or choose another path",
                    )
                path.unlink()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old_umask = os.umask(0o177)  # no moment in which others may connect
            try:
                sock.bind(str(path))
            finally:
                os.umask(old_umask)
            os.chown(path, -1, gid)
            os.chmod(path, 0o660)
            sock.listen(64)
            sock.setblocking(False)
        except OSError as exc:
            raise LocalApiError(
                f"the local API cannot listen on {where}: {exc.strerror or exc}",
                hint="check the directory's owner and permissions (systemd: RuntimeDirectory=fvagent)",
            ) from exc
        return sock

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:
            self._error = exc
            log.error("local API stopped: %r", exc)

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._thread is None:
            return
        if self._app is not None:
            self._app.state.shutdown.set()
        self._server.should_exit = True
        self._thread.join(timeout_s / 2)
        if self._thread.is_alive():  # a client that will not let go: close the connections
            self._server.force_exit = True
            self._thread.join(timeout_s / 2)
        if self._thread.is_alive():
            log.warning("local API thread did not stop within %.0f s", timeout_s)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            if self.settings.unix_path is not None:
                try:
                    self.settings.unix_path.unlink()
                except OSError:
                    pass
        self._sock = None
        self._thread = None

    def __enter__(self) -> LocalApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _peer_cred_protocol() -> type:
    """uvicorn's h11 protocol that records each Unix-socket connection's SO_PEERCRED (pid, uid, gid)
    in the request's ASGI ``state``, where ``agent.localapi.trust`` reads it. A TCP connection
    records nothing."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from agent.localapi.trust import PEER_CRED_KEY

    class PeerCredH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family == socket.AF_UNIX:
                raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                # per connection: the shared app_state must not carry one peer's identity to another
                self.app_state = {**self.app_state, PEER_CRED_KEY: struct.unpack("3i", raw)}

    return PeerCredH11Protocol
