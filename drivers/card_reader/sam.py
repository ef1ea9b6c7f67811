"""The SAM readers: GA 467-style frames over a serial port (``sam-serial``) or USB bulk (``sam-usb``).

Both share one polling step (``_SamReader._poll_card``): find -> select -> read, one read per tap.
After a read (good or failed) the card is ignored until find reports no card (the card left the
field), so a failed read is retried only when the person presents the card again.

Failure contract for the service: ``open()`` raises ``DeviceNotFound`` when the device is absent;
``read_card()`` raises ``DeviceNotFound`` when it goes away (unplugged) and ``DeviceTimeout`` when it
stops answering; the caller then ``close()``s the driver and ``open()``s it again with backoff
(agent.service.hardware.DriverSlot does); a bad answer to find-card (a SAM status other than found /
no card, or a garbled frame) is a plain ``DriverError`` handled the same way, except 0x10 (the SAM
received a garbled command), which some modules answer now and then: find is simply sent again. ``CardReadError`` and
``ProtocolError`` concern the card in the field: the reader is fine, the person presents the card
again (each is raised once per tap).
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import time
from typing import Any, ClassVar

from pydantic import field_validator

from core.card import IdCard
from core.errors import CardReadError, DeviceNotFound, DeviceTimeout, DriverError, ProtocolError
from core.privacy import mask_card_no
from drivers.base import CardReader, CardReaderSettings, DriverSettings, ProbeResult
from drivers.card_reader import codec

log = logging.getLogger(__name__)

try:  # pyserial's flush on a vanished pty/tty raises termios.error, which is not an OSError
    from termios import error as _TermiosError
except ImportError:  # pragma: no cover - not on POSIX
    _TermiosError = OSError  # type: ignore[misc,assignment]

BAUD_RATES = (115200, 57600, 38400, 19200, 9600)
"""Probe order: the SAM default first, then the slower rates it can be set to."""
AUTO_PORT_PATTERNS = ("/dev/ttyUSB*", "/dev/ttyACM*")
FIND_ATTEMPTS = 3
"""Find-card commands sent in one poll while the SAM answers 0x10 (it received a garbled command)."""
SW_GARBLED_COMMAND = 0x10
CAPTURE_PREFIX_MAX = 16
"""Bytes kept before and after a frame in a capture (an envelope head is 5, a sum 1)."""
CAPTURE_TAIL_WAIT_S = 0.1


class SamSettings(CardReaderSettings):
    exchange_timeout_s: float = 1.0
    """How long find/select/status may take before the reader counts as not answering."""
    read_timeout_s: float = 3.0
    """How long a full card read may take."""
    read_fingerprint: bool = False
    """Read with 30 10 (text + photo + fingerprint) instead of 30 01."""

    @field_validator("exchange_timeout_s", "read_timeout_s")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be > 0 seconds")
        return v


class _SamReader(CardReader):
    """Common SAM logic; transports implement ``_send``/``_receive``."""

    settings: SamSettings

    def __init__(self, settings: DriverSettings | None = None, *, name: str | None = None) -> None:
        super().__init__(settings, name=name)
        self._card_in_field = False
        self.sam_id: str | None = None

    # -- transport -----------------------------------------------------------------------------
    def _send(self, frame: bytes) -> None:
        raise NotImplementedError

    def _receive(self, deadline: float) -> bytes:
        """Read one whole response frame by ``deadline``; raise ``DeviceTimeout``/``DeviceNotFound``."""
        raise NotImplementedError

    def exchange(self, command: tuple[int, int], timeout_s: float | None = None) -> codec.Response:
        """Send one command and return the parsed response (no status check)."""
        deadline = time.monotonic() + (timeout_s or self.settings.exchange_timeout_s)
        self._send(codec.build_command(command))
        raw = self._receive(deadline)
        if self.keep_raw_answer and command in (codec.READ_TEXT_PHOTO, codec.READ_TEXT_PHOTO_FP):
            self.raw_answer = self._with_surroundings(raw)
        return codec.parse_response(raw)

    def _with_surroundings(self, frame: bytes) -> bytes:
        """``frame`` as the module sent it, for a capture (serial adds what it skipped around it)."""
        return frame

    # -- polling -------------------------------------------------------------------------------
    def _poll_card(self) -> IdCard | None:
        found = self._find()
        if found.sw3 != codec.SW_FIND_OK:
            self._card_in_field = False
            return None
        if self._card_in_field:
            return None  # read already (or failed): wait until the card leaves the field
        self._card_in_field = True
        self.exchange(codec.SELECT_CARD).raise_for_status()
        command = codec.READ_TEXT_PHOTO_FP if self.settings.read_fingerprint else codec.READ_TEXT_PHOTO
        resp = self.exchange(command, self.settings.read_timeout_s).raise_for_status()
        payload = codec.split_read_data(resp.data, with_fingerprint=self.settings.read_fingerprint)
        card = codec.decode_text(payload.text)
        card = dataclasses.replace(card, photo_wlt=payload.wlt, fingerprint=payload.fingerprint)
        if self.settings.wlt_decoder:
            card = self._decode_photo(card)
        log.info("%s: read card type %s %s", self.name, card.card_type, mask_card_no(card.card_no))
        return card

    def _find(self) -> codec.Response:
        """Find card. A bad answer to it concerns the reader, not a card (none is being read): it is
        a plain ``DriverError``, so the caller reopens the reader with backoff and shows the fault,
        instead of asking for the card again on every poll (a SAM failing its self-test answers
        every find with 0x60)."""
        for attempt in range(1, FIND_ATTEMPTS + 1):
            try:
                found = self.exchange(codec.FIND_CARD)
            except ProtocolError as exc:
                raise DriverError(
                    f"reader answered find-card with a bad frame: {exc.message}",
                    device=self.describe(),
                    frame_hex=exc.frame_hex,
                ) from exc
            if found.sw3 != SW_GARBLED_COMMAND:
                break
            log.debug(
                "%s: SAM answered find-card with 0x10 (attempt %d of %d): sending it again",
                self.name,
                attempt,
                FIND_ATTEMPTS,
            )
        if found.sw3 not in (codec.SW_FIND_OK, codec.SW_NO_CARD, codec.SW_SELECT_FAILED):
            raise DriverError(
                f"SAM status 0x{found.sw3:02X} on find-card: {found.meaning}",
                device=self.describe(),
                sw3=f"0x{found.sw3:02X}",
                meaning=found.meaning,
                hint="the reader is reopened with backoff; if this persists, power-cycle the reader "
                "or have its SAM module checked",
            )
        return found

    def _decode_photo(self, card: IdCard) -> IdCard:
        from drivers.card_reader.wlt import WltDecodeError, decode_wlt_to_jpeg

        assert card.photo_wlt is not None and self.settings.wlt_decoder
        try:
            return dataclasses.replace(card, photo_jpeg=decode_wlt_to_jpeg(card.photo_wlt, self.settings.wlt_decoder))
        except WltDecodeError as exc:  # keep the raw WLT: the record waits held, nothing is lost
            log.warning("%s: card photo kept undecoded: %s", self.name, exc)
            return card

    def read_sam_id(self) -> str:
        resp = self.exchange(codec.SAM_ID).raise_for_status()
        self.sam_id = codec.sam_id_string(resp.data)
        return self.sam_id

    def probe(self) -> ProbeResult:
        """Open the reader, ask the SAM for its id and status; no card is touched."""
        try:
            self.open()
            with self._lock:
                sam_id = self.read_sam_id()
                status = self.exchange(codec.SAM_STATUS)
        except (DeviceNotFound, DeviceTimeout, ProtocolError, CardReadError) as exc:
            return ProbeResult(False, str(exc))
        ok = status.sw3 == codec.SW_OK
        return ProbeResult(
            ok,
            f"{self.describe()}: SAM {sam_id}, status {status.meaning}",
            {"sam_id": sam_id, "sw3": f"0x{status.sw3:02X}"},
        )


# --------------------------------------------------------------------------------------------------
# Serial


class SamSerialSettings(SamSettings):
    port: str | None = None
    """Serial port or pyserial URL (/dev/ttyUSB0, spy:///dev/ttyUSB0?file=cap.txt); None: auto-detect."""
    baudrate: int | None = None
    """Fixed baud rate; None: probe 115200 then 57600, 38400, 19200, 9600."""

    @field_validator("baudrate")
    @classmethod
    def _known_rate(cls, v: int | None) -> int | None:
        if v is not None and v not in BAUD_RATES:
            raise ValueError(f"must be one of {', '.join(map(str, BAUD_RATES))}")
        return v


class SamSerialReader(_SamReader):
    """SAM reader on a serial port, opened with ``serial.serial_for_url`` (so spy:// and loop:// work)."""

    Settings: ClassVar[type[DriverSettings]] = SamSerialSettings
    settings: SamSerialSettings

    def __init__(self, settings: DriverSettings | None = None, *, name: str | None = None) -> None:
        super().__init__(settings, name=name or "sam-serial")
        self._serial: Any = None
        self._skipped = b""
        self.port: str | None = None
        self.baudrate: int | None = None

    def describe(self) -> str:
        if self.port:
            return f"{self.port} @ {self.baudrate}"
        return self.settings.port or "auto-detected serial port"

    def _open(self) -> None:
        self._card_in_field = False
        if self.settings.port:
            ports = [self.settings.port]
        else:
            ports = sorted(p for pattern in AUTO_PORT_PATTERNS for p in glob.glob(pattern))
            if not ports:
                raise DeviceNotFound(
                    "no serial port found (/dev/ttyUSB*, /dev/ttyACM*)",
                    device="auto",
                    hint="plug the reader in, or set [card_reader] port",
                )
        rates = [self.settings.baudrate] if self.settings.baudrate else list(BAUD_RATES)
        errors = []
        for port in ports:
            for rate in rates:
                try:
                    self._connect(port, rate)
                except DeviceNotFound as exc:
                    if len(ports) == 1:
                        raise
                    errors.append(str(exc))
                    break  # the port itself cannot be opened: no other rate will help
                # A fixed rate on a fixed port needs no probe; otherwise the SAM must answer 11 FF.
                if self.settings.port and self.settings.baudrate:
                    return
                try:
                    with self._lock:
                        if self.exchange(codec.SAM_STATUS, min(0.5, self.settings.exchange_timeout_s)).ok:
                            log.info("%s: SAM answers on %s at %d baud", self.name, port, rate)
                            return
                except (DeviceTimeout, ProtocolError) as exc:
                    errors.append(f"{port}@{rate}: {exc}")
                self._disconnect()
        raise DeviceNotFound(
            "no SAM reader answered on " + ", ".join(ports),
            device=",".join(ports),
            hint="check the cable and the port; tried " + "; ".join(errors[-3:]),
        )

    def _connect(self, port: str, rate: int) -> None:
        import serial

        try:
            self._serial = serial.serial_for_url(
                port, baudrate=rate, bytesize=8, parity="N", stopbits=1, timeout=0.05, write_timeout=1.0
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise DeviceNotFound(
                f"cannot open serial port {port}: {exc}",
                device=port,
                hint="check the port name and that fvagent may open it (dialout group / udev rule)",
            ) from exc
        self.port, self.baudrate = port, rate

    def _disconnect(self) -> None:
        ser, self._serial = self._serial, None
        if ser is not None:
            try:
                ser.close()
            except Exception:
                log.debug("%s: close failed", self.name, exc_info=True)

    def _close(self) -> None:
        self._disconnect()

    def _gone(self, exc: BaseException) -> DeviceNotFound:
        self._disconnect()
        return DeviceNotFound(
            f"serial reader gone: {exc}",
            device=self.port,
            hint="check the cable; the reader is reopened when it comes back",
        )

    def _send(self, frame: bytes) -> None:
        import serial

        if self._serial is None:
            raise DeviceNotFound("serial port is closed", device=self.port)
        try:
            left = self._serial.in_waiting
            if left:  # trailing bytes after an answer's declared length, or a timed-out answer
                log.debug("%s: dropped %d bytes left after the previous answer", self.name, left)
            self._serial.reset_input_buffer()
            self._serial.write(frame)
            self._serial.flush()
        except (serial.SerialException, OSError, _TermiosError) as exc:
            raise self._gone(exc) from exc

    def _read(self, n: int, deadline: float, got: bytes) -> bytes:
        import serial

        buf = bytearray(got)
        while len(buf) < n:
            if time.monotonic() > deadline:
                raise DeviceTimeout(
                    f"reader did not answer: {len(buf)} of {n} bytes received",
                    device=self.port,
                    frame_hex=codec.frame_hex(bytes(buf)) if buf else None,
                )
            try:
                chunk = self._serial.read(n - len(buf))
            except (serial.SerialException, OSError, _TermiosError, TypeError, AttributeError) as exc:
                raise self._gone(exc) from exc
            buf += chunk
        return bytes(buf)

    def _receive(self, deadline: float) -> bytes:
        if self._serial is None:
            raise DeviceNotFound("serial port is closed", device=self.port)
        buf = b""
        skipped = bytearray()
        # Skip line noise (or a module envelope's head) before the preamble, one byte at a time.
        while True:
            buf = self._read(len(codec.PREAMBLE), deadline, buf)
            if buf.startswith(codec.PREAMBLE):
                break
            cut = buf.index(codec.PREAMBLE[:1], 1) if codec.PREAMBLE[:1] in buf[1:] else len(buf)
            skipped += buf[:cut]
            buf = buf[cut:]
        self._skipped = bytes(skipped[-CAPTURE_PREFIX_MAX:])
        header = self._read(codec.HEADER_LEN, deadline, buf)
        return self._read(codec.frame_length(header), deadline, header)

    def _with_surroundings(self, frame: bytes) -> bytes:
        # A capture should show the module's quirks: the envelope head skipped before the frame,
        # and the bytes that follow it (the envelope's sum, a stray F6), which come within moments.
        time.sleep(CAPTURE_TAIL_WAIT_S)
        try:
            tail = self._serial.read(min(self._serial.in_waiting, CAPTURE_PREFIX_MAX))
        except Exception:  # the capture is best effort; the read itself succeeded
            tail = b""
        head = self._skipped[-codec.ENVELOPE_HEAD_LEN :]
        prefix = head if codec.is_envelope(head + frame) else b""  # line noise is no part of the answer
        return prefix + frame + bytes(tail)


# --------------------------------------------------------------------------------------------------
# USB


class SamUsbSettings(SamSettings):
    vid: str = "0400"
    """USB vendor id (hex)."""
    pid: str = "C35A"
    """USB product id (hex)."""
    interface: int = 0
    endpoint_out: int | None = None
    """Bulk OUT endpoint address; None: the first bulk OUT of ``interface``."""
    endpoint_in: int | None = None
    """Bulk IN endpoint address; None: the first bulk IN of ``interface``."""
    packet_size: int = 64

    @field_validator("vid", "pid")
    @classmethod
    def _hex16(cls, v: str) -> str:
        try:
            value = int(v, 16)
        except ValueError:
            raise ValueError("must be 4 hex digits, e.g. 0400") from None
        if not 0 <= value <= 0xFFFF:
            raise ValueError("must be 4 hex digits, e.g. 0400")
        return f"{value:04X}"


class SamUsbReader(_SamReader):
    """SAM reader on USB bulk endpoints (pyusb). ``usb_device`` injects a device object (tests)."""

    Settings: ClassVar[type[DriverSettings]] = SamUsbSettings
    settings: SamUsbSettings

    def __init__(
        self, settings: DriverSettings | None = None, *, name: str | None = None, usb_device: Any = None
    ) -> None:
        super().__init__(settings, name=name or "sam-usb")
        self._injected = usb_device
        self._dev: Any = None
        self._ep_out: int | None = None
        self._ep_in: int | None = None

    def describe(self) -> str:
        return f"USB {self.settings.vid}:{self.settings.pid}"

    def _open(self) -> None:
        self._card_in_field = False
        s = self.settings
        dev = self._injected
        if dev is None:
            import usb.core

            try:
                dev = usb.core.find(idVendor=int(s.vid, 16), idProduct=int(s.pid, 16))
            except usb.core.NoBackendError as exc:
                raise DeviceNotFound(
                    "no libusb backend", device=self.describe(), hint="install libusb-1.0 (apt install libusb-1.0-0)"
                ) from exc
            if dev is None:
                raise DeviceNotFound(
                    f"no USB device {s.vid}:{s.pid}",
                    device=self.describe(),
                    hint="check the cable, lsusb, and [card_reader] vid/pid",
                )
        self._ep_out, self._ep_in = s.endpoint_out, s.endpoint_in
        if self._ep_out is None or self._ep_in is None:
            self._ep_out, self._ep_in = self._find_endpoints(dev)
        self._dev = dev

    def _find_endpoints(self, dev: Any) -> tuple[int, int]:
        import usb.util

        try:
            dev.set_configuration()
        except Exception:  # already configured (or busy in another process: the write will tell)
            log.debug("%s: set_configuration failed", self.name, exc_info=True)
        intf = dev.get_active_configuration()[(self.settings.interface, 0)]

        def find(direction: int) -> int:
            ep = usb.util.find_descriptor(
                intf,
                custom_match=lambda e: (
                    usb.util.endpoint_direction(e.bEndpointAddress) == direction
                    and usb.util.endpoint_type(e.bmAttributes) == usb.util.ENDPOINT_TYPE_BULK
                ),
            )
            if ep is None:
                raise DeviceNotFound(
                    f"interface {self.settings.interface} has no bulk endpoint", device=self.describe()
                )
            return int(ep.bEndpointAddress)

        return find(usb.util.ENDPOINT_OUT), find(usb.util.ENDPOINT_IN)

    def _close(self) -> None:
        dev, self._dev = self._dev, None
        if dev is not None and self._injected is None:
            try:
                import usb.util

                usb.util.dispose_resources(dev)
            except Exception:
                log.debug("%s: dispose failed", self.name, exc_info=True)

    def _usb_error(self, exc: BaseException, deadline: float) -> Exception:
        errno = getattr(exc, "errno", None)
        if errno in (110, 60) or "timeout" in str(exc).lower():  # ETIMEDOUT (Linux, macOS)
            return DeviceTimeout(f"USB reader did not answer: {exc}", device=self.describe())
        return DeviceNotFound(
            f"USB reader gone: {exc}",
            device=self.describe(),
            hint="check the cable; the reader is reopened when it comes back",
        )

    def _send(self, frame: bytes) -> None:
        if self._dev is None:
            raise DeviceNotFound("USB reader is closed", device=self.describe())
        try:
            self._dev.write(self._ep_out, frame, int(self.settings.exchange_timeout_s * 1000))
        except Exception as exc:
            raise self._usb_error(exc, 0.0) from exc

    def _receive(self, deadline: float) -> bytes:
        """Read packets until the answer is whole: a frame, or a module envelope around one. Bytes
        after its declared length (the Telpo-style trailing byte after CHK) stay in the buffer and
        the codec drops them."""
        buf = bytearray()
        need: int | None = None
        while need is None or len(buf) < need:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                raise DeviceTimeout(
                    f"USB reader did not answer: {len(buf)} of {need or codec.HEADER_LEN} bytes", device=self.describe()
                )
            try:
                chunk = self._dev.read(self._ep_in, max(self.settings.packet_size, 4096), left_ms)
            except Exception as exc:
                raise self._usb_error(exc, deadline) from exc
            buf += bytes(chunk)
            stray = next((i for i, byte in enumerate(buf) if byte == codec.PREAMBLE[0]), len(buf))
            if stray:  # a byte that trailed the previous answer, sent in a packet of its own
                log.debug("%s: dropped %d bytes before the answer", self.name, stray)
                del buf[:stray]
            need = codec.unit_length(bytes(buf)) if buf else None
        return bytes(buf)
