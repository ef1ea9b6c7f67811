"""The agent's status: what ``fvagent status [--json]`` prints and GET /v1/status returns.

Two sources, so it works whether the daemon runs or not:

- the outbox database (queue counts by state, registration), read directly;
- ``<storage.dir>/status.json``, which the running daemon rewrites atomically every few seconds
  (hardware state, platform reachability, uploader state, last verification). When its process is
  gone or the file is stale, the document says so (``daemon.running`` false, ``daemon.detail``
  "daemon not running") instead of showing old values as current.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from agent import __version__
from agent.outbox.retention import budget_alert, unsent_alert
from core.clock import CHINA_TZ
from core.stored import RecordState

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
STALE_AFTER_S = 30.0
"""A status file older than this, from a live pid, means the daemon is not responding."""
QUEUE_STATES = tuple(state.value for state in RecordState)


def status_path(storage_dir: Path | str) -> Path:
    return Path(storage_dir) / STATUS_FILE


STATUS_FILE_BYTES = 32 * 1024
"""The status file is padded to this size, so that on a full disk it can be rewritten in place."""


def write_status_file(path: Path, doc: dict[str, Any]) -> None:
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


def read_status_file(path: Path) -> dict[str, Any] | None:
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


def pid_alive(pid: Any) -> bool:
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user (the service user)
        return True
    return True


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as ISO local (China) time, or None."""
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(float(epoch), CHINA_TZ).isoformat(timespec="seconds")


def _daemon_state(live: dict[str, Any] | None, now: float) -> dict[str, Any]:
    if live is None:
        return {"running": False, "detail": "daemon not running (no status file yet)"}
    pid = live.get("pid")
    updated = float(live.get("updated_at") or 0)
    age = max(0.0, now - updated)
    state = live.get("state", "unknown")
    base = {
        "pid": pid,
        "state": state,
        "started_at": iso(live.get("started_at")),
        "updated_at": iso(updated) if updated else None,
        "status_age_s": round(age, 1),
        "version": live.get("version"),
    }
    if state == "stopped" or not pid_alive(pid):
        return {**base, "running": False, "detail": f"daemon not running (last seen {iso(updated) or 'never'})"}
    if age > STALE_AFTER_S:
        return {
            **base,
            "running": False,
            "detail": f"daemon not responding: pid {pid} alive but its status is {age:.0f} s old",
        }
    return {**base, "running": True, "detail": f"running since {iso(live.get('started_at'))} (pid {pid})"}


def _queue(settings: Any, outbox: Any | None) -> tuple[dict[str, Any], dict[str, Any] | None, str | None]:
    """(queue counts, registration, error). Opens the outbox read-side when none is given."""
    own = False
    try:
        if outbox is None:
            from agent.outbox import Outbox
            from agent.outbox.store import DB_NAME

            if not (Path(settings.storage.dir) / DB_NAME).exists():  # never create it from here
                return {"note": "no outbox yet: the service creates it at its first start"}, None, None

            outbox = Outbox.open(settings.storage, readonly=True)
            own = True
        stats = dict(outbox.stats())
        stats["outbox_alerts"] = outbox_alerts(outbox)
        registration = None
        reg = getattr(outbox, "registration_state", None)
        if callable(reg):
            try:
                registration = _plain(reg())
            except Exception as exc:  # status must show what it can
                registration = {"error": str(exc)}
        return stats, registration, None
    except Exception as exc:
        return {}, None, f"{type(exc).__name__}: {exc}"
    finally:
        if own and outbox is not None:
            try:
                outbox.close()
            except Exception:
                log.debug("closing the outbox failed", exc_info=True)


def outbox_alerts(outbox: Any) -> list[str]:
    """The outbox's own alerts: incidents not yet acknowledged (damage salvaged, records missing, an
    outbox waiting for its key) and a key file others can read."""
    from agent.outbox import incidents
    from agent.outbox.retention import refused_alert

    found = list(incidents.alerts(outbox)) if hasattr(outbox, "get_state") else []
    refused = refused_alert(outbox) if hasattr(outbox, "get_state") else None
    if refused:
        found.append(refused)
    warning = getattr(outbox, "key_warning", None)
    if isinstance(warning, str):
        found.append(f"outbox key: {warning}")
    return found


