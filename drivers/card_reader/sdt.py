"""The ``sdt`` reader: a vendor's Linux SDK with the common SDT-style API, loaded with ctypes.

Many readers sold for Linux (华视, 精伦, 神思 ...) are driven through the vendor's shared library,
not through raw SAM frames. Their libraries export the same C functions (the public ``sdtapi.h``
headers; calling convention cdecl on Linux); docs/drivers.md lists the names, arguments and
return codes used here. The library answers with the SAM's own status bytes (0x90 success, 0x9F
card found, 0x80 no card ...) plus a few host codes of its own (0x01 port open failed ...).

The text block the library returns is the same 256-byte UCS-2 block as in a SAM frame, so the
codec decodes it; the photo is decoded by the vendor's ``unpack()`` when the library (or
``photo_library``) exports it, else by ``wlt_decoder``, else it stays raw WLT.

The library's calls block inside the vendor code; their time limits are the vendor's (typically
a few hundred milliseconds for find/select and 1-3 s for a read).
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

from pydantic import field_validator

from core.card import IdCard
from core.errors import CardReadError, DeviceNotFound, DeviceTimeout, DriverError, ProtocolError
from core.privacy import mask_card_no
from drivers.base import CardReader, CardReaderSettings, DriverSettings, ProbeResult
from drivers.card_reader import codec

log = logging.getLogger(__name__)

REQUIRED = ("SDT_OpenPort", "SDT_ClosePort", "SDT_StartFindIDCard", "SDT_SelectIDCard", "SDT_ReadBaseMsg")
"""The functions every SDT library must export; ``SDT_ReadNewAppMsg``, ``SDT_GetSAMStatus`` and
``unpack`` are used when present."""
SDK_STATUS = {
    0x01: "port open failed",
    0x02: "the PC timed out receiving the reader's answer",
    0x03: "data transfer error",
    0x05: "the SAM's serial port is unavailable",
    0x09: "file open failed",
}
"""Codes the SDK itself returns (never on the wire), besides the SAM's SW3 codes (codec.STATUS)."""
SW_TIMEOUT = 0x02
SW_NO_APPENDED_ADDRESS = 0x91
FIND_ATTEMPTS = 3
UNPACK_OK = 1
UNPACK_BUFFER = 65536
"""Output buffer for ``unpack``: one vendor build overruns a buffer of exactly 38862 bytes."""
APPENDED_ADDRESS_LEN = 70
"""One appended address (追加住址): 35 UCS-2 characters; a card holds up to four."""

ELF_MACHINES = {
    3: "x86 (i386)",
    8: "mips",
    20: "powerpc",
    21: "ppc64",
    40: "arm (32-bit)",
    62: "x86_64",
    183: "aarch64 (arm64)",
    243: "riscv",
    258: "loongarch",
}


def status_meaning(code: int) -> str:
    return SDK_STATUS.get(code) or codec.status_meaning(code)


# -- the library file ---------------------------------------------------------------------------------


def elf_architecture(path: str | Path) -> tuple[int, int]:
    """``(EI_CLASS, e_machine)`` of an ELF file (1 = 32-bit, 2 = 64-bit). Raises ``ValueError``
    when the file is not ELF."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise ValueError("is not an ELF shared library")
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return head[4], machine


def _arch_name(elf_class: int, machine: int) -> str:
    name = ELF_MACHINES.get(machine, f"ELF machine {machine}")
    return f"{name}, {32 if elf_class == 1 else 64}-bit"


def check_library(path: str) -> None:
    """Raise ``ValueError`` (naming both architectures when they differ) unless ``path`` is an ELF
    library this Python process can load."""
    if not Path(path).is_file():
        raise ValueError(f"library not found: {path}")
    try:
        lib_arch = elf_architecture(path)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ValueError(f"{path} {exc}") from None
    own = "/proc/self/exe" if Path("/proc/self/exe").exists() else sys.executable
    try:
        own_arch = elf_architecture(own)
    except (OSError, ValueError):  # not an ELF platform: let the loader decide
        return
    if lib_arch != own_arch:
        raise ValueError(
            f"{path} is built for {_arch_name(*lib_arch)}, but this machine runs "
            f"{_arch_name(*own_arch)}: install the vendor's build for this architecture"
        )


class SdtSettings(CardReaderSettings):
    library: str
    """Path of the vendor's SDT-API library (e.g. /opt/vendor/lib/libsdtapi.so), built for this
    machine's architecture."""
    port: int = 1001
    """SDT port number: 1-16 are serial ports, 1001-1016 USB readers (1001 = the first)."""
    photo_library: str | None = None
    """Library exporting the vendor's photo decoder ``unpack()`` when the SDK ships it apart
    (e.g. libwlt2bmp.so); unset: ``unpack`` is looked up in ``library``."""
    unpack_arg: int = 602
    """Third argument of ``unpack()``: a vendor-specific code (602 = decode in memory, no file, in
    the SDK documentation found); see docs/drivers.md."""

    @field_validator("library", "photo_library")
    @classmethod
    def _loadable(cls, v: str | None) -> str | None:
        if v is not None:
            check_library(v)
        return v

    @field_validator("port")
    @classmethod
    def _sdt_port(cls, v: int) -> int:
        if not (1 <= v <= 16 or 1001 <= v <= 1016):
            raise ValueError("must be 1-16 (serial) or 1001-1016 (USB)")
        return v


