"""The agent's status: one typed ``Status``, read by ``fvagent status [--json]``, systemd's ``STATUS=``
line, ``fvagent doctor``, GET /v1/status, the operator page and /metrics.

Two sources, so it works whether the daemon runs or not:

- the outbox database (queue counts by state, registration), read directly;
- the daemon's ``LiveStatus``: what the running process knows (hardware, platform reachability,
  uploader state, last verification). The daemon hands in its own; another process reads
  ``<storage.dir>/status.json``, which the daemon rewrites atomically every few seconds. When its
  process is gone or the file is stale, the status says so (``daemon.running`` false,
  ``daemon.detail`` "daemon not running") instead of showing old values as current.

``build_status`` makes a ``Status`` from those; ``Status.to_json()`` is the one JSON form of it.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TypeAlias, TypeVar

from agent import __version__
from agent.config import Settings
from agent.outbox import Outbox, incidents
from agent.outbox.retention import budget_alert, refused_alert, unsent_alert
from agent.outbox.store import DB_NAME
from core.clock import china_isoformat
from core.outcome import OutcomeKind
from core.stored import RecordState

log = logging.getLogger(__name__)

JSON: TypeAlias = str | int | float | bool | list["JSON"] | dict[str, "JSON"] | None
JSONObject: TypeAlias = dict[str, JSON]

STATUS_FILE = "status.json"
STALE_AFTER_S = 30.0
"""A status file older than this, from a live pid, means the daemon is not responding."""
QUEUE_STATES = tuple(RecordState)
HARDWARE = ("card_reader", "camera", "face_engine", "wlt_decoder")
"""The parts ``hardware`` always names."""


class DaemonState(enum.StrEnum):
    """The daemon process's own phase."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    UNKNOWN = "unknown"


class PlatformState(enum.StrEnum):
    """Where uploads stand with the platform."""

    OK = "ok"
    """The platform answered last time."""
    DOWN = "down"
    """The last attempt got no answer (a retryable failure)."""
    BLOCKED = "blocked"
    """Uploads paused: the platform refused our credentials or registration."""
    DISABLED = "disabled"
    """``[platform] enabled = false``."""
    UNKNOWN = "unknown"
    """Not asked yet."""
    NOT_RUNNING = "unknown (daemon not running)"
    """No daemon, so nobody asks."""


class PartState(enum.StrEnum):
    """A piece of hardware (or the face engine, or the WLT decoder)."""

    OK = "ok"
    FAULT = "fault"
    OFF = "off"
    """Not used in this configuration."""
    CLOSED = "closed"
    """Not opened yet."""
    UNKNOWN = "unknown"


E = TypeVar("E", bound=enum.StrEnum)


def _enum(cls: type[E], value: object, default: E) -> E:
    """``value`` as a member of ``cls``; ``default`` for what this version does not know."""
    try:
        return cls(str(value))
    except ValueError:
        return default


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _opt_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _json(value: object) -> JSON:
    """``value`` as plain JSON: dataclasses and mappings as objects, anything else unknown as text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _json(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, Mapping):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return str(value)


def _object(value: object) -> JSONObject | None:
    converted = _json(value)
    return converted if isinstance(converted, dict) else None


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as ISO local (China) time, or None."""
    return None if epoch is None else china_isoformat(float(epoch))


# --------------------------------------------------------------------------------------------------
# The parts of a status


@dataclasses.dataclass(frozen=True)
class Part:
    """One piece of hardware as status shows it. ``since`` (epoch), ``failures`` and ``simulated``
    come from a driver slot: the state's start, the faults so far, a fake driver."""

    state: PartState
    detail: str | None = None
    since: float | None = None
    failures: int | None = None
    simulated: bool | None = None

    def to_json(self) -> JSONObject:
        out: JSONObject = {"state": self.state.value, "detail": self.detail}
        if self.since is not None:
            out["since"] = self.since
        if self.failures is not None:
            out["failures"] = self.failures
        if self.simulated is not None:
            out["simulated"] = self.simulated
        return out

    @classmethod
    def from_json(cls, doc: object) -> Part:
        if not isinstance(doc, Mapping):
            return cls(PartState.UNKNOWN)
        failures = doc.get("failures")
        simulated = doc.get("simulated")
        return cls(
            _enum(PartState, doc.get("state"), PartState.UNKNOWN),
            _opt_str(doc.get("detail")),
            since=_opt_float(doc.get("since")),
            failures=failures if isinstance(failures, int) and not isinstance(failures, bool) else None,
            simulated=simulated if isinstance(simulated, bool) else None,
        )


