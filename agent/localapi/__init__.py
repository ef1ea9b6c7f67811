"""The local HTTP API and the operator page.

The service builds a ``DeskBackend`` over its outbox, event bus and operator state, then runs
``LocalApiServer(settings.local_api, backend)``; ``create_app`` gives the bare ASGI app for tests.
FastAPI and uvicorn are imported only when this package is used.
"""

from __future__ import annotations

from agent.localapi.backend import DeskBackend, NotFound

__all__ = ["DeskBackend", "LocalApiServer", "NotFound", "create_app"]


def __getattr__(name: str) -> object:  # lazy: `import agent.localapi` must not pull in fastapi/uvicorn
    if name == "create_app":
        from agent.localapi.app import create_app

        return create_app
    if name == "LocalApiServer":
        from agent.localapi.server import LocalApiServer

        return LocalApiServer
    raise AttributeError(name)
