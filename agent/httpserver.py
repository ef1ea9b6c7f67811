"""``ThreadedServer``: one uvicorn server in a daemon thread, for the local API and the mock platform.

The caller builds the ``uvicorn.Config`` (its application and options); this class owns the
lifecycle both servers share: bind in the caller's thread (``bind_tcp``), so that a taken port is an
error at once, before the application is built; serve in a daemon thread; return from ``start``
only once uvicorn accepts connections; stop by asking uvicorn to finish, then forcing the
connections closed when a client will not let go.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from core.errors import FvagentError

log = logging.getLogger(__name__)


class ThreadedServer:
    """Serves one ``uvicorn.Config`` at a time in a daemon thread.

    ``name`` says what is served in the errors (``"the local API"``); ``error`` is the error class
    raised (a ``FvagentError``): when the port cannot be bound (with ``bind_hint``), when the server
    thread dies while starting, and when it does not start within the deadline.
    """

    def __init__(
        self,
        *,
        name: str,
        error: type[FvagentError] = FvagentError,
        bind_hint: str | None = None,
    ) -> None:
        self.name = name
        self.error = error
        self.bind_hint = bind_hint
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._failure: BaseException | None = None

    def __repr__(self) -> str:
        return f"ThreadedServer({self.name!r}, {'running' if self.running else 'stopped'})"

    @property
    def running(self) -> bool:
        """Whether the thread is alive and uvicorn has started accepting connections."""
        return (
            self._thread is not None and self._thread.is_alive() and self._server is not None and self._server.started
        )

    @property
    def started(self) -> bool:
        """Whether ``start`` succeeded and ``stop`` has not been called since."""
        return self._thread is not None

    def bind_tcp(self, host: str, port: int, *, backlog: int = 128) -> socket.socket:
        """A listening TCP socket on ``host:port`` (port 0: any free port).

        SO_REUSEADDR lets a fixed port be bound again right after a stop. The protocol is
        IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when the listening
        socket says it is TCP, and without it every answer stalls ~40 ms on Nagle + delayed ACK.
        """
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            family, _, proto, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, socket.SOCK_STREAM, proto or socket.IPPROTO_TCP)
        except OSError as exc:
            raise self._bind_error(where, exc) from exc
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise self._bind_error(where, exc) from exc
        return sock

    def _bind_error(self, where: str, exc: OSError) -> FvagentError:
        return self.error(f"{self.name} cannot listen on {where}: {exc.strerror or exc}", hint=self.bind_hint)

    def start(
        self, config: uvicorn.Config, sock: socket.socket, *, where: str, thread_name: str, timeout_s: float
    ) -> None:
        """Serve ``config`` on ``sock`` (bound and listening; ``where`` names it in errors) from a
        daemon thread called ``thread_name``, and return once uvicorn accepts connections.

        The server owns ``sock`` from here on and closes it at ``stop``. Raises ``error`` (and
        leaves nothing running) when the thread dies while starting or ``timeout_s`` passes first.
        """
        if self._thread is not None:
            raise self.error(f"{self.name} is already started")
        server = uvicorn.Server(config)
        self._server, self._sock, self._failure = server, sock, None
        self._thread = threading.Thread(target=self._run, args=(server, sock), name=thread_name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not self._thread.is_alive():
                failure = self._failure
                self._forget()
                raise self.error(f"{self.name} stopped while starting on {where}: {failure or 'see the log above'}")
            if time.monotonic() > deadline:
                self.stop()
                raise self.error(f"{self.name} did not start within {timeout_s:.0f} s on {where}")
            self._thread.join(0.005)  # waits on the thread: wakes early when it dies

    def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # the thread's end: keep it for start() to report
            self._failure = exc
            log.error("%s stopped: %r", self.name, exc)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Let requests in flight finish, then close the connections still open after half of
        ``timeout_s``, and join the thread; idempotent."""
        thread, server = self._thread, self._server
        if thread is not None and server is not None:
            server.should_exit = True
            thread.join(timeout_s / 2)
            if thread.is_alive():  # a client that will not let go (a live feed): close its connection
                server.force_exit = True
                thread.join(timeout_s / 2)
            if thread.is_alive():
                log.warning("%s: thread did not stop within %.0f s", self.name, timeout_s)
        self._forget()

    def _forget(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
        self._thread = None
        self._server = None
