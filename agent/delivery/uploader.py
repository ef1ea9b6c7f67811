"""The uploader: drains the outbox to the platform, oldest first, politely.

- a global cap on requests per second (``[uploader] max_rps``, evenly spaced) and at most
  ``concurrency`` requests in flight, registration included;
- per record, exponential backoff with full jitter (``backoff_initial_s`` .. ``backoff_max_s``,
  Retry-After honoured); while the platform keeps failing, a global backoff on the same curve, with
  one probe request at a time, so a long backlog never becomes a retry storm;
- the outcome classes: accepted -> sent; rejected -> kept as rejected with the reason;
  blocked -> every upload paused (records stay pending) until the ``[platform]`` configuration
  changes (its fingerprint is stored with the pause, so a restart does not resume by itself);
  retryable -> back off; clock (timestamp expired) -> retried with the platform-corrected time,
  no global backoff; unregistered -> register again, then retry the record;
- ``[device] status = 1`` (停用): registration goes on, uploads are held with that reason;
- ``verify_response_sign = "after-first"``: once this platform sent a valid signed reply, that fact
  is stored in the outbox (per base URL and org app id) and every later unsigned reply is refused;
- a request that outlives its whole-request deadline (plus a grace) stops the heartbeat, so the
  watchdog sees a stuck uploader; at stop, requests in flight are aborted (``client.abort()``);
- registration (POST /machine/info) before the first upload and whenever ``[device]`` (or the
  platform's URL / org app id) changes, again every ``register_refresh_h``; records queue meanwhile;
- ``[platform] enabled = false``: nothing is sent, everything stays queued.

Every attempt is a fresh request (new request id, sendTime and signature, made by the client); the
outbox keeps one attempts row per try with its request id.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import enum
import errno
import fcntl
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, TypedDict

from agent.config import DeviceSettings, PlatformSettings, UploaderSettings
from agent.outbox.registration import (
    device_fingerprint,
    platform_fingerprint,
    platform_identity_fingerprint,
)
from agent.outbox.settings_store import RegistrationState
from agent.outbox.store import Claim, Outbox
from agent.repeats import Repeats
from agent.uplink.clock import PlatformClock
from core.backoff import Backoff
from core.clock import Clock
from core.errors import OutboxCorrupt, OutboxError, PlatformDisabled, RecordError
from core.outcome import Outcome, OutcomeKind
from core.protocols import PlatformClient
from core.records import registration_payload

log = logging.getLogger(__name__)

UPLOADER_LOCK = "uploader.lock"
STUCK_GRACE_S = 10.0
"""A request still running this long after its whole-request deadline is stuck (e.g. in a DNS
lookup, which no socket timeout bounds): the uploader stops beating its heartbeat."""
STOP_WAIT_S = 3.0
"""At stop, how long aborted requests get to record their outcome before the uploader returns."""
SIGNED_STATE = "signed_replies"
CLOCK_STEP_MARGIN_S = 5.0
"""A retry time more than ``backoff_max_s`` plus this ahead was set by a wrong wall clock (it is due at
once). The margin covers a result stored while a claim waited to write: its retry time counts from
a slightly later now than the claim's, which is no clock step."""

ClientFactory = Callable[[PlatformSettings], PlatformClient]
"""Makes the platform client for a ``[platform]`` configuration (again after each reload)."""

EventWait = Callable[[threading.Event, float], bool]
"""Blocks until the event is set or ``timeout_s`` passed; True when it was set. The uploader's
timed waits go through one, so a test with a fake clock can let the time pass instead of sleeping."""


def wait_on_event(event: threading.Event, timeout_s: float) -> bool:
    """The real ``EventWait``."""
    return event.wait(timeout_s)


class RateLimiter:
    """At most ``rate`` starts per second: consecutive starts at least 1/rate s apart, measured from
    the actual start (a late wake-up never lets the next one catch up), shared by all threads."""

    MARGIN = 1.02
    """Spacing is 2 % wider than 1/rate, so the platform, whose clock sees our requests with a few
    ms of jitter, never counts more than ``rate`` in any one-second window."""

    def __init__(
        self, rate: float, *, monotonic: Clock = time.monotonic, wait_event: EventWait = wait_on_event
    ) -> None:
        self.interval = self.MARGIN / rate
        self._monotonic = monotonic
        self._wait_event = wait_event
        self._never = threading.Event()
        """Waited on when the caller gives no stop event: a plain sleep through the same seam."""
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self, stop: threading.Event | None = None) -> bool:
        """Block until the next start is allowed; False when ``stop`` was set first."""
        with self._lock:  # callers queue here, so each start is measured from the one before
            delay = self._next - self._monotonic()
            if delay > 0 and self._wait_event(stop if stop is not None else self._never, delay):
                return False
            self._next = self._monotonic() + self.interval
            return True


