"""`fvagent outbox backup DEST` while the daemon writes, restore from it, and the upgrade promise:
an outbox written by the previous release (0.1.0, commit 51bbf8c) opens in this one unchanged."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from agent import cli
from agent.config import StorageSettings
from agent.outbox import Outbox
from tests.test_outbox_support import storage
from tests.test_service import card, config_doc, images, run_service  # noqa: F401 (fixtures)
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
PREVIOUS_RELEASE = "51bbf8c"


def test_backup_while_the_daemon_writes_then_restore(
    run_service: Any,
    tmp_path: Path,
    images: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    service, reader, platform = run_service()
    platform.down = True  # records stay pending: the backup must carry them whole
    config = str(tmp_path / "fvagent.toml")
    stop = threading.Event()

    def desk() -> None:  # cards keep coming while the backup runs
        n = 0
        while not stop.is_set() and n < 40:
            reader.present(card(n % 3, terminal_score=0.9, terminal_result=1))
            n += 1
            stop.wait(0.05)

    wait_for(lambda: service.outbox is not None)
    writer = threading.Thread(target=desk)
    writer.start()
    try:
        wait_for(lambda: service.outbox.stats()["total"] >= 3, 20, "three records before the backup")
        dest = tmp_path / "backup"
        assert cli.main(["outbox", "backup", "--config", config, str(dest)]) == 0
    finally:
        stop.set()
        writer.join(10)
    said = capsys.readouterr().out
    assert "backed up" in said and str(dest / "outbox.key") in said
    assert stat.S_IMODE((dest / "outbox.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((dest / "outbox.db").stat().st_mode) == 0o600
    # Never written over: a second backup into the same place is refused.
    assert cli.main(["outbox", "backup", "--config", config, str(dest)]) == 1

    # Restore: the two files into an empty state directory; every record there reads back whole.
    restored = tmp_path / "restored"
    restored.mkdir(mode=0o700)
    shutil.copy2(dest / "outbox.db", restored / "outbox.db")
    shutil.copy2(dest / "outbox.key", restored / "outbox.key")
    copy = Outbox.open(StorageSettings(dir=restored), check=True, create=False)
    try:
        backed = copy.stats()
        assert backed["total"] >= 3 and backed["pending"] + backed["sending"] == backed["total"]
        for row_id in range(1, backed["total"] + 1):
            assert copy.payload(row_id) == service.outbox.payload(row_id)
    finally:
        copy.close()


def _previous_release(tmp_path: Path) -> Path:
    """The agent package of the previous release, from git (skipped where the history is absent)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: cannot check out the previous release")
    probe = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{PREVIOUS_RELEASE}^{{commit}}"], capture_output=True
    )
    if probe.returncode:
        pytest.skip(f"commit {PREVIOUS_RELEASE} (release 0.1.0) is not in this clone's history (a shallow clone?)")
    old = tmp_path / "release-0.1.0"
    old.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", PREVIOUS_RELEASE, "agent", "drivers", "tests"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    return old


WRITE_WITH_0_1_0 = """
import json, sys
from pathlib import Path
from agent.outbox import Outbox
from tests.test_outbox_support import record, storage
payloads = [record(n) for n in range(3)]
with Outbox.open(storage(Path(sys.argv[1]))) as outbox:
    ids = [outbox.enqueue(payload, simulated=True) for payload in payloads]
print(json.dumps({"ids": ids, "payloads": payloads}, ensure_ascii=False))
"""


def test_an_outbox_of_the_previous_release_opens_in_this_one(tmp_path: Path) -> None:
    old = _previous_release(tmp_path)
    state = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": str(old)}
    env.pop("CREDENTIALS_DIRECTORY", None)
    proc = subprocess.run(
        [sys.executable, "-c", WRITE_WITH_0_1_0, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=old,
    )
    assert proc.returncode == 0, proc.stderr
    written = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(written["ids"]) == 3 and (state / "outbox.db").exists()

    with Outbox.open(storage(tmp_path), check=True, create=False) as outbox:
        stats = outbox.stats()
        assert stats["total"] == 3 and stats["pending"] == 3
        for record_id, payload in zip(written["ids"], written["payloads"], strict=True):
            assert outbox.payload(record_id) == payload


def test_a_backup_after_a_key_rotation_carries_the_retired_key_and_the_signing_key(tmp_path: Path) -> None:
    from agent.audit import signing
    from agent.outbox.backup import backup
    from agent.outbox.rotation import rotate_key
    from tests.test_outbox_support import record

    settings = storage(tmp_path)
    with Outbox.open(settings) as box:
        old = box.enqueue(record(1))
    rotate_key(settings)
    signing.ensure(settings.dir)
    with Outbox.open(settings) as box:
        new = box.enqueue(record(2))
    dest = tmp_path / "backup"
    done = backup(settings, dest)
    assert done.records == 2
    for name in ("outbox.key", "outbox.key.retired", signing.KEY_FILE):
        assert stat.S_IMODE((dest / name).stat().st_mode) == 0o600, name
    assert (dest / signing.KEY_FILE).read_bytes() == signing.key_file(settings.dir).read_bytes()
    # the copy opens on its own: the record sealed before the rotation too
    with Outbox.open(StorageSettings(dir=dest, key_file=dest / "outbox.key"), readonly=True) as copy:
        assert copy.payload(old) == record(1) and copy.payload(new) == record(2)
    assert not (dest / "outbox.reserve").exists()  # the check opened the copy read-only