def _plain(value: Any) -> Any:
    """Dataclasses and objects with ``__dict__`` as dicts, for JSON."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, dt.datetime | dt.date | Path):
        return str(value)
    return str(value)


def collect_status(
    settings: Any, *, outbox: Any | None = None, live: dict[str, Any] | None = None, now: float | None = None
) -> dict[str, Any]:
    """The status document (``fvagent status --json``, GET /v1/status).

    ``outbox``: an open outbox to read (the daemon's own); default: open the configured one for
    reading. ``live``: the daemon's current status (the daemon passes its own, fresher than the
    file); default: read ``<storage.dir>/status.json``. Never raises for a missing daemon or an
    unreadable outbox: those are reported in the document (``daemon.running``, ``queue.error``).

    Keys: ``daemon``, ``queue`` (count per state and ``total``; ``error`` when unreadable),
    ``last_success``, ``last_error``, ``registration``, ``platform`` (``enabled``, ``base_url``,
    ``reachable``, ``state``, ``blocked``), ``hardware`` (``card_reader``, ``camera``,
    ``face_engine``, ``wlt_decoder``), ``uploader``, ``last_verification``, ``storage``,
    ``alerts`` (list of one-line problems a technician should act on), ``version``.
    """
    now = time.time() if now is None else now
    if live is None:
        live = read_status_file(status_path(settings.storage.dir))
    daemon = _daemon_state(live, now)
    running = daemon["running"]
    stats, registration, queue_error = _queue(settings, outbox)
    queue: dict[str, Any] = {state: int(stats.get(state, 0) or 0) for state in QUEUE_STATES}
    queue["total"] = int(stats.get("total", sum(queue.values())) or 0)
    if queue_error:
        queue["error"] = queue_error
    extra_alerts = [str(a) for a in stats.pop("outbox_alerts", None) or []]
    for key, value in stats.items():  # anything else the outbox reports (oldest pending, bytes ...)
        if key not in queue:
            queue[key] = _plain(value)

    live = live or {}
    platform = dict(live.get("platform") or {}) if running else {}
    platform.setdefault("reachable", None)
    platform.setdefault("state", "unknown" if running else "unknown (daemon not running)")
    platform.setdefault("blocked", False)
    platform["enabled"] = bool(settings.platform.enabled)
    platform["base_url"] = settings.platform.base_url
    if not settings.platform.enabled:
        platform["state"] = "disabled"

    not_running = {"state": "unknown", "detail": "daemon not running"}
    hardware = live.get("hardware") if running else None
    if not isinstance(hardware, dict):
        hardware = {name: dict(not_running) for name in ("card_reader", "camera", "face_engine", "wlt_decoder")}
    uploader = live.get("uploader") if running else None

    storage = _storage(settings)
    alerts: list[str] = []
    if not running:
        alerts.append(daemon["detail"])
    if queue_error:
        alerts.append(f"outbox unreadable: {queue_error}")
    if platform.get("blocked"):
        alerts.append(
            f"uploads paused: {platform.get('blocked_reason') or 'the platform refused our credentials'}"
            " (fix [platform] and reload)"
        )
    for name, part in hardware.items():
        if isinstance(part, dict) and part.get("state") in ("fault", "degraded", "missing"):
            alerts.append(f"{name}: {part.get('detail') or part.get('state')}")
    simulated = int(queue.get("held_simulated") or 0)
    if simulated:
        alerts.append(
            f"{simulated} simulated record(s) held: not sent to a production platform "
            "(fake [card_reader]/[camera] driver; [platform] environment)"
        )
    if queue["held"] > simulated:
        alerts.append(
            f"{queue['held'] - simulated} record(s) held: card photos wait for a WLT decoder "
            "([card_reader] wlt_decoder)"
        )
    alerts.extend(extra_alerts)
    unsealable = int(stats.get("unsealable", 0) or 0)
    if unsealable:
        alerts.append(
            f"{unsealable} record(s) whose sealed data no longer opens here (damaged on disk, never "
            "sent): fvagent queue ls --state rejected; see docs/outbox.md"
        )
    if queue["rejected"] > unsealable:
        alerts.append(
            f"{queue['rejected'] - unsealable} record(s) rejected by the platform: fvagent queue ls --state rejected"
        )
    if storage.get("alert"):
        alerts.append(storage["alert"])
    if queue.get("over_budget"):
        alerts.append(budget_alert(queue["bytes"], queue["max_bytes"]))
    # Damaged copies kept aside: status carries the damage incident until `outbox ack-damage`; the
    # copies themselves are counted by doctor for as long as they stay on the terminal.
    old_unsent = unsent_alert(stats.get("oldest_unsent_at"), settings.storage.unsent_alert_days, now)
    if old_unsent:
        alerts.append(old_unsent)
    for extra in (live.get("alerts") or []) if running else []:
        if extra not in alerts:
            alerts.append(extra)

    return {
        "version": __version__,
        "time": iso(now),
        "config": str(settings.source) if getattr(settings, "source", None) else None,
        "daemon": daemon,
        "queue": queue,
        "last_success": (live.get("uploader") or {}).get("last_success") if running else stats.get("last_sent_at"),
        "last_error": (live.get("uploader") or {}).get("last_error") if running else None,
        "registration": registration if registration is not None else live.get("registration"),
        "platform": platform,
        "hardware": hardware,
        "uploader": uploader if isinstance(uploader, dict) else {"state": "stopped", "detail": "daemon not running"},
        "last_verification": live.get("last_verification"),
        "clock": (live.get("uploader") or {}).get("clock") if running else None,
        "storage": storage,
        "alerts": alerts,
    }


def _storage(settings: Any) -> dict[str, Any]:
    directory = Path(settings.storage.dir)
    probe = directory if directory.exists() else directory.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError as exc:
        return {"dir": str(directory), "alert": f"storage: cannot read {directory}: {exc.strerror}"}
    out: dict[str, Any] = {"dir": str(directory), "free_bytes": usage.free, "total_bytes": usage.total}
    if usage.free < settings.storage.min_free_bytes:
        out["alert"] = (
            f"storage: only {usage.free // 2**20} MiB free on {directory} "
            f"(below storage.min_free_bytes); free disk space"
        )
    return out


def format_status(doc: dict[str, Any]) -> str:
    """The status document as the short text ``fvagent status`` prints."""
    lines: list[str] = []
    daemon = doc["daemon"]
    lines.append(f"daemon:       {daemon['detail']}")
    q = doc["queue"]
    if q.get("error"):
        lines.append(f"queue:        unreadable ({q['error']})")
    else:
        lines.append("queue:        " + ", ".join(f"{q[s]} {s}" for s in QUEUE_STATES) + f" (total {q['total']})")
    lines.append(f"last success: {_event_text(doc.get('last_success'))}")
    lines.append(f"last error:   {_event_text(doc.get('last_error'))}")
    lines.append(f"registration: {_registration_text(doc.get('registration'))}")
    p = doc["platform"]
    reach = {True: "reachable", False: "unreachable", None: "not checked yet"}.get(p.get("reachable"), "?")
    state = p.get("state")
    lines.append(
        f"platform:     {p['base_url']} — {state}"
        + ("" if state == "disabled" else f", {reach}")
        + (" — UPLOADS PAUSED" if p.get("blocked") else "")
    )
    clock = doc.get("clock")
    if isinstance(clock, dict) and clock.get("offset_s") is not None:
        lines.append(
            f"clock:        platform {clock['offset_s']:+.1f} s from ours (learnt from its replies; "
            "requests are signed with the platform's time)"
        )
    for name, part in doc["hardware"].items():
        if isinstance(part, dict):
            detail = part.get("detail")
            lines.append(f"{name + ':':13} {part.get('state', '?')}" + (f" ({detail})" if detail else ""))
    lv = doc.get("last_verification")
    if lv:
        lines.append(
            f"last verification: #{lv.get('id')} at {lv.get('at')}, faceResult {lv.get('result')}"
            + (f" ({lv.get('reason')})" if lv.get("reason") else "")
        )
    if doc["alerts"]:
        lines.append("alerts:")
        lines.extend(f"  - {a}" for a in doc["alerts"])
    else:
        lines.append("alerts:       none")
    return "\n".join(lines)


def _event_text(value: Any) -> str:
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


def _registration_text(reg: Any) -> str:
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