class UploaderState(enum.StrEnum):
    """What the uploader is doing, for status pages (``paused_reason`` says why when it is not sending)."""

    STARTING = "starting"
    IDLE = "idle"
    SENDING = "sending"
    BACKOFF = "backoff"
    """The platform is failing: the next try waits (``backoff_until``)."""
    PAUSED = "paused"
    """Held by something here: registration, the outbox, the client's setup, ``[device] status = 1``."""
    BLOCKED = "blocked"
    """The platform refused our configuration: nothing is sent until ``[platform]`` changes."""
    DISABLED = "disabled"
    """``[platform] enabled = false``."""
    STOPPED = "stopped"


FinishKind = OutcomeKind | Literal["local"]
"""How an attempt ended, as ``Outbox.finish`` records it: the platform's outcome, or ``local`` when
the record could not even be read here (it is set aside as rejected)."""


class LastSuccess(TypedDict):
    at: float
    """Local epoch seconds."""
    id: int
    """The record's outbox id."""
    request_id: str


class LastError(TypedDict):
    at: float
    id: int
    outcome: FinishKind
    message: str
    request_id: str | None
    """``None`` when no request was made (``local``)."""


class ClockState(TypedDict):
    offset_s: float | None
    """The platform's clock minus ours, learnt from its replies (``None`` while unknown)."""
    measured_at: float | None
    signs_with_platform_time: bool
    platform_signs_replies: bool


class UploaderSnapshot(TypedDict):
    """The uploader for ``fvagent status`` (see ``Uploader.snapshot``)."""

    state: UploaderState
    paused_reason: str | None
    blocked: bool
    clock: ClockState
    blocked_reason: str | None
    last_success: LastSuccess | None
    last_error: LastError | None
    rate_rps: float
    backoff_until: float | None
    max_rps: float
    concurrency: int
    registration: dict[str, Any]
    """The outbox's stored registration state (``Outbox.registration_state``), a JSON object."""


@dataclasses.dataclass(frozen=True)
class Step:
    """What one round of the upload loop did, and how long the loop waits before the next."""

    sent: int
    """Records handed to the workers this round (their requests may still be running)."""
    wait_s: float = 0.0
    """How long to wait before the next round; 0: go on at once."""
    wake_on_record: bool = False
    """Whether a newly queued record ends that wait early (the loop was idle); a pause, a backoff or
    a switched-off platform waits it out."""


@dataclasses.dataclass(frozen=True)
class _Result:
    """How one attempt ended, as ``Outbox.finish`` takes it; kept in memory while it cannot be stored."""

    claim: Claim
    kind: FinishKind
    message: str
    request_id: str | None = None
    http_status: int | None = None
    exception_code: str | None = None
    next_attempt_at: float | None = None
    now: float | None = None
    return_time_ms: int | None = None


@dataclasses.dataclass
class _Observed:
    state: UploaderState = UploaderState.STARTING
    paused_reason: str | None = None
    last_success: LastSuccess | None = None
    last_error: LastError | None = None
    backoff_until: float | None = None


