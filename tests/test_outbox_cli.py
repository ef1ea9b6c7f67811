"""`fvagent queue ...` over a real outbox file, in-process and as a real process beside a writer."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import load_config
from agent.outbox import Outbox
from tests.test_outbox_support import card_no, record, write_config


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Outbox]:
    cfg = write_config(tmp_path / "fvagent.toml", state_dir=tmp_path / "state")
    box = Outbox.open(load_config(cfg, validate_drivers=False).storage)
    yield cfg, box
    box.close()


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _fill(box: Outbox) -> list[int]:
    ids = [box.enqueue(record(n), meta={"source": "reader"}) for n in range(4)]
    box.enqueue(record(9), held_reason="card photo waits for a WLT decoder", simulated=True)
    claims = box.claim(3)
    box.finish(claims[0], "accepted", message="ok", request_id="req-accepted")
    box.finish(
        claims[1],
        "rejected",
        message="A2301 parameter error: birthday",
        request_id="req-rejected",
        exception_code="A2301",
        http_status=200,
    )
    return ids


def test_stats_json_counts_every_state(setup: tuple[Path, Outbox], capsys: pytest.CaptureFixture[str]) -> None:
    cfg, box = setup
    _fill(box)
    code, out, _ = _run(capsys, "queue", "stats", "--json", "-c", str(cfg))
    doc = json.loads(out)
    assert code == 0
    assert {k: doc[k] for k in ("pending", "sending", "sent", "rejected", "held", "total")} == {
        "pending": 1,
        "sending": 1,
        "sent": 1,
        "rejected": 1,
        "held": 1,
        "total": 5,
    }
    code, out, _ = _run(capsys, "queue", "stats", "-c", str(cfg))
    assert code == 0 and "rejected  1" in out and "total     5" in out


def test_ls_and_show_never_print_personal_data(setup: tuple[Path, Outbox], capsys: pytest.CaptureFixture[str]) -> None:
    cfg, box = setup
    ids = _fill(box)
    code, out, _ = _run(capsys, "queue", "ls", "--state", "rejected", "-c", str(cfg))
    assert code == 0 and f"{ids[1]:>7}  rejected" in out and "A2301" in out and "pending" not in out
    code, out, _ = _run(capsys, "queue", "ls", "-c", str(cfg))
    assert "[simulated]" in out and out.count("\n") == 6
    code, out, _ = _run(capsys, "queue", "show", str(ids[1]), "-c", str(cfg))
    assert code == 0
    assert card_no(1) not in out and "韦测试" not in out and record(1)["address"] not in out
    assert card_no(1)[:4] + "*" in out and "req-rejected" in out and "A2301" in out
    assert record(1)["headImg"][:30] not in out
    code, out, _ = _run(capsys, "queue", "show", str(ids[1]), "--json", "-c", str(cfg))
    doc = json.loads(out)
    assert doc["attempts_log"][0]["request_id"] == "req-rejected" and doc["record"]["realName"] == "韦**"
    code, _, err = _run(capsys, "queue", "show", "999", "-c", str(cfg))
    assert code == 1 and "no record with id 999" in err


def test_retry_and_export(setup: tuple[Path, Outbox], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg, box = setup
    ids = _fill(box)
    out_file = tmp_path / "rejected.jsonl"
    code, out, _ = _run(capsys, "queue", "export", "--rejected", str(out_file), "-c", str(cfg))
    assert code == 0 and "1 rejected record(s)" in out
    assert json.loads(out_file.read_text(encoding="utf-8"))["record"] == record(1)
    code, _, err = _run(capsys, "queue", "export", "--rejected", str(out_file), "-c", str(cfg))
    assert code == 1 and "exists" in err
    code, _, err = _run(capsys, "queue", "retry", str(ids[0]), "-c", str(cfg))
    assert code == 1 and "already accepted" in err
    code, out, _ = _run(capsys, "queue", "retry", "--rejected", "-c", str(cfg))
    assert code == 0 and "1 rejected record(s) queued again" in out
    assert box.get(ids[1]).state == "pending"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("state", "why"), [("sent", "already accepted"), ("held", "it is held"), ("sending", "being sent right now")]
)
def test_retry_of_one_record(
    setup: tuple[Path, Outbox], capsys: pytest.CaptureFixture[str], state: str, why: str
) -> None:
    cfg, box = setup
    ids = _fill(box)  # ids[0] sent, ids[1] rejected, ids[2] sending, ids[3] pending; then one held
    held = box.list("held")[0].id
    target = {"sent": ids[0], "held": held, "sending": ids[2]}[state]
    code, _, err = _run(capsys, "queue", "retry", str(target), "-c", str(cfg))
    assert code == 1 and why in err and f"record {target}" in err
    assert box.get(target).state == state  # type: ignore[union-attr]
    code, out, _ = _run(capsys, "queue", "retry", str(ids[1]), "-c", str(cfg))
    assert code == 0 and f"record {ids[1]} queued again" in out
    assert box.get(ids[1]).state == "pending" and box.stats()["rejected"] == 0  # type: ignore[union-attr]
    with pytest.raises(SystemExit) as usage:  # neither an id nor --rejected: a usage error, nothing changed
        main(["queue", "retry", "-c", str(cfg)])
    assert usage.value.code == 2 and "--rejected" in capsys.readouterr().err


def test_a_rejected_record_is_exported_fixed_and_resent_with_upload_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hospital's way back for a rejected record: export, fix the field, `fvagent upload-file`."""
    from agent.mock_platform import MockPlatform, MockPlatformConfig

    config = MockPlatformConfig(
        org_app_id="APP0001", org_app_secret="0123456789abcdef", ticket="ESB-TICKET-1", require_registration=False
    )
    with MockPlatform(config, tmp_path / "mock.db") as mock:
        cfg = write_config(tmp_path / "fvagent.toml", url=mock.url, state_dir=tmp_path / "state")
        with Outbox.open(load_config(cfg, validate_drivers=False).storage) as box:
            box.enqueue(record(1) | {"police": ""})
            box.finish(
                box.claim(1)[0],
                "rejected",
                message="A2301 parameter error: police 不能为空",
                request_id="req-1",
                exception_code="A2301",
            )
        export = tmp_path / "rejected.jsonl"
        assert _run(capsys, "queue", "export", "--rejected", str(export), "-c", str(cfg))[0] == 0

        # Handing upload-file the export itself, or one of its lines, says what to take out of it.
        with export.open("a", encoding="utf-8") as fh:
            fh.write(export.read_text(encoding="utf-8"))
        code, _, err = _run(capsys, "upload-file", "-c", str(cfg), str(export))
        assert code == 1 and "more than one JSON value" in err and ".record" in err
        line = tmp_path / "line.json"
        line.write_text(export.read_text(encoding="utf-8").splitlines()[0], encoding="utf-8")
        code, _, err = _run(capsys, "upload-file", "-c", str(cfg), str(line))
        assert code == 1 and "queue export" in err and ".record" in err
        assert mock.requests("/first") == []

        fixed = json.loads(line.read_text(encoding="utf-8"))["record"] | {"police": "南宁市公安局青秀分局"}
        rec = tmp_path / "fixed.json"
        rec.write_text(json.dumps(fixed, ensure_ascii=False), encoding="utf-8")
        code, out, _ = _run(capsys, "upload-file", "-c", str(cfg), str(rec))
        assert code == 0 and "outcome:    accepted" in out
        [stored] = mock.records(include_images=True)
        assert stored["payload"] == record(1)


