"""EventBus (threads and asyncio, bounded queues) and OperatorState (validation, persistence)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import threading
import time

import pytest

from agent.events import EventBus, OperatorState
from core.records import validate_operator


def test_publish_reaches_every_subscriber_in_order() -> None:
    bus = EventBus()
    a, b = bus.subscribe(), bus.subscribe()
    for i in range(3):
        bus.publish("verification", {"id": i})
    for sub in (a, b):
        got = [sub.get(1.0) for _ in range(3)]
        assert [e.data["id"] for e in got if e] == [0, 1, 2]
        assert [e.seq for e in got if e] == [1, 2, 3]
        assert sub.get(0.01) is None


def test_slow_subscriber_drops_oldest_and_never_blocks_publisher() -> None:
    bus = EventBus(max_queue=5)
    slow = bus.subscribe()
    started = time.monotonic()
    for i in range(1000):
        bus.publish("verification", {"id": i})
    assert time.monotonic() - started < 1.0
    assert len(slow) == 5
    assert slow.dropped == 995
    assert [slow.get_nowait().data["id"] for _ in range(5)] == [995, 996, 997, 998, 999]  # type: ignore[union-attr]


def test_closed_subscription_is_removed_and_returns_none() -> None:
    bus = EventBus()
    with bus.subscribe() as sub:
        assert bus.subscriber_count == 1
    assert bus.subscriber_count == 0
    bus.publish("status", {"x": 1})
    assert sub.get(0.5) is None


def test_publish_from_threads_wakes_async_consumer() -> None:
    bus = EventBus(max_queue=500)  # room for all: this test is about wake-ups, not dropping

    async def consume(n: int) -> list[int]:
        with bus.subscribe() as sub:
            ready.set()
            out: list[int] = []
            while len(out) < n:
                event = await sub.next_event(5.0)
                assert event is not None, "timed out waiting for a published event"
                out.append(event.data["n"])
            return out

    ready = threading.Event()

    def producer(base: int) -> None:
        ready.wait(5)
        for i in range(50):
            bus.publish("verification", {"n": base + i})

    threads = [threading.Thread(target=producer, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    got = asyncio.run(consume(200))
    for t in threads:
        t.join()
    assert sorted(got) == sorted(k * 1000 + i for k in range(4) for i in range(50))
    # each producer's events arrive in its own order
    for k in range(4):
        mine = [n for n in got if n // 1000 == k]
        assert mine == sorted(mine)


def test_async_wait_times_out_without_event() -> None:
    bus = EventBus()

    async def wait() -> tuple[object, float]:
        with bus.subscribe() as sub:
            t0 = time.monotonic()
            return await sub.next_event(0.2), time.monotonic() - t0

    event, waited = asyncio.run(wait())
    assert event is None
    assert 0.15 <= waited < 2.0


def test_replay_gives_recent_history() -> None:
    bus = EventBus(history=3)
    for i in range(5):
        bus.publish("verification", {"id": i})
    sub = bus.subscribe(replay_after=0)
    assert [sub.get_nowait().data["id"] for _ in range(3)] == [2, 3, 4]  # type: ignore[union-attr]
    sub2 = bus.subscribe(replay_after=4)
    assert sub2.get_nowait().data["id"] == 4  # type: ignore[union-attr]
    assert sub2.get_nowait() is None
    assert [e.data["id"] for e in bus.recent("verification", 2)] == [3, 4]


def test_publish_rejects_non_dict() -> None:
    with pytest.raises(TypeError):
        EventBus().publish("verification", [1, 2])  # type: ignore[arg-type]


# -- operator -------------------------------------------------------------------------------------


def test_operator_defaults_then_persists(tmp_path) -> None:
    path = tmp_path / "state" / "operator.json"
    state = OperatorState(path, "默认员")
    assert state.get() == "默认员" and state.is_default
    assert state.set("  李护士 ") == "李护士"
    assert state.get() == "李护士"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert OperatorState(path, "默认员").get() == "李护士"  # survives a restart


@pytest.mark.parametrize("bad", ["", "   ", "一二三四五六七八九十一", "a\nb", 42])
def test_operator_rejects_bad_names(tmp_path, bad) -> None:
    state = OperatorState(tmp_path / "operator.json", "默认员")
    with pytest.raises(ValueError):
        state.set(bad)
    assert state.get() == "默认员"
    assert not (tmp_path / "operator.json").exists()


def test_corrupt_operator_file_falls_back_to_default(tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="agent.events")  # whatever level an earlier test left
    path = tmp_path / "operator.json"
    path.write_text("{not json", encoding="utf-8")
    assert OperatorState(path, "默认员").get() == "默认员"
    path.write_text(json.dumps({"operator": "x" * 20}), encoding="utf-8")
    assert OperatorState(path, "默认员").get() == "默认员"
    assert "unreadable" in caplog.text


def test_validate_operator_accepts_ten_chinese_characters() -> None:
    assert validate_operator("一二三四五六七八九十") == "一二三四五六七八九十"
