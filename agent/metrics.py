"""Prometheus metrics of the running daemon, served as ``GET /metrics`` by the local API.

Two kinds of figures, both in one ``CollectorRegistry`` per service:

- counters this process keeps: uploads by outcome (counted at the platform client the uploader
  uses, ``CountingClient``) and verifications by faceResult with their latency (counted from the
  ``verification`` events on the service's ``EventBus``, drained at each scrape);
- gauges read at scrape time from the status document (``Service.status().to_json()``, the same as
  ``fvagent status --json``): the outbox by state, the oldest pending record's age, the last
  delivery, the platform's state, each hardware part's state, free disk space, alerts.

A new source of state (the audit chain's, for one) is one more ``_family`` function in
``STATUS_SECTIONS``: it reads its part of the status document and yields its metric families.
No personal data ever becomes a label: labels are states, outcomes and part names.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from agent.events import VERIFICATION, EventBus
from agent.uplink.clock import PlatformClock
from core.outcome import Outcome
from core.records import Payload
from core.stored import RecordState

if TYPE_CHECKING:
    from agent.uplink.client import PlatformClient

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The media type of ``Metrics.render()`` (Prometheus text format 0.0.4)."""

LATENCY_BUCKETS_S = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0)
"""Card tap to committed record: the desk's own wait, so buckets around a few seconds."""

HARDWARE_STATES = ("ok", "fault", "degraded", "missing", "closed", "off", "unknown")
PLATFORM_STATES = ("ok", "down", "blocked", "disabled", "unknown")
EVENT_QUEUE = 10_000
"""Verification events kept between two scrapes (a desk makes a few hundred a day)."""


