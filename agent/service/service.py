"""The daemon: one process, a few long-running loops, each with a clean stop.

Loops (threads):

- ``verification``: card reader -> ``Verifier`` (photo, face, record, durable commit, event);
- ``uploader``: the outbox's ``Uploader`` draining to the platform;
- ``housekeeping``: retention, registration refresh, completing held records once a WLT decoder is
  configured.

The main thread supervises: it turns SIGTERM/SIGINT into a stop and SIGHUP into a reload, rewrites
the status file, sends systemd ``STATUS=`` lines, and sends ``WATCHDOG=1`` only while every loop's
heartbeat is fresh, so a stalled loop stops the pings and systemd restarts the service.

Hardware faults degrade (``DriverSlot``): status says so, the driver is reopened with backoff, and a
verification that cannot score is still recorded with faceResult 2.

``wiring`` builds the parts from the settings, ``supervision`` runs them; ``Service`` composes the
two and keeps the state ``status()`` is built from.

Test-only hook: ``$FVAGENT_TEST_STALL_FILE`` names a file; while it exists the verification loop
blocks without beating its heartbeat (a stalled loop, for the watchdog test). ``$FVAGENT_TEST_HEARTBEAT_S``
overrides how old a heartbeat may get. Neither is meant for production.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from agent import __version__
from agent.config import Settings
from agent.delivery import Uploader
from agent.events import EventBus, OperatorState
from agent.face.engine import FaceEngine
from agent.localapi.server import LocalApiServer
from agent.logsetup import setup_logging
from agent.metrics import Metrics
from agent.outbox import Outbox
from agent.outbox.recovery import open_for_service
from agent.service import wiring
from agent.service.hardware import DriverSlot
from agent.service.notify import Notifier
from agent.service.supervision import (
    CARD_RETRY_PAUSE_S,
    READ_TIMEOUT_S,
    Heartbeat,
    LoopThread,
    StatusLine,
    UploaderThread,
    Watchdog,
    changed_sections,
    read_card,
    read_settings,
    signals_to,
    start_loop,
)
from agent.service.verification import Verification, Verifier, complete_held
from agent.status import (
    DaemonState,
    LiveStatus,
    LoopView,
    Part,
    PartState,
    Status,
    build_status,
    clock_offset_alert,
    platform_view,
    status_path,
    uploader_section,
    write_status_file,
)
from core.errors import ConfigError, LocalApiError
from drivers.base import Camera, CardReader

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 9.0
"""The whole of ``stop()`` at SIGTERM: within the 10 s the desk is promised (TimeoutStopSec is longer)."""
STOP_RESERVE_S = 2.0
"""Of that, what is kept for the uploader and the local API once the loops have had their turn."""
STATUS_INTERVAL_S = 2.0
HOUSEKEEPING_INTERVAL_S = 60.0
STALL_FILE_ENV = "FVAGENT_TEST_STALL_FILE"
HEARTBEAT_ENV = "FVAGENT_TEST_HEARTBEAT_S"


class Service:
    """The fvagent daemon.

    ``Service(settings, config_path=...)``, then ``run()`` (blocks until SIGTERM/SIGINT or
    ``request_stop()``; returns the exit code). ``start()``/``stop()`` run it without signal
    handling (tests, ``fvagent demo``). Dependencies can be injected: ``notifier``, ``reader`` and
    ``camera`` (driver instances instead of the configured ones), ``engine`` (a face engine),
    ``transport`` (httpx transport for the platform client).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        config_path: str | os.PathLike[str] | None = None,
        notifier: Notifier | None = None,
        reader: CardReader | None = None,
        camera: Camera | None = None,
        engine: FaceEngine | None = None,
        transport: httpx.BaseTransport | None = None,
        events: EventBus | None = None,
        heartbeat_max_age_s: float | None = None,
        start_local_api: bool = True,
    ) -> None:
        self.settings = settings
        self.config_path = Path(config_path) if config_path is not None else settings.source
        self.notifier = notifier or Notifier()
        self.events = events or EventBus()
        self.metrics = Metrics(self.events, lambda: self.status().to_json())
        self._reader_override = reader
        self._camera_override = camera
        self._engine_override = engine
        self._transport = transport
        self._start_local_api = start_local_api
        env_hb = os.environ.get(HEARTBEAT_ENV)
        self._heartbeat_override = float(env_hb) if env_hb else heartbeat_max_age_s
        self._stall_file = os.environ.get(STALL_FILE_ENV) or None

        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._reload_requested = False
        self._verify_lock = threading.Lock()
        self._state = DaemonState.STARTING
        self.started_at = time.time()
        self.outbox: Outbox | None = None
        self.uploader: Uploader | None = None
        self._uploader_thread = UploaderThread(Heartbeat("uploader", self._uploader_max_age()))
        self.reader_slot: DriverSlot[CardReader] | None = None
        self.camera_slot: DriverSlot[Camera] | None = None
        self._engine = wiring.EngineLoad(None)
        self.operator: OperatorState | None = None
        self.verifier: Verifier | None = None
        self.local_api: LocalApiServer | None = None
        self._local_api_error: str | None = None
        self._loops: dict[str, LoopThread] = {}
        self.last_verification: Verification | None = None
        self.verifications = 0
        self._alerts: list[str] = []
        self._status_line = StatusLine(self.notifier)
        self._watchdog = Watchdog(self.notifier)
        self._held_release_due = True
        self._audit_alert: str | None = None

    # ----------------------------------------------------------------------------------------------
    # Start and stop

    def start(self) -> None:
        """Open the outbox and drivers, start the loops and the local API; send READY=1.

        Raises ``FvagentError`` only for what cannot degrade: the outbox (no place to commit
        verifications means the service must not pretend to run).
        """
        s = self.settings
        self.outbox = open_for_service(s.storage)
        self._audit_alert = wiring.audit_at_start(self.outbox)
        self._hold_simulated()
        self.operator = OperatorState.for_settings(s)
        self._open_parts()
        client_factory = wiring.platform_client_factory(self.metrics, self._transport)
        self.uploader = wiring.build_uploader(s, self.outbox, client_factory)
        self._uploader_thread.start(self.uploader)
        self._start_loop("verification", self._verification_loop, self._verification_max_age())
        self._start_loop("housekeeping", self._housekeeping_loop, self._max_age(HOUSEKEEPING_INTERVAL_S + 60))
        if self._start_local_api and s.local_api.enabled:
            self._start_api()
        self._state = DaemonState.RUNNING
        status = self._publish_status()
        self.notifier.ready(status.line())
        log.info("fvagent %s running (config %s): %s", __version__, self.config_path, status.line())

    def _open_parts(self) -> None:
        """The drivers, the face engine and the verifier over them (at start, verify-once and reload)."""
        self.reader_slot, self.camera_slot = wiring.driver_slots(
            self.settings, reader=self._reader_override, camera=self._camera_override
        )
        self._engine = wiring.load_face_engine(self.settings, injected=self._engine_override)
        self.verifier = self._build_verifier()

    def _build_verifier(self) -> Verifier:
        assert self.outbox is not None and self.camera_slot is not None and self.operator is not None
        return wiring.build_verifier(
            self.settings,
            self.outbox,
            camera_slot=self.camera_slot,
            engine=lambda: self._engine.engine,
            engine_error=lambda: self._engine.error,
            operator=self.operator,
            events=self.events,
            stopping=self.stopping,
            clock_offset=self._clock_offset,
        )

    def _hold_simulated(self) -> None:
        """In production, hold what a fake driver captured earlier (e.g. before [platform]
        environment was set): the Verifier holds new ones itself."""
        if self.settings.platform.environment != "production" or self.outbox is None:
            return
        held = self.outbox.hold_simulated()
        if held:
            log.warning("%d simulated record(s) held: not sent to a production platform", held)

    def _max_age(self, default: float) -> float:
        return self._heartbeat_override if self._heartbeat_override is not None else default

    def _uploader_max_age(self) -> float:
        # One iteration may hold a registration request (connect + read timeouts) and a commit.
        platform = self.settings.platform
        return self._max_age(platform.connect_timeout_s + platform.timeout_s + 30.0)

    def _verification_max_age(self) -> float:
        # One iteration may hold a whole capture plus scoring and the commit.
        return self._max_age(self.settings.face.capture_timeout_s + READ_TIMEOUT_S + 30.0)

    def _housekeeping_now(self) -> float:
        """Retention judges by the earlier of the local and the platform-corrected clock, so a local
        clock that jumped ahead never erases photos or deletes rows early."""
        now, offset = time.time(), self._clock_offset()
        return min(now, now + offset) if offset is not None else now

    def _clock_offset(self) -> float | None:
        """The platform's clock minus ours, as the uploader learnt it (``None`` while unknown)."""
        uploader = self.uploader
        return uploader.platform_clock.offset_s if uploader is not None else None

    def _start_api(self) -> None:
        assert self.outbox is not None and self.operator is not None
        try:
            server = wiring.start_local_api(
                self.settings, self.outbox, self.events, self.operator, status=self.status, metrics=self.metrics
            )
        except LocalApiError as exc:  # the desk keeps working without the page
            self._local_api_error = str(exc)
            log.error("local API not started: %s", exc)
            return
        self.local_api, self._local_api_error = server, None

    def _start_loop(self, name: str, target: Callable[[Heartbeat], None], max_age_s: float) -> None:
        self._loops[name] = start_loop(name, target, max_age_s)

    def request_stop(self) -> None:
        self.stopping.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop every loop (the verification in progress finishes, cut short), close everything."""
        deadline = time.monotonic() + timeout_s
        loops_deadline = deadline - min(STOP_RESERVE_S, timeout_s / 4)
        self._state = DaemonState.STOPPING
        self.stopping.set()
        self._uploader_thread.request_stop()  # it winds down while the verification in progress finishes
        self.notifier.stopping("stopping: finishing the verification in progress")
        for loop in list(self._loops.values()):
            loop.thread.join(max(0.1, loops_deadline - time.monotonic()))
            if loop.thread.is_alive():
                log.error("the %s loop did not stop in time", loop.name)
        self._uploader_thread.stop(max(0.2, (deadline - time.monotonic()) / 2))
        if self.local_api is not None:
            self.local_api.stop(max(0.2, deadline - time.monotonic()))
        self._close_drivers()
        self._state = DaemonState.STOPPED
        if self.outbox is not None:  # else the state directory itself is the problem
            self._write_status()
        still_running = any(loop.thread.is_alive() for loop in self._loops.values()) or self._uploader_thread.alive
        if self.outbox is not None and not still_running:  # else: a commit or request may still use it
            try:
                self.outbox.close()
            except Exception:
                log.debug("closing the outbox failed", exc_info=True)
        self.notifier.close()
        log.info("fvagent stopped")

    def _close_drivers(self) -> None:
        for slot in (self.reader_slot, self.camera_slot):
            if slot is not None:
                slot.close()

    def verify_once(self, timeout_s: float) -> Verification | None:
        """``fvagent verify-once``: open the outbox and drivers, wait up to ``timeout_s`` for a card,
        verify and commit it, close everything. ``None`` when no card came. Nothing is uploaded here.

        Reads go through the verification loop's ``read_card``: the same handling of a bad card and
        of a reader fault."""
        s = self.settings
        self.outbox = Outbox.open(s.storage)
        try:
            self.operator = OperatorState.for_settings(s)
            self._open_parts()
            assert self.reader_slot is not None and self.verifier is not None
            deadline = time.monotonic() + timeout_s
            while (left := deadline - time.monotonic()) > 0:
                card = read_card(self.reader_slot, min(READ_TIMEOUT_S, left), self.stopping.wait)
                if card is not None:
                    return self.verifier.verify(card, read_at=time.monotonic())
            return None
        finally:
            self._close_drivers()
            self.outbox.close()

    def reader_state(self) -> str:
        if self.reader_slot is None:
            return "not opened"
        state = self.reader_slot.state()
        return f"{state.state.value} ({state.detail or ''})"

    # ----------------------------------------------------------------------------------------------
    # The main thread

    def run(self) -> int:
        """Run until SIGTERM/SIGINT: start, supervise, stop. Returns the exit code (0 on a clean stop)."""
        with signals_to(stop=self.request_stop, reload=self.request_reload):
            try:
                self.start()
                self.supervise()
            finally:
                self.stop()
        return 0

    def supervise(self) -> None:
        """The supervisor loop of the main thread, until a stop is requested."""
        interval = self._watchdog.interval_s
        tick = min(STATUS_INTERVAL_S, interval / 4) if interval else STATUS_INTERVAL_S
        while not self.stopping.is_set():
            self._wake.wait(tick)
            self._wake.clear()
            if self.stopping.is_set():
                break
            if self._reload_requested:
                self._reload_requested = False
                self.reload()
            status = self._publish_status()
            self._status_line.send(status.line())
            self._watchdog.tick(self.stale_loops())

    def stale_loops(self) -> list[str]:
        """The loops that stopped beating (hung) or ended (crashed): the watchdog pings stop for them."""
        stale = [loop.name for loop in self._loops.values() if loop.stale]
        uploader = self._uploader_thread
        if (
            uploader.thread is not None
            and not self.stopping.is_set()
            and (not uploader.alive or not uploader.heartbeat.fresh)
        ):
            stale.append("uploader")
        return stale

    # ----------------------------------------------------------------------------------------------
    # The loops

    def _verification_loop(self, hb: Heartbeat) -> None:
        while not self.stopping.is_set():
            hb.beat()
            if self._stall_file and os.path.exists(self._stall_file):
                self._stall()  # test hook: see the module documentation
                continue
            with self._verify_lock:
                self._one_read()

    def _stall(self) -> None:
        log.warning("test hook: verification loop stalled while %s exists", self._stall_file)
        assert self._stall_file is not None
        while os.path.exists(self._stall_file) and not self.stopping.is_set():
            time.sleep(0.05)

    def _one_read(self) -> None:
        assert self.reader_slot is not None and self.verifier is not None
        card = read_card(self.reader_slot, READ_TIMEOUT_S, self.stopping.wait)
        if card is None:
            return
        done = self.verifier.verify(card, read_at=time.monotonic())
        self.last_verification = done
        self.verifications += 1
        self._wake.set()  # status now, not at the next tick

    def _housekeeping_loop(self, hb: Heartbeat) -> None:
        next_run = 0.0
        while not self.stopping.is_set():
            hb.beat()
            now = time.monotonic()
            if now >= next_run or self._held_release_due:
                self._housekeeping()
                next_run = now + HOUSEKEEPING_INTERVAL_S
            self.stopping.wait(1.0)

    def _housekeeping(self) -> None:
        assert self.outbox is not None
        try:
            self.outbox.housekeeping(self._housekeeping_now())
        except Exception as exc:
            log.warning("outbox housekeeping failed: %s", exc)
        if self._held_release_due:
            self._held_release_due = False
            self.release_held()

    def release_held(self) -> int:
        """Complete and release held records when a WLT decoder is configured. Returns how many."""
        verifier = self.verifier
        if verifier is None or verifier.decoder is None or self.outbox is None:
            return 0
        decoder = verifier.decoder
        settings = self.settings

        def complete(payload: dict[str, object], raw_wlt: bytes | None, meta: dict[str, object]) -> dict[str, object]:
            return complete_held(
                payload, raw_wlt, settings=settings, decoder=decoder, engine=lambda: self._engine.engine, meta=meta
            )

        try:
            released = int(self.outbox.release_held(complete) or 0)
        except Exception as exc:
            log.error("releasing held records failed: %s", exc)
            return 0
        if released:
            log.info("%d held record(s) completed with the WLT decoder and queued for upload", released)
        return released

    # ----------------------------------------------------------------------------------------------
    # Reload

    def reload(self) -> bool:
        """Re-read the config file; apply it, or keep the old one and log why. True when applied."""
        if self.config_path is None:
            log.warning("reload requested but the service was started without a config file")
            return False
        self.notifier.reloading()
        old = self.settings
        try:
            # Injected drivers (tests, the demo) stand in for the configured ones: do not load those.
            injected = self._reader_override is not None or self._camera_override is not None
            new = read_settings(self.config_path, old, validate_drivers=not injected)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", str(exc).replace("\n", "; "))
            self._alerts = [f"last reload refused: {exc.message}"]
            self.notifier.ready(self.status().line())
            return False
        self._alerts = []
        setup_logging(new.logging)
        changed = changed_sections(old, new)
        with self._verify_lock:  # between two verifications
            self.settings = new
            if "card_reader" in changed or "camera" in changed:
                self._close_drivers()
                self.reader_slot, self.camera_slot = wiring.driver_slots(
                    new, reader=self._reader_override, camera=self._camera_override
                )
            if "face" in changed and (
                new.face.engine != old.face.engine or new.face.mode != old.face.mode or self._engine.engine is None
            ):
                self._engine = wiring.load_face_engine(new, injected=self._engine_override)
            if self.operator is not None:
                self.operator.default = new.device.operator
            self.verifier = self._build_verifier()
            if "verification" in self._loops:
                self._loops["verification"].heartbeat.max_age_s = self._verification_max_age()
            self._uploader_thread.heartbeat.max_age_s = self._uploader_max_age()
        if "platform" in changed:
            self._hold_simulated()
        if changed & {"platform", "uploader", "device"} and self.uploader is not None:
            self.uploader.update_settings(
                platform_settings=new.platform, uploader_settings=new.uploader, device_settings=new.device
            )
        if "local_api" in changed and self._start_local_api:
            if self.local_api is not None:
                self.local_api.stop(2.0)
                self.local_api = None
            if new.local_api.enabled:
                self._start_api()
        if self.verifier is not None and self.verifier.decoder is not None:
            self._held_release_due = True
        log.info(
            "configuration reloaded from %s (changed: %s)", self.config_path, ", ".join(sorted(changed)) or "nothing"
        )
        self.notifier.ready(self._publish_status().line())
        return True

    # ----------------------------------------------------------------------------------------------
    # Status

    def live_status(self) -> LiveStatus:
        """What this process knows now: the status file's content."""
        snapshot: dict[str, object] = {}
        if self.uploader is not None:
            try:
                snapshot = dict(self.uploader.snapshot())
            except Exception as exc:
                snapshot = {"state": "unknown", "last_error": {"message": f"uploader state unreadable: {exc}"}}
        uploader_thread = self._uploader_thread
        if uploader_thread.error and not uploader_thread.alive:
            snapshot["state"] = "stopped"
            snapshot["paused_reason"] = f"the uploader stopped: {uploader_thread.error}"
        return LiveStatus(
            pid=os.getpid(),
            state=self._state,
            started_at=self.started_at,
            updated_at=time.time(),
            config=str(self.config_path) if self.config_path else None,
            platform=platform_view(snapshot, enabled=self.settings.platform.enabled),
            uploader=uploader_section(snapshot, thread_alive=uploader_thread.alive),
            hardware=self._hardware(),
            last_verification=dict(self.last_verification.summary()) if self.last_verification else None,
            verifications=self.verifications,
            local_api_url=self.local_api.url if self.local_api is not None else None,
            local_api_error=self._local_api_error,
            loops={
                loop.name: LoopView(loop.thread.is_alive(), round(loop.heartbeat.age_s, 1))
                for loop in self._loops.values()
            },
            alerts=tuple(self._live_alerts()),
        )

    def _hardware(self) -> dict[str, Part]:
        hardware: dict[str, Part] = {}
        for name, slot in (("card_reader", self.reader_slot), ("camera", self.camera_slot)):
            hardware[name] = slot.state() if slot is not None else Part(PartState.CLOSED)
        if self.settings.face.mode == "relay":
            hardware["face_engine"] = Part(PartState.OFF, "relay mode: the terminal scores")
        elif self._engine.engine is not None:
            hardware["face_engine"] = Part(PartState.OK, f"{self.settings.face.engine} loaded")
        else:
            hardware["face_engine"] = Part(PartState.FAULT, self._engine.error or "not loaded")
        decoder = self.settings.card_reader.options.get("wlt_decoder")
        hardware["wlt_decoder"] = (
            Part(PartState.OK, str(decoder))
            if decoder and self.verifier and self.verifier.decoder
            else Part(PartState.OFF, "none configured: chip photos are held until one is")
        )
        return hardware

    def _live_alerts(self) -> list[str]:
        alerts = list(self._alerts)
        if self._audit_alert:
            alerts.append(self._audit_alert)
        if self._local_api_error:
            alerts.append(f"local API: {self._local_api_error}")
        stale = self.stale_loops()
        if stale:
            alerts.append(f"stalled loop(s): {', '.join(stale)}")
        clock_alert = clock_offset_alert(self._clock_offset(), self.settings.device.max_clock_offset_s)
        if clock_alert:
            alerts.append(clock_alert)
        return alerts

    def status(self) -> Status:
        """The status, from this process's live state (GET /v1/status, STATUS=, /metrics)."""
        return build_status(self.settings, outbox=self.outbox, live=self.live_status())

    def status_line(self) -> str:
        """One line for systemd's STATUS=: queue depth, last upload, hardware state."""
        return self.status().line()

    def _publish_status(self) -> Status:
        """Rewrite the status file; the status built from the same live state."""
        live = self.live_status()
        self._write_status(live)
        return build_status(self.settings, outbox=self.outbox, live=live)

    def _write_status(self, live: LiveStatus | None = None) -> None:
        try:
            write_status_file(status_path(self.settings.storage.dir), (live or self.live_status()).to_json())
        except Exception as exc:
            log.warning("cannot write the status file: %s", exc)


__all__ = ["CARD_RETRY_PAUSE_S", "Heartbeat", "Service"]
