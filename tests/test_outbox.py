"""The outbox on real SQLite files: durability settings, encryption at rest, keys, damage, migrations,
operator actions and retention."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import StorageSettings
from agent.outbox import Outbox, housekeeping, schema
from agent.outbox.keys import DataKey
from core.errors import KeyFileError, OutboxCorrupt, OutboxError
from core.outcome import OutcomeKind
from tests.test_outbox_support import card_no, record, storage


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    box = Outbox.open(storage(tmp_path))
    yield box
    box.close()


def _files_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.iterdir() if p.name.startswith("outbox.db"))


# -- durability and encryption --------------------------------------------------------------------


def test_open_sets_wal_full_sync_and_current_schema(outbox: Outbox) -> None:
    conn = sqlite3.connect(outbox.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.CURRENT
    conn.close()
    assert outbox.db.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_enqueue_is_committed_before_it_returns(outbox: Outbox) -> None:
    record_id = outbox.enqueue(record(1), meta={"source": "test", "reason": "ok"})
    # A second connection (another process would see the same) finds the row committed.
    other = sqlite3.connect(outbox.path)
    assert other.execute("SELECT state FROM records WHERE id = ?", (record_id,)).fetchone() == ("pending",)
    other.close()
    assert outbox.payload(record_id) == record(1)
    row = outbox.get(record_id)
    assert row is not None and row.state == "pending" and row.meta == {"source": "test", "reason": "ok"}
    assert row.has_photos and row.attempts == 0 and not row.simulated


def test_database_reveals_no_personal_data(outbox: Outbox) -> None:
    rec = record(7)
    outbox.enqueue(rec)
    outbox.enqueue(record(8), held_reason="no WLT decoder", raw_wlt=b"WLT-PHOTO-BYTES" * 20)
    raw = _files_bytes(outbox.path.parent)
    for secret in (rec["cardNo"], rec["realName"], rec["address"], rec["headImg"][:40], "WLT-PHOTO-BYTES"):
        assert secret.encode("utf-8") not in raw
    assert outbox.raw_wlt(2) == b"WLT-PHOTO-BYTES" * 20


def test_find_by_card_number_through_the_blind_index(outbox: Outbox) -> None:
    a = outbox.enqueue(record(1))
    outbox.enqueue(record(2))
    c = outbox.enqueue(record(1, verify_time=dt.datetime(2024, 6, 12, 9, 0, 0)))
    assert [r.id for r in outbox.find(card_no(1))] == [c, a]
    assert outbox.find(card_no(3)) == []
    assert len(outbox.find(None, limit=2)) == 2
    assert outbox.find(card_no(1), since=dt.datetime.now() + dt.timedelta(hours=1)) == []
    # the index is keyed: not a plain digest of the number
    stored = sqlite3.connect(outbox.path).execute("SELECT card_index FROM records WHERE id = ?", (a,)).fetchone()[0]
    assert stored == outbox.keys.current.card_index(card_no(1)) and len(stored) == 16
    assert DataKey(b"\x01" * 16, "other").card_index(card_no(1)) != stored


def test_idempotency_key_returns_the_first_id(outbox: Outbox) -> None:
    first = outbox.enqueue(record(1), idempotency_key="terminal-42")
    again = outbox.enqueue(record(1), idempotency_key="terminal-42")
    assert first == again and outbox.stats()["total"] == 1
    assert outbox.enqueue(record(1), idempotency_key="terminal-43") != first


def test_stats_counts_every_state(outbox: Outbox) -> None:
    for n in range(5):
        outbox.enqueue(record(n))
    outbox.enqueue(record(9), held_reason="waiting for a WLT decoder")
    claims = outbox.claim(3)
    outbox.finish(claims[0], "accepted", message="ok", request_id="r1")
    outbox.finish(claims[1], "rejected", message="A2301 parameter error", request_id="r2")
    stats = outbox.stats()
    assert {k: stats[k] for k in ("pending", "sending", "sent", "rejected", "held", "total")} == {
        "pending": 2,
        "sending": 1,
        "sent": 1,
        "rejected": 1,
        "held": 1,
        "total": 6,
    }
    assert stats["oldest_pending_age_s"] is not None and stats["bytes"] > 0 and not stats["over_budget"]


# -- keys -----------------------------------------------------------------------------------------


def test_key_file_is_made_0600_on_first_start(tmp_path: Path) -> None:
    with Outbox.open(storage(tmp_path)) as box:
        box.enqueue(record(1))
    key_file = tmp_path / "state" / "outbox.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(bytes.fromhex(key_file.read_text().strip())) == 16
    with Outbox.open(storage(tmp_path)) as box:  # the same key opens it again
        assert box.payload(1) == record(1)


def test_wrong_key_is_a_clear_startup_error_and_changes_nothing(tmp_path: Path) -> None:
    with Outbox.open(storage(tmp_path)) as box:
        box.enqueue(record(1))
    key_file = tmp_path / "state" / "outbox.key"
    before = _files_bytes(tmp_path / "state")
    original = key_file.read_text()
    key_file.write_text(os.urandom(16).hex())
    with pytest.raises(KeyFileError, match="not the key the outbox") as info:
        Outbox.open(storage(tmp_path))
    assert "backup" in (info.value.hint or "")
    assert _files_bytes(tmp_path / "state") == before
    key_file.write_text(original)
    with Outbox.open(storage(tmp_path)) as box:
        assert box.payload(1) == record(1)


def test_missing_key_is_never_replaced_by_a_new_one(tmp_path: Path) -> None:
    with Outbox.open(storage(tmp_path)) as box:
        box.enqueue(record(1))
    key_file = tmp_path / "state" / "outbox.key"
    key_file.rename(tmp_path / "saved.key")
    with pytest.raises(KeyFileError, match="missing"):
        Outbox.open(storage(tmp_path))
    assert not key_file.exists()


def test_key_file_readable_by_others_is_a_warning_and_a_malformed_one_refused(tmp_path: Path) -> None:
    Outbox.open(storage(tmp_path)).close()
    key_file = tmp_path / "state" / "outbox.key"
    key_file.chmod(0o644)
    with Outbox.open(storage(tmp_path)) as box:  # the desk is not blocked by a file mode
        assert box.key_warning is not None and "chmod 600" in box.key_warning
    key_file.chmod(0o600)
    with Outbox.open(storage(tmp_path)) as box:
        assert box.key_warning is None
    key_file.write_text("not-hex")
    with pytest.raises(KeyFileError, match="32 hexadecimal"):
        Outbox.open(storage(tmp_path))


def test_systemd_credential_supplies_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    key = os.urandom(16)
    (creds / "outbox_key").write_text(key.hex() + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    with Outbox.open(storage(tmp_path)) as box:
        box.enqueue(record(1))
        assert "credential" in box.key_source
    assert not (tmp_path / "state" / "outbox.key").exists()
    (creds / "outbox_key").write_text(os.urandom(16).hex())
    with pytest.raises(KeyFileError):
        Outbox.open(storage(tmp_path))


def test_custom_key_file_path(tmp_path: Path) -> None:
    settings = StorageSettings(dir=tmp_path / "state", key_file=tmp_path / "keys" / "fv.key")
    with Outbox.open(settings) as box:
        box.enqueue(record(1))
    assert (tmp_path / "keys" / "fv.key").exists() and not (tmp_path / "state" / "outbox.key").exists()


# -- damage ---------------------------------------------------------------------------------------


def _damaged_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if ".damaged-" in p.name and not p.name.endswith(("-wal", "-shm")))


def test_garbage_file_is_kept_aside_and_never_overwritten(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    garbage = b"this is not a database at all\n" * 300
    (state / "outbox.db").write_bytes(garbage)
    with pytest.raises(OutboxCorrupt, match="damaged") as info:
        Outbox.open(storage(tmp_path))
    aside = _damaged_files(state)
    assert len(aside) == 1 and aside[0].read_bytes() == garbage
    assert str(aside[0]) in str(info.value)
    with Outbox.open(storage(tmp_path)) as box:  # the next start begins a new outbox
        assert box.stats()["total"] == 0
    assert aside[0].read_bytes() == garbage


def test_truncated_database_is_detected_and_kept_aside(tmp_path: Path) -> None:
    with Outbox.open(storage(tmp_path)) as box:
        for n in range(20):
            box.enqueue(record(n, photo_b64=None))
        box.enqueue({**record(99), "headImg": "A" * 200_000})
    db = tmp_path / "state" / "outbox.db"
    assert not (tmp_path / "state" / "outbox.db-wal").exists()  # a clean close checkpoints
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    with pytest.raises(OutboxCorrupt, match="truncated"):
        Outbox.open(storage(tmp_path))
    aside = _damaged_files(tmp_path / "state")
    assert len(aside) == 1 and aside[0].read_bytes() == data[: len(data) // 2]


def test_corrupted_pages_are_found_by_the_check_and_kept_aside(tmp_path: Path) -> None:
    with Outbox.open(storage(tmp_path)) as box:
        for n in range(30):
            box.enqueue(record(n))
    db = tmp_path / "state" / "outbox.db"
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for p in range(2, len(data) // page):  # scribble over every page but the first (the header)
        data[p * page + 8 : p * page + 40] = os.urandom(32)
    db.write_bytes(bytes(data))
    with pytest.raises(OutboxCorrupt):
        Outbox.open(storage(tmp_path), check=True)
    assert len(_damaged_files(tmp_path / "state")) == 1
    assert not db.exists()


def test_damaged_file_in_use_by_another_process_is_left_in_place(tmp_path: Path) -> None:
    state = tmp_path / "state"
    Outbox.open(storage(tmp_path)).close()
    import fcntl

    holder = os.open(state / "outbox.lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_SH)  # the daemon holds the outbox open
    try:
        (state / "outbox.db").write_bytes(b"garbage" * 1000)
        with pytest.raises(OutboxCorrupt, match="another fvagent process"):
            Outbox.open(storage(tmp_path))
        assert (state / "outbox.db").read_bytes() == b"garbage" * 1000
        assert _damaged_files(state) == []
    finally:
        os.close(holder)


# -- migrations -----------------------------------------------------------------------------------


def _make_v1(tmp_path: Path) -> tuple[Path, bytes]:
    """A version-1 outbox as the first release wrote it, with one pending and one sent record."""
    state = tmp_path / "state"
    state.mkdir()
    key = os.urandom(16)
    (state / "outbox.key").write_text(key.hex())
    (state / "outbox.key").chmod(0o600)
    dk = DataKey(key, "test")
    conn = sqlite3.connect(state / "outbox.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    assert schema.migrate(conn, target=1) == 0
    assert schema.version(conn) == 1
    conn.execute("INSERT INTO meta(key, value) VALUES ('key_check', ?)", (dk.check_value(),))
    for n, state_name in ((1, "pending"), (2, "sent")):
        uid = uuid.uuid4().hex
        rec = record(n)
        data = {k: v for k, v in rec.items() if k not in ("headImg", "cameraImg")}
        photos = {k: rec[k] for k in ("headImg", "cameraImg")}
        sealed = dk.seal(json.dumps(data).encode(), f"fvagent-outbox:{uid}:data".encode())
        sealed_photos = dk.seal(json.dumps(photos).encode(), f"fvagent-outbox:{uid}:photos".encode())
        now = time.time() - 100 + n
        conn.execute(
            "INSERT INTO records (uid, created_at, state, attempts, next_attempt_at, request_id, sent_at,"
            " bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                uid,
                now,
                state_name,
                n - 1,
                now,
                "r-old" if n == 2 else None,
                now if n == 2 else None,
                len(sealed) + len(sealed_photos),
            ),
        )
        conn.execute(
            "INSERT INTO payloads (record_id, data, photos) VALUES (last_insert_rowid(), ?, ?)", (sealed, sealed_photos)
        )
    conn.close()
    return state / "outbox.db", key


def test_forward_migration_from_v1_keeps_every_record(tmp_path: Path) -> None:
    db, _ = _make_v1(tmp_path)
    with Outbox.open(storage(tmp_path), check=True) as box:
        assert schema.version(box.db.conn) == schema.CURRENT
        assert box.payload(1) == record(1) and box.payload(2) == record(2)
        assert box.get(2).state == "sent" and box.get(2).request_id == "r-old"  # type: ignore[union-attr]
        stats = box.stats()
        assert (stats["pending"], stats["sent"], stats["total"]) == (1, 1, 2)
        new = box.enqueue(record(3), idempotency_key="k")  # the v2 columns work
        assert new == 3 and box.find(card_no(3))[0].id == 3
        assert box.find(card_no(1)) == []  # v1 rows have no blind index (documented)
        claims = box.claim(10)
        assert [c.id for c in claims] == [1, 3]
        box.finish(claims[0], "accepted", message="ok", request_id="r-new")
        assert [a.request_id for a in box.attempts(1)] == ["r-new"]
        assert box.integrity_check() == ["ok"]
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.CURRENT
    columns = {r[1] for r in conn.execute("PRAGMA table_info(records)")}
    assert {"simulated", "held_reason", "idempotency_key", "card_index", "meta"} <= columns


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    Outbox.open(storage(tmp_path)).close()
    conn = sqlite3.connect(tmp_path / "state" / "outbox.db")
    conn.execute(f"PRAGMA user_version = {schema.CURRENT + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(OutboxError, match="newer than this fvagent"):
        Outbox.open(storage(tmp_path))
    assert (tmp_path / "state" / "outbox.db").exists()


# -- operator actions -----------------------------------------------------------------------------


def test_retry_and_retry_rejected(outbox: Outbox) -> None:
    ids = [outbox.enqueue(record(n)) for n in range(3)]
    claims = outbox.claim(3)
    outbox.finish(claims[0], "accepted", message="ok", request_id="a")
    outbox.finish(claims[1], "rejected", message="A2301 parameter error: cardNo", request_id="b")
    outbox.finish(claims[2], "rejected", message="A2301 parameter error: birthday", request_id="c")
    with pytest.raises(OutboxError, match="already accepted"):
        outbox.retry(ids[0])
    with pytest.raises(OutboxError, match="no record"):
        outbox.retry(999)
    outbox.retry(ids[1])
    assert outbox.get(ids[1]).state == "pending"  # type: ignore[union-attr]
    assert outbox.retry_rejected() == 1
    assert outbox.stats()["pending"] == 2 and outbox.stats()["rejected"] == 0


T0 = 1_700_000_000.0


@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[tuple[Outbox, list[float]]]:
    """An outbox on a clock the test moves: ``now[0]`` is the time it sees."""
    now = [T0]
    box = Outbox.open(storage(tmp_path), clock=lambda: now[0])
    yield box, now
    box.close()


def backing_off(box: Outbox, n: int, next_attempt_at: float) -> int:
    """A record that failed once (HTTP 502) and waits until ``next_attempt_at`` to be tried again."""
    rid = box.enqueue(record(n))
    box.finish(box.claim(1)[0], "retryable", message="HTTP 502", next_attempt_at=next_attempt_at)
    return rid


def test_claim_takes_only_due_records_oldest_first(clocked: tuple[Outbox, list[float]]) -> None:
    box, now = clocked
    waits = backing_off(box, 1, now[0] + 60)
    waiting = box.enqueue(record(2))
    assert [c.id for c in box.claim(10)] == [waiting]  # the record in backoff is not due yet
    now[0] += 59
    assert box.claim(10) == []
    assert box.next_due_at() == T0 + 60
    now[0] += 2
    assert [c.id for c in box.claim(10)] == [waits]


def test_retry_makes_a_backing_off_record_due_now(clocked: tuple[Outbox, list[float]]) -> None:
    box, now = clocked
    rid = backing_off(box, 1, now[0] + 3600)
    assert box.claim(1) == []
    box.wakeup.clear()
    box.retry(rid)
    assert box.wakeup.is_set()  # an idle uploader starts at once
    assert [c.id for c in box.claim(1)] == [rid]


@pytest.mark.parametrize(
    ("state", "why"), [("sending", "being sent right now"), ("held", "it is held"), ("sent", "already accepted")]
)
def test_retry_refuses_records_that_must_not_be_sent_again(outbox: Outbox, state: str, why: str) -> None:
    if state == "held":
        rid = outbox.enqueue(record(1), held_reason="card photo waits for a WLT decoder")
    else:
        rid = outbox.enqueue(record(1))
        claim = outbox.claim(1)[0]
        if state == "sent":
            outbox.finish(claim, "accepted", message="ok", request_id="r")
    with pytest.raises(OutboxError, match=why) as info:
        outbox.retry(rid)
    assert f"record {rid}" in str(info.value)
    assert outbox.get(rid).state == state  # type: ignore[union-attr]
    assert outbox.retry_rejected() == 0 and outbox.get(rid).state == state  # type: ignore[union-attr]


def test_resolve_marks_a_rejected_record_sent_and_records_the_delivery(tmp_path: Path) -> None:
    now = [1_700_000_000.0]
    box = Outbox.open(storage(tmp_path, keep_sent_days=7, keep_sent_rows_days=30), clock=lambda: now[0])
    try:
        rid = box.enqueue(record(1))
        box.finish(
            box.claim(1)[0],
            "rejected",
            message="A2301 parameter error: police",
            request_id="req-1",
            exception_code="A2301",
        )
        now[0] += 3600
        box.resolve(rid, request_id=" req-fixed ", message="resent corrected by hand")
        row = box.get(rid)
        assert row is not None and row.state == "sent" and row.sent_at == now[0] and row.updated_at == now[0]
        assert row.last_outcome == "accepted" and row.last_error is None and row.request_id == "req-fixed"
        assert row.attempts == 2
        attempts = box.attempts(rid)
        assert [(a.attempt, a.outcome, a.request_id) for a in attempts] == [
            (1, "rejected", "req-1"),
            (2, "accepted", "req-fixed"),
        ]
        assert attempts[1].message == "resent corrected by hand" and attempts[1].finished_at == now[0]
        assert box.stats()["rejected"] == 0 and box.stats()["last_sent_at"] == now[0]
        # no longer rejected: retry --rejected and export leave it alone
        assert box.retry_rejected() == 0 and box.get(rid).state == "sent"  # type: ignore[union-attr]
        assert box.export_rejected(tmp_path / "rejected.jsonl") == 0
        # retention treats it as any sent record, counted from when it was marked sent
        assert housekeeping(box, now[0] + 6 * 86400, uptime_s=UP_ALL_ALONG)["photos_erased"] == 0
        assert housekeeping(box, now[0] + 8 * 86400, uptime_s=UP_ALL_ALONG)["photos_erased"] == 1
        assert (
            housekeeping(box, now[0] + 31 * 86400, uptime_s=UP_ALL_ALONG)["rows_deleted"] == 1 and box.get(rid) is None
        )
    finally:
        box.close()


@pytest.mark.parametrize(
    ("state", "why"),
    [
        ("sent", "already accepted"),
        ("sending", "being sent right now"),
        ("pending", "queued to be sent"),
        ("held", "it is held"),
    ],
)
def test_resolve_refuses_every_record_that_is_not_rejected(outbox: Outbox, state: str, why: str) -> None:
    if state == "held":
        rid = outbox.enqueue(record(1), held_reason="card photo waits for a WLT decoder")
    else:
        rid = outbox.enqueue(record(1))
        if state != "pending":
            claim = outbox.claim(1)[0]
            if state == "sent":
                outbox.finish(claim, "accepted", message="ok", request_id="req-first")
    before = (outbox.get(rid), outbox.attempts(rid))
    with pytest.raises(OutboxError, match=why) as info:
        outbox.resolve(rid, request_id="req-fixed", message="resent corrected by hand")
    assert f"record {rid} cannot be marked sent" in str(info.value)
    assert (outbox.get(rid), outbox.attempts(rid)) == before  # nothing changed


def test_resolve_refuses_an_unknown_id_and_an_empty_request_id(outbox: Outbox) -> None:
    with pytest.raises(OutboxError, match="no record with id 999"):
        outbox.resolve(999, request_id="req-fixed", message="m")
    rid = outbox.enqueue(record(1))
    outbox.finish(outbox.claim(1)[0], "rejected", message="A2301 parameter error", request_id="req-1")
    with pytest.raises(OutboxError, match="without the accepted request id") as info:
        outbox.resolve(rid, request_id="  ", message="m")
    assert "upload-file" in (info.value.hint or "")
    assert outbox.get(rid).state == "rejected" and len(outbox.attempts(rid)) == 1  # type: ignore[union-attr]


def test_release_gives_a_claim_back_untried(outbox: Outbox) -> None:
    rid = outbox.enqueue(record(1))
    claim = outbox.claim(1)[0]
    outbox.release(claim)
    row = outbox.get(rid)
    assert row is not None and row.state == "pending" and row.attempts == 0
    assert outbox.attempts(rid) == []
    again = outbox.claim(1)[0]
    assert again.attempt == 1 and [a.attempt for a in outbox.attempts(rid)] == [1]


def test_export_rejected_writes_full_records_0600_and_never_overwrites(outbox: Outbox, tmp_path: Path) -> None:
    outbox.enqueue(record(1))
    outbox.enqueue(record(2))
    claims = outbox.claim(2)
    outbox.finish(claims[0], "rejected", message="A2301 parameter error", request_id="x")
    outbox.finish(claims[1], "accepted", message="ok", request_id="y")
    out = tmp_path / "rejected.jsonl"
    assert outbox.export_rejected(out) == 1
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert lines[0]["id"] == 1 and lines[0]["record"] == record(1) and "A2301" in lines[0]["lastError"]
    with pytest.raises(OutboxError, match="exists"):
        outbox.export_rejected(out)


def test_export_with_no_rejected_record_creates_no_file(outbox: Outbox, tmp_path: Path) -> None:
    outbox.enqueue(record(1))
    outbox.finish(outbox.claim(1)[0], "accepted", message="ok", request_id="y")
    out = tmp_path / "rejected.jsonl"
    assert outbox.export_rejected(out) == 0
    assert not out.exists()
    outbox.enqueue(record(2))
    outbox.finish(outbox.claim(1)[0], "rejected", message="A2301 parameter error", request_id="x")
    assert outbox.export_rejected(out) == 1  # the name is still free for a later export
    assert json.loads(out.read_text(encoding="utf-8"))["record"] == record(2)


def test_export_rejected_is_oldest_first_and_resendable_as_is(outbox: Outbox, tmp_path: Path) -> None:
    from core.records import parse_verification

    ids = [outbox.enqueue(record(n)) for n in range(3)]
    for claim in outbox.claim(3):
        outbox.finish(claim, "rejected", message=f"A2301 parameter error #{claim.id}", request_id=f"r{claim.id}")
    out = tmp_path / "rejected.jsonl"
    assert outbox.export_rejected(out) == 3
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [d["id"] for d in lines] == ids
    assert [d["attempts"] for d in lines] == [1, 1, 1] and all(d["createdAt"] for d in lines)
    # each "record" is what `fvagent upload-file` takes: valid, with the spec's field names
    assert [parse_verification(d["record"]).to_payload() for d in lines] == [record(n) for n in range(3)]
    # exporting changes nothing: the records stay rejected until retried
    assert outbox.stats()["rejected"] == 3


def test_export_goes_on_past_a_record_altered_on_disk(
    outbox: Outbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [outbox.enqueue(record(n)) for n in range(3)]
    for claim in outbox.claim(3):
        outbox.finish(claim, "rejected", message="A2301 parameter error", request_id=f"r{claim.id}")
    conn = sqlite3.connect(outbox.path)
    blob = bytearray(conn.execute("SELECT data FROM payloads WHERE record_id = ?", (ids[1],)).fetchone()[0])
    blob[20] ^= 0xFF
    conn.execute("UPDATE payloads SET data = ? WHERE record_id = ?", (bytes(blob), ids[1]))
    conn.commit()
    conn.close()
    out = tmp_path / "rejected.jsonl"
    assert outbox.export_rejected(out) == 3
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [d["id"] for d in lines] == ids
    assert lines[0]["record"] == record(0) and lines[2]["record"] == record(2)
    assert lines[1]["record"] is None and "does not open" in lines[1]["error"]
    assert f"record {ids[1]}" in caplog.text and card_no(1) not in caplog.text


def test_release_held_completes_and_queues(outbox: Outbox) -> None:
    incomplete = {k: v for k, v in record(1).items() if k != "headImg"}
    held = outbox.enqueue(
        incomplete, held_reason="no WLT decoder", raw_wlt=b"WLT" * 10, meta={"source": "reader", "reason": "r1"}
    )
    keep = outbox.enqueue(incomplete, held_reason="no WLT decoder", raw_wlt=b"XYZ")
    seen: list[bytes | None] = []
    metas: list[dict] = []

    def complete(payload: dict, wlt: bytes | None, meta: dict) -> dict | None:
        seen.append(wlt)
        metas.append(meta)
        if wlt == b"XYZ":
            return None
        return {**payload, "headImg": record(1)["headImg"]}

    assert outbox.release_held(complete) == 1
    assert seen == [b"WLT" * 10, b"XYZ"]
    assert metas == [{"source": "reader", "reason": "r1"}, {}]  # each record's stored meta, for its guards
    assert outbox.get(held).state == "pending" and outbox.payload(held) == record(1)  # type: ignore[union-attr]
    assert outbox.raw_wlt(held) is None
    assert outbox.get(keep).state == "held"  # type: ignore[union-attr]
    assert outbox.claim(10)[0].id == held  # held records are never claimed


def test_requeue_interrupted_returns_sending_rows(outbox: Outbox) -> None:
    outbox.enqueue(record(1))
    claim = outbox.claim(1)[0]
    assert outbox.get(claim.id).state == "sending"  # type: ignore[union-attr]
    assert outbox.requeue_interrupted() == 1
    row = outbox.get(claim.id)
    assert row is not None and row.state == "pending" and row.attempts == 1
    assert [a.outcome for a in outbox.attempts(claim.id)] == ["interrupted"]


# -- retention ------------------------------------------------------------------------------------

UP_ALL_ALONG = 60 * 86400.0
"""The machine was up through the days these tests skip over, so the clock moved that far for real."""


def test_retention_erases_sent_photos_then_rows(tmp_path: Path) -> None:
    now = [1_700_000_000.0]
    box = Outbox.open(storage(tmp_path, keep_sent_days=7, keep_sent_rows_days=30), clock=lambda: now[0])
    try:
        sent = box.enqueue(record(1))
        pending = box.enqueue(record(2))
        box.finish(box.claim(1)[0], "accepted", message="ok", request_id="r")
        assert housekeeping(box, now[0] + 6 * 86400, uptime_s=UP_ALL_ALONG)["photos_erased"] == 0
        result = housekeeping(box, now[0] + 8 * 86400, uptime_s=UP_ALL_ALONG)
        assert result["photos_erased"] == 1 and result["rows_deleted"] == 0
        payload = box.payload(sent)
        assert payload is not None and "headImg" not in payload and payload["cardNo"] == card_no(1)
        assert not box.get(sent).has_photos  # type: ignore[union-attr]
        assert box.payload(pending) == record(2)  # unsent: untouched
        assert box.housekeeping(now[0] + 31 * 86400, uptime_s=UP_ALL_ALONG)["rows_deleted"] == 1
        assert box.get(sent) is None and box.get(pending) is not None
        assert box.integrity_check() == ["ok"]
    finally:
        box.close()


def test_retention_goes_by_the_outbox_clock(tmp_path: Path) -> None:
    # Years ahead of the machine's clock: by time.time() the record would be sent in the future.
    now = [time.time() + 3 * 365 * 86400]
    box = Outbox.open(storage(tmp_path, keep_sent_days=7), clock=lambda: now[0])
    try:
        sent = box.enqueue(record(1))
        box.finish(box.claim(1)[0], OutcomeKind.ACCEPTED, message="ok", request_id="r")
        now[0] += 8 * 86400
        assert box.housekeeping(uptime_s=UP_ALL_ALONG)["photos_erased"] == 1
        assert not box.get(sent).has_photos  # type: ignore[union-attr]
    finally:
        box.close()


def test_free_pages_go_back_to_the_file_system_many_per_call(tmp_path: Path) -> None:
    # sqlite3's execute() steps a no-row statement once, and incremental_vacuum frees one page per
    # step: each call gave back a single page, and retention of 1,000 records took 20 s.
    with Outbox.open(storage(tmp_path)) as box:
        with box.db.write("make free pages") as conn:
            conn.execute("CREATE TABLE scratch(b BLOB)")
            conn.executemany("INSERT INTO scratch VALUES (?)", [(os.urandom(50_000),) for _ in range(40)])
        with box.db.write("free them") as conn:
            conn.execute("DROP TABLE scratch")
        free = box.db.free_pages()
        assert free > 100
        box.db.return_free_pages(free - 10)
        assert box.db.free_pages() == 10
        box.db.return_free_pages(1000)
        assert box.db.free_pages() == 0 and box.integrity_check() == ["ok"]


def test_size_budget_evicts_sent_data_first_and_never_unsent(tmp_path: Path) -> None:
    big = "A" * 40_000
    box = Outbox.open(storage(tmp_path, max_bytes=200_000))
    try:
        sent_ids = [box.enqueue({**record(n), "headImg": big}) for n in range(4)]
        for claim in box.claim(4):
            box.finish(claim, "accepted", message="ok", request_id=f"r{claim.id}")
        unsent = [box.enqueue({**record(10 + n), "headImg": big}) for n in range(3)]
        assert box.stats()["bytes"] > 200_000
        result = housekeeping(box)
        assert result["evicted_photos"] >= 1 and result["alert"] is None
        assert box.stats()["bytes"] <= 200_000
        assert all(box.payload(i)["headImg"] == big for i in unsent)  # type: ignore[index]
        # Unsent alone over the budget: nothing unsent goes, an alert is raised, capture still works.
        more = [box.enqueue({**record(20 + n), "headImg": big}) for n in range(5)]
        result = housekeeping(box)
        assert result["alert"] and "never evicted" in result["alert"]
        assert box.stats()["over_budget"] and all(box.get(i) is not None for i in unsent + more)
        assert all(box.get(i) is None or not box.get(i).has_photos for i in sent_ids)  # type: ignore[union-attr]
        assert box.integrity_check() == ["ok"]
    finally:
        box.close()


def test_size_budget_never_evicts_rejected_or_held_records(tmp_path: Path) -> None:
    big = "A" * 40_000
    now = [1_700_000_000.0]

    def fill() -> dict[str, int]:
        box = Outbox.open(storage(tmp_path), clock=lambda: now[0])
        try:
            ids = {
                "old_sent": box.enqueue({**record(1), "headImg": big}),
                "new_sent": box.enqueue({**record(2), "headImg": big}),
            }
            box.finish(box.claim(1)[0], "accepted", message="ok", request_id="r1")
            now[0] += 60
            box.finish(box.claim(1)[0], "accepted", message="ok", request_id="r2")
            ids["rejected"] = box.enqueue({**record(3), "headImg": big})
            box.finish(box.claim(1)[0], "rejected", message="A2301 parameter error", request_id="r3")
            ids["held"] = box.enqueue(
                {**record(4), "headImg": big}, held_reason="waits for a WLT decoder", raw_wlt=b"W" * 1024
            )
            ids["pending"] = box.enqueue({**record(5), "headImg": big})
            return ids
        finally:
            box.close()

    ids = fill()
    with Outbox.open(storage(tmp_path)) as box:
        total = box.stats()["bytes"]
    # Just over budget: sent photos go first; the sent rows (the platform has them) stay.
    with Outbox.open(storage(tmp_path, max_bytes=total - 1000)) as box:
        result = housekeeping(box, now[0])
        assert result["evicted_photos"] >= 1 and result["evicted_rows"] == 0 and result["alert"] is None
        assert not box.get(ids["old_sent"]).has_photos  # type: ignore[union-attr]
        assert all(box.get(ids[n]).has_photos for n in ("rejected", "held", "pending"))  # type: ignore[union-attr]
    # Far over budget: every sent record goes, nothing else loses a byte.
    with Outbox.open(storage(tmp_path, max_bytes=1000)) as box:
        result = housekeeping(box, now[0])
        assert result["alert"] and "never evicted" in result["alert"]
        assert box.get(ids["old_sent"]) is None and box.get(ids["new_sent"]) is None
        for name, n in (("rejected", 3), ("held", 4), ("pending", 5)):
            assert box.payload(ids[name]) == {**record(n), "headImg": big}, name
        assert box.raw_wlt(ids["held"]) == b"W" * 1024
        assert box.stats()["rejected"] == box.stats()["held"] == box.stats()["pending"] == 1
        assert box.integrity_check() == ["ok"]


def test_freed_space_goes_back_to_the_file_system(tmp_path: Path) -> None:
    box = Outbox.open(storage(tmp_path, keep_sent_days=1, keep_sent_rows_days=2))
    try:
        for n in range(20):
            box.enqueue({**record(n), "headImg": "A" * 200_000})
        for claim in box.claim(20):
            box.finish(claim, "accepted", message="ok", request_id="r")
        box.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        before = box.path.stat().st_size
        assert housekeeping(box, time.time() + 3 * 86400, uptime_s=UP_ALL_ALONG)["rows_deleted"] == 20
        box.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert box.path.stat().st_size < before / 10
        assert box.integrity_check() == ["ok"]
    finally:
        box.close()