NOT_RUNNING_PART = Part(PartState.UNKNOWN, "daemon not running")


@dataclasses.dataclass(frozen=True)
class PlatformView:
    """The uploader's view of the platform, as the daemon sees it."""

    state: PlatformState
    reachable: bool | None = None
    blocked: bool = False
    blocked_reason: str | None = None
    checked_at: str | None = None

    def to_json(self) -> JSONObject:
        return {
            "reachable": self.reachable,
            "state": self.state.value,
            "blocked": self.blocked,
            "blocked_reason": self.blocked_reason,
            "checked_at": self.checked_at,
        }

    @classmethod
    def from_json(cls, doc: object) -> PlatformView:
        if not isinstance(doc, Mapping):
            return cls(PlatformState.UNKNOWN)
        reachable = doc.get("reachable")
        return cls(
            _enum(PlatformState, doc.get("state"), PlatformState.UNKNOWN),
            reachable=reachable if isinstance(reachable, bool) else None,
            blocked=bool(doc.get("blocked")),
            blocked_reason=_opt_str(doc.get("blocked_reason")),
            checked_at=_opt_str(doc.get("checked_at")),
        )


def platform_view(snapshot: Mapping[str, object], *, enabled: bool) -> PlatformView:
    """The platform's state from the uploader's ``snapshot()``.

    Reachable: the latest answer we got. Accepted and rejected records, and any registration answer
    but "retryable", mean the platform answered; a retryable failure means it did not.
    """
    last_success = _object(snapshot.get("last_success")) or {}
    last_error = _object(snapshot.get("last_error")) or {}
    registration = _object(snapshot.get("registration")) or {}
    events = [(_opt_float(last_success.get("at")) or 0.0, True)]
    if last_error:
        events.append((_opt_float(last_error.get("at")) or 0.0, last_error.get("outcome") != OutcomeKind.RETRYABLE))
    attempt_at = _opt_float(registration.get("last_attempt_at"))
    if attempt_at:
        events.append((attempt_at, registration.get("outcome") != OutcomeKind.RETRYABLE))
    at, answered = max(events)
    reachable: bool | None = answered if at > 0 else None
    blocked = bool(snapshot.get("blocked"))
    if not enabled:
        state = PlatformState.DISABLED
    elif blocked:
        state = PlatformState.BLOCKED
    elif reachable is True:
        state = PlatformState.OK
    elif reachable is False:
        state = PlatformState.DOWN
    else:
        state = PlatformState.UNKNOWN
    return PlatformView(
        state,
        reachable=reachable,
        blocked=blocked,
        blocked_reason=_opt_str(snapshot.get("blocked_reason")),
        checked_at=iso(at) if at else None,
    )


def uploader_section(snapshot: Mapping[str, object], *, thread_alive: bool) -> JSONObject:
    """The uploader's ``snapshot()`` as status shows it: without registration (status has its own),
    event times as ISO text, and a state even when it never reported one."""
    section: JSONObject = {k: _json(v) for k, v in snapshot.items() if k != "registration"}
    for key in ("last_success", "last_error"):
        event = _object(snapshot.get(key))
        at = _opt_float(event.get("at")) if event else None
        if event and at:
            section[key] = {**event, "at": iso(at)}
    section.setdefault("state", "running" if thread_alive else "stopped")
    return section


def clock_offset_alert(offset_s: float | None, max_offset_s: float) -> str | None:
    """The alert for a local clock further than ``[device] max_clock_offset_s`` from the platform's."""
    if offset_s is None or abs(offset_s) <= max_offset_s:
        return None
    way = "behind" if offset_s > 0 else "ahead of"
    return (
        f"the local clock is {abs(offset_s):.0f} s {way} the platform's (more than [device] "
        f"max_clock_offset_s = {max_offset_s:g}): uploads are signed with the platform's time and new "
        "verifications keep the offset beside their verifyTime; fix the clock: timedatectl set-ntp true "
        "(check with timedatectl status), or timedatectl set-time"
    )


@dataclasses.dataclass(frozen=True)
class LoopView:
    alive: bool
    heartbeat_age_s: float


