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

Test-only hook: ``$FVAGENT_TEST_STALL_FILE`` names a file; while it exists the verification loop
blocks without beating its heartbeat (a stalled loop, for the watchdog test). ``$FVAGENT_TEST_HEARTBEAT_S``
overrides how old a heartbeat may get. Neither is meant for production.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import __version__
from agent.events import EventBus, OperatorState
from agent.metrics import CountingClient, Metrics
from agent.service.hardware import DriverSlot
from agent.service.notify import Notifier
from agent.service.status import collect_status, iso, status_path, write_status_file
from agent.service.verification import Verification, Verifier, complete_held
from core.errors import (
    CardReadError,
    ConfigError,
    DriverError,
    FvagentError,
    ProtocolError,
)
from core.stored import RecordState
from drivers.card_reader import decode_wlt_to_jpeg

log = logging.getLogger(__name__)

CARD_RETRY_PAUSE_S = 0.5
"""Pause after a failed card read before polling again (about the time to present a card again)."""
STOP_TIMEOUT_S = 9.0
"""The whole of ``stop()`` at SIGTERM: within the 10 s the desk is promised (TimeoutStopSec is longer)."""
STOP_RESERVE_S = 2.0
"""Of that, what is kept for the uploader and the local API once the loops have had their turn."""
READ_TIMEOUT_S = 0.5
"""One read_card wait: the loop checks for stop/reload at least this often."""
STATUS_INTERVAL_S = 2.0
HOUSEKEEPING_INTERVAL_S = 60.0
STALL_FILE_ENV = "FVAGENT_TEST_STALL_FILE"
HEARTBEAT_ENV = "FVAGENT_TEST_HEARTBEAT_S"


