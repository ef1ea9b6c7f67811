"""A full disk does not stop the drain, on a real small ext4 (an image file, loop-mounted; needs
root): capture fills the disk during an outage, then every record is still sent, its photos erased
after the retention delay, capture resumes, and the daemon's status says alive and disk full.
"""

from __future__ import annotations

import base64
import errno
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import mock_platform
from agent.config import load_config
from agent.delivery import Uploader
from agent.outbox import Outbox, housekeeping
from agent.outbox.reserve import RESERVE_BYTES, RESERVE_NAME
from agent.status import collect_status, status_path, write_status_file
from agent.uplink.client import PlatformClient
from core.errors import StorageFull
from core.records import natural_key
from tests.test_outbox_support import (
    jpeg,
    platform,  # noqa: F401  (the fixture)
    record,
    write_config,
)


@pytest.fixture
def ext4_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to loop-mount a small ext4 image (the full-disk test)")
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is missing: deploy/system-deps.sh test installs e2fsprogs")
    image = tmp_path / "disk.img"
    with open(image, "wb") as fh:
        fh.truncate(64 * 1024**2)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True, capture_output=True)
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-o", "loop", str(image), str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot loop-mount an ext4 image here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False, capture_output=True)


def _fill(path: Path) -> int:
    """Write to ``path`` until the file system refuses: the disk is full for real. Returns bytes written."""
    written = 0
    with open(path, "ab", buffering=0) as fh:
        chunk = os.urandom(64 * 1024)
        while True:
            try:
                n = fh.write(chunk if len(chunk) > 4096 else chunk[:4096])
                written += n or 0
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                if len(chunk) <= 4096:
                    return written
                chunk = chunk[:4096]


def test_a_full_disk_is_drained_erased_after_the_delay_and_capture_resumes(
    tmp_path: Path, ext4_disk: Path, platform: mock_platform.MockPlatform
) -> None:
    cfg = write_config(
        tmp_path / "fvagent.toml",
        url=platform.url,
        state_dir=ext4_disk / "state",
        storage_extra="keep_sent_days = 1\nmin_free_bytes = 1048576",
    )
    settings = load_config(cfg, validate_drivers=False)
    photo = base64.b64encode(jpeg(1, size=300)).decode()
    box = Outbox.open(settings.storage)
    try:
        assert (ext4_disk / "state" / RESERVE_NAME).stat().st_size > 0
        status_file = status_path(settings.storage.dir)
        write_status_file(
            status_file, {"pid": os.getpid(), "state": "running", "started_at": time.time(), "updated_at": time.time()}
        )  # the daemon's first status
        free = shutil.disk_usage(ext4_disk).free
        with open(ext4_disk / "filler", "wb") as fh:  # most of the disk is other files
            fh.write(b"\0" * max(0, free - 28 * 1024**2))
        stored = []
        with pytest.raises(StorageFull):  # a week offline: capture until the disk is full
            for n in range(10_000):
                stored.append(box.enqueue(record(n, photo_b64=photo)))
        _fill(ext4_disk / "filler-rest")  # and the last free blocks too
        assert len(stored) > 5
        with pytest.raises(StorageFull):
            box.enqueue(record(20_000, photo_b64=photo))

        # The daemon is alive: its status (rewritten in place) says so, and that the disk is full.
        write_status_file(
            status_file, {"pid": os.getpid(), "state": "running", "started_at": time.time(), "updated_at": time.time()}
        )
        doc = collect_status(settings).to_json()
        assert doc["daemon"]["running"] is True, doc["daemon"]
        assert any("free on" in a and "free disk space" in a for a in doc["alerts"]), doc["alerts"]

        # The platform is back: everything is sent although the disk is full.
        uploader = Uploader(box, PlatformClient, settings.platform, settings.uploader, settings.device)
        try:
            deadline = time.monotonic() + 60
            while box.stats()["pending"] and time.monotonic() < deadline:
                uploader.drain_once()
        finally:
            uploader.close()
        assert box.stats()["pending"] == 0 and box.stats()["sent"] == len(stored)
        assert not (ext4_disk / "state" / RESERVE_NAME).exists(), "the reserve was used"
        assert {natural_key(record(n)) for n in range(len(stored))} <= set(platform.delivered())
        try:  # capture never eats the drain's room: it goes on only once the reserve is whole again
            box.enqueue(record(20_001, photo_b64=photo))
            assert (ext4_disk / "state" / RESERVE_NAME).stat().st_size >= RESERVE_BYTES
        except StorageFull:
            assert not (ext4_disk / "state" / RESERVE_NAME).exists()

        # After the photo retention delay, housekeeping erases the photos: the space comes back.
        later = time.time() + 86400 + 3600
        result = housekeeping(box, later, uptime_s=2 * 86400)
        assert result["photos_erased"] == len(stored)
        resumed = box.enqueue(record(20_002, photo_b64=photo))
        assert box.get(resumed).state == "pending"  # type: ignore[union-attr]
        assert (ext4_disk / "state" / RESERVE_NAME).exists(), "the reserve is made again"
        assert box.integrity_check() == ["ok"]
    finally:
        box.close()