class Metrics:
    """The service's metrics. ``render()`` is the text a scrape returns.

    ``status_provider`` returns the status document (``Service.status().to_json()``); ``events`` is the bus the
    verification loop and the local API publish on.
    """

    def __init__(self, events: EventBus, status_provider: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.uploads = Counter(
            "fvagent_uploads",
            "Upload attempts of verification records, by the platform's outcome "
            "(accepted, rejected, blocked, retryable; error: the client failed)",
            ["outcome"],
            registry=self.registry,
        )
        self.verifications = Counter(
            "fvagent_verifications",
            "Verifications committed to the outbox, by faceResult "
            "(0 failed, 1 passed, 2 not compared) and source (reader, local_api)",
            ["face_result", "source"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fvagent_verification_latency_seconds",
            "Card read to committed record, for verifications made here",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(_StatusCollector(status_provider))
        self._events = events.subscribe(max_queue=EVENT_QUEUE)
        self._drain_lock = threading.Lock()

    def count_upload(self, outcome: str) -> None:
        self.uploads.labels(outcome=outcome).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric, counting the events since the last call."""
        self._drain()
        return generate_latest(self.registry)

    def close(self) -> None:
        self._events.close()

    def _drain(self) -> None:
        with self._drain_lock:
            while (event := self._events.get_nowait()) is not None:
                if event.kind != VERIFICATION or event.data.get("id") is None:
                    continue  # not committed: nothing became a record
                result = event.data.get("result")
                self.verifications.labels(
                    face_result=str(result) if result is not None else "unknown",
                    source=str(event.data.get("source") or "unknown"),
                ).inc()
                latency = event.data.get("latency_s")
                if isinstance(latency, int | float):
                    self.latency.observe(float(latency))


class CountingClient:
    """A platform client that counts each ``upload_verification`` outcome into ``Metrics``.

    Everything else is handed to the wrapped client: the calls the uploader makes, and the platform
    clock and signature expectation it sets on each client it makes.
    """

    def __init__(self, client: PlatformClient, metrics: Metrics) -> None:
        self._client = client
        self._metrics = metrics

    def upload_verification(self, payload: Payload) -> Outcome:
        try:
            outcome = self._client.upload_verification(payload)
        except Exception:
            self._metrics.count_upload("error")
            raise
        self._metrics.count_upload(outcome.kind.value)
        return outcome

    def register_device(self, payload: Payload) -> Outcome:
        return self._client.register_device(payload)

    def abort(self) -> None:
        self._client.abort()

    def close(self) -> None:
        self._client.close()

    @property
    def platform_clock(self) -> PlatformClock:
        clock: PlatformClock = self._client.platform_clock
        return clock

    @platform_clock.setter
    def platform_clock(self, clock: PlatformClock) -> None:
        self._client.platform_clock = clock

    @property
    def expect_signed(self) -> bool:
        return bool(self._client.expect_signed)

    @expect_signed.setter
    def expect_signed(self, value: bool) -> None:
        self._client.expect_signed = value

    def __enter__(self) -> CountingClient:
        self._client.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.__exit__(*exc)


# --------------------------------------------------------------------------------------------------
# Gauges from the status document


def _gauge(name: str, doc: str, value: Any, labels: dict[str, str] | None = None) -> Iterator[Metric]:
    if value is None:
        return
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), float(value))
    yield family


def _queue_family(doc: dict[str, Any]) -> Iterator[Metric]:
    queue = doc.get("queue") or {}
    records = GaugeMetricFamily("fvagent_outbox_records", "Records in the outbox, by state", labels=["state"])
    for state in (RecordState.PENDING, RecordState.SENDING, RecordState.HELD, RecordState.SENT, RecordState.REJECTED):
        records.add_metric([state.value], float(queue.get(state.value, 0) or 0))
    yield records
    yield from _gauge(
        "fvagent_outbox_readable", "1 when the outbox could be read for this scrape", 0 if queue.get("error") else 1
    )
    yield from _gauge(
        "fvagent_outbox_oldest_pending_age_seconds",
        "Age of the oldest record waiting to upload (0 when none waits)",
        queue.get("oldest_pending_age_s") or 0,
    )
    yield from _gauge("fvagent_outbox_bytes", "Sealed data held in the outbox", queue.get("bytes"))
    yield from _gauge("fvagent_outbox_max_bytes", "[storage] max_bytes, the outbox's budget", queue.get("max_bytes"))
    yield from _gauge(
        "fvagent_last_upload_success_timestamp_seconds",
        "When the platform last accepted a record (epoch seconds; absent before the first)",
        queue.get("last_sent_at"),
    )


def _platform_family(doc: dict[str, Any]) -> Iterator[Metric]:
    platform = doc.get("platform") or {}
    reachable = platform.get("reachable")
    yield from _gauge(
        "fvagent_platform_reachable",
        "1 when the platform's last answer came back, 0 when it did not (absent until the first attempt)",
        None if reachable is None else int(bool(reachable)),
    )
    yield from _gauge(
        "fvagent_platform_blocked",
        "1 while uploads are paused because the platform refused our "
        "configuration (credentials, signature): fix [platform] and reload",
        int(bool(platform.get("blocked"))),
    )
    state = str(platform.get("state") or "unknown").split(" ", 1)[0]
    family = GaugeMetricFamily(
        "fvagent_platform_state", "The uploader's view of the platform: 1 for the current state", labels=["state"]
    )
    for name in PLATFORM_STATES:
        family.add_metric([name], 1.0 if state == name else 0.0)
    yield family


def _hardware_family(doc: dict[str, Any]) -> Iterator[Metric]:
    hardware = doc.get("hardware") or {}
    up = GaugeMetricFamily("fvagent_component_up", "1 when the part works (ok), 0 otherwise", labels=["component"])
    states = GaugeMetricFamily(
        "fvagent_component_state", "Each part's state: 1 for the current one", labels=["component", "state"]
    )
    for component, part in sorted(hardware.items()):
        state = str((part or {}).get("state") or "unknown") if isinstance(part, dict) else "unknown"
        up.add_metric([component], 1.0 if state == "ok" else 0.0)
        for name in HARDWARE_STATES if state in HARDWARE_STATES else (*HARDWARE_STATES, state):
            states.add_metric([component, name], 1.0 if state == name else 0.0)
    yield up
    yield states


def _daemon_family(doc: dict[str, Any]) -> Iterator[Metric]:
    daemon = doc.get("daemon") or {}
    yield from _gauge(
        "fvagent_daemon_running", "1 while the daemon runs and its loops are fresh", int(bool(daemon.get("running")))
    )
    yield from _gauge(
        "fvagent_alerts",
        "Problems a technician should act on (fvagent status lists them)",
        len(doc.get("alerts") or []),
    )
    info = GaugeMetricFamily("fvagent_build_info", "The running fvagent's version", labels=["version"])
    info.add_metric([str(doc.get("version") or "unknown")], 1.0)
    yield info


def _storage_family(doc: dict[str, Any]) -> Iterator[Metric]:
    storage = doc.get("storage") or {}
    yield from _gauge(
        "fvagent_storage_free_bytes", "Free space on the state directory's file system", storage.get("free_bytes")
    )
    yield from _gauge(
        "fvagent_storage_total_bytes", "Size of the state directory's file system", storage.get("total_bytes")
    )
    yield from _gauge(
        "fvagent_storage_low",
        "1 when free space is below [storage] min_free_bytes",
        int(bool(storage.get("alert"))) if storage else None,
    )


STATUS_SECTIONS: tuple[Callable[[dict[str, Any]], Iterator[Metric]], ...] = (
    _queue_family,
    _platform_family,
    _hardware_family,
    _daemon_family,
    _storage_family,
)
"""Each reads its part of the status document. Add the audit chain's state here as its own function."""


class _StatusCollector(Collector):
    def __init__(self, status_provider: Callable[[], dict[str, Any]]) -> None:
        self._status = status_provider

    def collect(self) -> Iterator[Metric]:
        try:
            doc = self._status()
        except Exception as exc:  # a scrape must still answer: say the status could not be read
            log.warning("metrics: the status could not be collected: %s", exc)
            yield from _gauge("fvagent_status_readable", "1 when the status document could be collected", 0)
            return
        yield from _gauge("fvagent_status_readable", "1 when the status document could be collected", 1)
        for section in STATUS_SECTIONS:
            yield from section(doc)
