"""GET /metrics: the daemon's figures in the Prometheus text format, read with prometheus_client's
own parser, changing as records flow; the [local_api] token guards it as it guards /v1."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_service import card, config_doc, images, run_service  # noqa: F401 (fixtures)
from tests.waiting import wait_for

TOKEN = "metrics-test-token-0123456789"


def scrape(url: str, token: str | None = TOKEN) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(url + "/metrics", headers=headers, timeout=5)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape_when(url: str, condition: Any) -> dict[Any, float] | None:
    """One scrape when it meets ``condition``, else None (for ``wait_for``)."""
    samples = scrape(url)
    return samples if condition(samples) else None


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_follow_records_from_capture_to_delivery(run_service: Any, tmp_path: Any, images: Any) -> None:
    doc = config_doc(tmp_path, images, local_api={"enabled": True, "listen": "127.0.0.1:0", "token": TOKEN})
    service, reader, platform = run_service(doc)
    url = service.local_api.url
    first = scrape(url)
    assert value(first, "fvagent_outbox_records", state="pending") == 0
    assert value(first, "fvagent_verifications_total", face_result="1", source="reader") is None
    assert value(first, "fvagent_component_up", component="card_reader") == 1
    assert value(first, "fvagent_component_state", component="face_engine", state="off") == 1  # relay mode
    assert value(first, "fvagent_platform_blocked") == 0
    assert value(first, "fvagent_storage_free_bytes") > 0
    assert value(first, "fvagent_last_upload_success_timestamp_seconds") is None

    # The platform is down: the record waits, counted as pending, its retries as retryable.
    platform.down = True
    reader.present(card(0, terminal_score=0.91, terminal_result=1))
    waiting = wait_for(
        lambda: scrape_when(
            url,
            lambda s: (
                value(s, "fvagent_outbox_records", state="pending") == 1
                and (value(s, "fvagent_uploads_total", outcome="retryable") or 0) >= 1
            ),
        ),
        20,
        "a pending record and a retryable upload in /metrics",
    )
    assert value(waiting, "fvagent_verifications_total", face_result="1", source="reader") == 1
    assert value(waiting, "fvagent_verification_latency_seconds_count") == 1
    assert value(waiting, "fvagent_platform_reachable") == 0
    assert value(waiting, "fvagent_platform_state", state="down") == 1

    # The platform is back: delivered, counted as accepted, the last success time set.
    platform.down = False
    reader.present(card(1, terminal_score=0.12, terminal_result=0))
    done = wait_for(
        lambda: scrape_when(url, lambda s: value(s, "fvagent_outbox_records", state="sent") == 2),
        20,
        "two sent records in /metrics",
    )
    assert value(done, "fvagent_outbox_records", state="pending") == 0
    assert value(done, "fvagent_uploads_total", outcome="accepted") == 2
    assert value(done, "fvagent_verifications_total", face_result="0", source="reader") == 1
    assert value(done, "fvagent_verification_latency_seconds_count") == 2
    assert value(done, "fvagent_last_upload_success_timestamp_seconds") > 0
    assert value(done, "fvagent_platform_reachable") == 1
    assert value(done, "fvagent_outbox_oldest_pending_age_seconds") == 0
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).text
    for person in (0, 1):  # states and outcomes only: nothing personal in the exposition
        sample = card(person)
        assert sample.card_no not in text and sample.name not in text


@pytest.mark.parametrize("token", [None, "wrong-token-000000000000"])
def test_metrics_need_the_api_token_when_one_is_set(
    run_service: Any,
    tmp_path: Any,
    images: Any,
    token: str | None,
) -> None:
    doc = config_doc(tmp_path, images, local_api={"enabled": True, "listen": "127.0.0.1:0", "token": TOKEN})
    service, _, _ = run_service(doc)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(service.local_api.url + "/metrics", headers=headers, timeout=5)
    assert response.status_code == 401
    assert "fvagent_" not in response.text


def test_alert_rules_and_dashboard_name_only_metrics_that_exist() -> None:
    """Every fvagent_* series the alert rules and the dashboard query is one /metrics serves."""
    import json
    import re
    from pathlib import Path

    from agent.events import VERIFICATION, EventBus
    from agent.metrics import Metrics

    yaml = pytest.importorskip("yaml", reason="PyYAML parses the alert rules (installed with the test extra)")
    bus = EventBus()
    doc = {
        "queue": {
            "pending": 1,
            "sending": 0,
            "held": 0,
            "sent": 2,
            "rejected": 0,
            "oldest_pending_age_s": 5.0,
            "bytes": 10,
            "max_bytes": 100,
            "last_sent_at": 1.0,
        },
        "platform": {"reachable": True, "state": "ok", "blocked": False},
        "hardware": {"card_reader": {"state": "ok"}, "camera": {"state": "fault"}},
        "daemon": {"running": True},
        "alerts": [],
        "version": "0.2.0",
        "storage": {"free_bytes": 1, "total_bytes": 2},
    }
    metrics = Metrics(bus, lambda: doc)
    metrics.count_upload("accepted")
    bus.publish(VERIFICATION, {"id": 1, "result": 1, "source": "reader", "latency_s": 0.5})
    served = {
        sample.name for family in text_string_to_metric_families(metrics.render().decode()) for sample in family.samples
    }
    root = Path(__file__).resolve().parents[1] / "deploy" / "monitoring"
    rules = yaml.safe_load((root / "fvagent-alerts.yml").read_text())
    alerts = {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}
    for name in (
        "FvagentQueueGrowing",
        "FvagentNoUpload",
        "FvagentReaderDown",
        "FvagentDiskLow",
        "FvagentConfigurationBlocked",
    ):
        assert name in alerts
    dashboard = json.loads((root / "grafana-dashboard.json").read_text())
    queried = " ".join(alerts.values()) + " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    named = set(re.findall(r"\bfvagent_[a-z_]+", queried))
    assert named and named <= served, named - served
