"""Shared fixtures. Tests read the licensed faces from ../shared/data/faces at run time, never a copy."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FVAGENT_SHARED", ROOT.parent / "shared"))
FACES = SHARED / "data" / "faces"


@pytest.fixture(autouse=True)
def _logging_as_it_was():  # type: ignore[no-untyped-def]
    """A CLI command run in-process installs fvagent's root handler and sets the root level (doctor
    sets ERROR); the next test must start from the logging it would have had alone."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    for handler in list(root.handlers):
        if handler not in handlers and handler.get_name() == "fvagent":
            root.removeHandler(handler)
            handler.close()


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """The shared test faces (one folder per person); skips where ../shared is absent."""
    if not FACES.is_dir():
        pytest.skip(f"needs the shared test faces at {FACES} (internal test data, not in the repository)")
    return FACES


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave artefacts (screenshots, logs) for a person to look at."""
    path = ROOT / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def sim(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A simulated SAM reader on a pty (drivers/card_reader/simulator.py), stopped after the test."""
    from drivers.card_reader.simulator import SamSimulator

    with SamSimulator(tmp_path / "ttySAM") as s:
        yield s
