"""A simulated SAM reader on a pseudo-terminal: the real protocol served from fixture cards.

``SamSimulator`` opens a pty pair and answers the host's frames from a thread, so the real
``sam-serial`` driver runs end to end against it. The port is a symlink (``port``) that survives
``unplug()``/``replug()``: unplugging closes the pty (the driver's next read fails as with a pulled
USB-serial adapter); replugging makes a new pty behind the same path.

Tests drive it: ``present(card, wlt)``, ``remove()``, ``inject(command, raw_bytes)`` to send a fault
frame for the next request of that command, ``baudrate=`` to answer only at one rate (auto-probe),
``envelope=True`` / ``trailing=b"..."`` to behave like the quirky modules of docs/drivers.md (every
answer wrapped in the module envelope, every answer followed by stray bytes).
``requests`` records every request frame received, ``request_rates`` the baud rate the host's port
was set to for each of them.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import termios
import threading
import tty
from pathlib import Path

from core.card import IdCard
from drivers.card_reader import codec

log = logging.getLogger(__name__)

SAM_ID_DATA = (
    bytes([5, 0, 1, 0]) + (20260101).to_bytes(4, "little") + (1234).to_bytes(4, "little") + (5678).to_bytes(4, "little")
)
SYNTHETIC_WLT = b"WLf\x00~\x002\x00\x00\xff\x85" + bytes(range(256)) * 3 + bytes(1024 - 11 - 768)
"""A 1024-byte stand-in for a card photo (the magic of real WLT data, then filler)."""

_SPEEDS = {
    115200: termios.B115200,
    57600: termios.B57600,
    38400: termios.B38400,
    19200: termios.B19200,
    9600: termios.B9600,
}


class SamSimulator:
    def __init__(
        self, port: Path, *, baudrate: int | None = None, envelope: bool = False, trailing: bytes = b""
    ) -> None:
        self.port = Path(port)
        self.baudrate = baudrate
        self.envelope = envelope
        self.trailing = trailing
        self.card: IdCard | None = None
        self.wlt = SYNTHETIC_WLT
        self.fingerprint: bytes | None = None
        self.read_done = False
        self.reads = 0
        self.requests: list[bytes] = []
        self.request_rates: list[int | None] = []
        self._inject: dict[tuple[int, int], collections.deque[bytes]] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()
        self._master = self._slave = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> SamSimulator:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        if self.port.is_symlink() or self.port.exists():
            self.port.unlink()
        self.port.symlink_to(os.ttyname(self._slave))
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="sam-simulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        for fd in (self._master, self._slave):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = -1

    def unplug(self) -> None:
        """The reader disappears: the pty closes, the port path dangles."""
        self.stop()

    def replug(self) -> None:
        """The reader comes back under the same port path."""
        self.start()

    def __enter__(self) -> SamSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self.port.is_symlink():
            self.port.unlink()

    # -- the card ---------------------------------------------------------------------------------
    def present(self, card: IdCard, wlt: bytes | None = None, fingerprint: bytes | None = None) -> None:
        with self._lock:
            self.card, self.read_done = card, False
            self.wlt = wlt or card.photo_wlt or SYNTHETIC_WLT
            self.fingerprint = fingerprint

    def remove(self) -> None:
        with self._lock:
            self.card, self.read_done = None, False

    def inject(self, command: tuple[int, int], raw: bytes) -> None:
        """Answer the next ``command`` with ``raw`` (a fault frame) instead of the real answer."""
        with self._lock:
            self._inject[command].append(raw)

    # -- serving ----------------------------------------------------------------------------------
    def _port_rate(self) -> int | None:
        """The baud rate the host set on its end of the pty (None when unknown)."""
        try:
            speed = termios.tcgetattr(self._slave)[4]
        except termios.error:
            return None
        return next((rate for rate, code in _SPEEDS.items() if code == speed), None)

    def _serve(self) -> None:
        buf = b""
        master = self._master
        while not self._stop.is_set():
            ready, _, _ = select.select([master], [], [], 0.05)
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:
                continue
            buf += chunk
            while True:
                start = buf.find(codec.PREAMBLE)
                if start < 0:
                    buf = buf[-4:]
                    break
                buf = buf[start:]
                if len(buf) < codec.HEADER_LEN:
                    break
                try:
                    total = codec.frame_length(buf[: codec.HEADER_LEN])
                except Exception:
                    buf = buf[1:]
                    continue
                if len(buf) < total:
                    break
                frame, buf = buf[:total], buf[total:]
                rate = self._port_rate()
                self.requests.append(frame)
                self.request_rates.append(rate)
                if self.baudrate is not None and rate != self.baudrate:
                    continue  # at the wrong rate the SAM sees garbage and stays silent
                answer = self._answer(frame)
                try:
                    os.write(master, answer)
                except OSError:
                    return

    def _answer(self, frame: bytes) -> bytes:
        if codec.checksum(frame[5:]) != 0:
            return codec.build_response(0x10)
        cmd, para = frame[7], frame[8]
        with self._lock:
            injected = self._inject.get((cmd, para))
            if injected:
                return injected.popleft()
        answer = self._real_answer(cmd, para)
        return (codec.wrap_in_envelope(answer) if self.envelope else answer) + self.trailing

    def _real_answer(self, cmd: int, para: int) -> bytes:
        with self._lock:
            if (cmd, para) in (codec.RESET, codec.SAM_STATUS) or cmd == codec.SET_BAUD:
                return codec.build_response(codec.SW_OK)
            if (cmd, para) == codec.SAM_ID:
                return codec.build_response(codec.SW_OK, SAM_ID_DATA)
            if (cmd, para) == codec.FIND_CARD:
                if self.card is None or self.read_done:
                    return codec.build_response(codec.SW_NO_CARD)
                return codec.build_response(codec.SW_FIND_OK, bytes(4))
            if (cmd, para) == codec.SELECT_CARD:
                if self.card is None:
                    return codec.build_response(codec.SW_SELECT_FAILED)
                return codec.build_response(codec.SW_OK, bytes(8))
            if (cmd, para) in (codec.READ_TEXT_PHOTO, codec.READ_TEXT_PHOTO_FP):
                if self.card is None:
                    return codec.build_response(0x41)
                self.read_done = True  # like a real SAM: find fails until the card leaves
                self.reads += 1
                fp = (self.fingerprint or b"") if (cmd, para) == codec.READ_TEXT_PHOTO_FP else None
                return codec.read_response(self.card, self.wlt, fp)
            if (cmd, para) == codec.READ_ADDRESS:
                return codec.build_response(0x91)
            return codec.build_response(0x21)
