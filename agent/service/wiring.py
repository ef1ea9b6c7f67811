"""Building the daemon's parts from ``Settings``: construction only, no threads and no loops.

Each function builds one part the way ``Service`` uses it: the driver slots (or the injected
drivers), the face engine, the WLT decoder, the ``Verifier``, the platform client, the uploader
and the local API. ``supervision`` runs them; ``service.Service`` composes the two.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

import httpx

from agent.audit import signing
from agent.audit.verify import verify_outbox
from agent.config import PlatformSettings, Settings
from agent.delivery import Uploader
from agent.events import EventBus, OperatorState
from agent.face.engine import FaceEngine
from agent.localapi.backend import DeskBackend, StatusSource
from agent.localapi.server import LocalApiServer
from agent.metrics import CountingClient, Metrics
from agent.outbox import Outbox
from agent.service.hardware import DriverSlot
from agent.service.verification import Verifier
from agent.uplink.client import PlatformClient
from core.errors import ConfigError, FvagentError
from drivers import registry
from drivers.base import Camera, CardReader
from drivers.card_reader import decode_wlt_to_jpeg

log = logging.getLogger(__name__)


def driver_slots(
    settings: Settings, *, reader: CardReader | None = None, camera: Camera | None = None
) -> tuple[DriverSlot[CardReader], DriverSlot[Camera]]:
    """(card reader slot, camera slot), each opened once now; a driver handed in stands in for the
    configured one (tests, the demo)."""
    reader_section, camera_section = settings.card_reader, settings.camera

    def make_reader() -> CardReader:
        if reader is not None:
            return reader
        driver = registry.create("card_reader", reader_section.driver, reader_section.options)
        if not isinstance(driver, CardReader):  # the registry builds any kind: say which is wrong
            raise ConfigError(f"[card_reader] driver {reader_section.driver!r} is not a card reader")
        return driver

    def make_camera() -> Camera:
        if camera is not None:
            return camera
        driver = registry.create("camera", camera_section.driver, camera_section.options)
        if not isinstance(driver, Camera):
            raise ConfigError(f"[camera] driver {camera_section.driver!r} is not a camera")
        return driver

    reader_slot = DriverSlot("card_reader", make_reader, label=f"card reader ({reader_section.driver})")
    camera_slot = DriverSlot("camera", make_camera, label=f"camera ({camera_section.driver})")
    reader_slot.get()
    camera_slot.get()
    return reader_slot, camera_slot


@dataclasses.dataclass(frozen=True)
class EngineLoad:
    """The face engine, or why there is none (``error``; both ``None`` in relay mode)."""

    engine: FaceEngine | None
    error: str | None = None


def load_face_engine(settings: Settings, *, injected: FaceEngine | None = None) -> EngineLoad:
    """The configured face engine, loaded. Never raises: a missing or broken engine is an
    ``EngineLoad`` with an error, and verifications are then recorded with faceResult 2."""
    if settings.face.mode == "relay":
        return EngineLoad(None)
    if injected is not None:
        return EngineLoad(injected)
    from agent.face import load_engine  # late: the engine pulls in dlib or onnxruntime

    try:
        engine = load_engine(settings.face)
        engine.load()
    except FvagentError as exc:
        log.error("face engine unavailable: %s; verifications are recorded as not verified (faceResult 2)", exc)
        return EngineLoad(None, str(exc))
    except Exception as exc:  # a broken model file must not stop the desk
        error = f"{type(exc).__name__}: {exc}"
        log.error("face engine failed to load: %s", error)
        return EngineLoad(None, error)
    return EngineLoad(engine)


def wlt_decoder(settings: Settings) -> Callable[[bytes], bytes] | None:
    """``wlt bytes -> JPEG`` through ``[card_reader] wlt_decoder``, or ``None`` when none is configured."""
    path = settings.card_reader.options.get("wlt_decoder")
    if not path:
        return None
    return lambda wlt: decode_wlt_to_jpeg(wlt, path)


def build_verifier(
    settings: Settings,
    outbox: Outbox,
    *,
    camera_slot: DriverSlot[Camera],
    engine: Callable[[], FaceEngine | None],
    engine_error: Callable[[], str | None],
    operator: OperatorState,
    events: EventBus,
    stopping: threading.Event,
    clock_offset: Callable[[], float | None],
) -> Verifier:
    """The ``Verifier`` over the camera slot; ``engine`` is read at each verification, so a reload
    that loads another engine needs no new verifier."""
    return Verifier(
        settings,
        outbox,
        camera=camera_slot.get,
        camera_fault=camera_slot.fault,
        engine=engine,
        engine_error=engine_error,
        operator=operator.get,
        decoder=wlt_decoder(settings),
        events=events,
        stopping=stopping,
        clock_offset=clock_offset,
    )


def platform_client_factory(
    metrics: Metrics, transport: httpx.BaseTransport | None = None
) -> Callable[[PlatformSettings], CountingClient]:
    """What the uploader calls to build (and, after a reload, rebuild) its platform client. ``transport``
    is an httpx transport (tests hand in a mock one)."""

    def make(platform: PlatformSettings) -> CountingClient:
        return CountingClient(PlatformClient(platform, transport=transport), metrics)

    return make


def build_uploader(
    settings: Settings, outbox: Outbox, client_factory: Callable[[PlatformSettings], CountingClient]
) -> Uploader:
    return Uploader(outbox, client_factory, settings.platform, settings.uploader, settings.device)


def start_local_api(
    settings: Settings,
    outbox: Outbox,
    events: EventBus,
    operator: OperatorState,
    *,
    status: StatusSource,
    metrics: Metrics,
) -> LocalApiServer:
    """The local API, started. Raises ``LocalApiError`` when it cannot listen (the desk keeps working
    without the page: the caller reports it)."""
    backend = DeskBackend(settings, outbox, events, operator, status_provider=status, metrics=metrics)
    server = LocalApiServer(settings.local_api, backend)
    server.start()
    return server


def audit_at_start(outbox: Outbox) -> str | None:
    """Make the audit signing key on first start and check the newest events of the chain (bounded
    time). The alert for a broken chain, or ``None``: a broken chain never stops the capturing."""
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


__all__ = [
    "EngineLoad",
    "audit_at_start",
    "build_uploader",
    "build_verifier",
    "driver_slots",
    "load_face_engine",
    "platform_client_factory",
    "start_local_api",
    "wlt_decoder",
]