@dataclasses.dataclass(frozen=True)
class LiveStatus:
    """What the running daemon knows now; its JSON is the status file."""

    pid: int
    state: DaemonState
    started_at: float
    updated_at: float
    config: str | None
    platform: PlatformView
    uploader: JSONObject
    hardware: Mapping[str, Part]
    last_verification: JSONObject | None
    verifications: int
    local_api_url: str | None
    local_api_error: str | None
    loops: Mapping[str, LoopView]
    alerts: tuple[str, ...]
    version: str = __version__

    def to_json(self) -> JSONObject:
        return {
            "pid": self.pid,
            "version": self.version,
            "state": self.state.value,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "config": self.config,
            "platform": self.platform.to_json(),
            "uploader": self.uploader,
            "hardware": {name: part.to_json() for name, part in self.hardware.items()},
            "last_verification": self.last_verification,
            "verifications": self.verifications,
            "local_api": {"url": self.local_api_url, "error": self.local_api_error},
            "loops": {
                name: {"alive": loop.alive, "heartbeat_age_s": loop.heartbeat_age_s}
                for name, loop in self.loops.items()
            },
            "alerts": list(self.alerts),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> LiveStatus:
        """The status file read back; tolerant of a file another version wrote (missing keys read as
        unknown, never an error)."""
        hardware = doc.get("hardware")
        loops = doc.get("loops")
        local_api = _object(doc.get("local_api")) or {}
        pid, verifications = doc.get("pid"), doc.get("verifications")
        alerts = doc.get("alerts")
        return cls(
            pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else 0,
            version=str(doc.get("version") or "unknown"),
            state=_enum(DaemonState, doc.get("state"), DaemonState.UNKNOWN),
            started_at=_opt_float(doc.get("started_at")) or 0.0,
            updated_at=_opt_float(doc.get("updated_at")) or 0.0,
            config=_opt_str(doc.get("config")),
            platform=PlatformView.from_json(doc.get("platform")),
            uploader=_object(doc.get("uploader")) or {},
            hardware={str(k): Part.from_json(v) for k, v in hardware.items()} if isinstance(hardware, Mapping) else {},
            last_verification=_object(doc.get("last_verification")),
            verifications=verifications if isinstance(verifications, int) else 0,
            local_api_url=_opt_str(local_api.get("url")),
            local_api_error=_opt_str(local_api.get("error")),
            loops={
                str(name): LoopView(bool(v.get("alive")), _opt_float(v.get("heartbeat_age_s")) or 0.0)
                for name, v in loops.items()
                if isinstance(v, Mapping)
            }
            if isinstance(loops, Mapping)
            else {},
            alerts=tuple(str(a) for a in alerts) if isinstance(alerts, list) else (),
        )


@dataclasses.dataclass(frozen=True)
class DaemonStatus:
    """Whether the daemon runs, judged from its ``LiveStatus`` (``None``: it never wrote one)."""

    running: bool
    detail: str
    live: LiveStatus | None = None
    status_age_s: float | None = None

    def to_json(self) -> JSONObject:
        if self.live is None:
            return {"running": self.running, "detail": self.detail}
        live = self.live
        return {
            "pid": live.pid,
            "state": live.state.value,
            "started_at": iso(live.started_at),
            "updated_at": iso(live.updated_at) if live.updated_at else None,
            "status_age_s": self.status_age_s,
            "version": live.version,
            "running": self.running,
            "detail": self.detail,
        }


def daemon_status(live: LiveStatus | None, now: float) -> DaemonStatus:
    if live is None:
        return DaemonStatus(False, "daemon not running (no status file yet)")
    age = max(0.0, now - live.updated_at)
    seen = iso(live.updated_at) if live.updated_at else None
    if live.state is DaemonState.STOPPED or not pid_alive(live.pid):
        return DaemonStatus(False, f"daemon not running (last seen {seen or 'never'})", live, round(age, 1))
    if age > STALE_AFTER_S:
        detail = f"daemon not responding: pid {live.pid} alive but its status is {age:.0f} s old"
        return DaemonStatus(False, detail, live, round(age, 1))
    detail = f"running since {iso(live.started_at)} (pid {live.pid})"
    return DaemonStatus(True, detail, live, round(age, 1))


@dataclasses.dataclass(frozen=True)
class QueueStatus:
    """The outbox's counts per state, ``total``, ``error`` when unreadable, and what else its
    ``stats()`` report (``oldest_pending_age_s``, ``bytes``, ``held_simulated`` ...) in ``extra``."""

    counts: Mapping[RecordState, int]
    total: int
    error: str | None = None
    extra: JSONObject = dataclasses.field(default_factory=dict)

    def count(self, state: RecordState) -> int:
        return self.counts.get(state, 0)

    def int_extra(self, key: str) -> int:
        value = self.extra.get(key)
        return int(value) if isinstance(value, int | float) else 0

    @property
    def depth(self) -> int:
        """What is still to be sent: pending, sending and held."""
        return sum(self.count(s) for s in RecordState if s.unsent)

    def to_json(self) -> JSONObject:
        out: JSONObject = {state.value: self.count(state) for state in QUEUE_STATES}
        out["total"] = self.total
        if self.error:
            out["error"] = self.error
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out


@dataclasses.dataclass(frozen=True)
class StorageStatus:
    dir: str
    free_bytes: int | None = None
    total_bytes: int | None = None
    alert: str | None = None

    def to_json(self) -> JSONObject:
        out: JSONObject = {"dir": self.dir}
        if self.free_bytes is not None:
            out["free_bytes"], out["total_bytes"] = self.free_bytes, self.total_bytes
        if self.alert:
            out["alert"] = self.alert
        return out


@dataclasses.dataclass(frozen=True)
class PlatformStatus:
    """The platform as configured (``enabled``, ``base_url``) and as the daemon sees it (``view``)."""

    view: PlatformView
    enabled: bool
    base_url: str

    @property
    def state(self) -> PlatformState:
        return self.view.state

    def to_json(self) -> JSONObject:
        return {**self.view.to_json(), "enabled": self.enabled, "base_url": self.base_url}


@dataclasses.dataclass(frozen=True)
class Status:
    """The whole status, built once (``build_status``) and read by everyone that shows it."""

    time: float
    config: str | None
    daemon: DaemonStatus
    queue: QueueStatus
    registration: JSON
    platform: PlatformStatus
    hardware: Mapping[str, Part]
    uploader: JSONObject
    last_success: JSON
    last_error: JSON
    last_verification: JSONObject | None
    clock: JSON
    storage: StorageStatus
    alerts: tuple[str, ...]
    version: str = __version__

    @property
    def running(self) -> bool:
        return self.daemon.running

    @property
    def verifications(self) -> int:
        """Verifications since the daemon started (0 without one)."""
        return self.daemon.live.verifications if self.daemon.live is not None and self.running else 0

    def to_json(self) -> JSONObject:
        """The status document: ``fvagent status --json`` and GET /v1/status.

        Keys: ``daemon``, ``queue`` (count per state and ``total``; ``error`` when unreadable),
        ``last_success``, ``last_error``, ``registration``, ``platform`` (``enabled``, ``base_url``,
        ``reachable``, ``state``, ``blocked``), ``hardware`` (``card_reader``, ``camera``,
        ``face_engine``, ``wlt_decoder``), ``uploader``, ``last_verification``, ``storage``,
        ``alerts`` (list of one-line problems a technician should act on), ``version``.
        """
        return {
            "version": self.version,
            "time": iso(self.time),
            "config": self.config,
            "daemon": self.daemon.to_json(),
            "queue": self.queue.to_json(),
            "last_success": self.last_success,
            "last_error": self.last_error,
            "registration": self.registration,
            "platform": self.platform.to_json(),
            "hardware": {name: part.to_json() for name, part in self.hardware.items()},
            "uploader": self.uploader,
            "last_verification": self.last_verification,
            "clock": self.clock,
            "storage": self.storage.to_json(),
            "alerts": list(self.alerts),
        }

    def line(self) -> str:
        """One line for systemd's STATUS=: queue depth, last upload, platform and hardware state."""
        last = self.uploader.get("last_success")
        last_at = last.get("at") if isinstance(last, dict) else None
        parts = [
            f"queue {self.queue.depth}",
            f"last upload {str(last_at)[11:19] if last_at else 'none'}",
            f"platform {self.platform.state.value}",
        ]
        for label, name in (("reader", "card_reader"), ("camera", "camera")):
            part = self.hardware.get(name)
            if part is not None:
                parts.append(f"{label} {part.state.value}")
        face = self.hardware.get("face_engine")
        if face is not None and face.state is not PartState.OFF:
            parts.append("face " + ("ok" if face.state is PartState.OK else "fault"))
        parts.append(f"{self.verifications} verified")
        return ", ".join(parts)


# --------------------------------------------------------------------------------------------------
# Building it


@dataclasses.dataclass(frozen=True)
class _OutboxRead:
    """What status reads from the outbox: its ``stats()``, registration and alerts."""

    stats: Mapping[str, object]
    registration: JSON
    alerts: list[str]


def _read_outbox(settings: Settings, outbox: Outbox | None) -> tuple[_OutboxRead, str | None]:
    """What status needs from the outbox, and the error when it cannot be read. Opens the outbox
    read-side when none is given, and never creates it."""
    own = False
    try:
        if outbox is None:
            if not (Path(settings.storage.dir) / DB_NAME).exists():
                note = {"note": "no outbox yet: the service creates it at its first start"}
                return _OutboxRead(note, None, []), None
            outbox = Outbox.open(settings.storage, readonly=True)
            own = True
        stats = dict(outbox.stats())
        alerts = outbox_alerts(outbox)
        try:
            registration = _json(outbox.registration_state())
        except Exception as exc:  # status must show what it can
            registration = {"error": str(exc)}
        return _OutboxRead(stats, registration, alerts), None
    except Exception as exc:
        return _OutboxRead({}, None, []), f"{type(exc).__name__}: {exc}"
    finally:
        if own and outbox is not None:
            try:
                outbox.close()
            except Exception:
                log.debug("closing the outbox failed", exc_info=True)


def outbox_alerts(outbox: Outbox) -> list[str]:
    """The outbox's own alerts: incidents not yet acknowledged (damage salvaged, records missing, an
    outbox waiting for its key) and a key file others can read."""
    found = list(incidents.alerts(outbox))
    refused = refused_alert(outbox)
    if refused:
        found.append(refused)
    if outbox.key_warning:
        found.append(f"outbox key: {outbox.key_warning}")
    return found


def _queue(read: _OutboxRead, error: str | None) -> QueueStatus:
    stats = read.stats
    counts = {state: _int(stats.get(state.value)) for state in QUEUE_STATES}
    total = _int(stats.get("total", sum(counts.values())))
    extra = {key: _json(value) for key, value in stats.items() if key not in counts and key != "total"}
    return QueueStatus(counts, total, error, extra)


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) else 0


