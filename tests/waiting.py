"""Waiting on a condition with a deadline: how tests wait for threads, processes and servers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    condition: Callable[[], Any], timeout_s: float = 15.0, what: str = "condition", *, interval_s: float = 0.02
) -> Any:
    """Poll ``condition`` until it returns a truthy value (returned) or ``timeout_s`` passes
    (``AssertionError`` naming ``what``). It is always evaluated at least once."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def daemon_api_url(proc: Any, status_file: Any, log_file: Any) -> str | None:
    """The local API URL a running `fvagent run` (``proc``) reports in its status file, once its
    state is "running"; ``None`` before. Fails with the tail of ``log_file`` if the process died."""
    import json

    assert proc.poll() is None, log_file.read_text()[-2000:]
    try:
        live = json.loads(status_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    url = (live.get("local_api") or {}).get("url") if live.get("state") == "running" else None
    return str(url) if url else None