class Heartbeat:
    """A loop's sign of life: ``beat()`` each iteration; ``fresh`` while the last beat is recent."""

    def __init__(self, name: str, max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.max_age_s = max_age_s
        self._clock = clock
        self._last = clock()

    def beat(self) -> None:
        self._last = self._clock()

    @property
    def age_s(self) -> float:
        return self._clock() - self._last

    @property
    def fresh(self) -> bool:
        return self.age_s <= self.max_age_s


@dataclasses.dataclass
class _Loop:
    name: str
    thread: threading.Thread
    heartbeat: Heartbeat


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
        settings: Any,
        *,
        config_path: str | os.PathLike[str] | None = None,
        notifier: Notifier | None = None,
        reader: Any = None,
        camera: Any = None,
        engine: Any = None,
        transport: Any = None,
        events: EventBus | None = None,
        heartbeat_max_age_s: float | None = None,
        start_local_api: bool = True,
    ) -> None:
        self.settings = settings
        self.config_path = Path(config_path) if config_path is not None else getattr(settings, "source", None)
        self.notifier = notifier or Notifier()
        self.events = events or EventBus()
        self.metrics = Metrics(self.events, self.status)
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
        self._state = "starting"
        self.started_at = time.time()
        self.outbox: Any = None
        self.uploader: Any = None
        self._uploader_stop = threading.Event()
        self._uploader_thread: threading.Thread | None = None
        self._uploader_heartbeat = Heartbeat("uploader", self._uploader_max_age())
        self._uploader_error: str | None = None
        self.reader_slot: DriverSlot | None = None
        self.camera_slot: DriverSlot | None = None
        self._engine: Any = None
        self._engine_error: str | None = None
        self.operator: OperatorState | None = None
        self.verifier: Verifier | None = None
        self.local_api: Any = None
        self._local_api_error: str | None = None
        self._loops: dict[str, _Loop] = {}
        self.last_verification: Verification | None = None
        self.verifications = 0
        self._alerts: list[str] = []
        self._last_status_line = ""
        self._last_status_sent = 0.0
        self._last_watchdog = 0.0
        self._stalled: list[str] = []
        self._held_release_due = True
        self._audit_alert: str | None = None

    # ----------------------------------------------------------------------------------------------
    # Start and stop

    def start(self) -> None:
        """Open the outbox and drivers, start the loops and the local API; send READY=1.

        Raises ``FvagentError`` only for what cannot degrade: the outbox (no place to commit
        verifications means the service must not pretend to run).
        """
        from agent.outbox.recovery import open_for_service

        s = self.settings
        self.outbox = open_for_service(s.storage)
        self._audit_alert = _audit_at_start(self.outbox)
        self._hold_simulated()
        self.operator = OperatorState.for_settings(s)
        self._open_hardware()
        self._load_engine()
        self.verifier = self._build_verifier()
        self._start_uploader()
        self._start_loop("verification", self._verification_loop, self._verification_max_age())
        self._start_loop("housekeeping", self._housekeeping_loop, self._max_age(HOUSEKEEPING_INTERVAL_S + 60))
        if self._start_local_api and s.local_api.enabled:
            self._start_api()
        self._state = "running"
        self._write_status()
        line = self.status_line()
        self.notifier.ready(line)
        log.info("fvagent %s running (config %s): %s", __version__, self.config_path, line)

    def _hold_simulated(self) -> None:
        """In production, hold what a fake driver captured earlier (e.g. before [platform]
        environment was set): the Verifier holds new ones itself."""
        if self.settings.platform.environment != "production":
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

    def _open_hardware(self) -> None:
        from drivers import registry

        s = self.settings
        reader_override, camera_override = self._reader_override, self._camera_override
        self.reader_slot = DriverSlot(
            "card_reader",
            (lambda: reader_override)
            if reader_override is not None
            else (lambda: registry.create("card_reader", s.card_reader.driver, s.card_reader.options)),
            label=f"card reader ({s.card_reader.driver})",
        )
        self.camera_slot = DriverSlot(
            "camera",
            (lambda: camera_override)
            if camera_override is not None
            else (lambda: registry.create("camera", s.camera.driver, s.camera.options)),
            label=f"camera ({s.camera.driver})",
        )
        self.reader_slot.get()
        self.camera_slot.get()

    def _load_engine(self) -> None:
        if self.settings.face.mode == "relay":
            self._engine, self._engine_error = None, None
            return
        if self._engine_override is not None:
            self._engine = self._engine_override
            return
        from agent.face import load_engine

        try:
            engine = load_engine(self.settings.face)
            engine.load()
        except FvagentError as exc:
            self._engine, self._engine_error = None, str(exc)
            log.error("face engine unavailable: %s; verifications are recorded as not verified (faceResult 2)", exc)
            return
        except Exception as exc:  # a broken model file must not stop the desk
            self._engine, self._engine_error = None, f"{type(exc).__name__}: {exc}"
            log.error("face engine failed to load: %s", self._engine_error)
            return
        self._engine, self._engine_error = engine, None

    def _decoder(self) -> Callable[[bytes], bytes] | None:
        path = self.settings.card_reader.options.get("wlt_decoder")
        if not path:
            return None
        return lambda wlt: decode_wlt_to_jpeg(wlt, path)

    def _build_verifier(self) -> Verifier:
        assert self.camera_slot is not None and self.operator is not None
        camera_slot, operator = self.camera_slot, self.operator
        return Verifier(
            self.settings,
            self.outbox,
            camera=camera_slot.get,
            camera_fault=camera_slot.fault,
            engine=lambda: self._engine,
            engine_error=lambda: self._engine_error,
            operator=operator.get,
            decoder=self._decoder(),
            events=self.events,
            stopping=self.stopping,
            clock_offset=self._clock_offset,
        )

    def _housekeeping_now(self) -> float:
        """Retention judges by the earlier of the local and the platform-corrected clock, so a local
        clock that jumped ahead never erases photos or deletes rows early."""
        now, offset = time.time(), self._clock_offset()
        return min(now, now + offset) if offset is not None else now

    def _clock_offset(self) -> float | None:
        """The platform's clock minus ours, as the uploader learnt it (``None`` while unknown)."""
        uploader = self.uploader
        return uploader.platform_clock.offset_s if uploader is not None else None

    def _client_factory(self, platform_settings: Any) -> Any:
        from agent.uplink.client import PlatformClient

        return CountingClient(PlatformClient(platform_settings, transport=self._transport), self.metrics)

    def _start_uploader(self) -> None:
        from agent.delivery import Uploader

        s = self.settings
        self.uploader = Uploader(self.outbox, self._client_factory, s.platform, s.uploader, s.device)
        self._uploader_stop = threading.Event()
        self._uploader_heartbeat.beat()  # a fresh start, whatever an earlier uploader left
        self._uploader_thread = threading.Thread(
            target=self._run_uploader, args=(self.uploader, self._uploader_stop), name="uploader", daemon=True
        )
        self._uploader_thread.start()

    def _run_uploader(self, uploader: Any, stop: threading.Event) -> None:
        try:
            uploader.run(stop, heartbeat=self._uploader_heartbeat.beat)
        except Exception as exc:
            self._uploader_error = str(exc)
            log.exception("the uploader stopped with an error")

    def _stop_uploader(self, timeout_s: float) -> None:
        self._uploader_stop.set()
        if self.uploader is not None:
            self.uploader.abort()  # a request in flight (a trickling reply) must not hold the stop
        if self._uploader_thread is not None:
            self._uploader_thread.join(timeout_s)
            if self._uploader_thread.is_alive():
                log.warning("uploader did not stop within %.0f s", timeout_s)

    def _start_api(self) -> None:
        from agent.localapi import DeskBackend, LocalApiServer
        from core.errors import LocalApiError

        assert self.operator is not None
        backend = DeskBackend(
            self.settings, self.outbox, self.events, self.operator, status_provider=self.status, metrics=self.metrics
        )
        server = LocalApiServer(self.settings.local_api, backend)
        try:
            server.start()
        except LocalApiError as exc:  # the desk keeps working without the page
            self._local_api_error = str(exc)
            log.error("local API not started: %s", exc)
            return
        self.local_api, self._local_api_error = server, None

    def _start_loop(self, name: str, target: Callable[[Heartbeat], None], max_age_s: float) -> None:
        hb = Heartbeat(name, max_age_s)

        def body() -> None:
            try:
                target(hb)
            except Exception:
                log.exception("the %s loop crashed", name)  # its heartbeat goes stale: the watchdog acts

        thread = threading.Thread(target=body, name=name, daemon=True)
        self._loops[name] = _Loop(name, thread, hb)
        thread.start()

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
        self._state = "stopping"
        self.stopping.set()
        self._uploader_stop.set()  # it winds down while the verification in progress finishes
        if self.uploader is not None:
            self.uploader.abort()  # a request in flight must not hold the stop (TimeoutStopSec)
        self.notifier.stopping("stopping: finishing the verification in progress")
        for loop in list(self._loops.values()):
            loop.thread.join(max(0.1, loops_deadline - time.monotonic()))
            if loop.thread.is_alive():
                log.error("the %s loop did not stop in time", loop.name)
        self._stop_uploader(max(0.2, (deadline - time.monotonic()) / 2))
        if self.local_api is not None:
            self.local_api.stop(max(0.2, deadline - time.monotonic()))
        for slot in (self.reader_slot, self.camera_slot):
            if slot is not None:
                slot.close()
        self._state = "stopped"
        if self.outbox is not None:  # else the state directory itself is the problem
            self._write_status()
        still_running = any(loop.thread.is_alive() for loop in self._loops.values()) or (
            self._uploader_thread is not None and self._uploader_thread.is_alive()
        )
        if self.outbox is not None and not still_running:  # else: a commit or request may still use it
            try:
                self.outbox.close()
            except Exception:
                log.debug("closing the outbox failed", exc_info=True)
        self.notifier.close()
        log.info("fvagent stopped")

    def verify_once(self, timeout_s: float) -> Verification | None:
        """``fvagent verify-once``: open the outbox and drivers, wait up to ``timeout_s`` for a card,
        verify and commit it, close everything. ``None`` when no card came. Nothing is uploaded here."""
        from agent.outbox import Outbox

        s = self.settings
        self.outbox = Outbox.open(s.storage)
        try:
            self.operator = OperatorState.for_settings(s)
            self._open_hardware()
            self._load_engine()
            self.verifier = self._build_verifier()
            assert self.reader_slot is not None
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                reader = self.reader_slot.get()
                if reader is None:
                    time.sleep(0.2)
                    continue
                try:
                    card = reader.read_card(min(READ_TIMEOUT_S, max(0.0, deadline - time.monotonic())))
                except (CardReadError, ProtocolError) as exc:
                    log.warning("card read failed, present the card again: %s", exc)
                    continue
                except Exception as exc:
                    self.reader_slot.fault(exc)
                    continue
                if card is not None:
                    return self.verifier.verify(card, read_at=time.monotonic())
            return None
        finally:
            for slot in (self.reader_slot, self.camera_slot):
                if slot is not None:
                    slot.close()
            self.outbox.close()

    def reader_state(self) -> str:
        if self.reader_slot is None:
            return "not opened"
        state = self.reader_slot.state()
        return f"{state['state']} ({state.get('detail', '')})"

    # ----------------------------------------------------------------------------------------------
    # The main thread

    def run(self) -> int:
        """Run until SIGTERM/SIGINT: start, supervise, stop. Returns the exit code (0 on a clean stop)."""
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
        try:
            self.start()
            self.supervise()
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def supervise(self) -> None:
        """The supervisor loop of the main thread, until a stop is requested."""
        interval = self.notifier.watchdog_interval_s
        tick = min(STATUS_INTERVAL_S, interval / 4) if interval else STATUS_INTERVAL_S
        while not self.stopping.is_set():
            self._wake.wait(tick)
            self._wake.clear()
            if self.stopping.is_set():
                break
            if self._reload_requested:
                self._reload_requested = False
                self.reload()
            self._write_status()
            self._send_status_line()
            self._watchdog(interval)

    def _watchdog(self, interval: float | None) -> None:
        if not interval:
            return
        stale = self.stale_loops()
        if stale:
            if stale != self._stalled:
                log.error(
                    "loop(s) %s stalled: not pinging the watchdog (systemd will restart the service)", ", ".join(stale)
                )
                self._stalled = stale
            return
        if self._stalled:
            log.warning("loop(s) %s running again: watchdog pings resume", ", ".join(self._stalled))
            self._stalled = []
        now = time.monotonic()
        if now - self._last_watchdog >= interval / 2 - 0.05 or self._last_watchdog == 0.0:
            self.notifier.watchdog()
            self._last_watchdog = now

    def stale_loops(self) -> list[str]:
        """The loops that stopped beating (hung) or ended (crashed): the watchdog pings stop for them."""
        stale = [loop.name for loop in self._loops.values() if not loop.heartbeat.fresh or not loop.thread.is_alive()]
        if (
            self._uploader_thread is not None
            and not self.stopping.is_set()
            and (not self._uploader_thread.is_alive() or not self._uploader_heartbeat.fresh)
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
        reader = self.reader_slot.get()
        if reader is None:
            self.stopping.wait(0.5)
            return
        try:
            card = reader.read_card(READ_TIMEOUT_S)
        except (CardReadError, ProtocolError) as exc:
            # The card, not the reader: the person presents it again. The pause keeps a driver that
            # raises on every poll from spinning the loop and flooding the log.
            log.warning("card read failed, present the card again: %s", exc)
            self.stopping.wait(CARD_RETRY_PAUSE_S)
            return
        except TimeoutError as exc:  # DeviceTimeout: the reader stopped answering
            self.reader_slot.fault(exc)
            return
        except (DriverError, OSError) as exc:
            self.reader_slot.fault(exc)
            return
        except Exception as exc:  # a broken driver must not end the loop
            log.exception("card reader driver failed")
            self.reader_slot.fault(f"{type(exc).__name__}: {exc}")
            return
        if card is None:
            return
        read_at = time.monotonic()
        done = self.verifier.verify(card, read_at=read_at)
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
        if verifier is None or verifier.decoder is None:
            return 0
        decoder = verifier.decoder
        settings = self.settings

        def complete(payload: dict[str, Any], raw_wlt: bytes | None, meta: dict[str, Any]) -> dict[str, Any]:
            return complete_held(
                payload, raw_wlt, settings=settings, decoder=decoder, engine=lambda: self._engine, meta=meta
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
        from agent.config import load_config
        from agent.logsetup import setup_logging

        if self.config_path is None:
            log.warning("reload requested but the service was started without a config file")
            return False
        self.notifier.reloading()
        try:
            # Injected drivers (tests, the demo) stand in for the configured ones: do not load those.
            new = load_config(
                self.config_path, validate_drivers=self._reader_override is None and self._camera_override is None
            )
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", str(exc).replace("\n", "; "))
            self._alerts = [f"last reload refused: {exc.message}"]
            self.notifier.ready(self.status_line())
            return False
        old = self.settings
        if new.storage != old.storage:
            log.warning("[storage] changes need a restart (systemctl restart fvagent); keeping the running one")
            new = new.model_copy(update={"storage": old.storage})
        self._alerts = []
        setup_logging(new.logging)
        with self._verify_lock:  # between two verifications
            self.settings = new
            changed = {
                name
                for name in ("card_reader", "camera", "face", "platform", "uploader", "device", "local_api")
                if getattr(new, name) != getattr(old, name)
            }
            if "card_reader" in changed or "camera" in changed:
                for slot in (self.reader_slot, self.camera_slot):
                    if slot is not None:
                        slot.close()
                self._open_hardware()
            if "face" in changed and (
                new.face.engine != old.face.engine or new.face.mode != old.face.mode or self._engine is None
            ):
                self._load_engine()
            if self.operator is not None:
                self.operator.default = new.device.operator
            self.verifier = self._build_verifier()
            if "verification" in self._loops:
                self._loops["verification"].heartbeat.max_age_s = self._verification_max_age()
            self._uploader_heartbeat.max_age_s = self._uploader_max_age()
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
        self._write_status()
        self.notifier.ready(self.status_line())
        return True

    # ----------------------------------------------------------------------------------------------
    # Status

    def live_status(self) -> dict[str, Any]:
        """What this process knows now: the status file's content."""
        platform, uploader = self._uploader_state()
        hardware: dict[str, Any] = {}
        for name, slot in (("card_reader", self.reader_slot), ("camera", self.camera_slot)):
            hardware[name] = slot.state() if slot is not None else {"state": "closed"}
        if self.settings.face.mode == "relay":
            hardware["face_engine"] = {"state": "off", "detail": "relay mode: the terminal scores"}
        elif self._engine is not None:
            hardware["face_engine"] = {"state": "ok", "detail": f"{self.settings.face.engine} loaded"}
        else:
            hardware["face_engine"] = {"state": "fault", "detail": self._engine_error or "not loaded"}
        decoder = self.settings.card_reader.options.get("wlt_decoder")
        hardware["wlt_decoder"] = (
            {"state": "ok", "detail": str(decoder)}
            if decoder and self.verifier and self.verifier.decoder
            else {"state": "off", "detail": "none configured: chip photos are held until one is"}
        )
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
        return {
            "pid": os.getpid(),
            "version": __version__,
            "state": self._state,
            "started_at": self.started_at,
            "updated_at": time.time(),
            "config": str(self.config_path) if self.config_path else None,
            "platform": platform,
            "uploader": uploader,
            "hardware": hardware,
            "last_verification": self.last_verification.summary() if self.last_verification else None,
            "verifications": self.verifications,
            "local_api": {
                "url": self.local_api.url if self.local_api is not None else None,
                "error": self._local_api_error,
            },
            "loops": {
                loop.name: {"alive": loop.thread.is_alive(), "heartbeat_age_s": round(loop.heartbeat.age_s, 1)}
                for loop in self._loops.values()
            },
            "alerts": alerts,
        }

    def _uploader_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(platform, uploader) sections of the status, from the uploader's ``snapshot()``."""
        snap: dict[str, Any] = {}
        if self.uploader is not None:
            try:
                snap = dict(self.uploader.snapshot())
            except Exception as exc:
                snap = {"state": "unknown", "last_error": {"message": f"uploader state unreadable: {exc}"}}
        thread_alive = self._uploader_thread is not None and self._uploader_thread.is_alive()
        if self._uploader_error and not thread_alive:
            snap["state"] = "stopped"
            snap["paused_reason"] = f"the uploader stopped: {self._uploader_error}"
        last_success, last_error = snap.get("last_success") or {}, snap.get("last_error") or {}
        registration = snap.get("registration") or {}
        # Reachable: the latest answer we got. Accepted and rejected records, and any registration
        # answer but "retryable", mean the platform answered; a retryable failure means it did not.
        events = [(float(last_success.get("at") or 0), True)]
        if last_error:
            events.append((float(last_error.get("at") or 0), last_error.get("outcome") != "retryable"))
        if registration.get("last_attempt_at"):
            events.append((float(registration["last_attempt_at"]), registration.get("outcome") != "retryable"))
        at, answered = max(events)
        reachable: bool | None = answered if at > 0 else None
        if not self.settings.platform.enabled:
            state = "disabled"
        elif snap.get("blocked"):
            state = "blocked"
        elif reachable is True:
            state = "ok"
        elif reachable is False:
            state = "down"
        else:
            state = "unknown"
        platform = {
            "reachable": reachable,
            "state": state,
            "blocked": bool(snap.get("blocked")),
            "blocked_reason": snap.get("blocked_reason"),
            "checked_at": iso(at) if at else None,
        }
        uploader = {k: _jsonable(v) for k, v in snap.items() if k != "registration"}
        for key in ("last_success", "last_error"):
            value = snap.get(key)
            if isinstance(value, dict) and value.get("at"):
                uploader[key] = {**_jsonable(value), "at": iso(value["at"])}
        uploader.setdefault("state", "running" if thread_alive else "stopped")
        return platform, uploader

    def status(self) -> dict[str, Any]:
        """The full status document, from this process's live state (GET /v1/status)."""
        return collect_status(self.settings, outbox=self.outbox, live=self.live_status())

    def _write_status(self) -> None:
        try:
            write_status_file(status_path(self.settings.storage.dir), self.live_status())
        except Exception as exc:
            log.warning("cannot write the status file: %s", exc)

    def status_line(self) -> str:
        """One line for systemd's STATUS=: queue depth, last upload, hardware state."""
        try:
            stats = dict(self.outbox.stats()) if self.outbox is not None else {}
        except Exception:
            stats = {}
        depth = sum(int(stats.get(state, 0) or 0) for state in RecordState if state.unsent)
        platform, uploader = self._uploader_state()
        last = uploader.get("last_success")
        last_at = last.get("at") if isinstance(last, dict) else None
        parts = [
            f"queue {depth}",
            f"last upload {str(last_at)[11:19] if last_at else 'none'}",
            f"platform {platform['state']}",
        ]
        for name, slot in (("reader", self.reader_slot), ("camera", self.camera_slot)):
            if slot is not None:
                parts.append(f"{name} {slot.state()['state']}")
        if self.settings.face.mode != "relay":
            parts.append("face " + ("ok" if self._engine is not None else "fault"))
        parts.append(f"{self.verifications} verified")
        return ", ".join(parts)

    def _send_status_line(self) -> None:
        line = self.status_line()
        now = time.monotonic()
        if line != self._last_status_line or now - self._last_status_sent > 30:
            self.notifier.status(line)
            self._last_status_line, self._last_status_sent = line, now


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


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


__all__ = ["Heartbeat", "Service"]


def _audit_at_start(outbox: Any) -> str | None:
    """Make the audit signing key on first start and check the newest events of the chain (bounded
    time). A broken chain is an alert, never a reason to stop capturing."""
    from agent.audit import signing
    from agent.audit.verify import verify_outbox

    try:
        signing.ensure(outbox.storage.dir)
        report = verify_outbox(outbox, full=False)
    except Exception as exc:  # the desk is never blocked by the audit
        log.error("audit check at start failed: %s", exc)
        return f"audit: the check at start failed: {exc}"
    if report.ok:
        log.info("audit chain at start: %s", report.summary())
        return None
    log.error("audit chain at start: %s", report.summary())
    return f"audit: {report.problems[0]} (run `fvagent audit verify`)"
