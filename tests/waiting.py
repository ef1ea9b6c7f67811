"""Waiting on a condition with a deadline: how tests wait for threads, processes and servers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(condition: Callable[[], Any], timeout_s: float = 15.0, what: str = "condition", *,
             interval_s: float = 0.02) -> Any:
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
