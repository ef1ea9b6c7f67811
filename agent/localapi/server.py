"""``LocalApiServer``: the local API served by uvicorn in a background thread of the service."""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import socket
import stat
import struct
from typing import TYPE_CHECKING, cast

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from agent.config import LocalApiSettings
from agent.httpserver import ThreadedServer
from agent.localapi.trust import PEER_CRED_KEY
from core.errors import LocalApiError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from agent.localapi.backend import DeskBackend

log = logging.getLogger(__name__)


class LocalApiServer:
    """Runs ``create_app(backend, settings)`` on ``settings.listen`` in a daemon thread.

    ``start(timeout_s)`` binds the socket in the caller's thread (so a taken port is a clear
    ``LocalApiError`` at once), starts uvicorn and returns when it accepts connections, or raises
    ``LocalApiError`` after ``timeout_s``. ``stop(timeout_s)`` ends the live feeds, lets requests in
    flight finish and joins the thread; it is idempotent. ``url`` is the base URL once started
    (port 0 in ``listen`` picks a free port).
    """

    def __init__(self, settings: LocalApiSettings, backend: DeskBackend) -> None:
        self.settings = settings
        self.backend = backend
        self._server: ThreadedServer | None = None
        self._app: FastAPI | None = None
        self._port: int | None = None

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
        return self._server is not None and self._server.running

    def start(self, timeout_s: float = 10.0) -> None:
        if self._server is not None:
            return
        from agent.localapi.app import create_app

        # uvicorn's access log prints query strings, which can hold a card number: never let it speak
        logging.getLogger("uvicorn.access").disabled = True
        server = ThreadedServer(
            name="the local API",
            error=LocalApiError,
            bind_hint="another program holds the port: change [local_api] listen, or stop the other program "
            "(ss -ltnp shows it)",
        )
        if self.settings.unix_path is not None:
            sock = self._bind_unix()
            port = 0
        else:
            sock = server.bind_tcp(self.settings.host, self.settings.port, backlog=64)
            port = int(sock.getsockname()[1])
        app = create_app(self.backend, self.settings)
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,  # our own request log never shows a query string
            lifespan="off",
            timeout_graceful_shutdown=3,
            server_header=False,
            h11_max_incomplete_event_size=64 * 1024,
            http=PeerCredH11Protocol,
        )
        try:
            server.start(config, sock, where=self.settings.listen, thread_name="local-api", timeout_s=timeout_s)
        except LocalApiError:
            self._remove_unix_socket()
            raise
        self._server, self._app, self._port = server, app, port
        log.info("local API and operator page at %s", self.url)

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

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._server is None:
            return
        if self._app is not None:
            self._app.state.shutdown.set()  # ends the live feeds, which would hold their connections
        self._server.stop(timeout_s)
        self._remove_unix_socket()
        self._server = None
        self._app = None

    def _remove_unix_socket(self) -> None:
        if self.settings.unix_path is not None:
            try:
                self.settings.unix_path.unlink()
            except OSError:
                pass

    def __enter__(self) -> LocalApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PeerCredH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that records each Unix-socket connection's SO_PEERCRED (pid, uid, gid)
    in the request's ASGI ``state``, where ``agent.localapi.trust`` reads it. A TCP connection
    records nothing."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio promises a BaseTransport; uvicorn's protocol narrows it to the socket Transport
        # that a stream server always hands in
        super().connection_made(cast(asyncio.Transport, transport))
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            # per connection: the shared app_state must not carry one peer's identity to another
            self.app_state = {**self.app_state, PEER_CRED_KEY: struct.unpack("3i", raw)}
