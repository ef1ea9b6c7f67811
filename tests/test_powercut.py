"""Power cuts with unsynced writes dropped (a FUSE file system, tests/powercut_fs.py) under the
outbox: 20 cuts at random moments, 0 acknowledged records lost, the database whole every time.
The long form (hundreds of cuts) is bench/powercut.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CUTS = 20


@pytest.mark.slow
def test_power_cuts_lose_no_acknowledged_record(tmp_path: Path) -> None:
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3 (Debian fuse3, installed by deploy/system-deps.sh test)")
    from tests.powercut import run_cuts

    result = run_cuts(CUTS, tmp_path, max_run_s=0.6)
    assert result.cuts == CUTS
    assert result.lost == 0 and result.not_sent == 0 and result.damaged == 0, result
    assert result.acknowledged >= CUTS and result.acknowledged_sent > 0, result