def _storage(settings: Settings) -> StorageStatus:
    directory = Path(settings.storage.dir)
    probe = directory if directory.exists() else directory.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError as exc:
        return StorageStatus(str(directory), alert=f"storage: cannot read {directory}: {exc.strerror}")
    alert = None
    if usage.free < settings.storage.min_free_bytes:
        alert = (
            f"storage: only {usage.free // 2**20} MiB free on {directory} "
            f"(below storage.min_free_bytes); free disk space"
        )
    return StorageStatus(str(directory), usage.free, usage.total, alert)


def build_status(
    settings: Settings, *, outbox: Outbox | None = None, live: LiveStatus | None = None, now: float | None = None
) -> Status:
    """The status from the outbox and the daemon's ``live`` status.

    ``outbox``: an open outbox to read (the daemon's own); default: open the configured one for
    reading. ``live``: the daemon's current status (the daemon passes its own, fresher than the
    file); default: read ``<storage.dir>/status.json``. Never raises for a missing daemon or an
    unreadable outbox: those are reported in it (``daemon.running``, ``queue.error``).
    """
    now = time.time() if now is None else now
    if live is None:
        live = read_live_status(settings.storage.dir)
    daemon = daemon_status(live, now)
    running = daemon.running
    read, queue_error = _read_outbox(settings, outbox)
    queue = _queue(read, queue_error)
    current = live if running else None

    view = current.platform if current is not None else PlatformView(PlatformState.NOT_RUNNING)
    if not settings.platform.enabled:
        view = dataclasses.replace(view, state=PlatformState.DISABLED)
    platform = PlatformStatus(view, bool(settings.platform.enabled), settings.platform.base_url)
    hardware: Mapping[str, Part] = (
        current.hardware if current is not None and current.hardware else dict.fromkeys(HARDWARE, NOT_RUNNING_PART)
    )
    uploader: JSONObject = (
        current.uploader if current is not None else {"state": "stopped", "detail": "daemon not running"}
    )
    storage = _storage(settings)
    alerts = _alerts(daemon, queue, queue_error, platform, hardware, storage, read.alerts, settings, now)

    return Status(
        time=now,
        config=str(settings.source) if settings.source else None,
        daemon=daemon,
        queue=queue,
        registration=read.registration,
        platform=platform,
        hardware=hardware,
        uploader=uploader,
        last_success=current.uploader.get("last_success")
        if current is not None
        else _json(read.stats.get("last_sent_at")),
        last_error=current.uploader.get("last_error") if current is not None else None,
        last_verification=live.last_verification if live is not None else None,
        clock=current.uploader.get("clock") if current is not None else None,
        storage=storage,
        alerts=tuple(alerts),
    )


