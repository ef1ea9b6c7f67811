"""The outbox's audit chain on real SQLite files: every commit and state change chained, every
tampering found with the right message, signed exports checked with only the public key, the
upgrade of an outbox the previous release wrote, key rotation."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.audit import signing
from agent.audit.export import verify_export
from agent.audit.verify import verify_outbox
from agent.cli import main
from agent.outbox import Outbox, chain, schema
from agent.outbox.keys import DataKey
from agent.outbox.retention import DAY_S
from core.errors import AuditError, CryptoError
from tests.test_outbox_support import record, storage, write_config
from tests.waiting import wait_for

FIXTURE = Path(__file__).parent / "fixtures" / "outbox-51bbf8c"


class Clock:
    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outbox(tmp_path: Path, clock: Clock) -> Iterator[Outbox]:
    box = Outbox.open(storage(tmp_path), clock=clock)
    yield box
    box.close()


def _fill(box: Outbox) -> dict[str, int]:
    """One record through each path: sent, rejected, deferred, held then released, resolved, retried."""
    ids = {
        name: box.enqueue(record(i), meta={"source": "relay", "reason": "ok", "distance": 0.3 + i / 100})
        for i, name in enumerate(("sent", "rejected", "deferred", "resolved", "undone"))
    }
    ids["held"] = box.enqueue(
        record(9), held_reason="waiting for a WLT decoder", raw_wlt=b"\x07" * 32, meta={"source": "relay"}
    )
    claims = {c.id: c for c in box.claim(10)}
    box.finish(
        claims[ids["sent"]],
        "accepted",
        message="成功",
        request_id="R-1",
        http_status=200,
        return_time_ms=1_750_000_000_123,
    )
    box.finish(claims[ids["rejected"]], "rejected", message="身份证号格式错误", request_id="R-2", http_status=200)
    box.finish(claims[ids["deferred"]], "retryable", message="timeout", next_attempt_at=0)
    box.finish(claims[ids["resolved"]], "rejected", message="bad", request_id="R-3")
    box.release(claims[ids["undone"]])
    box.resolve(ids["resolved"], request_id="R-4", message="resent by hand")
    box.retry(ids["rejected"])
    assert box.release_held(lambda payload, wlt, meta: {**payload, "headImg": payload["cameraImg"]}) == 1
    return ids


def _problem(box: Outbox) -> str:
    report = verify_outbox(box)
    assert not report.ok, report.summary()
    return report.problems[0]


def _sql(box: Outbox, *statements: str, args: tuple[Any, ...] = ()) -> None:
    conn = sqlite3.connect(box.path)
    for statement in statements:
        conn.execute(statement, args)
    conn.commit()
    conn.close()


# -- a clean chain -----------------------------------------------------------------------------------


def test_every_state_change_is_an_event_and_the_chain_verifies(outbox: Outbox) -> None:
    ids = _fill(outbox)
    report = verify_outbox(outbox)
    assert report.ok, report.problems
    assert report.records == 6 and report.upgraded == 0
    conn = sqlite3.connect(outbox.path)
    kinds = [k for (k,) in conn.execute("SELECT kind FROM chain WHERE record_id = ? ORDER BY seq", (ids["sent"],))]
    assert kinds == ["committed", "attempt", "sent"]
    body = json.loads(conn.execute("SELECT body FROM chain WHERE kind = 'sent'").fetchone()[0])
    assert body["request_id"] == "R-1" and body["return_time_ms"] == 1_750_000_000_123
    rejected = json.loads(
        conn.execute("SELECT body FROM chain WHERE kind = 'rejected' AND record_id = ?", (ids["rejected"],)).fetchone()[
            0
        ]
    )
    assert rejected["message"] == "身份证号格式错误"
    all_kinds = {k for (k,) in conn.execute("SELECT kind FROM chain")}
    assert {
        "committed",
        "attempt",
        "sent",
        "rejected",
        "deferred",
        "attempt_undone",
        "resolved",
        "requeued",
        "released",
    } <= all_kinds
    conn.close()
    assert report.events == sum(1 for _ in sqlite3.connect(outbox.path).execute("SELECT 1 FROM chain"))
    head = chain.read_head_file(chain.head_file(outbox.storage.dir))
    assert head is not None and head.seq == report.last_seq


def test_holding_simulated_records_and_hand_over_marks_are_events(outbox: Outbox) -> None:
    from agent.outbox.store import SIMULATED_HELD_REASON

    simulated = outbox.enqueue(record(1), simulated=True)
    failed = outbox.enqueue(record(2))
    assert outbox.hold_simulated() == 1
    outbox.mark_handed_over(failed, "李护士")
    outbox.mark_handed_over(failed, "李护士")  # a second mark changes nothing, so no second event
    report = verify_outbox(outbox)
    assert report.ok, report.problems
    conn = sqlite3.connect(outbox.path)
    held = conn.execute("SELECT body FROM chain WHERE kind = 'held' AND record_id = ?", (simulated,)).fetchall()
    assert [json.loads(b)["reason"] for (b,) in held] == [SIMULATED_HELD_REASON]
    assert (
        conn.execute("SELECT COUNT(*) FROM chain WHERE kind = 'handover' AND record_id = ?", (failed,)).fetchone()[0]
        == 1
    )
    assert "李护士" not in "".join(b for (b,) in conn.execute("SELECT body FROM chain"))  # the name stays sealed
    conn.close()
    _sql(outbox, "UPDATE records SET state = 'pending', held_reason = NULL WHERE id = ?", args=(simulated,))
    assert "state changed outside the agent" in _problem(outbox)


def test_retention_erases_and_purges_with_a_signed_checkpoint(tmp_path: Path, clock: Clock) -> None:
    with Outbox.open(storage(tmp_path, keep_sent_days=1, keep_sent_rows_days=2), clock=clock) as box:
        ids = _fill(box)
        later = box.enqueue(record(20))
        result = box.housekeeping(clock.now + 1.5 * DAY_S, uptime_s=10 * DAY_S)
        assert result["photos_erased"] == 2
        assert verify_outbox(box).ok
        result = box.housekeeping(clock.now + 3 * DAY_S, uptime_s=10 * DAY_S)
        assert result["rows_deleted"] == 2
        report = verify_outbox(box)
        assert report.ok, report.problems
        assert box.get(ids["sent"]) is None and box.get(later) is not None
        # The first record's commit was the oldest event: events before the oldest row still there
        # (record 2's commit) are summed up in the checkpoint now.
        assert report.first_seq == 2 and report.purged_records == 1 and report.purged_events == 1
        assert "checkpoint" in report.summary()
        # And the checkpoint is signed: changing what it says breaks the chain.
        conn = sqlite3.connect(box.path)
        cp = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'chain.checkpoint'").fetchone()[0])
        cp["records"] += 5
        conn.execute("UPDATE meta SET value = ? WHERE key = 'chain.checkpoint'", (json.dumps(cp).encode(),))
        conn.commit()
        conn.close()
        assert "checkpoint's signature does not check" in _problem(box)


def test_a_crash_in_sending_is_requeued_in_the_chain(tmp_path: Path, clock: Clock) -> None:
    with Outbox.open(storage(tmp_path), clock=clock) as box:
        box.enqueue(record(1))
        box.claim(1)
    with Outbox.open(storage(tmp_path), clock=clock) as box:
        assert box.requeue_interrupted() == 1
        assert verify_outbox(box).ok


# -- tampering ---------------------------------------------------------------------------------------


def test_a_state_flipped_with_sqlite3_is_found(outbox: Outbox) -> None:
    ids = _fill(outbox)
    _sql(outbox, f"UPDATE records SET state = 'sent', sent_at = 1 WHERE id = {ids['deferred']}")
    assert _problem(outbox) == (
        f"record {ids['deferred']}: state is 'sent' in the database but 'pending' by its "
        "events: state changed outside the agent"
    )


def test_an_attempt_rewritten_with_sqlite3_is_found(outbox: Outbox) -> None:
    ids = _fill(outbox)
    _sql(outbox, f"UPDATE attempts SET outcome = 'accepted', request_id = 'R-FAKE' WHERE record_id = {ids['rejected']}")
    assert _problem(outbox) == (
        f"record {ids['rejected']}: upload attempt 1 is ('accepted', 'R-FAKE') in the database "
        "but ('rejected', 'R-2') by its events (outcome, requestId): changed outside the agent"
    )


def test_a_state_changed_by_hand_stays_found_after_the_agent_acts_on_it(outbox: Outbox) -> None:
    ids = _fill(outbox)
    _sql(outbox, f"UPDATE records SET state = 'rejected' WHERE id = {ids['deferred']}")
    outbox.resolve(ids["deferred"], request_id="R-X", message="by hand")  # now sent, as its events go on to say
    assert _problem(outbox).endswith(
        f"found record {ids['deferred']} 'pending' by its events, not 'rejected': its "
        "state was changed outside the agent before the agent acted on it"
    )


def test_a_score_edited_with_the_sqlite3_command_line_is_found(outbox: Outbox) -> None:
    ids = _fill(outbox)
    subprocess.run(
        [
            "sqlite3",
            str(outbox.path),
            f"UPDATE records SET meta = json_set(meta, '$.distance', 0.01) WHERE id = {ids['sent']}",
        ],
        check=True,
        timeout=30,
    )
    assert _problem(outbox).startswith(f"record {ids['sent']} altered: its time, meta (face result, score)")


def test_a_deleted_row_is_found(outbox: Outbox) -> None:
    ids = _fill(outbox)
    _sql(
        outbox,
        f"DELETE FROM payloads WHERE record_id = {ids['rejected']}",
        f"DELETE FROM records WHERE id = {ids['rejected']}",
    )
    assert _problem(outbox) == (f"record {ids['rejected']} missing: deleted outside the agent (its events say pending)")


def test_deleted_last_events_are_a_truncated_tail(outbox: Outbox) -> None:
    _fill(outbox)
    _sql(outbox, "DELETE FROM chain WHERE seq > (SELECT MAX(seq) - 2 FROM chain)")
    problem = _problem(outbox)
    assert problem.startswith("tail truncated: events ") and "missing (the signed head is at" in problem
    assert not verify_outbox(outbox, full=False).ok  # the daemon's check at start finds it too


def test_a_deleted_event_in_the_middle_is_missing(outbox: Outbox) -> None:
    _fill(outbox)
    _sql(outbox, "DELETE FROM chain WHERE seq = 4")
    assert _problem(outbox) == "event 4 missing: deleted from the chain outside the agent"


def test_an_event_rewritten_is_found_even_with_its_digests_recomputed(outbox: Outbox) -> None:
    _fill(outbox)
    conn = sqlite3.connect(outbox.path)
    conn.execute("UPDATE chain SET body = replace(body, 'R-1', 'R-9') WHERE kind = 'sent'")
    conn.commit()
    (seq,) = conn.execute("SELECT seq FROM chain WHERE kind = 'sent'").fetchone()
    assert _problem(outbox).startswith(f"event {seq} (sent, record 1) altered")
    # An intruder who knows the scheme recomputes every digest after it: the signed head still differs.
    prev = conn.execute("SELECT digest FROM chain WHERE seq = ?", (seq - 1,)).fetchone()[0]
    for s, rid, kind, at, body in conn.execute(
        "SELECT seq, record_id, kind, at, body FROM chain WHERE seq >= ? ORDER BY seq", (seq,)
    ).fetchall():
        prev = chain.event_digest(prev, s, rid, kind, at, body)
        conn.execute("UPDATE chain SET digest = ? WHERE seq = ?", (prev, s))
    head = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'chain.head'").fetchone()[0])
    head["digest"] = prev.hex()
    conn.execute("UPDATE meta SET value = ? WHERE key = 'chain.head'", (json.dumps(head).encode(),))
    conn.commit()
    conn.close()
    problems = verify_outbox(outbox).problems
    assert problems[0].startswith("the chain head's signature does not check")
    # The agent goes on capturing, but never signs the forged head: the break stays visible.
    outbox.enqueue(record(30))
    assert verify_outbox(outbox).problems[0].startswith("the chain head's signature does not check")


def test_two_swapped_payloads_are_found(outbox: Outbox) -> None:
    ids = _fill(outbox)
    a, b = ids["sent"], ids["deferred"]
    _sql(
        outbox,
        f"UPDATE payloads SET record_id = -1 WHERE record_id = {a}",
        f"UPDATE payloads SET record_id = {a} WHERE record_id = {b}",
        f"UPDATE payloads SET record_id = {b} WHERE record_id = -1",
    )
    assert _problem(outbox) == f"record {a} altered: its sealed data is not the one committed"


def test_swapped_photos_alone_are_found(outbox: Outbox) -> None:
    ids = _fill(outbox)
    a, b = ids["sent"], ids["deferred"]
    conn = sqlite3.connect(outbox.path)
    (pa,) = conn.execute("SELECT photos FROM payloads WHERE record_id = ?", (a,)).fetchone()
    (pb,) = conn.execute("SELECT photos FROM payloads WHERE record_id = ?", (b,)).fetchone()
    conn.execute("UPDATE payloads SET photos = ? WHERE record_id = ?", (pb, a))
    conn.execute("UPDATE payloads SET photos = ? WHERE record_id = ?", (pa, b))
    conn.commit()
    conn.close()
    assert _problem(outbox) == f"record {a} altered: its sealed photos is not the one committed"


def test_a_row_inserted_by_hand_is_found(outbox: Outbox) -> None:
    _fill(outbox)
    _sql(outbox, "INSERT INTO records (uid, created_at, state, next_attempt_at) VALUES ('x', 1, 'pending', 1)")
    assert "was not put there by the agent: it has no commit event" in _problem(outbox)


def test_an_old_copy_of_the_file_put_back_is_found(tmp_path: Path, clock: Clock) -> None:
    settings = storage(tmp_path)
    with Outbox.open(settings, clock=clock) as box:
        box.enqueue(record(1))
        box.enqueue(record(2))
    old = tmp_path / "old-copy.db"
    shutil.copy(settings.dir / "outbox.db", old)  # closed cleanly: the WAL is folded in
    with Outbox.open(settings, clock=clock) as box:
        (claim,) = box.claim(1)
        box.finish(claim, "accepted", message="成功", request_id="R-1")
    for side in ("-wal", "-shm"):
        (settings.dir / f"outbox.db{side}").unlink(missing_ok=True)
    shutil.copy(old, settings.dir / "outbox.db")
    with Outbox.open(settings, clock=clock) as box:
        problem = _problem(box)
    assert problem.startswith("the outbox is behind its head file (2 events in the database, 4 in outbox.head)")


def test_a_deleted_chain_head_is_found_and_capture_goes_on(outbox: Outbox) -> None:
    _fill(outbox)
    _sql(outbox, "DELETE FROM meta WHERE key = 'chain.head'")
    assert _problem(outbox) == "the signed chain head is missing from the database: removed outside the agent"
    assert outbox.enqueue(record(60)) > 0
    assert _problem(outbox).startswith("the chain head's signature does not check")


def test_a_deleted_head_file_is_found(outbox: Outbox) -> None:
    _fill(outbox)
    chain.head_file(outbox.storage.dir).unlink()
    assert _problem(outbox).startswith("the head file outbox.head is missing")


# -- the command, the daemon's check, status and doctor -------------------------------------------------


def _config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "fvagent.toml", state_dir=tmp_path / "state")


def test_audit_verify_command_exit_codes(tmp_path: Path, clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    with Outbox.open(storage(tmp_path), clock=clock) as box:
        ids = _fill(box)
    assert main(["audit", "verify", "--config", str(config)]) == 0
    assert capsys.readouterr().out.startswith("OK: 6 record(s), ")
    _sql(box, f"UPDATE records SET attempts = 0 WHERE id = {ids['sent']}")
    assert main(["audit", "verify", "--config", str(config)]) == 1
    assert capsys.readouterr().out.startswith(f"BROKEN: record {ids['sent']}: attempts is 0 in the database but 1")


def test_the_daemon_check_at_start_alerts_and_keeps_capturing(tmp_path: Path, clock: Clock) -> None:
    from agent.service.wiring import audit_at_start

    settings = storage(tmp_path)
    with Outbox.open(settings, clock=clock) as box:
        _fill(box)
        assert audit_at_start(box) is None
        assert signing.key_file(settings.dir).stat().st_mode & 0o777 == 0o600
        _sql(box, "DELETE FROM chain WHERE seq = (SELECT MAX(seq) FROM chain)")
        alert = audit_at_start(box)
        assert alert is not None and alert.startswith("audit: tail truncated")
        assert box.enqueue(record(40)) > 0  # capture goes on


def test_status_and_doctor_show_old_unsent_records_and_damaged_copies(tmp_path: Path, clock: Clock) -> None:
    from agent.config import load_config
    from agent.service.doctor import _check_audit
    from agent.status import collect_status

    config = load_config(_config(tmp_path), validate_drivers=False)
    with Outbox.open(config.storage, clock=clock) as box:
        ids = _fill(box)
        ids["held"] = box.enqueue(record(50), held_reason="waiting for a WLT decoder")  # _fill's was released
    now = clock.now + 31 * DAY_S
    alerts = collect_status(config, now=now).alerts
    assert any("a rejected or held record is 31 days old" in a for a in alerts), alerts
    assert not any("days old" in a for a in collect_status(config, now=clock.now + 29 * DAY_S).alerts)
    (config.storage.dir / "outbox.db.damaged-20260101T000000Z").write_bytes(b"x")
    (config.storage.dir / "outbox.db.damaged-20260101T000000Z-wal").write_bytes(b"x")
    # status carries a damage incident until `outbox ack-damage` (tests/test_outbox_recovery.py);
    # the copies left on the terminal are counted by doctor
    assert not any("damaged outbox copy" in a for a in collect_status(config, now=now).alerts)
    checks: list[Any] = []
    _check_audit(config, checks.append)
    names = {c.name: c for c in checks}
    assert names["audit chain"].level == "OK" and "damaged outbox copy" in names["damaged copies"].detail
    _sql(box, f"UPDATE records SET state = 'sent' WHERE id = {ids['held']}")
    checks.clear()
    _check_audit(config, checks.append)
    # The bounded check covers the links and the head; a changed row needs the full walk.
    assert {c.name: c for c in checks}["audit chain"].level == "OK"
    _sql(box, "DELETE FROM chain WHERE seq = (SELECT MAX(seq) FROM chain)")
    checks.clear()
    _check_audit(config, checks.append)
    assert {c.name: c for c in checks}["audit chain"].level == "FAIL"


# -- exports -----------------------------------------------------------------------------------------


def test_export_is_masked_signed_and_verifies_with_the_public_key_only(
    tmp_path: Path, clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    with Outbox.open(storage(tmp_path), clock=lambda: 1_750_000_000.0 + clock()) as box:
        _fill(box)
    signing.ensure(tmp_path / "state")
    out = tmp_path / "audit.jsonl"
    assert main(["audit", "export", "--config", str(config), "--since", "2020-01-01", str(out)]) == 0
    assert main(["audit", "pubkey", "--config", str(config)]) == 0
    pubkey = capsys.readouterr().out.strip().splitlines()[-1]
    assert len(pubkey) == 130 and pubkey.startswith("04")
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert lines[0]["type"] == "header" and lines[0]["chainCheck"].startswith("OK")
    assert [d["type"] for d in lines[1:-1]] == ["record"] * 6 and lines[-1]["type"] == "signature"
    text = out.read_text(encoding="utf-8")
    assert record(0)["cardNo"] not in text and "韦测试" not in text and "headImg" not in text
    assert lines[1]["record"]["cardNo"].startswith(record(0)["cardNo"][:4] + "*")
    assert [e["kind"] for e in lines[1]["events"]] == ["committed", "attempt", "sent"]
    # On another machine: only the file and the public key.
    assert verify_export(out, pubkey)["records"] == 6
    assert main(["audit", "verify-export", str(out), "--pubkey", pubkey]) == 0
    assert capsys.readouterr().out.startswith("OK: 6 record(s)")

    altered = tmp_path / "altered.jsonl"
    altered.write_text(text.replace('"state":"sent"', '"state":"rejected"', 1), encoding="utf-8")
    with pytest.raises(AuditError, match="do not match the signed SM3 digest"):
        verify_export(altered, pubkey)
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(text.splitlines(keepends=True)[:-2]), encoding="utf-8")
    with pytest.raises(AuditError, match="no signature line"):
        verify_export(cut, pubkey)
    other = signing.ensure(tmp_path / "other").public_key
    with pytest.raises(AuditError, match="signed by another key"):
        verify_export(out, other)
    # Re-signed with another key but presented as this terminal's: the signature itself fails.
    sig = lines[-1]
    sig["publicKey"] = pubkey
    sig["signature"] = signing.ensure(tmp_path / "other").sign(b"anything")
    forged = tmp_path / "forged.jsonl"
    forged.write_text("".join(text.splitlines(keepends=True)[:-1]) + json.dumps(sig) + "\n", encoding="utf-8")
    assert main(["audit", "verify-export", str(forged), "--pubkey", pubkey]) == 1
    assert "SM2 signature does not check" in capsys.readouterr().err
    # An event's body changed and the SM3 line digest recomputed by the forger: still caught by SM2.
    assert not signing.verify(pubkey, b"x", lines[-1]["signature"])


def test_full_export_needs_root_or_the_full_data_token(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text + '\n[local_api]\ntoken = "t-operator-0123456789"\nfull_data_token = "t-full-0123456789abcdef"\n',
        encoding="utf-8",
    )
    with Outbox.open(storage(tmp_path), clock=lambda: 1_750_000_000.0 + clock()) as box:
        box.enqueue(record(1))
    signing.ensure(tmp_path / "state")
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert (
        main(["audit", "export", "--config", str(config), "--since", "2020-01-01", "--full", str(tmp_path / "a.jsonl")])
        == 1
    )
    assert "needs root or the full-data token" in capsys.readouterr().err
    assert not (tmp_path / "a.jsonl").exists()
    monkeypatch.setenv("FVAGENT_FULL_DATA_TOKEN", "t-full-0123456789abcdef")
    assert (
        main(["audit", "export", "--config", str(config), "--since", "2020-01-01", "--full", str(tmp_path / "a.jsonl")])
        == 0
    )
    line = json.loads((tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines()[1])
    assert line["record"]["cardNo"] == record(1)["cardNo"] and line["record"]["headImg"]
    assert (tmp_path / "a.jsonl").stat().st_mode & 0o777 == 0o600


def test_sm2_signatures_check_with_openssl(tmp_path: Path) -> None:
    """gmssl's SM2 against an independent implementation: OpenSSL's command line."""
    openssl = shutil.which("openssl")
    assert openssl is not None, "the openssl command (Debian: openssl) is the independent SM2 oracle"
    key = signing.ensure(tmp_path)
    message = b"fvagent-audit-export/1\n" + b"ab" * 32
    signature = key.sign(message)
    r, s = int(signature[:64], 16), int(signature[64:], 16)

    def der_int(v: int) -> bytes:
        b = v.to_bytes(32, "big").lstrip(b"\x00")
        b = b"\x00" + b if b[0] & 0x80 else b
        return b"\x02" + bytes([len(b)]) + b

    body = der_int(r) + der_int(s)
    (tmp_path / "sig.der").write_bytes(b"\x30" + bytes([len(body)]) + body)
    (tmp_path / "msg").write_bytes(message)
    point = bytes.fromhex(key.public_key)
    spki = bytes.fromhex("3059301306072a8648ce3d020106082a811ccf5501822d034200") + point
    (tmp_path / "pub.der").write_bytes(spki)
    done = subprocess.run(
        [
            openssl,
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            str(tmp_path / "pub.der"),
            "-keyform",
            "DER",
            "-rawin",
            "-digest",
            "sm3",
            "-in",
            str(tmp_path / "msg"),
            "-sigfile",
            str(tmp_path / "sig.der"),
            "-pkeyopt",
            "distid:1234567812345678",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Signature Verified Successfully" in done.stdout


# -- the upgrade of an outbox the previous release wrote ----------------------------------------------


def test_an_outbox_of_the_previous_release_is_chained_in_place(tmp_path: Path) -> None:
    state = tmp_path / "state"
    shutil.copytree(FIXTURE, state)
    (state / "outbox.key").chmod(0o600)
    conn = sqlite3.connect(state / "outbox.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    before = conn.execute("SELECT id, state, request_id, attempts FROM records ORDER BY id").fetchall()
    conn.close()
    with Outbox.open(storage(tmp_path)) as box:
        assert schema.version(box.db.conn) == schema.CURRENT
        report = verify_outbox(box)
        assert report.ok, report.problems
        assert report.records == 4 and report.upgraded == 4
        assert "4 of them chained from upgrade" in report.summary()
        rows = box.db.conn.execute("SELECT id, state, request_id, attempts FROM records ORDER BY id").fetchall()
        assert rows == before
        notes = [
            json.loads(b)["note"] for (b,) in box.db.conn.execute("SELECT body FROM chain WHERE kind = 'upgraded'")
        ]
        assert notes == [chain.UPGRADE_NOTE] * 4
        assert box.payload(1)["machineCode"] == "TS0001"
        # Life goes on after the upgrade: the pending record is sent, the chain still verifies.
        (claim,) = box.claim(1)
        box.finish(claim, "accepted", message="成功", request_id="R-after")
        assert verify_outbox(box).ok
    with Outbox.open(storage(tmp_path)) as box:  # opened again: nothing chained twice
        assert verify_outbox(box).upgraded == 4
        assert box.db.conn.execute("SELECT COUNT(*) FROM chain WHERE kind = 'upgraded'").fetchone()[0] == 4
    # A row slipped in afterwards is never taken for an upgraded one.
    conn = sqlite3.connect(state / "outbox.db")
    conn.execute("INSERT INTO records (uid, created_at, state, next_attempt_at) VALUES ('x', 1, 'sent', 1)")
    conn.commit()
    conn.close()
    with Outbox.open(storage(tmp_path)) as box:
        assert "was not put there by the agent: it has no commit event" in _problem(box)


# -- key rotation ------------------------------------------------------------------------------------


def test_a_hand_over_mark_made_before_a_key_rotation_still_opens(tmp_path: Path, clock: Clock) -> None:
    settings = storage(tmp_path)
    with Outbox.open(settings, clock=clock) as box:
        record_id = box.enqueue(record(1))
        box.mark_handed_over(record_id, "值班护士")
    assert main(["outbox", "rotate-key", "--config", str(_config(tmp_path))]) == 0
    with Outbox.open(settings, clock=clock) as box:
        assert box.handovers([record_id])[record_id].operator == "值班护士"
        assert box.mark_handed_over(record_id, "别人").operator == "值班护士"  # marked once: the first mark stays


def test_rotate_key_new_records_under_the_new_key_old_ones_readable_until_purged(
    tmp_path: Path, clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.outbox.keys import key_path
    from agent.outbox.rotation import load_retired, retired_path

    config = _config(tmp_path)
    settings = storage(tmp_path, keep_sent_days=1, keep_sent_rows_days=2)
    with Outbox.open(settings, clock=clock) as box:
        old_sent = box.enqueue(record(1))
        old_pending = box.enqueue(record(2))
        (claim,) = box.claim(1)
        box.finish(claim, "accepted", message="成功", request_id="R-1")
    old_key = key_path(settings).read_text()
    assert main(["outbox", "rotate-key", "--config", str(config)]) == 0
    assert "2 record(s) stay under" in capsys.readouterr().out
    assert key_path(settings).read_text() != old_key
    assert retired_path(settings).stat().st_mode & 0o777 == 0o600
    with Outbox.open(settings, clock=clock) as box:
        assert box.payload(old_pending) == record(2)
        assert [r.id for r in box.find(record(2)["cardNo"])] == [old_pending]
        new = box.enqueue(record(3))
        assert box.db.conn.execute("SELECT key_id FROM records WHERE id = ?", (new,)).fetchone() == (None,)
        assert box.payload(new) == record(3) and [r.id for r in box.find(record(3)["cardNo"])] == [new]
        report = verify_outbox(box)
        assert report.ok, report.problems
        # The old key opens nothing new: the new record is sealed under the new key only.
        old = DataKey(bytes.fromhex(old_key.strip()), "old")
        uid, data = box.db.conn.execute(
            "SELECT r.uid, p.data FROM records r JOIN payloads p ON p.record_id = r.id WHERE r.id = ?", (new,)
        ).fetchone()
        with pytest.raises(CryptoError):
            old.open(data, f"fvagent-outbox:{uid}:data".encode("ascii"))
        box.housekeeping(clock.now + 3 * DAY_S, uptime_s=10 * DAY_S)
        assert box.get(old_sent) is None and verify_outbox(box).ok
    # The next rotation keeps the first retired key only while a record still uses it.
    with Outbox.open(settings, clock=clock) as box:
        (claim,) = box.claim(1)
        box.finish(claim, "accepted", message="成功", request_id="R-2")
        box.housekeeping(clock.now + 3 * DAY_S, uptime_s=10 * DAY_S)
        assert box.get(old_pending) is None
    assert main(["outbox", "rotate-key", "--config", str(config)]) == 0
    retired = load_retired(settings)
    assert len(retired) == 1  # the first key is gone with its last record; the second is kept for record 3
    with Outbox.open(settings, clock=clock) as box:
        assert box.payload(new) == record(3) and verify_outbox(box).ok


def test_rotate_key_refuses_while_the_outbox_is_in_use(
    tmp_path: Path, clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    with Outbox.open(storage(tmp_path), clock=clock) as box:
        box.enqueue(record(1))
        assert main(["outbox", "rotate-key", "--config", str(config)]) == 1
        assert "stop the service first" in capsys.readouterr().err
        assert box.payload(1) == record(1)


def test_an_interrupted_rotation_is_finished_by_running_it_again(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.outbox import rotation
    from agent.outbox.keys import key_path
    from core.errors import KeyFileError

    settings = storage(tmp_path)
    with Outbox.open(settings, clock=clock) as box:
        box.enqueue(record(1))
    real_replace = rotation.os.replace

    def crash_on_the_key(src: Any, dst: Any) -> None:
        if Path(dst) == key_path(settings):
            raise KeyboardInterrupt("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(rotation.os, "replace", crash_on_the_key)
    with pytest.raises(KeyboardInterrupt):
        rotation.rotate_key(settings)
    monkeypatch.setattr(rotation.os, "replace", real_replace)
    with pytest.raises(KeyFileError):  # the database moved to the new key, the key file did not
        Outbox.open(settings, clock=clock).close()
    rotation.rotate_key(settings)
    with Outbox.open(settings, clock=clock) as box:
        assert box.payload(1) == record(1) and verify_outbox(box).ok


def test_the_uploader_s_real_path_leaves_a_chain_that_verifies(tmp_path: Path) -> None:
    """Uploads through PlatformClient: accepted, rejected and retryable answers, each with the
    platform's requestId and returnTime in the chain."""
    import httpx

    from agent.config import load_config
    from agent.delivery import Uploader
    from agent.uplink.client import PlatformClient
    from tests.test_uploader import FakePlatform  # the same platform double

    platform = FakePlatform()

    def rule(request: httpx.Request, body: dict[str, Any]) -> httpx.Response | None:
        if body.get("cardNo") == record(1)["cardNo"]:
            return platform.envelope(request, code=500, exception_code="A2301", msg="参数错误: cardNo")
        if (
            body.get("cardNo") == record(2)["cardNo"]
            and [b.get("cardNo") for b in platform.uploads()].count(record(2)["cardNo"]) == 1
        ):  # its first attempt fails, its second goes through
            return httpx.Response(503)
        return None

    platform.rule = rule

    settings = load_config(
        write_config(tmp_path / "fvagent.toml", state_dir=tmp_path / "state", url="http://platform.test/api"),
        validate_drivers=False,
    )
    with Outbox.open(settings.storage) as box:
        for n in range(4):
            box.enqueue(record(n))
        up = Uploader(
            box,
            lambda p: PlatformClient(p, transport=httpx.MockTransport(platform)),
            settings.platform,
            settings.uploader,
            settings.device,
        )
        try:
            # the deferred record is due again after its backoff (0.05-0.5 s in this config)
            wait_for(lambda: up.drain_once() >= 0 and not box.stats()["pending"], 20, "every record answered")
        finally:
            up.close()
        assert box.stats()["sent"] == 3 and box.stats()["rejected"] == 1
        report = verify_outbox(box)
        assert report.ok, report.problems
        sent = [json.loads(b) for (b,) in box.db.conn.execute("SELECT body FROM chain WHERE kind = 'sent'")]
        assert all(s["request_id"] and s["return_time_ms"] for s in sent)
        kinds = {k for (k,) in box.db.conn.execute("SELECT kind FROM chain")}
        assert {"deferred", "rejected", "sent"} <= kinds


def test_a_torn_slot_of_the_head_file_leaves_the_other(outbox: Outbox) -> None:
    _fill(outbox)
    path = chain.head_file(outbox.storage.dir)
    newest = chain.read_head_file(path, outbox.keys.chain_key)
    assert newest is not None and newest.seq > 1
    with open(path, "r+b") as fh:  # a power cut in the middle of writing the newest slot
        fh.seek(0 if newest.seq % 2 == 0 else 4096)
        fh.write(b"\x00" * 100)
    older = chain.read_head_file(path, outbox.keys.chain_key)
    assert older is not None and older.seq == newest.seq - 1
    assert verify_outbox(outbox).ok  # a head file that lags is allowed