def test_whole_path_a_record_the_platform_rejects_is_fixed_resent_and_no_longer_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rejected by the platform -> export -> fix -> upload-file accepted: the outbox row is sent,
    status stops alerting, and `retry --rejected` sends nothing (the uncorrected record stays home)."""
    from agent.delivery import Uploader
    from agent.mock_platform import MockPlatform, MockPlatformConfig
    from agent.uplink.client import PlatformClient

    config = MockPlatformConfig(
        org_app_id="APP0001", org_app_secret="0123456789abcdef", ticket="ESB-TICKET-1", require_registration=False
    )
    with MockPlatform(config, tmp_path / "mock.db") as mock:
        cfg = write_config(tmp_path / "fvagent.toml", url=mock.url, state_dir=tmp_path / "state")
        settings = load_config(cfg, validate_drivers=False)
        with Outbox.open(settings.storage) as box:
            bad = box.enqueue(record(1) | {"birthday": "1991-01-01"})  # a typo: not the date in cardNo
            good = box.enqueue(record(2))
            uploader = Uploader(box, PlatformClient, settings.platform, settings.uploader, settings.device)
            try:
                assert uploader.drain_once() == 2
            finally:
                uploader.close()
            assert box.get(bad).state == "rejected" and box.get(good).state == "sent"  # type: ignore[union-attr]
            assert "birthday" in (box.get(bad).last_error or "")  # type: ignore[union-attr]
        code, out, _ = _run(capsys, "status", "-c", str(cfg))
        assert "1 record(s) rejected by the platform" in out

        export = tmp_path / "rejected.jsonl"
        assert _run(capsys, "queue", "export", "--rejected", str(export), "-c", str(cfg))[0] == 0
        [line] = [json.loads(text) for text in export.read_text(encoding="utf-8").splitlines()]
        assert line["id"] == bad
        fixed = tmp_path / "fixed.json"
        fixed.write_text(
            json.dumps(line["record"] | {"birthday": record(1)["birthday"]}, ensure_ascii=False), encoding="utf-8"
        )
        code, out, err = _run(capsys, "upload-file", "-c", str(cfg), str(fixed))
        assert code == 0 and "outcome:    accepted" in out, err
        request_id = out.split("requestId:  ")[1].split()[0]
        assert f"rejected record(s) {bad} marked sent" in out and card_no(1) not in out + err

        with Outbox.open(settings.storage) as box:
            row = box.get(bad)
            assert row is not None and row.state == "sent" and row.request_id == request_id
            assert row.last_error is None and row.last_outcome == "accepted"
            last = box.attempts(bad)[-1]
            assert (
                last.outcome == "accepted" and last.request_id == request_id and "upload-file" in (last.message or "")
            )
        code, out, _ = _run(capsys, "status", "-c", str(cfg))
        assert "rejected by the platform" not in out and "0 rejected" in out
        code, out, _ = _run(capsys, "queue", "retry", "--rejected", "-c", str(cfg))
        assert code == 0 and "0 rejected record(s) queued again" in out
        with Outbox.open(settings.storage) as box:
            uploader = Uploader(box, PlatformClient, settings.platform, settings.uploader, settings.device)
            try:
                assert uploader.drain_once() == 0
            finally:
                uploader.close()
        uploads = [r for r in mock.records() if r["payload"]["cardNo"] == card_no(1)]
        assert len(uploads) == 1 and uploads[0]["payload"]["birthday"] == record(1)["birthday"]


def test_resolve_marks_a_rejected_record_sent_and_prints_it_masked(
    setup: tuple[Path, Outbox], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, box = setup
    ids = _fill(box)  # ids[1] is rejected
    code, out, err = _run(capsys, "queue", "resolve", str(ids[1]), "--request-id", "req-fixed", "-c", str(cfg))
    assert code == 0, err
    assert f"record {ids[1]} marked sent (requestId req-fixed)" in out
    assert card_no(1)[:4] + "**********" + card_no(1)[-4:] in out and "韦**" in out
    assert card_no(1) not in out and "韦测试" not in out
    row = box.get(ids[1])
    assert row is not None and row.state == "sent" and row.request_id == "req-fixed"
    assert box.attempts(ids[1])[-1].message == "resent corrected by hand; marked sent with `fvagent queue resolve`"
    code, _, err = _run(capsys, "queue", "resolve", str(ids[1]), "--request-id", "req-again", "-c", str(cfg))
    assert code == 1 and "already accepted" in err and box.get(ids[1]).request_id == "req-fixed"  # type: ignore[union-attr]
    with pytest.raises(SystemExit) as usage:  # the request id is required: nothing changed without it
        main(["queue", "resolve", str(ids[1]), "-c", str(cfg)])
    assert usage.value.code == 2 and "--request-id" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("state", "why"),
    [
        ("sent", "already accepted"),
        ("held", "it is held"),
        ("sending", "being sent right now"),
        ("pending", "queued to be sent"),
    ],
)
def test_resolve_refuses_every_record_that_is_not_rejected(
    setup: tuple[Path, Outbox], capsys: pytest.CaptureFixture[str], state: str, why: str
) -> None:
    cfg, box = setup
    ids = _fill(box)  # ids[0] sent, ids[1] rejected, ids[2] sending, ids[3] pending; then one held
    target = {"sent": ids[0], "held": box.list("held")[0].id, "sending": ids[2], "pending": ids[3]}[state]
    code, _, err = _run(capsys, "queue", "resolve", str(target), "--request-id", "req-fixed", "-c", str(cfg))
    assert code == 1 and why in err and f"record {target} cannot be marked sent" in err
    assert box.get(target).state == state and box.get(target).request_id != "req-fixed"  # type: ignore[union-attr]
    code, _, err = _run(capsys, "queue", "resolve", "999", "--request-id", "req-fixed", "-c", str(cfg))
    assert code == 1 and "no record with id 999" in err


def test_export_with_nothing_rejected_creates_no_file(
    setup: tuple[Path, Outbox], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg, box = setup
    box.enqueue(record(1))
    out_file = tmp_path / "rejected.jsonl"
    code, out, err = _run(capsys, "queue", "export", "--rejected", str(out_file), "-c", str(cfg))
    assert code == 0 and "no rejected records" in out and err == ""
    assert not out_file.exists()
    box.finish(box.claim(1)[0], "rejected", message="A2301 parameter error", request_id="req-1")
    code, out, _ = _run(capsys, "queue", "export", "--rejected", str(out_file), "-c", str(cfg))
    assert code == 0 and "1 rejected record(s) written" in out and out_file.exists()


def test_commands_never_create_an_outbox(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path / "fvagent.toml", state_dir=tmp_path / "nothing-here")
    code, _, err = _run(capsys, "queue", "stats", "-c", str(cfg))
    assert code == 1 and "no outbox" in err and not (tmp_path / "nothing-here").exists()


def test_cli_process_works_while_another_process_writes(setup: tuple[Path, Outbox]) -> None:
    cfg, box = setup
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:  # the daemon: enqueues and claims continuously
        n = 0
        while not stop.is_set():
            written.append(box.enqueue(record(n)))
            if n % 3 == 0:
                for claim in box.claim(2):
                    box.finish(claim, "accepted", message="ok", request_id=f"r{claim.id}")
            n += 1

    rejected = box.enqueue(record(99))
    box.finish(box.claim(1)[0], "rejected", message="A2301 parameter error", request_id="req-1")
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while len(written) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        totals = []
        for argv in (
            ["stats", "--json"],
            ["resolve", str(rejected), "--request-id", "req-fixed"],
            ["retry", "--rejected"],
            ["stats", "--json"],
        ):
            proc = subprocess.run(
                [sys.executable, "-m", "agent", "queue", *argv, "-c", str(cfg)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode == 0, proc.stderr
            if argv[0] == "stats":
                totals.append(json.loads(proc.stdout)["total"])
    finally:
        stop.set()
        thread.join(10)
    assert totals[0] >= 5 and totals[1] > totals[0]  # it saw the writer's progress
    assert box.get(rejected).state == "sent" and box.get(rejected).request_id == "req-fixed"  # type: ignore[union-attr]
    assert box.integrity_check() == ["ok"]
