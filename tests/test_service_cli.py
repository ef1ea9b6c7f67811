"""`fvagent status [--json]` and `fvagent verify-once` as a technician runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.outbox import Outbox
from agent.service import samples
from agent.service.notify import Notifier
from agent.service.service import Service
from tests.test_outbox_support import record as outbox_record
from tests.test_service import ScriptedReader, config_doc, write_config

pytest.importorskip("skimage", reason="the sample face comes from scikit-image (the demo extra)")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return samples.write_images(tmp_path_factory.mktemp("faces"))


def fvagent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )


def test_status_json_without_a_daemon_exits_3_and_says_so(tmp_path: Path, images: dict[str, Any]) -> None:
    path = write_config(tmp_path / "c.toml", config_doc(tmp_path, images))
    proc = fvagent("status", "--json", "--config", str(path))
    assert proc.returncode == 3, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["daemon"]["running"] is False and "daemon not running" in doc["daemon"]["detail"]
    assert {"pending", "sending", "sent", "rejected", "held", "total"} <= set(doc["queue"])
    assert doc["platform"]["base_url"] == "http://127.0.0.1:9/api"
    assert not (tmp_path / "state" / "outbox.key").exists()  # status never creates the outbox or its key


def test_status_of_a_running_daemon(tmp_path: Path, images: dict[str, Any]) -> None:
    path = write_config(tmp_path / "c.toml", config_doc(tmp_path, images))
    settings = load_config(path, validate_drivers=False)
    reader = ScriptedReader()
    service = Service(
        settings,
        config_path=path,
        reader=reader,
        notifier=Notifier(backend="socket", environ={}),
        start_local_api=False,
    )
    service.start()
    try:
        reader.present(
            samples.sample_card(samples.PEOPLE[0], samples.card_photo_jpeg(), terminal_score=0.88, terminal_result=1)
        )
        deadline = time.monotonic() + 15
        while service.verifications < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        service._write_status()
        proc = fvagent("status", "--config", str(path))
        assert proc.returncode == 0, proc.stderr
        assert "running since" in proc.stdout and f"(pid {os.getpid()})" in proc.stdout
        assert "card_reader:  ok" in proc.stdout
        assert "last verification: #1" in proc.stdout
        assert samples.PEOPLE[0].card_no not in proc.stdout
        # platform unreachable (port 9): the queue holds the record and status says where it stands
        doc = json.loads(fvagent("status", "--json", "--config", str(path)).stdout)
        assert doc["queue"]["total"] == 1 and doc["last_verification"]["result"] == 1
    finally:
        service.stop()


def test_status_raises_the_storage_alert_when_the_outbox_is_over_budget(tmp_path: Path, images: dict[str, Any]) -> None:
    path = write_config(tmp_path / "c.toml", config_doc(tmp_path, images, storage={"max_bytes": 1000}))
    settings = load_config(path, validate_drivers=False)
    box = Outbox.open(settings.storage)
    try:
        box.enqueue(outbox_record(0))  # unsent, so never evicted: the alert is the technician's cue
    finally:
        box.close()
    proc = fvagent("status", "--json", "--config", str(path))
    doc = json.loads(proc.stdout)
    assert doc["queue"]["over_budget"] is True
    alerts = [a for a in doc["alerts"] if "over storage.max_bytes" in a]
    assert len(alerts) == 1 and "raise max_bytes" in alerts[0]


def test_verify_once_commits_one_verification(tmp_path: Path, images: dict[str, Any]) -> None:
    path = write_config(tmp_path / "c.toml", config_doc(tmp_path, images))
    settings = load_config(path, validate_drivers=False)
    reader = ScriptedReader()
    reader.present(
        samples.sample_card(samples.PEOPLE[2], samples.card_photo_jpeg(), terminal_score=0.95, terminal_result=1)
    )
    service = Service(settings, config_path=path, reader=reader, start_local_api=False)
    done = service.verify_once(5.0)
    assert done is not None and done.outbox_id == 1 and done.result == 1
    from agent.outbox import Outbox

    with Outbox.open(settings.storage) as outbox:
        assert outbox.stats()["pending"] == 1
    assert Service(settings, config_path=path, reader=ScriptedReader(), start_local_api=False).verify_once(0.3) is None


def test_local_api_status_equals_status_json(tmp_path: Path, images: dict[str, Any]) -> None:
    """GET /v1/status and `fvagent status --json` (another process, reading the status file and the
    outbox) give the same document for the same running daemon."""
    import httpx

    doc = config_doc(tmp_path, images, local_api={"enabled": True, "listen": "127.0.0.1:0"})
    path = write_config(tmp_path / "c.toml", doc)
    settings = load_config(path, validate_drivers=False)
    reader = ScriptedReader()
    service = Service(settings, config_path=path, reader=reader, notifier=Notifier(backend="socket", environ={}))
    service.start()
    try:
        assert service.local_api is not None, service._local_api_error
        reader.present(
            samples.sample_card(samples.PEOPLE[1], samples.card_photo_jpeg(), terminal_score=0.9, terminal_result=1)
        )
        deadline = time.monotonic() + 15
        while service.verifications < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert service.verifications == 1
        service._write_status()
        cli = json.loads(fvagent("status", "--json", "--config", str(path)).stdout)
        api = httpx.get(service.local_api.url + "/v1/status", timeout=10).json()
    finally:
        service.stop()
    assert set(api) == set(cli)
    for section in ("queue", "platform", "hardware", "daemon", "storage", "uploader"):
        assert set(api[section]) == set(cli[section]), section

    # what does not move between the two reads is equal
    def still(queue: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in queue.items() if not k.endswith("_age_s")}  # ages move between the reads

    assert still(api["queue"]) == still(cli["queue"]) and api["queue"]["total"] == 1
    assert api["last_verification"] == cli["last_verification"] and api["last_verification"]["id"] == 1
    assert {k: v["state"] for k, v in api["hardware"].items()} == {k: v["state"] for k, v in cli["hardware"].items()}
    assert api["daemon"]["running"] is cli["daemon"]["running"] is True
    assert api["daemon"]["pid"] == cli["daemon"]["pid"] == os.getpid()
    assert set(api["registration"]) == set(cli["registration"])  # the uploader keeps retrying it (port 9)
    assert api["registration"]["registered"] is cli["registration"]["registered"] is False
    assert api["config"] == cli["config"]