class Uploader:
    """Sends the outbox's pending records to the platform.

    Parameters:
        outbox: the open ``Outbox``.
        client_factory: ``client_factory(platform_settings) -> PlatformClient`` (``PlatformClient``
            itself fits; tests pass a lambda that adds a transport).
        platform_settings, uploader_settings, device_settings: ``[platform]``, ``[uploader]``, ``[device]``.
        clock: epoch seconds (stored times, backoff); monotonic: intervals (rate cap, stuck requests,
        the loop's waits); wait_event: how the loop waits on an event with a timeout. A test passes a
        fake trio to run the real loop through minutes of backoff at once. rng: the jitter's source.

    ``stuck_grace_s`` (default ``STUCK_GRACE_S``): how long past its deadline a request counts as stuck.

    ``run(stop)`` is the daemon's loop: it repeats ``step()``, one round, and waits as the round
    says. Tests drive the same ``step()``, or ``drain_once()`` (rounds until nothing is due, each
    request's answer awaited). ``snapshot()`` is the state for status pages; ``paused_reason``,
    ``last_success``, ``last_error`` and ``rate_rps`` are also attributes. ``update_settings(...)``
    applies a reloaded configuration (a changed ``[platform]`` lifts a pause caused by ``blocked``).
    """

    stuck_grace_s = STUCK_GRACE_S

    def __init__(
        self,
        outbox: Outbox,
        client_factory: ClientFactory,
        platform_settings: PlatformSettings,
        uploader_settings: UploaderSettings,
        device_settings: DeviceSettings,
        *,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        wait_event: EventWait = wait_on_event,
        rng: random.Random | None = None,
    ) -> None:
        self.outbox = outbox
        self._client_factory = client_factory
        self._clock = clock
        self._monotonic = monotonic
        self._wait_event = wait_event
        self._rng = rng or random.Random()
        self._lock = threading.RLock()
        """Guards the client, the backoff (workers record failures and draw delays concurrently), the
        pause and the requests' start times."""
        self._client: PlatformClient | None = None
        self._client_error: str | None = None
        self._observed = _Observed()
        self._accepted_times: collections.deque[float] = collections.deque()
        self._reg_retry_at = 0.0
        self._sender_lock_fd: int | None = None
        self._stop = threading.Event()
        self._beat: Callable[[], None] = lambda: None  # the watchdog heartbeat, set by run()
        self._unrecorded: list[_Result] = []
        self._request_started: dict[int, float] = {}
        """Record id -> monotonic start of its request, for the stuck-request check."""
        self._tasks = 0
        """Records handed to the workers and not yet finished (``concurrency`` at most)."""
        self._tasks_changed = threading.Condition()
        self._stuck_logged = False
        self._logged_checks: set[tuple[int, str]] = set()
        self.platform_clock = PlatformClock(
            platform_settings.conventions.max_reply_skew_s, clock=clock, monotonic=monotonic
        )
        """The platform's clock, learnt from replies; shared with every client this uploader makes."""
        self._repeats = Repeats(log)
        """The run loop's outbox errors: logged once, then summarised (a full disk fails every poll)."""
        self.platform = platform_settings
        self.settings = uploader_settings
        self.device = device_settings
        self._limiter = self._new_limiter(uploader_settings.max_rps)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=uploader_settings.concurrency, thread_name_prefix="uploader"
        )
        self._apply_settings()

    # -- configuration -----------------------------------------------------------------------------
    def update_settings(
        self,
        *,
        platform_settings: PlatformSettings | None = None,
        uploader_settings: UploaderSettings | None = None,
        device_settings: DeviceSettings | None = None,
    ) -> None:
        """Apply reloaded settings. A new ``[platform]`` gets a new client and, when it differs from the
        configuration that was blocked, lifts the pause; a new ``[device]`` triggers registration."""
        with self._lock:
            if platform_settings is not None and platform_settings != self.platform:
                self.platform = platform_settings
                self._close_client()
            if uploader_settings is not None and uploader_settings != self.settings:
                if uploader_settings.max_rps != self.settings.max_rps:
                    self._limiter = self._new_limiter(uploader_settings.max_rps)
                if uploader_settings.concurrency != self.settings.concurrency:
                    old = self._pool
                    self._pool = concurrent.futures.ThreadPoolExecutor(
                        max_workers=uploader_settings.concurrency, thread_name_prefix="uploader"
                    )
                    old.shutdown(wait=False)
                self.settings = uploader_settings
            if device_settings is not None:
                self.device = device_settings
            self._apply_settings()
        self.outbox.wakeup.set()

    def _new_limiter(self, rate: float) -> RateLimiter:
        return RateLimiter(rate, monotonic=self._monotonic, wait_event=self._wait_event)

    def _apply_settings(self) -> None:
        self.platform_clock.tolerance_s = self.platform.conventions.max_reply_skew_s
        self._identity_fp = platform_identity_fingerprint(self.outbox, self.platform)
        signed = self.outbox.get_state(SIGNED_STATE)
        self._signed_seen = isinstance(signed, dict) and signed.get("fingerprint") == self._identity_fp
        self._platform_fp = platform_fingerprint(self.outbox, self.platform)
        self._device_fp = device_fingerprint(self.outbox, self.device, self.platform)
        self._reg_retry_at = 0.0
        blocked = self.outbox.get_state("blocked")
        if isinstance(blocked, dict) and blocked.get("fingerprint") != self._platform_fp:
            log.warning(
                "the [platform] configuration changed since uploads were blocked (%s): resuming", blocked.get("reason")
            )
            self.outbox.set_state("blocked", None)
            blocked = None
        # The stored pause: {"fingerprint", "reason", "at"}, JSON in the outbox's state table.
        self._blocked: dict[str, Any] | None = blocked if isinstance(blocked, dict) else None
        self._registration = self.outbox.registration_state()
        # One curve for both uses: the global backoff counts this episode's failures, a record's own
        # delay is drawn on its attempt count. A new [uploader] section brings a new curve.
        with self._lock:
            self._backoff = Backoff(self.settings.backoff_initial_s, self.settings.backoff_max_s, jitter=self._rng)
        self._observed.backoff_until = None
        self._client_error = None

    @property
    def _failing(self) -> bool:
        """The platform failed since its last success: probe it one record at a time."""
        return self._backoff.failures > 0

    def _get_client(self) -> PlatformClient:
        with self._lock:
            if self._client is None:
                client = self._client_factory(self.platform)
                # Not in the PlatformClient protocol (its type, PlatformClock, lives above core): a
                # fake client without them still fits.
                if hasattr(client, "platform_clock"):
                    client.platform_clock = self.platform_clock  # the offset survives a reload
                if hasattr(client, "expect_signed"):
                    client.expect_signed = self._signed_seen
                self._client = client
            return self._client

    def _note_signed(self, outcome: Outcome) -> None:
        """Remember (in the outbox) that this platform signs its replies: under ``after-first`` an
        unsigned reply is refused from now on, across restarts."""
        if not outcome.signed or self._signed_seen:
            return
        self._signed_seen = True
        with self._lock:
            if self._client is not None and hasattr(self._client, "expect_signed"):
                self._client.expect_signed = True
        try:
            self.outbox.set_state(SIGNED_STATE, {"fingerprint": self._identity_fp, "at": self._clock()})
        except OutboxError as exc:
            log.warning("cannot store that the platform signs its replies yet: %s", exc)
            return
        log.info("the platform signs its replies: unsigned replies are refused from now on")

    def abort(self) -> None:
        """Make the requests in flight fail now (the daemon is stopping); safe from any thread."""
        client = self._client
        if client is not None:
            try:
                client.abort()
            except Exception:
                log.debug("aborting the platform client failed", exc_info=True)

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                log.debug("closing the platform client failed", exc_info=True)

    def close(self, *, wait: bool = True) -> None:
        """Stop the worker threads and close the client (``run`` does this when it returns)."""
        self._pool.shutdown(wait=wait)
        with self._lock:
            self._close_client()
        if self._sender_lock_fd is not None:
            os.close(self._sender_lock_fd)
            self._sender_lock_fd = None

    # -- observable state --------------------------------------------------------------------------
    @property
    def paused_reason(self) -> str | None:
        return self._observed.paused_reason

    @property
    def blocked(self) -> bool:
        return self._blocked is not None

    @property
    def last_success(self) -> LastSuccess | None:
        return self._observed.last_success

    @property
    def last_error(self) -> LastError | None:
        return self._observed.last_error

    @property
    def rate_rps(self) -> float:
        """Records accepted per second over the last minute."""
        horizon = self._monotonic() - 60.0
        with self._lock:
            while self._accepted_times and self._accepted_times[0] < horizon:
                self._accepted_times.popleft()
            return round(len(self._accepted_times) / 60.0, 2)

    def snapshot(self) -> UploaderSnapshot:
        """The uploader for ``fvagent status``: ``state``, ``paused_reason``, ``blocked`` (+
        ``blocked_reason``), ``last_success``, ``last_error``, ``rate_rps``, ``backoff_until``,
        ``registration``, the platform's ``clock``."""
        o = self._observed
        clock = self.platform_clock.snapshot()
        return {
            "state": o.state,
            "paused_reason": o.paused_reason,
            "blocked": self.blocked,
            "clock": {
                "offset_s": clock["offset_s"],
                "measured_at": clock["measured_at"],
                "signs_with_platform_time": clock["offset_s"] is not None,
                "platform_signs_replies": self._signed_seen,
            },
            "blocked_reason": (self._blocked or {}).get("reason"),
            "last_success": o.last_success,
            "last_error": o.last_error,
            "rate_rps": self.rate_rps,
            "backoff_until": o.backoff_until,
            "max_rps": self.settings.max_rps,
            "concurrency": self.settings.concurrency,
            "registration": dict(self._registration),
        }

    def _set(self, state: UploaderState, reason: str | None = None) -> None:
        self._observed.state = state
        self._observed.paused_reason = reason

    # -- the gate: may we send now? ----------------------------------------------------------------
    def _gate(self, now: float) -> float | None:
        """``None`` when sending may go on; else how long to wait before asking again (and why, in state)."""
        poll = self.settings.poll_interval_s
        if not self.platform.enabled:
            self._set(
                UploaderState.DISABLED, "the platform is switched off ([platform] enabled = false): records stay queued"
            )
            return poll
        if self._blocked is not None:
            self._set(
                UploaderState.BLOCKED, f"uploads paused: {self._blocked.get('reason')}; fix [platform] and reload"
            )
            return poll
        if self._client_error is not None:
            self._set(UploaderState.PAUSED, self._client_error)
            return poll
        until = self._observed.backoff_until
        if until is not None and until - now > self.settings.backoff_max_s:  # set before the clock stepped back
            until = self._observed.backoff_until = now + self.settings.backoff_max_s
        self._reg_retry_at = min(self._reg_retry_at, now + self.settings.backoff_max_s)
        if until is not None and now < until:
            self._set(UploaderState.BACKOFF, f"the platform is failing; next try in {until - now:.0f} s")
            return min(poll, until - now)
        if not self._ensure_registered(now):
            until = self._observed.backoff_until
            return min(poll, max(0.0, until - now)) if until is not None else poll
        if self.device.status == 1:
            self._set(
                UploaderState.PAUSED,
                "the device is disabled ([device] status = 1, 停用): uploads are held; "
                "set status = 0 and reload to send",
            )
            return poll
        return None

    def _client_or_pause(self) -> PlatformClient | None:
        try:
            return self._get_client()
        except Exception as exc:  # a bad key rule, an unreadable TLS file: a configuration problem
            self._client_error = f"cannot set up the platform client: {exc}; fix [platform] and reload"
            log.error("%s", self._client_error)
            return None

    def _ensure_registered(self, now: float) -> bool:
        reg = self._registration
        current = reg.get("registered") and reg.get("fingerprint") == self._device_fp
        if current:
            refresh_due = now - float(reg.get("at") or 0) > self.settings.register_refresh_h * 3600
            if refresh_due and now >= self._reg_retry_at:
                self._register(now, refresh=True)
            return True
        if now < self._reg_retry_at:
            if self._observed.state not in (UploaderState.PAUSED, UploaderState.BACKOFF, UploaderState.BLOCKED):
                self._set(UploaderState.PAUSED, "waiting to register the device")
            return False
        return self._register(now, refresh=False)

    def _register(self, now: float, *, refresh: bool) -> bool:
        """One registration request; True when the device may upload afterwards."""
        try:
            payload = registration_payload(self.device)
        except RecordError as exc:
            problems = "; ".join(f"{f}: {r}" for f, r in exc.problems)
            self._set(
                UploaderState.PAUSED,
                f"the [device] settings break the platform spec ({problems}); fix [device] and reload",
            )
            self._reg_retry_at = now + self.settings.backoff_max_s
            return refresh
        client = self._client_or_pause()
        if client is None:
            return False
        self._limiter.wait()
        try:
            outcome = client.register_device(payload)
        except PlatformDisabled:
            return False
        except Exception as exc:
            log.exception("registration failed unexpectedly")
            outcome = Outcome(OutcomeKind.RETRYABLE, "", f"client error: {type(exc).__name__}: {exc}")
        self._note_signed(outcome)
        at = self._clock()
        state: RegistrationState = {
            "registered": outcome.accepted or (refresh and outcome.kind is OutcomeKind.RETRYABLE),
            "fingerprint": self._device_fp,
            "at": at if outcome.accepted else self._registration.get("at"),
            "last_attempt_at": at,
            "outcome": outcome.kind.value,
            "request_id": outcome.request_id,
            "message": outcome.message,
            "machine_code": self.device.machine_code,
        }
        if outcome.kind is OutcomeKind.ACCEPTED:
            log.info("device %s registered with the platform (%s)", self.device.machine_code, outcome.message)
            with self._lock:
                self._backoff.succeeded()
        elif outcome.kind is OutcomeKind.REJECTED:
            state["registered"] = False
            self._set(UploaderState.PAUSED, f"registration rejected: {outcome.message}; fix [device] and reload")
            self._reg_retry_at = at + self.settings.backoff_max_s
        elif outcome.kind is OutcomeKind.BLOCKED:
            state["registered"] = False
            self._block(f"registration: {outcome.message}")
        elif outcome.kind is OutcomeKind.CLOCK:
            self._reg_retry_at = at  # the clock is corrected: register again at once
        else:
            self._retryable(outcome, at)
            if refresh:  # already registered: a failed refresh must not stop the uploads
                self._reg_retry_at = at + self.settings.backoff_max_s
        self._registration = state
        self.outbox.set_registration_state(state)
        return bool(state["registered"])

    def _block(self, reason: str) -> None:
        with self._lock:
            self._blocked = {"fingerprint": self._platform_fp, "reason": reason, "at": self._clock()}
            self.outbox.set_state("blocked", self._blocked)
            self._set(UploaderState.BLOCKED, f"uploads paused: {reason}; fix [platform] and reload")
        log.error("uploads paused until the [platform] configuration changes: %s", reason)

    def _retryable(self, outcome: Outcome, now: float) -> None:
        with self._lock:
            delay = self._honour_retry_after(self._backoff.failed(), outcome)
            until = now + delay
            self._observed.backoff_until = max(self._observed.backoff_until or 0.0, until)
            self._set(UploaderState.BACKOFF, f"the platform is failing ({outcome.message}); next try in {delay:.0f} s")

    def _honour_retry_after(self, delay: float, outcome: Outcome) -> float:
        """The platform's Retry-After lengthens a delay, up to ``backoff_max_s``; it never shortens one."""
        if outcome.retry_after_s is None:
            return delay
        return max(delay, min(outcome.retry_after_s, self.settings.backoff_max_s))

    # -- one record --------------------------------------------------------------------------------
    def _send_one(self, claim: Claim) -> None:
        try:
            payload = self.outbox.payload(claim.id)
        except OutboxCorrupt as exc:
            self._finish(_Result(claim, "local", str(exc)))
            self._observed.last_error = {
                "at": self._clock(),
                "id": claim.id,
                "outcome": "local",
                "message": str(exc),
                "request_id": None,
            }
            return
        if payload is None:  # deleted meanwhile
            return
        client = self._client_or_pause()
        if client is None:
            self.outbox.release(claim)
            return
        # The rate cap applies here, right before the request, so nothing between the limiter and
        # the wire can bunch requests up.
        if not self._limiter.wait(self._stop) or self._blocked is not None or not self.platform.enabled:
            self.outbox.release(claim)
            return
        with self._lock:
            self._request_started[claim.id] = self._monotonic()
        try:
            outcome = client.upload_verification(payload)
        except PlatformDisabled:
            self.outbox.release(claim)
            return
        except Exception as exc:  # the client promises not to raise for the network; be safe anyway
            log.exception("upload of record %d failed unexpectedly", claim.id)
            outcome = Outcome(OutcomeKind.RETRYABLE, "", f"client error: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._request_started.pop(claim.id, None)
        del payload
        self._note_signed(outcome)
        self._apply(claim, outcome)

    def _finish(self, result: _Result) -> None:
        """Record a result; when the outbox cannot (disk full), keep it and try again later."""
        try:
            self._store(result)
        except OutboxError as exc:
            self._repeats.log(
                logging.ERROR, "a %s result cannot be stored yet (%s); kept in memory and retried", result.kind, exc
            )
            with self._lock:
                self._unrecorded.append(result)
            self._set(UploaderState.PAUSED, f"outbox: {exc}")

    def _store(self, result: _Result) -> None:
        self.outbox.finish(
            result.claim,
            result.kind,
            message=result.message,
            request_id=result.request_id,
            http_status=result.http_status,
            exception_code=result.exception_code,
            next_attempt_at=result.next_attempt_at,
            now=result.now,
            return_time_ms=result.return_time_ms,
        )

    def _flush_unrecorded(self) -> bool:
        """Store results that could not be stored before; True when none are left."""
        with self._lock:
            waiting, self._unrecorded = self._unrecorded, []
        for i, result in enumerate(waiting):
            try:
                self._store(result)
            except OutboxError:
                with self._lock:
                    self._unrecorded[:0] = waiting[i:]
                return False
        return True

    def _apply(self, claim: Claim, outcome: Outcome) -> None:
        now = self._clock()
        kind = outcome.kind
        result = _Result(
            claim,
            kind,
            outcome.message,
            request_id=outcome.request_id or None,
            http_status=outcome.http_status,
            exception_code=outcome.exception_code,
            now=now,
            return_time_ms=outcome.return_time_ms,
        )
        if kind is OutcomeKind.ACCEPTED:
            self._finish(result)
            with self._lock:
                self._backoff.succeeded()
                self._observed.backoff_until = None
                self._accepted_times.append(self._monotonic())
            self._observed.last_success = {"at": now, "id": claim.id, "request_id": outcome.request_id}
            return
        self._observed.last_error = {
            "at": now,
            "id": claim.id,
            "outcome": kind,
            "message": outcome.message,
            "request_id": outcome.request_id,
        }
        if len(self._logged_checks) > 10000:
            self._logged_checks.clear()
        if outcome.failed_check is not None and (claim.id, outcome.failed_check) not in self._logged_checks:
            self._logged_checks.add((claim.id, outcome.failed_check))
            log.warning(
                "record %d: the reply is not an acceptance (%s check): %s; retried (logged once per record)",
                claim.id,
                outcome.failed_check,
                outcome.message,
            )
        if kind is OutcomeKind.CLOCK:
            # Not the platform failing: the next attempt carries the corrected time, so no global backoff.
            self._finish(dataclasses.replace(result, next_attempt_at=now + self._record_delay(claim, outcome)))
            return
        if kind is OutcomeKind.UNREGISTERED:
            with self._lock:
                self._registration = {
                    **self._registration,
                    "registered": False,
                    "message": f"the platform says: {outcome.message}",
                }
                self._reg_retry_at = 0.0
            self._finish(dataclasses.replace(result, next_attempt_at=now + self._record_delay(claim, outcome)))
            log.warning("record %d: %s", claim.id, outcome.message)
            return
        if kind is OutcomeKind.REJECTED:
            self._finish(result)
            with self._lock:
                self._backoff.succeeded()
            log.warning("record %d rejected by the platform: %s", claim.id, outcome.message)
        elif kind is OutcomeKind.BLOCKED:
            self._finish(dataclasses.replace(result, next_attempt_at=now))
            self._block(outcome.message)
        else:
            self._finish(dataclasses.replace(result, next_attempt_at=now + self._record_delay(claim, outcome)))
            self._retryable(outcome, now)

    def _record_delay(self, claim: Claim, outcome: Outcome) -> float:
        """This record's backoff before its next attempt (full jitter on its attempt count, Retry-After honoured)."""
        with self._lock:
            delay = self._backoff.delay(claim.attempt)
        return self._honour_retry_after(delay, outcome)

    def _claim(self, free: int) -> list[Claim]:
        # While the platform is failing, probe with one record at a time.
        limit = 1 if self._failing else free
        max_wait_s = self.settings.backoff_max_s + CLOCK_STEP_MARGIN_S
        return self.outbox.claim(limit, self._clock(), max_wait_s=max_wait_s)

    # -- the loop: one round, repeated by run() and driven by the tests -----------------------------
    def recover(self) -> int:
        """Requeue rows a crash left in ``sending``; call once before sending (``run`` does)."""
        return self.outbox.requeue_interrupted()

    def step(self) -> Step:
        """One round of the upload loop, the one ``run`` repeats.

        Stores the results kept in memory, asks the gate (switched off, blocked, backing off,
        registration), waits for a free request slot, claims that many due records (one while the
        platform is failing) and hands them to the workers. While probing a failing platform it
        waits for the probe's answer, so the next round knows it; otherwise requests may still be
        running when it returns (``wait_for_requests`` waits for them).
        """
        poll = self.settings.poll_interval_s
        try:
            wait = None if self._flush_unrecorded() else poll
            if wait is None:
                wait = self._gate(self._clock())
        except OutboxError as exc:
            self._outbox_failed(exc)
            wait = poll
        if wait is not None:
            return Step(0, wait)
        free = self.settings.concurrency - self._wait_for_tasks(lambda running: running < self.settings.concurrency)
        if self._stop.is_set():
            return Step(0)
        self.outbox.wakeup.clear()
        try:
            claims = self._claim(free)
        except OutboxError as exc:
            self._outbox_failed(exc)
            return Step(0, poll, wake_on_record=True)
        self._repeats.clear()
        if not claims:
            if self._tasks == 0 and self._observed.state in (
                UploaderState.SENDING,
                UploaderState.STARTING,
            ):
                self._set(UploaderState.IDLE)
            return Step(0, self._idle_wait(), wake_on_record=True)
        self._set(UploaderState.SENDING)
        sent = 0
        for i, claim in enumerate(claims):
            if self._stop.is_set() or self._gate(self._clock()) is not None:
                for rest in claims[i:]:
                    self.outbox.release(rest)
                break
            self._submit(claim)
            sent += 1
        if self._failing:
            # Probing a failing platform: let this one finish before deciding on the next.
            self._wait_for_tasks(lambda running: running == 0)
        return Step(sent)

    def wait_for_requests(self, timeout_s: float | None = None) -> bool:
        """Wait until every record handed to the workers has its answer recorded (tests, one-shot
        commands); False when ``timeout_s`` passed first."""
        return self._wait_for_tasks(lambda running: running == 0, timeout_s=timeout_s, until_stop=False) == 0

    def drain_once(self) -> int:
        """Rounds of ``step()`` until nothing due is left or sending pauses, each request's answer
        awaited before that is decided. Returns how many records were attempted."""
        total = 0
        while True:
            step = self.step()
            total += step.sent
            if step.sent:
                continue
            with self._tasks_changed:
                running = self._tasks
            if not running:
                return total
            self.wait_for_requests()  # their answers may make more records due (a registration)

    def run(self, stop: threading.Event, heartbeat: Callable[[], None] | None = None) -> None:
        """Send until ``stop`` is set. Takes the uploader lock (one uploader per outbox), requeues what
        a crash left in ``sending``, then repeats ``step()``, keeping ``concurrency`` requests in
        flight at most, and waits between rounds as each says.

        ``heartbeat`` is called at least every second while the loop is healthy (also while it waits
        or backs off), so the daemon's watchdog sees a loop that hangs rather than a thread alive.
        """
        self._take_sender_lock()
        self._stop = stop
        if heartbeat is not None:
            self._beat = lambda: heartbeat() if not self._stuck() else None
        self.recover()
        try:
            while not stop.is_set():
                self._beat()
                step = self.step()
                self._sleep(stop, step.wait_s, wake=step.wake_on_record)
        finally:
            self.abort()  # requests in flight fail now and are retried after the restart
            left = self._wait_for_tasks(lambda running: running == 0, timeout_s=STOP_WAIT_S, until_stop=False)
            self._set(UploaderState.STOPPED)
            if left:
                log.warning("%d upload(s) still running at stop; their records are retried after the restart", left)
                self._pool.shutdown(wait=False, cancel_futures=True)
            self.close(wait=not left)

    def _outbox_failed(self, exc: OutboxError) -> None:
        self._set(UploaderState.PAUSED, f"outbox: {exc}")
        self._repeats.log(logging.ERROR, "uploader: %s", exc)

    def _submit(self, claim: Claim) -> None:
        with self._tasks_changed:
            self._tasks += 1
        self._pool.submit(self._send_one_logged, claim).add_done_callback(self._task_done)

    def _task_done(self, _: concurrent.futures.Future[None]) -> None:
        with self._tasks_changed:
            self._tasks -= 1
            self._tasks_changed.notify_all()

    def _wait_for_tasks(
        self, done: Callable[[int], bool], *, timeout_s: float | None = None, until_stop: bool = True
    ) -> int:
        """Wait, beating the heartbeat, until ``done(records in flight)``, ``timeout_s`` passed or
        (``until_stop``) the loop stops; returns the records still in flight.

        Real time, not the injected clock: this waits for the worker threads, which notify as each
        record finishes."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._tasks_changed:
            while not done(self._tasks) and not (until_stop and self._stop.is_set()):
                left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
                if left <= 0:
                    break
                self._beat()
                self._tasks_changed.wait(left)
            return self._tasks

    def _stuck(self) -> bool:
        """Whether a request has outlived its whole-request deadline by ``STUCK_GRACE_S`` (then the
        heartbeat stops, so the watchdog restarts a process no timeout can free)."""
        limit = self.platform.timeout_s + self.platform.connect_timeout_s + self.stuck_grace_s
        with self._lock:
            oldest = min(self._request_started.values(), default=None)
        stuck = oldest is not None and self._monotonic() - oldest > limit
        if stuck and not self._stuck_logged:
            log.error(
                "an upload has been running for more than %.0f s (past its deadline): the uploader is stuck; "
                "its heartbeat stops so the watchdog can restart the service",
                limit,
            )
        self._stuck_logged = stuck
        return stuck

    def _send_one_logged(self, claim: Claim) -> None:
        try:
            self._send_one(claim)
        except Exception:
            log.exception("uploader: record %d: unexpected error; it is retried after a restart", claim.id)

    def _idle_wait(self) -> float:
        poll = self.settings.poll_interval_s
        try:
            due = self.outbox.next_due_at()
        except OutboxError:
            return poll
        if due is None:
            return poll
        return max(0.0, min(poll, due - self._clock()))

    def _sleep(self, stop: threading.Event, seconds: float, *, wake: bool = True) -> None:
        """Wait up to ``seconds``; wake early on ``stop`` or (with ``wake``) a new record."""
        deadline = self._monotonic() + max(0.0, seconds)
        while not stop.is_set():
            self._beat()
            left = deadline - self._monotonic()
            if left <= 0:
                return
            if self._wait_event(self.outbox.wakeup if wake else stop, min(left, 0.1)):
                return

    def _take_sender_lock(self) -> None:
        path = self.outbox.path.parent / UPLOADER_LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise OutboxError(
                    f"another fvagent process is already uploading from {self.outbox.path}",
                    hint="run one fvagent service per state directory",
                ) from exc
            raise
        self._sender_lock_fd = fd
