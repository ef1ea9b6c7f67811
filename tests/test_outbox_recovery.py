"""Damage and recovery, end to end with real SQLite files, the real CLI and the real mock platform:

- one overwritten 4 KB page: what can be read and opened is salvaged (state, attempts, ids kept) and
  delivered, the lost ids listed, status and doctor alert until `fvagent outbox ack-damage`;
- a deleted WAL after an unclean stop: the missing records are an alert with the numbers;
- a missing or replaced key: the old outbox waits aside untouched, a new one takes captures, and the
  old records are delivered once the key is back (`fvagent outbox merge`, or the next start);
- read-only commands never move or write a damaged outbox.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent import mock_platform
from agent.audit.verify import verify_outbox
from agent.cli import main as cli_main
from agent.config import Settings, load_config
from agent.delivery import Uploader
from agent.outbox import Outbox, incidents
from agent.outbox.recovery import open_for_service
from agent.uplink.client import PlatformClient
from core.errors import OutboxCorrupt
from tests.test_outbox_support import (
    platform,  # noqa: F401  (the fixture)
    record,
    write_config,
)

ROOT = Path(__file__).resolve().parent.parent


def _settings(tmp_path: Path, url: str = "http://127.0.0.1:9/api") -> tuple[Path, Settings]:
    cfg = write_config(tmp_path / "fvagent.toml", url=url, state_dir=tmp_path / "state")
    return cfg, load_config(cfg, validate_drivers=False)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli_main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def _tree(directory: Path) -> dict[str, str]:
    """Name -> digest of every file, to prove a command wrote nothing."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def _sixty_records(settings: Settings) -> tuple[list[int], list[int]]:
    """60 records, 20 sent (one attempt each) and 40 pending; returns (sent ids, pending ids)."""
    with Outbox.open(settings.storage) as box:
        ids = [box.enqueue(record(n)) for n in range(60)]
        for claim in box.claim(20):
            box.finish(claim, "accepted", message="ok", request_id=f"req-{claim.id}")
    return ids[:20], ids[20:]


