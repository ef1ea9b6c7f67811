"""Running the parts: loop threads with heartbeats, the watchdog, the card read, and reloads.

- ``Heartbeat`` and ``LoopThread``: a loop beats once an iteration; a loop that stops beating (hung)
  or ends (crashed) is stale, and the watchdog stops pinging for it, so systemd restarts the service.
- ``UploaderThread``: the uploader's ``run()`` in its own thread, with its heartbeat and the error it
  stopped with.
- ``read_card``: one card read with the reader's error handling, shared by the verification loop and
  ``fvagent verify-once``.
- ``Watchdog`` and ``StatusLine``: what the main thread sends systemd each tick.
- ``signals_to``: SIGTERM/SIGINT as a stop, SIGHUP as a reload, while the service runs.
- ``read_settings`` and ``changed_sections``: the config file re-read at a reload, and what changed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from agent.config import Settings, load_config
from agent.service.hardware import DriverSlot
from agent.service.notify import Notifier
from core.card import IdCard
from core.errors import CardReadError, DriverError, ProtocolError
from drivers.base import CardReader

log = logging.getLogger(__name__)

CARD_RETRY_PAUSE_S = 0.5
"""Pause after a failed card read before polling again (about the time to present a card again)."""
READ_TIMEOUT_S = 0.5
"""One read_card wait: the loop checks for stop/reload at least this often."""
NO_READER_PAUSE_S = 0.5
"""Pause while the reader is faulty and not yet due to be reopened."""
RELOADABLE_SECTIONS = ("card_reader", "camera", "face", "platform", "uploader", "device", "local_api")
"""The sections a reload applies; ``[storage]`` needs a restart."""


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
class LoopThread:
    """A named loop running in its own thread, and its heartbeat."""

    name: str
    thread: threading.Thread
    heartbeat: Heartbeat

    @property
    def stale(self) -> bool:
        return not self.heartbeat.fresh or not self.thread.is_alive()


def start_loop(name: str, target: Callable[[Heartbeat], None], max_age_s: float) -> LoopThread:
    """Run ``target(heartbeat)`` in a daemon thread. A crash is logged; its heartbeat then goes stale
    and the watchdog acts."""
    heartbeat = Heartbeat(name, max_age_s)

    def body() -> None:
        try:
            target(heartbeat)
        except Exception:
            log.exception("the %s loop crashed", name)

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    return LoopThread(name, thread, heartbeat)


def read_card(reader_slot: DriverSlot[CardReader], timeout_s: float, pause: Callable[[float], object]) -> IdCard | None:
    """One read of up to ``timeout_s``: the card, or ``None`` (no card, or a failure handled here).

    A card that could not be read (``CardReadError``, ``ProtocolError``) is the card's problem, not
    the reader's: the person presents it again, after ``pause(CARD_RETRY_PAUSE_S)``, which keeps a
    driver that raises on every poll from spinning the loop and flooding the log. A reader that
    stopped answering, or failed any other way, is a fault of its slot: it is reopened with backoff.
    ``pause`` is the stop event's ``wait``, so a stop cuts it short.
    """
    reader = reader_slot.get()
    if reader is None:
        pause(NO_READER_PAUSE_S)
        return None
    try:
        return reader.read_card(timeout_s)
    except (CardReadError, ProtocolError) as exc:
        log.warning("card read failed, present the card again: %s", exc)
        pause(CARD_RETRY_PAUSE_S)
    except (DriverError, OSError) as exc:  # DeviceTimeout included: the reader stopped answering
        reader_slot.fault(exc)
    except Exception as exc:  # a broken driver must not end the loop
        log.exception("card reader driver failed")
        reader_slot.fault(f"{type(exc).__name__}: {exc}")
    return None


class Runnable(Protocol):
    """What ``UploaderThread`` needs from the uploader."""

    def run(self, stop: threading.Event, *, heartbeat: Callable[[], None] | None = None) -> None: ...

    def abort(self) -> None: ...


class UploaderThread:
    """The uploader's ``run()`` in a thread of its own, until ``stop()``.

    ``error`` is what it stopped with when ``run()`` raised; ``heartbeat`` is beaten by ``run()``.
    """

    def __init__(self, heartbeat: Heartbeat) -> None:
        self.heartbeat = heartbeat
        self.error: str | None = None
        self.thread: threading.Thread | None = None
        self._uploader: Runnable | None = None
        self._stop = threading.Event()

    def start(self, uploader: Runnable) -> None:
        self._uploader, self._stop = uploader, threading.Event()
        self.heartbeat.beat()  # a fresh start, whatever an earlier uploader left
        self.thread = threading.Thread(target=self._run, args=(uploader, self._stop), name="uploader", daemon=True)
        self.thread.start()

    def _run(self, uploader: Runnable, stop: threading.Event) -> None:
        try:
            uploader.run(stop, heartbeat=self.heartbeat.beat)
        except Exception as exc:
            self.error = str(exc)
            log.exception("the uploader stopped with an error")

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def request_stop(self) -> None:
        """Ask it to wind down now; a request in flight (a trickling reply) is cut, so it cannot hold
        the stop past systemd's TimeoutStopSec."""
        self._stop.set()
        if self._uploader is not None:
            self._uploader.abort()

    def stop(self, timeout_s: float) -> None:
        self.request_stop()
        if self.thread is not None:
            self.thread.join(timeout_s)
            if self.thread.is_alive():
                log.warning("uploader did not stop within %.0f s", timeout_s)


