"""Repeated identical errors: logged once, then summarised with a count."""

from __future__ import annotations

import logging

import pytest

from agent.repeats import Repeats


def test_identical_errors_are_logged_once_then_summarised(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = logging.getLogger("test.repeats")
    repeats = Repeats(log, window_s=30.0, clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, "test.repeats"):
        for _ in range(150):  # 30 s of a loop failing every 0.2 s
            repeats.log(logging.ERROR, "uploader: %s", "the disk is full")
            now[0] += 0.2
        now[0] = 30.0
        repeats.log(logging.ERROR, "uploader: %s", "the disk is full")
        assert [r.getMessage() for r in caplog.records] == [
            "uploader: the disk is full",
            "uploader: the disk is full (the same error 150 more times in the last 30 s)",
        ]
        repeats.log(logging.ERROR, "uploader: %s", "the disk is full")
        repeats.log(logging.ERROR, "uploader: %s", "database is locked")  # another error ends the run
        repeats.clear()
        assert [r.getMessage() for r in caplog.records][2:] == [
            "uploader: the disk is full (the same error 1 more times in the last 0 s)",
            "uploader: database is locked",
        ]
