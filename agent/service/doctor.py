"""``fvagent doctor``: one line per check, OK / WARN / FAIL, each problem with its fix.

Checks, in order: the config file and its permissions (secret files are checked by the loader:
group- or world-readable ones are refused with the chmod), the state directory and free disk, the
outbox, the card reader (probe), the camera (one frame), the face model, the WLT decoder, and the
platform (reachability and clock skew against its ``returnTime``, by registering the device, which
the platform treats as idempotent: B2301 "already registered" counts as success).

While the daemon runs it holds the reader and the camera, so those two are reported from its live
status instead of being opened a second time.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

from agent.audit.verify import verify_outbox
from agent.config import Settings, config_warnings, deployment_problems, load_config, plain_http_warning
from agent.outbox import Outbox
from agent.outbox.retention import damaged_alert, unsent_alert
from agent.outbox.store import DB_NAME, damaged_copies
from agent.status import Part, PartState, daemon_status, outbox_alerts, read_live_status
from agent.uplink.client import PlatformClient
from core.errors import ConfigError, DriverError
from core.outcome import OutcomeKind
from core.records import registration_payload
from core.stored import RecordState
from drivers import registry
from drivers.base import Camera, Driver

OK, WARN, FAIL = "OK", "WARN", "FAIL"
FRAME_TIMEOUT_S = 5.0


@dataclasses.dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    level: str
    detail: str
    fix: str | None = None

    def line(self) -> str:
        text = f"{self.level:4}  {self.name}: {self.detail}"
        if self.fix and self.level != OK:
            text += f" -> fix: {self.fix}"
        return text


def run_checks(
    config_path: str | os.PathLike[str],
    *,
    transport: httpx.BaseTransport | None = None,
    on_check: Callable[[Check], None] | None = None,
) -> list[Check]:
    """Run every check against the config at ``config_path``; ``on_check`` sees each as it finishes."""
    results: list[Check] = []

    def add(check: Check) -> None:
        results.append(check)
        if on_check is not None:
            on_check(check)

    settings = _check_config(Path(config_path), add)
    if settings is None:
        return results
    live = read_live_status(settings.storage.dir)
    daemon = daemon_status(live, time.time())
    running_hw = live.hardware if live is not None and daemon.running else None
    add(
        Check(
            "daemon",
            OK if daemon.running else WARN,
            daemon.detail,
            None if daemon.running else "systemctl start fvagent (or fvagent run in a terminal)",
        )
    )
    _check_storage(settings, add)
    _check_outbox(settings, add)
    _check_audit(settings, add)
    _check_reader(settings, add, running_hw)
    _check_camera(settings, add, running_hw)
    _check_face(settings, add)
    _check_decoder(settings, add)
    _check_platform(settings, add, transport)
    return results


# --------------------------------------------------------------------------------------------------


def _check_config(path: Path, add: Callable[[Check], None]) -> Settings | None:
    try:
        # Driver sections are checked with their drivers below, so one missing driver does not
        # hide every other check.
        settings = load_config(path, validate_drivers=False)
    except ConfigError as exc:
        problems = "; ".join(f"{p}: {r}" for p, r in exc.problems) or exc.message
        add(Check("config", FAIL, f"{path}: {problems}", exc.hint or "fix the keys named; fvagent config check"))
        return None
    unfit = deployment_problems(settings)
    if unfit:
        add(
            Check(
                "config",
                FAIL,
                f"{path}: " + "; ".join(f"{p}: {r}" for p, r in unfit),
                "fix the keys named; fvagent config check",
            )
        )
    else:
        add(Check("config", OK, f"{path} is valid"))
    insecure = plain_http_warning(settings)
    if insecure:
        add(Check("platform transport", WARN, insecure, "use https:// when the platform offers it"))
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = 0
    if mode & 0o002:
        add(
            Check(
                "config permissions", FAIL, f"{path} is writable by every user (mode {mode:04o})", f"chmod o-w {path}"
            )
        )
    warnings = config_warnings(settings)
    if warnings:
        for warning in warnings:
            add(Check("config permissions", WARN, warning, "see the message"))
    elif not mode & 0o002:
        sources = settings.secret_sources
        where = ", ".join(f"{k} ({v})" for k, v in sorted(sources.items())) or "no secrets set"
        add(Check("secrets", OK, f"none readable by other users; from: {where}"))
    return settings


def _check_storage(settings: Settings, add: Callable[[Check], None]) -> None:
    directory = Path(settings.storage.dir)
    probe = directory
    if not directory.is_dir():
        add(
            Check(
                "state directory",
                WARN,
                f"{directory} does not exist yet",
                "systemd creates it at the first start (StateDirectory=); for fvagent run: "
                f"install -d -o fvagent -m 0750 {directory}",
            )
        )
        while not probe.is_dir() and probe != probe.parent:
            probe = probe.parent
    elif not os.access(directory, os.W_OK):
        add(
            Check(
                "state directory",
                FAIL,
                f"{directory} is not writable by this user",
                "run as the service user (sudo -u fvagent fvagent doctor) or fix the owner",
            )
        )
    usage = shutil.disk_usage(probe)
    free_mb = usage.free / 2**20
    floor = settings.storage.min_free_bytes
    if usage.free < floor:
        add(
            Check(
                "free disk",
                FAIL,
                f"{free_mb:.0f} MiB free on {probe}, below storage.min_free_bytes",
                "free disk space; the outbox needs room to commit verifications",
            )
        )
    elif usage.free < 4 * floor:
        add(Check("free disk", WARN, f"{free_mb:.0f} MiB free on {probe}", "free disk space soon"))
    else:
        add(Check("free disk", OK, f"{free_mb:.0f} MiB free on {probe}"))


def _check_outbox(settings: Settings, add: Callable[[Check], None]) -> None:
    if not (Path(settings.storage.dir) / DB_NAME).exists():
        # Never create it here: a key file made by root would lock the service user out.
        add(Check("outbox", OK, "none yet: the service creates it (and its key) at the first start"))
        return
    try:
        outbox = Outbox.open(settings.storage, readonly=True)
    except Exception as exc:
        hint = getattr(exc, "hint", None) or "see docs/operations.md, troubleshooting"
        add(Check("outbox", FAIL, f"cannot open: {exc}", hint))
        return
    try:
        stats = dict(outbox.stats())
        for alert in outbox_alerts(outbox):
            add(Check("outbox alert", FAIL, alert, "see docs/operations.md, damage and recovery"))
        result = outbox.integrity_check()
        problem = None if result == ["ok"] else "; ".join(result)
    except Exception as exc:
        add(Check("outbox", FAIL, f"unreadable: {exc}", "see docs/operations.md, troubleshooting"))
        return
    finally:
        try:
            outbox.close()
        except Exception:
            pass
    counts = ", ".join(f"{stats.get(k, 0)} {k}" for k in RecordState)
    if problem:
        add(Check("outbox", FAIL, f"integrity check: {problem}", "stop the service and keep a copy of the database"))
    elif stats.get("rejected"):
        add(Check("outbox", WARN, counts, "fvagent queue export --rejected FILE, fix, fvagent upload-file"))
    elif stats.get("held"):
        add(Check("outbox", WARN, counts, "configure [card_reader] wlt_decoder to release held records"))
    else:
        add(Check("outbox", OK, counts))


def _check_audit(settings: Settings, add: Callable[[Check], None]) -> None:
    """The newest part of the audit chain, old unsent records, damaged copies kept aside."""
    directory = Path(settings.storage.dir)
    kept = damaged_copies(directory) if directory.is_dir() else []
    if kept:
        add(
            Check(
                "damaged copies",
                WARN,
                damaged_alert(kept) or "",
                "recover them with the same key (see docs/operations.md), then move them off the terminal",
            )
        )
    if not (directory / DB_NAME).exists():
        return
    try:
        with Outbox.open(settings.storage, readonly=True) as outbox:  # doctor only looks
            report = verify_outbox(outbox, full=False)
            stats = outbox.stats()
    except Exception as exc:
        add(Check("audit chain", FAIL, f"cannot check: {exc}", getattr(exc, "hint", None)))
        return
    if report.ok:
        add(Check("audit chain", OK, report.summary() + " (the whole chain: fvagent audit verify)"))
    else:
        add(
            Check(
                "audit chain",
                FAIL,
                report.summary(),
                "the outbox was changed outside fvagent: keep a copy of the state directory, run "
                "`fvagent audit verify` and report it",
            )
        )
    old = unsent_alert(stats.get("oldest_unsent_at"), settings.storage.unsent_alert_days, time.time())
    if old:
        add(Check("unsent records", WARN, old, "fvagent queue export --rejected FILE, fix, fvagent upload-file"))


def _check_reader(settings: Settings, add: Callable[[Check], None], running_hw: Mapping[str, Part] | None) -> None:
    name = f"card reader ({settings.card_reader.driver})"
    if running_hw is not None:
        _from_daemon(name, running_hw.get("card_reader"), add, "check the cable and the udev rule")
        return
    driver = None
    try:
        driver = registry.create("card_reader", settings.card_reader.driver, settings.card_reader.options)
        result = driver.probe()
    except Exception as exc:
        add(Check(name, FAIL, str(exc), getattr(exc, "hint", None) or "check [card_reader] and the device"))
        return
    finally:
        if driver is not None:
            driver.close()
    simulated = driver is not None and driver.simulated
    if result.ok:
        add(
            Check(
                name,
                WARN if simulated else OK,
                result.detail + (" (SIMULATED)" if simulated else ""),
                "set [card_reader] driver to the real reader before go-live" if simulated else None,
            )
        )
    else:
        add(
            Check(
                name,
                FAIL,
                result.detail,
                "plug the reader in; check the port/VID:PID and that the fvagent user may open it (udev rule)",
            )
        )


def _check_camera(settings: Settings, add: Callable[[Check], None], running_hw: Mapping[str, Part] | None) -> None:
    name = f"camera ({settings.camera.driver})"
    if running_hw is not None:
        _from_daemon(name, running_hw.get("camera"), add, "check the cable and /dev/video* permissions")
        return
    camera: Driver | None = None
    try:
        camera = registry.create("camera", settings.camera.driver, settings.camera.options)
        if not isinstance(camera, Camera):  # the registry builds any kind; only a camera has frames
            raise DriverError(f"{settings.camera.driver!r} is not a camera driver")
        camera.open()
        frame = camera.read_frame(FRAME_TIMEOUT_S)
        h, w = frame.shape[:2]
    except Exception as exc:
        add(
            Check(
                name,
                FAIL,
                f"no frame: {exc}",
                getattr(exc, "hint", None)
                or "plug the camera in; check [camera] and that the fvagent user is in the video group",
            )
        )
        return
    finally:
        if camera is not None:
            camera.close()
    simulated = camera is not None and camera.simulated
    add(
        Check(
            name,
            WARN if simulated else OK,
            f"one frame {w}x{h}" + (" (SIMULATED)" if simulated else ""),
            "set [camera] driver to the real camera before go-live" if simulated else None,
        )
    )


def _from_daemon(name: str, part: Part | None, add: Callable[[Check], None], fix: str) -> None:
    part = part or Part(PartState.UNKNOWN)
    detail = f"in use by the daemon: {part.state.value}" + (f" ({part.detail})" if part.detail else "")
    if part.state is PartState.OK:
        add(
            Check(
                name,
                WARN if part.simulated else OK,
                detail,
                "use the real driver before go-live" if part.simulated else None,
            )
        )
    else:
        add(Check(name, FAIL, detail, fix))


def _check_face(settings: Settings, add: Callable[[Check], None]) -> None:
    if settings.face.mode == "relay":
        add(Check("face model", OK, "relay mode: the terminal computes the score"))
        return
    from agent.face import load_engine

    started = time.monotonic()
    try:
        engine = load_engine(settings.face)
        engine.load()
    except Exception as exc:
        add(
            Check(
                "face model",
                FAIL,
                str(exc),
                getattr(exc, "hint", None) or "reinstall fvagent's venv (pip install face-recognition-models dlib-bin)",
            )
        )
        return
    add(Check("face model", OK, f"{settings.face.engine} loaded in {time.monotonic() - started:.1f} s"))


def _check_decoder(settings: Settings, add: Callable[[Check], None]) -> None:
    decoder = settings.card_reader.options.get("wlt_decoder")
    if not decoder:
        if settings.card_reader.driver == "fake":
            add(Check("WLT decoder", OK, "not needed: the fake reader gives JPEG photos"))
        else:
            add(
                Check(
                    "WLT decoder",
                    WARN,
                    "none configured: records wait held until chip photos can be decoded",
                    "set [card_reader] wlt_decoder to the vendor's library (docs/drivers.md)",
                )
            )
        return
    if not Path(str(decoder)).is_file():
        add(Check("WLT decoder", FAIL, f"{decoder} does not exist", "give the full path of the vendor library"))
        return
    add(Check("WLT decoder", OK, str(decoder)))


def _check_platform(settings: Settings, add: Callable[[Check], None], transport: httpx.BaseTransport | None) -> None:
    platform = settings.platform
    if not platform.enabled:
        add(
            Check(
                "platform",
                WARN,
                "[platform] enabled = false: capturing and queueing, sending nothing",
                "set enabled = true when the platform may be used, then systemctl reload fvagent",
            )
        )
        return
    try:
        with PlatformClient(platform, transport=transport) as client:
            sent_at = time.time()
            outcome = client.register_device(registration_payload(settings.device))
            received_at = time.time()
            first_try_clock = outcome.kind is OutcomeKind.CLOCK
            if first_try_clock:  # the client learnt the platform's time from that reply: try with it
                outcome = client.register_device(registration_payload(settings.device))
            learnt_offset = client.platform_clock.offset_s
    except Exception as exc:
        add(
            Check(
                "platform",
                FAIL,
                f"{platform.base_url}: {exc}",
                getattr(exc, "hint", None) or "check [platform] base_url and the network (VPN)",
            )
        )
        return
    fixes = {
        OutcomeKind.BLOCKED: "check org_app_id, org_app_secret and [platform.auth]; the platform refused them",
        OutcomeKind.RETRYABLE: "check base_url, DNS, the VPN and the firewall; fvagent keeps queueing meanwhile",
        OutcomeKind.REJECTED: "check the [device] section against what the platform expects",
    }
    if outcome.kind is OutcomeKind.ACCEPTED:
        add(
            Check(
                "platform",
                OK,
                f"{platform.base_url} reachable, device registered ({outcome.message}, requestId {outcome.request_id})",
            )
        )
    else:
        add(
            Check(
                "platform",
                FAIL,
                f"{platform.base_url}: {outcome.kind.value}: {outcome.message} (requestId {outcome.request_id})",
                fixes.get(outcome.kind),
            )
        )
    max_offset = settings.device.max_clock_offset_s
    clock_fix = (
        "set the time: timedatectl set-ntp true (and check timedatectl status says "
        "'System clock synchronized: yes'), or timedatectl set-time 'YYYY-MM-DD HH:MM:SS'"
    )
    if first_try_clock and learnt_offset is not None:
        add(
            Check(
                "clock",
                FAIL,
                f"{abs(learnt_offset):.0f} s {'behind' if learnt_offset > 0 else 'ahead of'} the "
                f"platform's clock: it answered 时间戳过期 (limit [device] max_clock_offset_s = "
                f"{max_offset:g} s); the daemon signs with the platform's time meanwhile",
                clock_fix,
            )
        )
        return
    if outcome.return_time_ms is None:
        if outcome.kind is OutcomeKind.ACCEPTED:
            add(
                Check(
                    "clock",
                    WARN,
                    "the platform sent no returnTime; skew not measured",
                    "make sure NTP runs (timedatectl)",
                )
            )
        return
    midpoint = (sent_at + received_at) / 2
    skew = midpoint - outcome.return_time_ms / 1000.0
    text = f"{abs(skew):.1f} s {'ahead of' if skew > 0 else 'behind'} the platform's returnTime"
    if abs(skew) > max_offset:
        add(Check("clock", FAIL, text + f" (limit [device] max_clock_offset_s = {max_offset:g} s)", clock_fix))
    elif abs(skew) > max_offset / 2 or abs(skew) > 60:
        add(Check("clock", WARN, text, "enable NTP: timedatectl set-ntp true"))
    else:
        add(Check("clock", OK, text))