class Watchdog:
    """Sends ``WATCHDOG=1`` every half interval, but only while no loop is stale."""

    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier
        self._stalled: list[str] = []
        self._last_ping = 0.0

    @property
    def interval_s(self) -> float | None:
        """``$WATCHDOG_USEC`` as the notifier read it; ``None``: no watchdog, no pings."""
        return self._notifier.watchdog_interval_s

    def tick(self, stale: list[str]) -> None:
        interval = self.interval_s
        if not interval:
            return
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
        if now - self._last_ping >= interval / 2 - 0.05 or self._last_ping == 0.0:
            self._notifier.watchdog()
            self._last_ping = now


class StatusLine:
    """Sends systemd's ``STATUS=`` line when it changes, and at least every ``refresh_s``."""

    def __init__(self, notifier: Notifier, refresh_s: float = 30.0) -> None:
        self._notifier = notifier
        self._refresh_s = refresh_s
        self._last_line = ""
        self._last_sent = 0.0

    def send(self, line: str) -> None:
        now = time.monotonic()
        if line != self._last_line or now - self._last_sent > self._refresh_s:
            self._notifier.status(line)
            self._last_line, self._last_sent = line, now


@contextlib.contextmanager
def signals_to(*, stop: Callable[[], None], reload: Callable[[], None]) -> Iterator[None]:
    """SIGTERM and SIGINT call ``stop``, SIGHUP ``reload``, inside the ``with``; the previous handlers
    are put back after it."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    signal.signal(signal.SIGTERM, lambda *_: stop())
    signal.signal(signal.SIGINT, lambda *_: stop())
    signal.signal(signal.SIGHUP, lambda *_: reload())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def read_settings(config_path: Path, running: Settings, *, validate_drivers: bool) -> Settings:
    """The config file re-read for a reload, ``[storage]`` kept from ``running`` (it needs a restart).
    Raises ``ConfigError``: the caller keeps the running configuration."""
    new = load_config(config_path, validate_drivers=validate_drivers)
    if new.storage != running.storage:
        log.warning("[storage] changes need a restart (systemctl restart fvagent); keeping the running one")
        new = new.model_copy(update={"storage": running.storage})
    return new


def changed_sections(old: Settings, new: Settings) -> set[str]:
    """The reloadable sections whose settings differ."""
    return {name for name in RELOADABLE_SECTIONS if getattr(new, name) != getattr(old, name)}
