"""``MockPlatform``: the mock platform's server in a background thread, for tests and the demo."""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import uvicorn

from agent.config import PlatformSettings
from agent.httpserver import ThreadedServer
from agent.mock_platform.app import MockState, build_app
from agent.mock_platform.config import (
    Faults,
    MockPlatformConfig,
    platform_section,
    platform_settings,
)
from agent.mock_platform.store import MockStore, RequestRow
from core.errors import PlatformError
from core.records import JsonObject

log = logging.getLogger(__name__)


class MockPlatform:
    """The mock platform on loopback: a real uvicorn server in a thread, a real SQLite file.

    ::

        with MockPlatform(MockPlatformConfig(encrypt=True), tmp_path / "mock.db") as mock:
            client = PlatformClient(mock.platform_settings())
            ...
            assert mock.stats()["verifications"] == 1

    ``db_path`` None keeps the records in memory. ``config.port`` 0 picks a free port (``.url``
    tells which); a fixed port can be reused right after ``stop()`` (SO_REUSEADDR), so a test can
    take the platform down and bring it back at the same URL: ``stop()`` then ``start()`` on the same
    object (it keeps its port, faults, tokens and records), or a new ``MockPlatform`` on the same
    ``db_path`` and port.
    """

    def __init__(self, config: MockPlatformConfig | None = None, db_path: str | Path | None = None) -> None:
        self.config = config if config is not None else MockPlatformConfig()
        self.db_path = Path(db_path) if db_path is not None else None
        self.store = MockStore(self.db_path if self.db_path is not None else ":memory:")
        self.state = MockState(self.config, self.store)
        self._server: ThreadedServer | None = None
        self._port: int | None = None

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "not started"
        return f"MockPlatform({where}, auth_kind={self.config.auth_kind!r}, encrypt={self.config.encrypt})"

    def __enter__(self) -> MockPlatform:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://host:port`` (no trailing slash); the business paths hang right under it."""
        if self._port is None:
            raise PlatformError("the mock platform is not started", hint="call start() first")
        return f"http://{_url_host(self.config.host)}:{self._port}"

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def running(self) -> bool:
        """Whether the server thread is serving."""
        return self._server is not None and self._server.running

    def start(self, timeout_s: float = 15.0) -> MockPlatform:
        """Bind, start serving in a thread, and return once it accepts connections."""
        if self._server is not None:
            return self
        server = ThreadedServer(
            name="the mock platform",
            error=PlatformError,
            bind_hint="choose another --port, or stop what is using it",
        )
        # A restart of the same object binds the port it had, so the URL stays the same.
        port = self._port if self._port is not None else self.config.port
        sock = server.bind_tcp(self.config.host, port)
        self._port = int(sock.getsockname()[1])
        uv_config = uvicorn.Config(
            build_app(self.state),
            log_level="warning",
            access_log=False,
            lifespan="off",
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=1,
            http="h11",
            loop="asyncio",
        )
        where = f"{self.config.host}:{self._port}"
        server.start(uv_config, sock, where=where, thread_name=f"mock-platform-{self._port}", timeout_s=timeout_s)
        self._server = server
        log.info("mock platform listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving; idempotent. What it stored stays readable (``records()``, ``stats()``)
        until ``close()``."""
        if self._server is not None:
            self._server.stop(timeout_s=10)
        self._server = None

    def close(self) -> None:
        """Stop serving and close the database."""
        self.stop()
        self.store.close()

    # -- what tests and the demo use -----------------------------------------------------------

    def set_faults(self, faults: Faults | None = None, **changes: object) -> Faults:
        """Replace the faults (``faults``), or change some (``set_faults(down=True)``); returns them.
        ``set_faults(Faults())`` clears every fault."""
        base = faults if faults is not None else self.state.faults
        new = Faults.model_validate({**base.model_dump(), **changes})
        self.state.set_faults(new)
        return new

    @property
    def faults(self) -> Faults:
        return self.state.faults

    def expire_tokens(self) -> int:
        """Make every token issued so far expired (the next call gets 401 and must fetch a new one)."""
        return self.state.expire_tokens()

    def reset(self) -> None:
        """Forget records, requests, tokens and faults (one server shared by several tests)."""
        self.state.reset()

    def records(self, kind: str = "verification", *, include_images: bool = False) -> list[JsonObject]:
        """What the platform accepted, oldest first. ``kind="verification"``: one dict per accepted
        upload (duplicates included) with ``machineCode``, ``cardNo``, ``verifyTime``, ``received_at``,
        ``request_id``, ``encrypted`` and ``payload`` (images replaced by their length unless
        ``include_images``). ``kind="registration"``: one per registered machineCode."""
        if kind == "registration":
            return self.store.registrations()
        if kind != "verification":
            raise ValueError("kind must be 'verification' or 'registration'")
        return self.store.verifications(include_images=include_images)

    def delivered(self) -> collections.Counter[tuple[str, str, str]]:
        """How many times each natural key (machineCode, cardNo, verifyTime) was accepted."""
        return collections.Counter(
            (str(r["machineCode"]), str(r["cardNo"]), str(r["verifyTime"])) for r in self.store.verifications()
        )

    def requests(self, path_suffix: str | None = None) -> list[RequestRow]:
        """Every request seen (faulted ones included): ``at`` (epoch s), ``path``, ``request_id``,
        ``http_status`` (None when the connection was dropped), ``code``, ``exception_code``, ``msg``.
        ``path_suffix`` keeps those whose path ends with it (e.g. ``"/first"``)."""
        rows = self.store.requests()
        return [r for r in rows if path_suffix is None or r["path"].endswith(path_suffix)]

    def request_times(self, path_suffix: str | None = None) -> list[float]:
        """Arrival times (epoch seconds) of every request, token requests included unless filtered."""
        return [r["at"] for r in self.requests(path_suffix)]

    def stats(self) -> JsonObject:
        """Counts: ``requests``, ``by_path``, ``by_answer`` ("200/00000", "200/A2301", "503/-", ...),
        ``request_rate_rps``, ``repeated_request_ids``, ``registrations``, ``verifications``,
        ``distinct_verifications``, ``duplicate_verifications``."""
        return self.store.stats()

    def duplicates(self) -> dict[tuple[str, str, str], int]:
        """Natural keys accepted more than once, with their counts."""
        return self.store.duplicates()

    def platform_section(self, **overrides: object) -> JsonObject:
        """The agent's ``[platform]`` table for this mock (see ``config.platform_section``)."""
        return platform_section(self.config, self.url, **overrides)

    def platform_settings(self, **overrides: object) -> PlatformSettings:
        """``PlatformSettings`` for an agent talking to this mock."""
        return platform_settings(self.config, self.url, **overrides)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
