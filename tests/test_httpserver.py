"""ThreadedServer: the one uvicorn-in-a-thread lifecycle under the local API and the mock platform."""

from __future__ import annotations

import socket
import threading

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from agent.httpserver import ThreadedServer
from core.errors import LocalApiError


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})


def config() -> uvicorn.Config:
    return uvicorn.Config(hello, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=1)


def test_serves_until_stopped_and_stop_is_idempotent() -> None:
    server = ThreadedServer(name="the test server", error=LocalApiError)
    sock = server.bind_tcp("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server.start(config(), sock, where=f"127.0.0.1:{port}", thread_name="test-server", timeout_s=10)
    try:
        assert server.running
        assert any(t.name == "test-server" and t.daemon for t in threading.enumerate())
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text == "hello"
    finally:
        server.stop()
    assert not server.running and not server.started
    server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_a_taken_port_is_a_clear_error_at_bind() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        server = ThreadedServer(name="the test server", error=LocalApiError, bind_hint="choose another port")
        with pytest.raises(LocalApiError) as err:
            server.bind_tcp("127.0.0.1", port)
        assert str(err.value).startswith(f"the test server cannot listen on 127.0.0.1:{port}: ")
        assert err.value.hint == "choose another port"
        assert not server.started
    finally:
        holder.close()


def test_a_server_that_dies_while_starting_is_an_error_and_leaves_nothing_running() -> None:
    server = ThreadedServer(name="the test server", error=LocalApiError)
    sock = server.bind_tcp("127.0.0.1", 0)
    port = sock.getsockname()[1]
    broken = uvicorn.Config(hello, log_config=None, lifespan="off", http="no-such-protocol")
    with pytest.raises(LocalApiError) as err:
        server.start(broken, sock, where=f"127.0.0.1:{port}", thread_name="test-server", timeout_s=10)
    assert "the test server stopped while starting on 127.0.0.1:" in str(err.value)
    assert not server.started and sock.fileno() == -1  # the socket is closed
