"""In-process events for the live operator page, and the current operator of the desk.

``EventBus`` is a small thread-safe publish/subscribe hub. The service's loops publish from their
own threads (``publish("verification", {"id": 12})``); the local API's server-sent-events handler
consumes from asyncio (``await subscription.next_event(timeout_s)``). Each subscriber has a bounded
queue: a slow or stalled client loses its oldest events, never blocks a publisher and never grows
memory. The bus also keeps the last few events so a page that connects (or reconnects with
``Last-Event-ID``) sees the recent history at once.

``OperatorState`` holds the operationUser stamped on the following verifications. The desk sets it
(PUT /v1/operator); it survives restarts in a small file in the state directory; until someone sets
it, it is ``[device] operator``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.files import replace_private_file
from core.privacy import mask_name
from core.records import validate_operator

if TYPE_CHECKING:
    from agent.config import Settings

log = logging.getLogger(__name__)

VERIFICATION = "verification"
"""Event kind published after each committed verification: ``{"id": outbox_id, "reason": str | None}``."""
STATUS = "status"
"""Event kind for a change of service state (hardware, platform): any small JSON-able dict."""


@dataclasses.dataclass(frozen=True)
class Event:
    """One published event. ``seq`` increases by one per event on its bus (usable as an SSE id)."""

    seq: int
    kind: str
    data: dict[str, Any]  # Any: JSON values that each subscriber reads by name (publish checks it is a dict)
    time: float
    """Wall-clock time of publishing, epoch seconds."""


class Subscription:
    """One subscriber's bounded queue of events. Use from threads (``get``) or asyncio (``next_event``).

    When the queue is full the oldest event is dropped and ``dropped`` counts it. ``close()`` (or
    leaving a ``with`` block) unsubscribes; a closed subscription returns ``None`` at once.
    """

    def __init__(self, bus: EventBus, max_queue: int) -> None:
        self._bus = bus
        self._queue: collections.deque[Event] = collections.deque(maxlen=max_queue)
        self._cond = threading.Condition()
        self._wakers: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self.dropped = 0
        self.closed = False

    # -- called by the bus, from any thread ------------------------------------------------------
    def _push(self, event: Event) -> None:
        with self._cond:
            if self.closed:
                return
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1  # deque(maxlen) drops the oldest on append
            self._queue.append(event)
            self._cond.notify_all()
            wakers = list(self._wakers)
        for loop, flag in wakers:
            try:
                loop.call_soon_threadsafe(flag.set)
            except RuntimeError:  # that loop has closed; its waiter is gone
                pass

    # -- consumers --------------------------------------------------------------------------------
    def get_nowait(self) -> Event | None:
        """The next queued event, or ``None`` when the queue is empty."""
        with self._cond:
            return self._queue.popleft() if self._queue else None

    def get(self, timeout_s: float) -> Event | None:
        """Block up to ``timeout_s`` for the next event; ``None`` when none came or when closed."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._cond:
            while not self._queue and not self.closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return self._queue.popleft() if self._queue else None

    async def next_event(self, timeout_s: float) -> Event | None:
        """Await up to ``timeout_s`` for the next event without blocking the event loop."""
        event = self.get_nowait()
        if event is not None or self.closed:
            return event
        loop = asyncio.get_running_loop()
        flag = asyncio.Event()
        with self._cond:
            self._wakers.append((loop, flag))
        try:
            event = self.get_nowait()  # an event may have arrived before the waker was registered
            if event is not None:
                return event
            try:
                await asyncio.wait_for(flag.wait(), timeout=max(0.0, timeout_s))
            except TimeoutError:
                return None
            return self.get_nowait()
        finally:
            with self._cond:
                self._wakers.remove((loop, flag))

    def close(self) -> None:
        """Unsubscribe. Idempotent; wakes anyone waiting."""
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self._cond.notify_all()
            wakers = list(self._wakers)
        for loop, flag in wakers:
            try:
                loop.call_soon_threadsafe(flag.set)
            except RuntimeError:
                pass
        self._bus._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)


