"""The follow-up list and hand-over marks over a real outbox file: the store, the CLI, the /ui endpoints.

Synthetic identities only. The page's view of the same list is in tests/test_operator_page_states.py.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from agent.cli import main
from agent.outbox import Outbox, schema
from core.clock import CHINA_TZ
from core.errors import OutboxError
from tests.test_localapi import API_TOKEN, Agent, make_settings, verification_body
from tests.test_outbox_support import card_no, record, storage, write_config


def _face(n: int, result: int, score: float) -> dict[str, object]:
    return {**record(n), "faceResult": result, "faceScore": score}


def test_a_hand_over_mark_is_kept_once_sealed_and_never_changes_the_record(tmp_path: Path) -> None:
    clock = [1_780_000_000.0]
    with Outbox.open(storage(tmp_path), clock=lambda: clock[0]) as box:
        rid = box.enqueue(_face(1, 0, 0.31), meta={"source": "reader", "reason": "no match"})
        before = (box.get(rid), box.payload(rid))
        mark = box.mark_handed_over(rid, "黄护士")
        assert (mark.record_id, mark.operator, mark.at) == (rid, "黄护士", clock[0])
        clock[0] += 60
        again = box.mark_handed_over(rid, "另一人")  # marked once: the first mark stands
        assert again == mark
        assert box.handovers([rid, 999]) == {rid: mark}
        assert (box.get(rid), box.payload(rid)) == before  # the record itself is untouched
        with pytest.raises(OutboxError, match="no record with id 4242"):
            box.mark_handed_over(4242, "黄护士")
    raw = b"".join(f.read_bytes() for f in (tmp_path / "state").glob("outbox.db*"))
    assert "黄护士".encode() not in raw  # the operator's name is sealed like the payload


def test_a_deleted_record_takes_its_mark_with_it(tmp_path: Path) -> None:
    with Outbox.open(storage(tmp_path)) as box:
        rid = box.enqueue(_face(2, 0, 0.2))
        box.mark_handed_over(rid, "黄护士")
        with box.db.write("test: delete") as conn:  # what retention does to an old sent row
            conn.execute("DELETE FROM payloads WHERE record_id = ?", (rid,))
            conn.execute("DELETE FROM records WHERE id = ?", (rid,))
        assert box.handovers([rid]) == {}


def test_schema_2_outbox_gains_the_handovers_table(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    conn = sqlite3.connect(state / "outbox.db", isolation_level=None)
    schema.migrate(conn, target=2)
    conn.close()
    with Outbox.open(storage(tmp_path)) as box:
        assert schema.version(box.db.conn) == schema.CURRENT == 4
        rid = box.enqueue(_face(3, 2, 0.0))
        assert box.mark_handed_over(rid, "黄护士").operator == "黄护士"


# --------------------------------------------------------------------------------------------------
# The CLI


@pytest.fixture
def filled(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """An outbox with yesterday's failure, today's failure (handed over), a not-verified and a pass."""
    cfg = write_config(tmp_path / "fvagent.toml", state_dir=tmp_path / "state")
    yesterday = dt.datetime.now(CHINA_TZ) - dt.timedelta(days=1)
    ids = {}
    with Outbox.open(storage(tmp_path), clock=lambda: yesterday.timestamp()) as old:
        ids["old"] = old.enqueue(_face(10, 0, 0.3), meta={"source": "reader", "reason": "no match (distance 0.61)"})
    with Outbox.open(storage(tmp_path)) as box:
        ids["failed"] = box.enqueue(
            _face(11, 0, 0.42),
            meta={"source": "reader", "reason": "no match (distance 0.58)", "reason_code": "no_match"},
        )
        ids["not_verified"] = box.enqueue(
            _face(12, 2, 0.0),
            meta={
                "source": "reader",
                "reason": "no usable frame in 5.0 s: face too small (42 px)",
                "reason_code": "face_too_small",
            },
        )
        ids["passed"] = box.enqueue(_face(13, 1, 0.91), meta={"source": "reader", "reason": None})
        ids["relayed"] = box.enqueue(_face(14, 0, 0.35), meta={"source": "local_api"})
        box.mark_handed_over(ids["failed"], "黄护士")
    return cfg, ids


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_queue_ls_result_lists_the_follow_ups_masked(
    filled: tuple[Path, dict[str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, ids = filled
    today = dt.datetime.now(CHINA_TZ).strftime("%Y-%m-%d")
    code, out, err = _run(capsys, "queue", "ls", "--result", "0,2", "--since", today, "--json", "-c", str(cfg))
    assert code == 0, err
    items = json.loads(out)
    assert [it["id"] for it in items] == [ids["relayed"], ids["not_verified"], ids["failed"]]  # newest first
    by_id = {it["id"]: it for it in items}
    failed = by_id[ids["failed"]]
    assert failed["result"] == 0 and failed["resultText"] == "未通过"
    assert failed["name"] == "韦**" and failed["cardNo"] == card_no(11)[:4] + "*" * 10 + card_no(11)[-4:]
    assert failed["reason"].startswith("人证比对不一致（分数 0.42")
    assert failed["handover"]["operator"] == "黄护士" and failed["handover"]["at"].startswith(today)
    assert failed["state"] == "pending" and failed["stateText"] == "待上传"
    assert by_id[ids["not_verified"]]["reason"] == "未采集到合格的人脸画面（人脸过小，请靠近摄像头）"
    assert by_id[ids["not_verified"]]["handover"] is None
    assert by_id[ids["relayed"]]["reason"] == "终端比对未通过（分数 0.35）"
    for n in (11, 12, 14):
        assert card_no(n) not in out
    # only the failed ones, every day
    code, out, _ = _run(capsys, "queue", "ls", "--result", "0", "--json", "-c", str(cfg))
    assert [it["id"] for it in json.loads(out)] == [ids["relayed"], ids["failed"], ids["old"]]
    code, out, _ = _run(capsys, "queue", "ls", "--result", "2", "-n", "5", "--json", "-c", str(cfg))
    assert [it["id"] for it in json.loads(out)] == [ids["not_verified"]]


def test_queue_ls_result_table_and_bad_arguments(
    filled: tuple[Path, dict[str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, ids = filled
    code, out, _ = _run(capsys, "queue", "ls", "--result", "0,2", "-c", str(cfg))
    assert code == 0
    lines = out.splitlines()
    assert "HANDED OVER" in lines[0] and len(lines) == 1 + 4
    failed = next(line for line in lines if line.startswith(f"{ids['failed']:>7}"))
    assert "未通过" in failed and "黄护士" in failed and "待上传" in failed and "人证比对不一致" in failed
    assert "未移交" in next(line for line in lines if line.startswith(f"{ids['old']:>7}"))
    for bad in (["--result", "3"], ["--result", "zero"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["queue", "ls", *bad, "-c", str(cfg)])
        assert exit_info.value.code == 2
        assert "faceResult values are 0 (failed)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["queue", "ls", "--result", "0", "--since", "yesterday", "-c", str(cfg)])
    assert "is not a date: use yyyy-mm-dd" in capsys.readouterr().err
    code, _, err = _run(capsys, "queue", "ls", "--since", "2026-01-01", "-c", str(cfg))
    assert code == 2 and "--since goes with --result" in err
    code, _, err = _run(capsys, "queue", "ls", "--result", "0", "--state", "sent", "-c", str(cfg))
    assert code == 2 and "cannot be combined" in err
    far = (dt.datetime.now(CHINA_TZ) + dt.timedelta(days=2)).strftime("%Y-%m-%d")
    code, out, _ = _run(capsys, "queue", "ls", "--result", "0", "--since", far, "-c", str(cfg))
    assert code == 0 and out.startswith("no verifications with faceResult 0 since")


def test_follow_ups_page_through_more_records_than_one_batch(tmp_path: Path) -> None:
    from agent.localapi.followup import SCAN_BATCH, follow_ups

    with Outbox.open(storage(tmp_path)) as box:
        first = box.enqueue(_face(1, 0, 0.2))
        for n in range(SCAN_BATCH + 5):
            box.enqueue(_face(100 + n, 1, 0.9))
        t0 = time.perf_counter()
        items = follow_ups(box, threshold=0.75)
        assert [it["id"] for it in items] == [first]
        assert time.perf_counter() - t0 < 30  # a gross bound only: a scan must not hang


# --------------------------------------------------------------------------------------------------
# The /ui endpoints


def test_ui_hand_over_and_follow_ups(tmp_path: Path) -> None:
    with Agent(make_settings(tmp_path)) as agent, httpx.Client(base_url=agent.url, timeout=10) as c:
        relay = {"Authorization": f"Bearer {API_TOKEN}"}
        failed = c.post("/v1/verifications", json=verification_body(score=0.4, result=0), headers=relay).json()["id"]
        passed = c.post("/v1/verifications", json=verification_body(seed=2, score=0.9, result=1), headers=relay).json()[
            "id"
        ]
        agent.operator.set("陆护士")

        def hand_over(record_id: int, **headers: str) -> httpx.Response:
            page = {"Origin": agent.url, "Content-Type": "application/json", **headers}
            return c.post(f"/ui/verifications/{record_id}/handover", content="{}", headers=page)

        assert c.post(f"/ui/verifications/{failed}/handover", json={}).status_code == 403  # not from the page
        assert hand_over(failed, Origin="http://127.0.0.1:9").status_code == 403  # another page
        assert agent.outbox.handovers([failed]) == {}
        r = hand_over(failed)
        assert r.status_code == 200, r.text
        assert r.json()["operator"] == "陆护士" and r.json()["id"] == failed
        assert agent.outbox.handovers([failed])[failed].operator == "陆护士"
        refused = hand_over(passed)
        assert refused.status_code == 422 and "nothing to hand over" in refused.json()["error"]
        assert hand_over(4242).status_code == 404
        foreign = hand_over(failed, Host="evil.example:8787", Origin="http://evil.example:8787")
        assert foreign.status_code == 401
        listed = c.get("/ui/followups", params={"since": dt.date.today().isoformat()})
        assert listed.status_code == 200
        items = listed.json()["items"]
        assert [it["id"] for it in items] == [failed] and items[0]["handover"]["operator"] == "陆护士"
        assert verification_body()["cardNo"] not in listed.text and "韦小梅" not in listed.text
        assert c.get("/ui/followups", params={"since": "yesterday"}).status_code == 422
        assert c.get("/ui/followups", params={"cardNo": "x"}).status_code == 422
        assert c.get("/ui/followups", headers={"Host": "evil.example:8787"}).status_code == 401
        assert c.get("/ui/status").json()["resultDisplayS"] == 60.0