def _payload_page(db: Path) -> tuple[int, int]:
    """(page number, page size) of a page that holds payloads of pending records, not the first or last."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        pages = [
            int(r[0])
            for r in conn.execute(
                "SELECT pageno FROM dbstat WHERE name = 'payloads' AND pagetype IN ('leaf', 'overflow') ORDER BY pageno"
            )
        ]
    finally:
        conn.close()
    return pages[len(pages) * 3 // 4], size


def test_one_overwritten_page_salvaged_delivered_lost_ids_listed_alert_until_ack(
    tmp_path: Path, platform: mock_platform.MockPlatform, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, settings = _settings(tmp_path, platform.url)
    sent, pending = _sixty_records(settings)
    db = tmp_path / "state" / "outbox.db"
    page, size = _payload_page(db)
    assert size == 4096
    with open(db, "r+b") as fh:  # one 4 KB page of the payloads overwritten, as a failing disk would
        fh.seek((page - 1) * size)
        fh.write(os.urandom(size))

    before = _tree(tmp_path / "state")
    code, out = _cli(capsys, "queue", "stats", "-c", str(cfg))
    code, out = _cli(capsys, "doctor", "-c", str(cfg))
    assert _tree(tmp_path / "state") == before, "a read-only command changed the state directory"

    box = open_for_service(settings.storage)  # the daemon's start
    try:
        damaged = sorted((tmp_path / "state").glob("outbox.db.damaged-*"))
        assert [p.name for p in damaged if not p.name.endswith(("-wal", "-shm"))], "the damaged copy is kept"
        found = incidents.current(box)
        assert len(found) == 1 and found[0]["kind"] == "damaged"
        lost = found[0]["lost"]
        assert 1 <= len(lost) < 60 and found[0]["salvaged"] == 60 - len(lost)
        for record_id in sent + pending:  # ids, states and attempts kept
            row = box.get(record_id)
            if record_id in lost:
                assert row is None
                continue
            assert row is not None
            assert row.state == ("sent" if record_id in sent else "pending")
            assert row.attempts == (1 if record_id in sent else 0)
            if record_id in sent:
                assert [a.request_id for a in box.attempts(record_id)] == [f"req-{record_id}"]
        uploader = Uploader(box, PlatformClient, settings.platform, settings.uploader, settings.device)
        try:
            uploader.drain_once()
        finally:
            uploader.close()
        delivered = [r for r in pending if r not in lost]
        assert box.stats()["pending"] == 0 and box.stats()["sent"] == 60 - len(lost)
        assert sum(platform.delivered().values()) == len(delivered)
        audit = verify_outbox(box)  # the salvaged records entered the new outbox's audit chain
        assert audit.ok, audit.problems
        assert audit.records == 60 - len(lost)
    finally:
        box.close()

    code, out = _cli(capsys, "status", "-c", str(cfg))
    assert "was damaged and is kept as outbox.db.damaged-" in out
    assert f"{60 - len(lost)} record(s) salvaged" in out and f"{len(lost)} lost (ids {lost[0]}" in out
    code, out = _cli(capsys, "doctor", "-c", str(cfg))
    assert code != 0 and "outbox alert" in out and "damaged" in out
    code, out = _cli(capsys, "outbox", "ack-damage", "-c", str(cfg))
    assert code == 0 and "acknowledged" in out
    code, out = _cli(capsys, "status", "-c", str(cfg))
    assert "damaged" not in out

    # By hand, from the kept copy: everything readable is already there; nothing is copied twice.
    code, out = _cli(capsys, "outbox", "salvage", str(damaged[0]), "-c", str(cfg))
    assert f"0 record(s) salvaged (0 to send), {len(lost)} lost" in out and f"{60 - len(lost)} already present" in out


def test_salvage_by_hand_into_an_outbox_that_took_new_records_keeps_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, settings = _settings(tmp_path)
    with Outbox.open(settings.storage) as box:
        old = [box.enqueue(record(n)) for n in range(5)]
    older = tmp_path / "older-copy.db"
    shutil.copyfile(tmp_path / "state" / "outbox.db", older)
    (tmp_path / "state" / "outbox.db").unlink()
    with Outbox.open(settings.storage) as box:  # a new outbox under the same key, with its own records
        new = [box.enqueue(record(100 + n)) for n in range(3)]
    code, out = _cli(capsys, "outbox", "salvage", str(older), "-c", str(cfg))
    assert code == 0 and "5 record(s) salvaged (5 to send), 0 lost" in out and "renumbered 1->6, 2->7, 3->8" in out
    with Outbox.open(settings.storage) as box:
        assert box.stats()["pending"] == 8
        assert {box.payload(i)["cardNo"] for i in range(1, 9)} == {  # type: ignore[index]
            record(n)["cardNo"] for n in [*range(5), 100, 101, 102]
        }
    assert old == [1, 2, 3, 4, 5] and new == [1, 2, 3]


def test_read_only_commands_never_move_a_damaged_outbox(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, settings = _settings(tmp_path)
    Outbox.open(settings.storage).close()
    db = tmp_path / "state" / "outbox.db"
    db.write_bytes(b"garbage" * 1000)
    before = _tree(tmp_path / "state")
    for argv in (["status"], ["doctor"], ["queue", "stats"], ["queue", "ls"], ["queue", "show", "1"]):
        code, out = _cli(capsys, *argv, "-c", str(cfg))
        assert "damaged" in out, argv
    assert _tree(tmp_path / "state") == before
    with pytest.raises(OutboxCorrupt):
        Outbox.open(settings.storage, readonly=True)
    assert db.exists()


def test_a_record_whose_sealed_data_does_not_open_is_named_a_local_failure(
    tmp_path: Path, platform: mock_platform.MockPlatform, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, settings = _settings(tmp_path, platform.url)
    with Outbox.open(settings.storage) as box:
        rid = box.enqueue(record(1))
        box.db.conn.execute("UPDATE payloads SET data = zeroblob(64) WHERE record_id = ?", (rid,))
        uploader = Uploader(box, PlatformClient, settings.platform, settings.uploader, settings.device)
        try:
            uploader.drain_once()
        finally:
            uploader.close()
        assert box.get(rid).state == "rejected"  # type: ignore[union-attr]
    code, out = _cli(capsys, "status", "-c", str(cfg))
    assert "sealed data no longer opens here" in out and "rejected by the platform" not in out


# -- a deleted WAL ----------------------------------------------------------------------------------

_WRITER = """
import os, sys, time
from agent.config import StorageSettings
from agent.outbox import Outbox
from tests.test_outbox_support import record
box = Outbox.open(StorageSettings(dir=sys.argv[1]))
box.db.stop_checkpoints()  # keep the commits in the WAL, as between two checkpoints
for n in range(int(sys.argv[2])):
    box.enqueue(record(n))
