"""The HTTP transport of the platform client: a whole-request deadline, and abort on stop.

httpx's timeouts apply to each socket operation: a reply that trickles one byte a second never
times out. Here every read, write and connect of a request gets at most what is left of that
request's deadline (set per thread by ``deadline``), so ``[platform] timeout_s`` bounds the whole
request. ``abort()`` shuts down every open connection, so a stopping daemon does not wait for a
request in flight. (A TLS handshake is bounded per socket operation by what was left when it began.)
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

_local = threading.local()


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[float]:
    """Within the block, this thread's requests through a ``DeadlineTransport`` end by
    ``time.monotonic() + seconds`` (yielded)."""
    at = time.monotonic() + seconds
    previous = getattr(_local, "deadline", None)
    _local.deadline = at
    try:
        yield at
    finally:
        _local.deadline = previous


def _left(timeout: float | None) -> float | None:
    at: float | None = getattr(_local, "deadline", None)  # threading.local attributes are untyped
    if at is None:
        return timeout
    left = max(0.0, at - time.monotonic())
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: _Backend) -> None:
        self._inner = inner
        self._backend = backend
        backend.track(self)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        left = _left(timeout)
        if left == 0.0:
            raise httpcore.ReadTimeout("the whole-request deadline passed")
        return self._inner.read(max_bytes, left)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        left = _left(timeout)
        if left == 0.0:
            raise httpcore.WriteTimeout("the whole-request deadline passed")
        self._inner.write(buffer, left)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, _left(timeout)), self._backend)

    def get_extra_info(self, info: str) -> Any:  # Any: httpcore's NetworkStream.get_extra_info returns Any
        return self._inner.get_extra_info(info)

    def shutdown(self) -> None:
        sock = self._inner.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # a blocked recv() returns at once


class _Backend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()
        self._streams: weakref.WeakSet[_Stream] = weakref.WeakSet()
        self._lock = threading.Lock()

    def track(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.add(stream)

    def abort(self) -> None:
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.shutdown()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_tcp(host, port, _left(timeout), local_address, socket_options), self)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_unix_socket(path, _left(timeout), socket_options), self)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` whose connections honour ``deadline`` and can be aborted."""

    def __init__(self, verify: ssl.SSLContext | bool = True) -> None:
        super().__init__(verify=verify)
        self._backend = _Backend()
        # httpx offers no way to hand its pool a network backend: build the same pool with ours.
        old = self._pool
        self._pool = httpcore.ConnectionPool(
            ssl_context=old._ssl_context,
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=self._backend,
        )
        old.close()

    def abort(self) -> None:
        """Shut down every open connection: requests in flight fail at once."""
        self._backend.abort()