_load_lock = threading.Lock()


def _load(path: str) -> ctypes.CDLL:
    try:
        check_library(path)
        with _load_lock:
            return ctypes.CDLL(path)
    except (OSError, ValueError) as exc:
        raise DeviceNotFound(
            f"cannot load the SDT library: {exc}",
            device=path,
            hint="set [card_reader] library to the vendor's .so for this machine",
        ) from exc


def _declare(lib: ctypes.CDLL, name: str, *argtypes: Any) -> Any:
    fn = getattr(lib, name)
    fn.argtypes = list(argtypes)
    fn.restype = ctypes.c_int
    return fn


_BUF = ctypes.POINTER(ctypes.c_ubyte)
_UINT = ctypes.POINTER(ctypes.c_uint)


class SdtReader(CardReader):
    """A reader driven through the vendor's SDT-API library (``library``, ``port``)."""

    Settings: ClassVar[type[DriverSettings]] = SdtSettings
    settings: SdtSettings

    def __init__(self, settings: DriverSettings | None = None, *, name: str | None = None) -> None:
        super().__init__(settings, name=name or "sdt")
        self._fn: dict[str, Any] = {}
        self._unpack: Any = None
        self._card_in_field = False

    def describe(self) -> str:
        return f"SDT library {Path(self.settings.library).name} port {self.settings.port}"

    # -- lifecycle -------------------------------------------------------------------------------
    def _open(self) -> None:
        self._card_in_field = False
        lib = _load(self.settings.library)
        missing = [n for n in REQUIRED if not hasattr(lib, n)]
        if missing:
            raise DriverError(
                f"the SDT library lacks {', '.join(missing)}",
                device=self.settings.library,
                hint="this is not an SDT-API library; use the vendor's libsdtapi-style .so, "
                "or a driver that speaks the reader's protocol (sam-serial, sam-usb)",
            )
        port, buf, uint = ctypes.c_int, _BUF, _UINT
        fn = {
            "SDT_OpenPort": _declare(lib, "SDT_OpenPort", port),
            "SDT_ClosePort": _declare(lib, "SDT_ClosePort", port),
            "SDT_StartFindIDCard": _declare(lib, "SDT_StartFindIDCard", port, buf, ctypes.c_int),
            "SDT_SelectIDCard": _declare(lib, "SDT_SelectIDCard", port, buf, ctypes.c_int),
            "SDT_ReadBaseMsg": _declare(lib, "SDT_ReadBaseMsg", port, buf, uint, buf, uint, ctypes.c_int),
        }
        if hasattr(lib, "SDT_ReadNewAppMsg"):
            fn["SDT_ReadNewAppMsg"] = _declare(lib, "SDT_ReadNewAppMsg", port, buf, uint, ctypes.c_int)
        if hasattr(lib, "SDT_GetSAMStatus"):
            fn["SDT_GetSAMStatus"] = _declare(lib, "SDT_GetSAMStatus", port, ctypes.c_int)
        photo_lib = _load(self.settings.photo_library) if self.settings.photo_library else lib
        self._unpack = (
            _declare(photo_lib, "unpack", ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int)
            if hasattr(photo_lib, "unpack")
            else None
        )
        rc = fn["SDT_OpenPort"](self.settings.port)
        if rc != codec.SW_OK:
            raise DeviceNotFound(
                f"SDT_OpenPort({self.settings.port}) returned 0x{rc:02X}: {status_meaning(rc)}",
                device=self.describe(),
                sw3=f"0x{rc:02X}",
                hint="check the cable and [card_reader] port (1-16 serial, 1001-1016 USB), "
                "and that fvagent may open the device (udev rule / dialout group)",
            )
        self._fn = fn

    def _close(self) -> None:
        fn, self._fn = self._fn, {}
        if fn:
            fn["SDT_ClosePort"](self.settings.port)

    # -- polling ---------------------------------------------------------------------------------
    def _call(self, name: str, *args: Any) -> int:
        if not self._fn:
            raise DeviceNotFound("SDT reader is closed", device=self.describe())
        return int(self._fn[name](self.settings.port, *args))

    def _fault(self, name: str, rc: int) -> DriverError:
        """The error for a return code that concerns the reader, not a card."""
        message = f"{name} returned 0x{rc:02X}: {status_meaning(rc)}"
        if rc == SW_TIMEOUT:
            return DeviceTimeout(message, device=self.describe())
        if rc in (0x01, 0x05):
            return DeviceNotFound(message, device=self.describe(), hint="check the reader's cable and power")
        return DriverError(
            message,
            device=self.describe(),
            sw3=f"0x{rc:02X}",
            meaning=status_meaning(rc),
            hint="the reader is reopened with backoff; if this persists, power-cycle the reader",
        )

    def _find(self) -> bool:
        iin = (ctypes.c_ubyte * 16)()  # 4 bytes on the wire; some SDKs write 8
        for _ in range(FIND_ATTEMPTS):
            rc = self._call("SDT_StartFindIDCard", iin, 0)
            if rc != 0x10:  # 0x10: the SAM received a garbled command; simply ask again
                break
        if rc == codec.SW_FIND_OK:
            return True
        if rc in (codec.SW_NO_CARD, codec.SW_SELECT_FAILED):
            return False
        raise self._fault("SDT_StartFindIDCard", rc)

    def _poll_card(self) -> IdCard | None:
        if not self._find():
            self._card_in_field = False
            return None
        if self._card_in_field:
            return None  # read already (or failed): wait until the card leaves the field
        self._card_in_field = True
        sn = (ctypes.c_ubyte * 16)()
        rc = self._call("SDT_SelectIDCard", sn, 0)
        if rc != codec.SW_OK:
            raise self._card_error("SDT_SelectIDCard", rc)
        text, photo = (ctypes.c_ubyte * codec.TEXT_LEN)(), (ctypes.c_ubyte * codec.WLT_LEN)()
        text_len, photo_len = ctypes.c_uint(0), ctypes.c_uint(0)
        rc = self._call("SDT_ReadBaseMsg", text, ctypes.byref(text_len), photo, ctypes.byref(photo_len), 0)
        if rc != codec.SW_OK:
            raise self._card_error("SDT_ReadBaseMsg", rc)
        if (text_len.value, photo_len.value) != (codec.TEXT_LEN, codec.WLT_LEN):
            raise ProtocolError(
                f"SDT_ReadBaseMsg returned {text_len.value} text and {photo_len.value} photo bytes, "
                f"must be {codec.TEXT_LEN} and {codec.WLT_LEN}",
                device=self.describe(),
            )
        if self.keep_raw_answer:  # no frame crosses the library: rebuild the SAM's answer
            self.raw_answer = codec.build_response(codec.SW_OK, codec.build_read_data(bytes(text), bytes(photo)))
        card = codec.decode_text(bytes(text))
        card = dataclasses.replace(card, photo_wlt=bytes(photo), appended_address=self._appended_address())
        card = self._decode_photo(card)
        log.info("%s: read card type %s %s", self.name, card.card_type, mask_card_no(card.card_no))
        return card

    def _card_error(self, name: str, rc: int) -> DriverError:
        if rc in SDK_STATUS:
            return self._fault(name, rc)
        return CardReadError(
            f"{name} returned 0x{rc:02X}: {status_meaning(rc)}", sw3=f"0x{rc:02X}", meaning=status_meaning(rc)
        )

    def _appended_address(self) -> str | None:
        """The newest address added to the card after issue (追加住址), when the library reads it."""
        if "SDT_ReadNewAppMsg" not in self._fn:
            return None
        buf, length = (ctypes.c_ubyte * (APPENDED_ADDRESS_LEN * 4 + 64))(), ctypes.c_uint(0)
        rc = self._call("SDT_ReadNewAppMsg", buf, ctypes.byref(length), 0)
        if rc != codec.SW_OK:  # 0x91 (none) is the usual answer; the base read stands either way
            if rc != SW_NO_APPENDED_ADDRESS:
                log.warning(
                    "%s: appended address not read: SDT_ReadNewAppMsg returned 0x%02X: %s",
                    self.name,
                    rc,
                    status_meaning(rc),
                )
            return None
        raw = bytes(buf)[: min(length.value, APPENDED_ADDRESS_LEN * 4)]
        try:
            parts = [
                raw[i : i + APPENDED_ADDRESS_LEN].decode("utf-16-le").strip(" \x00")
                for i in range(0, len(raw) - len(raw) % 2, APPENDED_ADDRESS_LEN)
            ]
        except UnicodeDecodeError:
            log.warning("%s: appended address not read: not valid UCS-2", self.name)
            return None
        parts = [p for p in parts if p]
        return parts[-1] if parts else None

    def _decode_photo(self, card: IdCard) -> IdCard:
        assert card.photo_wlt is not None
        if self._unpack is not None:
            jpeg = self._unpack_to_jpeg(card.photo_wlt)
            if jpeg is not None:
                return dataclasses.replace(card, photo_jpeg=jpeg)
        if self.settings.wlt_decoder:
            from drivers.card_reader.wlt import WltDecodeError, decode_wlt_to_jpeg

            try:
                return dataclasses.replace(
                    card, photo_jpeg=decode_wlt_to_jpeg(card.photo_wlt, self.settings.wlt_decoder)
                )
            except WltDecodeError as exc:  # keep the raw WLT: the record waits held, nothing is lost
                log.warning("%s: card photo kept undecoded: %s", self.name, exc)
        return card

    def _unpack_to_jpeg(self, wlt: bytes) -> bytes | None:
        """The vendor's ``unpack()`` -> JPEG, or ``None`` (logged) when it refuses. Its output is a
        BMP (starts with "BM") or the raw 102x126 BGR pixels, depending on the vendor build."""
        import numpy as np

        from core.images import ImageError, decode_image, encode_jpeg
        from drivers.card_reader.wlt import BGR_LEN, HEIGHT, WIDTH

        out = ctypes.create_string_buffer(UNPACK_BUFFER)
        rc = self._unpack(bytes(wlt), ctypes.addressof(out), self.settings.unpack_arg)
        if rc != UNPACK_OK:
            log.warning(
                "%s: card photo kept undecoded: unpack() returned %d (unpack_arg %d)",
                self.name,
                rc,
                self.settings.unpack_arg,
            )
            return None
        raw = out.raw
        try:
            if raw[:2] == b"BM":
                size = int.from_bytes(raw[2:6], "little")
                return encode_jpeg(decode_image(raw[:size] if 54 < size <= len(raw) else raw, what="unpack() BMP"))
            return encode_jpeg(np.frombuffer(raw[:BGR_LEN], dtype=np.uint8).reshape(HEIGHT, WIDTH, 3).copy())
        except ImageError as exc:
            log.warning("%s: card photo kept undecoded: %s", self.name, exc)
            return None

    def probe(self) -> ProbeResult:
        """Open the library's port and ask the SAM its status when the library can; no card is touched."""
        try:
            self.open()
            with self._lock:
                if "SDT_GetSAMStatus" not in self._fn:
                    return ProbeResult(True, f"{self.describe()}: port open")
                rc = self._call("SDT_GetSAMStatus", 0)
        except DriverError as exc:
            return ProbeResult(False, str(exc))
        return ProbeResult(
            rc == codec.SW_OK, f"{self.describe()}: SAM status 0x{rc:02X} {status_meaning(rc)}", {"sw3": f"0x{rc:02X}"}
        )