print("committed", flush=True)
time.sleep(60)
"""


def test_a_deleted_wal_after_an_unclean_stop_is_an_alert_with_the_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, settings = _settings(tmp_path)
    with Outbox.open(settings.storage) as box:  # 5 records checkpointed into the database
        for n in range(5):
            box.enqueue(record(1000 + n))
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path / "state"), "10"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "committed"
        wal = tmp_path / "state" / "outbox.db-wal"
        assert wal.stat().st_size > 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    wal.unlink()  # a technician "cleaning up"
    with open_for_service(settings.storage) as box:
        assert box.stats()["total"] == 5
        found = incidents.current(box)
        assert [i["kind"] for i in found] == ["missing"]
        assert found[0]["expected_max_id"] == 15 and found[0]["found_max_id"] == 5
    code, out = _cli(capsys, "status", "-c", str(cfg))
    assert "records missing" in out and "up to id 15 (15 held)" in out and "holds 5 up to id 5" in out
    with Outbox.open(settings.storage) as box:  # reported once, not at every start
        assert len(incidents.current(box)) == 1


def test_an_old_copy_put_back_is_noticed(tmp_path: Path) -> None:
    _, settings = _settings(tmp_path)
    db = tmp_path / "state" / "outbox.db"
    with Outbox.open(settings.storage) as box:
        box.enqueue(record(1))
    shutil.copyfile(db, tmp_path / "backup.db")
    with Outbox.open(settings.storage) as box:
        box.enqueue(record(2))
        box.enqueue(record(3))
    shutil.copyfile(tmp_path / "backup.db", db)
    with Outbox.open(settings.storage) as box:
        assert "3 held" in incidents.alerts(box)[0] and "holds 1 up to id 1" in incidents.alerts(box)[0]


# -- the key -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["missing", "replaced", "unreadable"])
def test_a_lost_key_never_blocks_the_desk_and_the_old_records_come_home_with_the_key(
    tmp_path: Path, platform: mock_platform.MockPlatform, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    cfg, settings = _settings(tmp_path, platform.url)
    state = tmp_path / "state"
    key_file = state / "outbox.key"
    with Outbox.open(settings.storage) as box:
        old_ids = [box.enqueue(record(n)) for n in range(4)]
    original = key_file.read_bytes()
    old_db = (state / "outbox.db").read_bytes()
    if how == "missing":
        key_file.unlink()
    elif how == "replaced":
        key_file.write_text(os.urandom(16).hex())
    else:
        key_file.write_text("not a key at all")

    with open_for_service(settings.storage) as box:  # the daemon starts: a new outbox, under an interim key
        assert "interim" in box.key_source
        new_id = box.enqueue(record(50))
        assert box.stats()["total"] == 1
        assert [i["kind"] for i in incidents.current(box)] == ["key"]
    waiting = [p for p in state.glob("outbox.db.awaiting-key-*") if not p.name.endswith(("-wal", "-shm"))]
    assert len(waiting) == 1 and waiting[0].read_bytes() == old_db, "the old outbox is kept untouched"
    code, out = _cli(capsys, "status", "-c", str(cfg))
    assert "did not open the outbox" in out and "fvagent outbox merge" in out
    code, out = _cli(capsys, "doctor", "-c", str(cfg))
    assert code != 0 and "outbox alert" in out

    with open_for_service(settings.storage) as box:  # a restart without the key: the same interim outbox
        assert box.stats()["total"] == 1

    key_file.write_bytes(original)  # the technician puts the original key back
    key_file.chmod(0o600)
    if how == "missing":
        code, out = _cli(capsys, "outbox", "merge", str(waiting[0]), "-c", str(cfg))
        assert code == 0 and "4 record(s) salvaged (4 to send), 0 lost" in out
        box = Outbox.open(settings.storage)
    else:
        box = open_for_service(settings.storage)  # the next start merges by itself
    try:
        assert box.stats()["pending"] == 5 and incidents.current(box) == []
        uploader = Uploader(box, PlatformClient, settings.platform, settings.uploader, settings.device)
        try:
            uploader.drain_once()
        finally:
            uploader.close()
        assert box.stats()["sent"] == 5
        # The new outbox's record 1 keeps its id; the old record 1 is renumbered, 2..4 keep theirs.
        assert box.payload(new_id)["cardNo"] == record(50)["cardNo"]  # type: ignore[index]
        assert {box.payload(r.id)["cardNo"] for r in box.list(limit=10)} == {  # type: ignore[index]
            record(n)["cardNo"] for n in (0, 1, 2, 3, 50)
        }
        assert [box.payload(i)["cardNo"] for i in old_ids[1:]] == [record(n)["cardNo"] for n in (1, 2, 3)]  # type: ignore[index]
    finally:
        box.close()
    assert sum(platform.delivered().values()) == 5
    assert list(state.glob("outbox.db.merged-*")), "the merged copy is kept"


def test_a_key_readable_by_others_is_a_loud_alert_and_a_doctor_fail_not_a_refusal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, settings = _settings(tmp_path)
    with Outbox.open(settings.storage) as box:
        box.enqueue(record(1))
    (tmp_path / "state" / "outbox.key").chmod(0o644)
    with open_for_service(settings.storage) as box:
        box.enqueue(record(2))
        assert box.stats()["total"] == 2
    code, out = _cli(capsys, "status", "-c", str(cfg))
    assert "readable by group or others (mode 0644)" in out
    code, out = _cli(capsys, "doctor", "-c", str(cfg))
    assert code != 0 and "chmod 600" in out
    assert cli_main(["queue", "stats", "--json", "-c", str(cfg)]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 2