def _alerts(
    daemon: DaemonStatus,
    queue: QueueStatus,
    queue_error: str | None,
    platform: PlatformStatus,
    hardware: Mapping[str, Part],
    storage: StorageStatus,
    outbox_alerts: list[str],
    settings: Settings,
    now: float,
) -> list[str]:
    """The one-line problems a technician should act on, most basic first."""
    alerts: list[str] = []
    if not daemon.running:
        alerts.append(daemon.detail)
    if queue_error:
        alerts.append(f"outbox unreadable: {queue_error}")
    if platform.view.blocked:
        alerts.append(
            f"uploads paused: {platform.view.blocked_reason or 'the platform refused our credentials'}"
            " (fix [platform] and reload)"
        )
    for name, part in hardware.items():
        if part.state is PartState.FAULT:
            alerts.append(f"{name}: {part.detail or part.state.value}")
    held, simulated = queue.count(RecordState.HELD), queue.int_extra("held_simulated")
    if simulated:
        alerts.append(
            f"{simulated} simulated record(s) held: not sent to a production platform "
            "(fake [card_reader]/[camera] driver; [platform] environment)"
        )
    if held > simulated:
        alerts.append(
            f"{held - simulated} record(s) held: card photos wait for a WLT decoder ([card_reader] wlt_decoder)"
        )
    alerts.extend(outbox_alerts)
    rejected, unsealable = queue.count(RecordState.REJECTED), queue.int_extra("unsealable")
    if unsealable:
        alerts.append(
            f"{unsealable} record(s) whose sealed data no longer opens here (damaged on disk, never "
            "sent): fvagent queue ls --state rejected; see docs/outbox.md"
        )
    if rejected > unsealable:
        alerts.append(f"{rejected - unsealable} record(s) rejected by the platform: fvagent queue ls --state rejected")
    if storage.alert:
        alerts.append(storage.alert)
    if queue.extra.get("over_budget"):
        budget = budget_alert(queue.int_extra("bytes"), queue.int_extra("max_bytes"))
        if budget:
            alerts.append(budget)
    # Damaged copies kept aside: status carries the damage incident until `outbox ack-damage`; the
    # copies themselves are counted by doctor for as long as they stay on the terminal.
    old_unsent = unsent_alert(_opt_float(queue.extra.get("oldest_unsent_at")), settings.storage.unsent_alert_days, now)
    if old_unsent:
        alerts.append(old_unsent)
    if daemon.running and daemon.live is not None:
        alerts.extend(extra for extra in daemon.live.alerts if extra not in alerts)
    return alerts