class EventBus:
    """Thread-safe publish/subscribe of small JSON-able events.

    ``max_queue`` bounds each subscriber's queue (oldest dropped first); ``history`` is how many
    recent events the bus keeps for replay to new subscribers.
    """

    def __init__(self, *, max_queue: int = 100, history: int = 50) -> None:
        if max_queue < 1 or history < 0:
            raise ValueError("max_queue must be >= 1 and history >= 0")
        self._lock = threading.Lock()
        self._subs: list[Subscription] = []
        self._history: collections.deque[Event] = collections.deque(maxlen=history or None)
        self._history_size = history
        self._max_queue = max_queue
        self._seq = 0
        self.instance_id = os.urandom(4).hex()
        """Differs between runs, so a client's remembered ``seq`` from an earlier run is not mistaken for this one's."""

    def publish(self, kind: str, data: Mapping[str, object]) -> Event:
        """Deliver ``data`` as an event of ``kind`` to every subscriber. Never blocks; returns the event.

        ``data`` must be JSON-serialisable and must hold no unmasked personal data or photos: it can
        be replayed to any page that is allowed to watch.
        """
        if not isinstance(kind, str) or not kind:
            raise ValueError("event kind must be a non-empty string")
        if not isinstance(data, dict):
            raise TypeError(f"event data must be a dict, not {type(data).__name__}")
        with self._lock:
            self._seq += 1
            event = Event(self._seq, kind, dict(data), time.time())
            if self._history_size:
                self._history.append(event)
            subs = list(self._subs)
        for sub in subs:
            sub._push(event)
        return event

    def subscribe(self, *, replay_after: int | None = None, max_queue: int | None = None) -> Subscription:
        """A new subscription. With ``replay_after=N`` it starts with the kept events whose seq > N
        (``0`` replays all the kept history; ``None`` none)."""
        sub = Subscription(self, max_queue or self._max_queue)
        with self._lock:
            if replay_after is not None:
                for event in self._history:
                    if event.seq > replay_after:
                        sub._push(event)
            self._subs.append(sub)
        return sub

    def recent(self, kind: str | None = None, limit: int = 10) -> list[Event]:
        """The last ``limit`` kept events (of ``kind`` when given), oldest first."""
        with self._lock:
            events = [e for e in self._history if kind is None or e.kind == kind]
        return events[-limit:] if limit > 0 else []

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._seq

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subs)

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)


# --------------------------------------------------------------------------------------------------
# The desk's operator

OPERATOR_FILE = "operator.json"


class OperatorState:
    """The operationUser for the following verifications, persisted in ``path``.

    ``get()`` returns the operator set last, or ``default`` (``[device] operator``) when none was
    set or the file is unreadable (logged once, never fatal: the desk must not be blocked).
    ``set(name)`` validates, writes the file atomically (temp file, fsync, rename) and returns the
    stored value; it raises ``ValueError`` for a bad name and ``OSError`` when the file cannot be
    written (the value is then not changed).
    """

    def __init__(self, path: Path, default: str) -> None:
        self.path = Path(path)
        self.default = validate_operator(default)
        self._lock = threading.Lock()
        self._value = self._load()

    @classmethod
    def for_settings(cls, settings: Settings) -> OperatorState:
        """The state of the configured agent: ``<storage.dir>/operator.json``, default ``[device] operator``."""
        return cls(Path(settings.storage.dir) / OPERATOR_FILE, settings.device.operator)

    def _load(self) -> str | None:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            return validate_operator(raw["operator"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("operator file %s is unreadable (%s); using the default operator", self.path, exc)
            return None

    def get(self) -> str:
        with self._lock:
            return self._value or self.default

    @property
    def is_default(self) -> bool:
        with self._lock:
            return self._value is None

    def set(self, name: str) -> str:
        value = validate_operator(name)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = json.dumps({"operator": value, "set_at": time.time()}, ensure_ascii=False)
            replace_private_file(self.path, data.encode("utf-8"))
            self._value = value
        log.info("operator set to %s", mask_name(value))
        return value