def collect_status(settings: Settings, *, outbox: Outbox | None = None, now: float | None = None) -> Status:
    """The status as another process sees it (``fvagent status``): the outbox and the status file."""
    return build_status(settings, outbox=outbox, now=now)


# --------------------------------------------------------------------------------------------------
# The status file


def status_path(storage_dir: Path | str) -> Path:
    return Path(storage_dir) / STATUS_FILE


def read_live_status(storage_dir: Path | str) -> LiveStatus | None:
    """The daemon's last ``LiveStatus`` from its status file, or ``None`` when absent or unreadable."""
    doc = read_status_file(status_path(storage_dir))
    return LiveStatus.from_json(doc) if doc is not None else None


STATUS_FILE_BYTES = 32 * 1024
"""The status file is padded to this size, so that on a full disk it can be rewritten in place."""


def write_status_file(path: Path, doc: JSONObject) -> None:
    """Write ``doc`` as JSON to ``path`` atomically (temp file in the same directory, rename).

    Readable by the service's group (0640), so a technician in that group can run ``fvagent status``.
    On a full disk (no room for the temp file) the padded file is overwritten in place instead: the
    daemon still says it is alive, and that the disk is full.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, ensure_ascii=False, default=str).encode("utf-8")
    body = text.ljust(STATUS_FILE_BYTES)  # JSON allows trailing whitespace
    try:
        fd, tmp = tempfile.mkstemp(prefix=".status.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        _overwrite_in_place(path, body)
        return
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            _overwrite_in_place(path, body)
            return
        raise


def _overwrite_in_place(path: Path, body: bytes) -> None:
    """Rewrite the existing status file within its allocated size (needs no free block)."""
    with open(path, "r+b") as fh:
        size = os.fstat(fh.fileno()).st_size
        if len(body.rstrip()) > size:
            raise OSError(errno.ENOSPC, "no room for the status document", str(path))
        fh.write(body.rstrip().ljust(size))


def read_status_file(path: Path) -> dict[str, object] | None:
    """The daemon's last status document, or ``None`` when absent or unreadable."""
    for _ in range(3):  # rewritten in place on a full disk: a read may meet a write half done
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.debug("status file %s unreadable: %s", path, exc)
            time.sleep(0.01)
            continue
        return data if isinstance(data, dict) else None
    return None


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user (the service user)
        return True
    return True


def format_status(status: Status) -> str:
    """The status as the short text ``fvagent status`` prints."""
    lines = [f"daemon:       {status.daemon.detail}"]
    q = status.queue
    if q.error:
        lines.append(f"queue:        unreadable ({q.error})")
    else:
        counts = ", ".join(f"{q.count(s)} {s.value}" for s in QUEUE_STATES)
        lines.append(f"queue:        {counts} (total {q.total})")
    lines.append(f"last success: {_event_text(status.last_success)}")
    lines.append(f"last error:   {_event_text(status.last_error)}")
    lines.append(f"registration: {_registration_text(status.registration)}")
    p = status.platform
    reach = {True: "reachable", False: "unreachable", None: "not checked yet"}[p.view.reachable]
    lines.append(
        f"platform:     {p.base_url} — {p.state.value}"
        + ("" if p.state is PlatformState.DISABLED else f", {reach}")
        + (" — UPLOADS PAUSED" if p.view.blocked else "")
    )
    offset = _opt_float(status.clock.get("offset_s")) if isinstance(status.clock, dict) else None
    if offset is not None:
        lines.append(
            f"clock:        platform {offset:+.1f} s from ours (learnt from its replies; "
            "requests are signed with the platform's time)"
        )
    for name, part in status.hardware.items():
        lines.append(f"{name + ':':13} {part.state.value}" + (f" ({part.detail})" if part.detail else ""))
    lv = status.last_verification
    if lv:
        lines.append(
            f"last verification: #{lv.get('id')} at {lv.get('at')}, faceResult {lv.get('result')}"
            + (f" ({lv.get('reason')})" if lv.get("reason") else "")
        )
    if status.alerts:
        lines.append("alerts:")
        lines.extend(f"  - {a}" for a in status.alerts)
    else:
        lines.append("alerts:       none")
    return "\n".join(lines)


def _event_text(value: JSON) -> str:
    """An uploader event ({"at", "id", "outcome", "message", "request_id"}) or an epoch time, as text."""
    if value is None or value == {}:
        return "none"
    if isinstance(value, int | float):
        return iso(value) or "none"
    if isinstance(value, dict):
        at = value.get("at")
        parts = [iso(at) if isinstance(at, int | float) else str(at or "")]
        if value.get("id") is not None:
            parts.append(f"record {value['id']}")
        if value.get("outcome"):
            parts.append(f"{value['outcome']}: {value.get('message', '')}")
        return ", ".join(p for p in parts if p)
    return str(value)


def _registration_text(reg: JSON) -> str:
    if not isinstance(reg, dict) or not reg:
        return "unknown"
    at = reg.get("at")
    when = iso(at) if isinstance(at, int | float) else at
    if reg.get("registered"):
        return f"registered at {when}" + (f" (requestId {reg['request_id']})" if reg.get("request_id") else "")
    return "not registered" + (
        f": {reg.get('outcome')}: {reg.get('message')}"
        if reg.get("outcome")
        else f" ({reg.get('message') or 'no attempt yet'})"
    )
