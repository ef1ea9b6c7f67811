"""The SAM (GA 467-style) frame codec: pure functions over bytes, no I/O.

Frame: preamble ``AA AA AA 96 69``, a big-endian length of everything after it (body + CHK), the
body, and CHK = XOR of every byte from the length through the body. A request body is CMD PARA
[DATA]; a response body is SW1 SW2 SW3 [DATA]. See docs/drivers.md and the protocol notes.

Real modules are not exact: bytes after the declared length are ignored (counted in a debug log),
and a module envelope around the frame (``AA`` LEN(2, BE) TYPE(2) <SAM frame> SUM, e.g.
``AA 05 12 A0 10 AA AA AA 96 69 ... <sum>``) is unwrapped and its sum checked (``unwrap_frame``).

Parse errors are ``ProtocolError`` with ``frame_hex`` and a message saying what is wrong; a SAM
failure status is ``CardReadError`` with ``sw3`` and ``meaning``. Neither ever carries a personal
byte: ``frame_hex`` shows the frame header only, and a text-field error names the field and the
rule, never the value (a birth date is personal data).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from functools import reduce
from typing import TypedDict

from core import codes
from core.card import LONG_TERM, IdCard
from core.errors import CardReadError, ProtocolError

log = logging.getLogger(__name__)

PREAMBLE = b"\xaa\xaa\xaa\x96\x69"
HEADER_LEN = 7
"""Preamble plus the two length bytes."""
MAX_LEN = 0x0A0A
"""Largest length field we accept (30 10 with a 1024-byte fingerprint is 0x090A)."""
STATUS_HEADER_LEN = HEADER_LEN + 3
"""Preamble, length and SW1 SW2 SW3 (or CMD PARA and one byte): all of a frame that may be shown."""
ENVELOPE_START = 0xAA
ENVELOPE_HEAD_LEN = 5
"""A module envelope: AA, LEN (2 bytes, big-endian: TYPE + frame + SUM), TYPE (2 bytes, e.g. A0 10)."""

# Commands: (CMD, PARA)
RESET = (0x10, 0xFF)
SAM_STATUS = (0x11, 0xFF)
SAM_ID = (0x12, 0xFF)
FIND_CARD = (0x20, 0x01)
SELECT_CARD = (0x20, 0x02)
READ_TEXT_PHOTO = (0x30, 0x01)
READ_ADDRESS = (0x30, 0x03)
READ_TEXT_PHOTO_FP = (0x30, 0x10)
SET_BAUD = 0x60
BAUD_PARAS = {115200: 0x00, 57600: 0x01, 38400: 0x02, 19200: 0x03, 9600: 0x04}

SW_OK = 0x90
SW_FIND_OK = 0x9F
SW_NO_CARD = 0x80
SW_SELECT_FAILED = 0x81
STATUS = {
    0x90: "success",
    0x9F: "find card success",
    0x91: "card has no such item",
    0x10: "checksum error in the frame the SAM received",
    0x11: "length error in the frame the SAM received",
    0x21: "command error (bad value or combination)",
    0x23: "unauthorized operation",
    0x24: "unrecognized error",
    0x31: "card failed to authenticate the SAM",
    0x32: "SAM failed to authenticate the card",
    0x33: "information verification failed",
    0x37: "fingerprint verification error",
    0x3F: "information length error",
    0x40: "unrecognized card type",
    0x41: "read card failed",
    0x47: "get-random failed",
    0x60: "SAM self-test failed, cannot accept commands",
    0x66: "SAM not authorized",
    0x80: "find card failed (no card)",
    0x81: "select card failed",
}
"""Every SW3 status the SAM sends, with its meaning."""

TEXT_LEN = 256
WLT_LEN = 1024
CARD_TYPE_OFFSET = 248
LONG_TERM_BYTES = "长期".encode("utf-16-le")


def frame_hex(frame: bytes) -> str:
    """A frame for an error message or a log: its header only (preamble, length, status bytes), never
    its body, which holds personal data in a read response; bytes that do not start with a frame
    header are shown by their length alone (a misaligned capture starts with the name)."""
    frame = bytes(frame)
    if frame[:5] == PREAMBLE:
        shown = frame[:STATUS_HEADER_LEN]
    elif is_envelope(frame):
        shown = frame[: ENVELOPE_HEAD_LEN + STATUS_HEADER_LEN]
    else:
        return f"({len(frame)} bytes, no frame header)"
    if len(frame) <= len(shown) + 1:  # a status answer without data: header and CHK are all of it
        return frame.hex(" ")
    return f"{shown.hex(' ')} ... ({len(frame)} bytes)"


def status_meaning(sw3: int) -> str:
    return STATUS.get(sw3, f"unknown status 0x{sw3:02X}")


def checksum(data: bytes) -> int:
    """XOR of ``data`` (the length bytes and the body)."""
    return reduce(lambda a, b: a ^ b, data, 0)


def _frame(body: bytes) -> bytes:
    length = (len(body) + 1).to_bytes(2, "big")
    return PREAMBLE + length + body + bytes([checksum(length + body)])


def build_request(cmd: int, para: int, data: bytes = b"") -> bytes:
    """A host->SAM frame for ``cmd``/``para`` with optional ``data``."""
    if not (0 <= cmd <= 0xFF and 0 <= para <= 0xFF):
        raise ValueError("cmd and para are single bytes")
    return _frame(bytes([cmd, para]) + data)


def build_command(command: tuple[int, int]) -> bytes:
    return build_request(*command)


def set_baud_request(baud: int) -> bytes:
    """The 60 pp frame that switches the SAM to ``baud`` (persists inside the SAM)."""
    try:
        return build_request(SET_BAUD, BAUD_PARAS[baud])
    except KeyError:
        raise ValueError(f"unsupported baud {baud}; one of {sorted(BAUD_PARAS)}") from None


def build_response(sw3: int, data: bytes = b"", sw1: int = 0, sw2: int = 0) -> bytes:
    """A SAM->host frame (the simulator and tests build responses with it)."""
    return _frame(bytes([sw1, sw2, sw3]) + data)


@dataclasses.dataclass(frozen=True)
class Response:
    sw1: int
    sw2: int
    sw3: int
    data: bytes

    @property
    def meaning(self) -> str:
        return status_meaning(self.sw3)

    @property
    def ok(self) -> bool:
        return self.sw3 in (SW_OK, SW_FIND_OK)

    def raise_for_status(self, expected: int = SW_OK) -> Response:
        """Raise ``CardReadError`` unless SW3 is ``expected``."""
        if self.sw3 != expected:
            raise CardReadError(
                f"SAM status 0x{self.sw3:02X}: {self.meaning}", sw3=f"0x{self.sw3:02X}", meaning=self.meaning
            )
        return self


def frame_length(header: bytes) -> int:
    """Total frame length from its first 7 bytes. Raises ``ProtocolError`` on a bad preamble/length."""
    if len(header) < HEADER_LEN:
        raise ProtocolError(
            f"frame too short: {len(header)} bytes, the header alone is {HEADER_LEN}", frame_hex=frame_hex(header)
        )
    if header[:5] != PREAMBLE:
        raise ProtocolError("bad preamble: expected AA AA AA 96 69", frame_hex=frame_hex(header))
    length = int.from_bytes(header[5:7], "big")
    if length < 1 or length > MAX_LEN:
        raise ProtocolError(
            f"bad length field {length} (0x{length:04X}): must be 1..{MAX_LEN}", frame_hex=frame_hex(header)
        )
    return length + HEADER_LEN


def is_envelope(data: bytes) -> bool:
    """True when ``data`` starts with a module envelope: AA LEN(2) TYPE(2), then the SAM preamble."""
    return (
        len(data) >= ENVELOPE_HEAD_LEN + 5
        and data[0] == ENVELOPE_START
        and data[:5] != PREAMBLE
        and data[ENVELOPE_HEAD_LEN : ENVELOPE_HEAD_LEN + 5] == PREAMBLE
    )


def unit_length(data: bytes) -> int | None:
    """How many bytes the answer starting at ``data[0]`` takes (a SAM frame, or a module envelope
    with the frame inside); ``None`` while too few bytes have come to tell. Transports that read
    in packets (USB) read until this many bytes are there. Raises ``ProtocolError`` when the bytes
    cannot start an answer."""
    data = bytes(data)
    if data[:5] == PREAMBLE:
        return frame_length(data[:HEADER_LEN]) if len(data) >= HEADER_LEN else None
    if len(data) < 5 and PREAMBLE.startswith(data):
        return None
    if data[:1] == bytes([ENVELOPE_START]):
        if len(data) < ENVELOPE_HEAD_LEN + 5:
            return None
        if is_envelope(data):
            return 3 + _envelope_length(data)
    raise ProtocolError(
        "bad preamble: expected AA AA AA 96 69 (or a module envelope AA LEN TYPE around it)", frame_hex=frame_hex(data)
    )


def _envelope_length(data: bytes) -> int:
    length = int.from_bytes(data[1:3], "big")
    if not 2 + HEADER_LEN + 1 + 1 <= length <= 2 + MAX_LEN + HEADER_LEN + 1:
        raise ProtocolError(f"module envelope: bad length field {length} (0x{length:04X})", frame_hex=frame_hex(data))
    return length


def _envelope_sum_ok(envelope: bytes) -> bool:
    # The sum's range is not published; the modules seen sum from the length (or the type, or the
    # start byte) through the last frame byte, mod 256. The frame inside has its own XOR check.
    body, stored = envelope[:-1], envelope[-1]
    return stored in {sum(body[start:]) & 0xFF for start in (0, 1, 3)}


def unwrap_frame(data: bytes) -> bytes:
    """The SAM frame in ``data``: a module envelope removed (its sum checked) and the bytes after
    the declared length dropped (the length is authoritative; the rest belongs to nothing, and is
    counted in a debug log). Raises ``ProtocolError`` on a bad preamble, length or envelope sum;
    a frame shorter than its length field is returned as it is (the parser names it truncated)."""
    data = bytes(data)
    total = unit_length(data)
    if total is None:
        raise ProtocolError(
            f"frame too short: {len(data)} bytes, the header alone is {HEADER_LEN}", frame_hex=frame_hex(data)
        )
    if len(data) > total:
        log.debug("ignored %d bytes after the %d-byte answer (declared length)", len(data) - total, total)
        data = data[:total]
    if not is_envelope(data):
        return data
    if len(data) < total:
        raise ProtocolError(
            f"truncated module envelope: its length field says {total} bytes, got {len(data)}",
            frame_hex=frame_hex(data),
        )
    if not _envelope_sum_ok(data):
        raise ProtocolError(
            f"module envelope: bad sum 0x{data[-1]:02X} (sum of the bytes mod 256)", frame_hex=frame_hex(data)
        )
    frame = data[ENVELOPE_HEAD_LEN:-1]
    declared = frame_length(frame[:HEADER_LEN])
    if declared != len(frame):
        raise ProtocolError(
            f"module envelope holds {len(frame)} bytes, the frame inside declares {declared}", frame_hex=frame_hex(data)
        )
    log.debug("unwrapped a module envelope (type %s) around a %d-byte frame", data[3:5].hex(" "), len(frame))
    return frame


def wrap_in_envelope(frame: bytes, kind: bytes = b"\xa0\x10") -> bytes:
    """``frame`` inside a module envelope (tests and the simulator build quirky modules with it)."""
    head = bytes([ENVELOPE_START]) + (len(kind) + len(frame) + 1).to_bytes(2, "big") + kind
    return head + frame + bytes([sum(head[1:] + frame) & 0xFF])


def _parse(frame: bytes, min_body: int, what: str) -> bytes:
    frame = unwrap_frame(frame)
    total = frame_length(frame)
    if len(frame) < total:
        raise ProtocolError(
            f"truncated {what}: length field says {total} bytes, got {len(frame)}", frame_hex=frame_hex(frame)
        )
    if checksum(frame[5:]) != 0:
        raise ProtocolError(
            f"bad checksum: CHK is 0x{frame[-1]:02X}, computed 0x{checksum(frame[5:-1]):02X}",
            frame_hex=frame_hex(frame),
        )
    body = frame[7:-1]
    if len(body) < min_body:
        raise ProtocolError(
            f"{what} body too short: {len(body)} bytes, need at least {min_body}", frame_hex=frame_hex(frame)
        )
    return body


def parse_response(frame: bytes) -> Response:
    """Parse one complete SAM response frame (no status check)."""
    body = _parse(bytes(frame), 3, "response")
    return Response(body[0], body[1], body[2], body[3:])


def parse_request(frame: bytes) -> tuple[int, int, bytes]:
    """Parse one host request frame into ``(cmd, para, data)`` (the simulator uses it)."""
    body = _parse(bytes(frame), 2, "request")
    return body[0], body[1], body[2:]


def sam_id_string(data: bytes) -> str:
    """The printed SAM id from the 16 data bytes of 12 FF."""
    if len(data) != 16:
        raise ProtocolError(f"SAM id must be 16 bytes, got {len(data)}", frame_hex=frame_hex(data))
    u = [int.from_bytes(data[i : i + 4], "little") for i in (4, 8, 12)]
    return f"{data[0]:02d}.{data[2]:02d}-{u[0]}-{u[1]:010d}-{u[2]:010d}"


# -- read payload -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReadPayload:
    text: bytes
    wlt: bytes
    fingerprint: bytes | None


def split_read_data(data: bytes, *, with_fingerprint: bool) -> ReadPayload:
    """Split the DATA of a 30 01 / 30 10 response into text, WLT and fingerprint."""
    head = 6 if with_fingerprint else 4
    if len(data) < head:
        raise ProtocolError(f"read data too short for its length header: {len(data)} bytes", frame_hex=frame_hex(data))
    text_len = int.from_bytes(data[0:2], "big")
    photo_len = int.from_bytes(data[2:4], "big")
    fp_len = int.from_bytes(data[4:6], "big") if with_fingerprint else 0
    if text_len != TEXT_LEN:
        raise ProtocolError(f"text length is {text_len}, must be {TEXT_LEN}", frame_hex=data[:head].hex(" "))
    if photo_len != WLT_LEN:
        raise ProtocolError(f"photo length is {photo_len}, must be {WLT_LEN}", frame_hex=data[:head].hex(" "))
    if with_fingerprint and fp_len not in (0, 512, 1024):
        raise ProtocolError(f"fingerprint length is {fp_len}, must be 0, 512 or 1024", frame_hex=data[:head].hex(" "))
    if len(data) != head + text_len + photo_len + fp_len:
        raise ProtocolError(
            f"read data is {len(data)} bytes, its header says {head + text_len + photo_len + fp_len}",
            frame_hex=data[:head].hex(" "),
        )
    text = data[head : head + text_len]
    wlt = data[head + text_len : head + text_len + photo_len]
    fp = data[head + text_len + photo_len :] if fp_len else None
    return ReadPayload(text, wlt, fp)


def build_read_data(text: bytes, wlt: bytes, fingerprint: bytes | None = None) -> bytes:
    """The DATA of a read response (inverse of ``split_read_data``); 30 10 when fingerprint is not None."""
    head = len(text).to_bytes(2, "big") + len(wlt).to_bytes(2, "big")
    if fingerprint is not None:
        head += len(fingerprint).to_bytes(2, "big")
    return head + text + wlt + (fingerprint or b"")


# -- text block -------------------------------------------------------------------------------------


def _field(text: bytes, off: int, length: int, name: str, *, strip: bool = True) -> str:
    raw = text[off : off + length]
    try:
        value = raw.decode("utf-16-le")
        return value.rstrip(" \x00") if strip else value
    except UnicodeDecodeError:
        raise ProtocolError(f"text field {name} (offset {off}) is not valid UCS-2", field=name) from None


def _date(value: str, name: str, text: bytes) -> dt.date:
    try:
        if len(value) != 8 or not value.isdigit():
            raise ValueError
        return dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        raise ProtocolError(f"{name} is not a YYYYMMDD date (8 digits of a real date)", field=name) from None


def _valid_to(text: bytes, off: int) -> dt.date | None:
    if text[off : off + 4] == LONG_TERM_BYTES:
        return None
    value = _field(text, off, 16, "valid_to")
    if value == LONG_TERM:
        return None
    return _date(value, "valid_to", text)


def card_marker(text: bytes) -> str:
    """The type marker at offset 248: "" (resident), "I", "J" or "Y"."""
    return _field(text, CARD_TYPE_OFFSET, 2, "card type marker").strip()


class _MainlandFields(TypedDict):
    """The fields the resident card and the HK/Macau/Taiwan residence permit (J) share at the same offsets."""

    name: str
    sex_code: str
    birth_date: dt.date
    address: str
    card_no: str
    authority: str
    valid_from: dt.date
    valid_to: dt.date | None


def decode_text(text: bytes) -> IdCard:
    """Decode the 256-byte text block into an ``IdCard`` (resident, I, J and Y layouts).

    Raises ``ProtocolError`` naming the field that is wrong (unknown marker, bad date, bad check
    digit, birth date disagreeing with the number).
    """
    if len(text) != TEXT_LEN:
        raise ProtocolError(f"text block is {len(text)} bytes, must be {TEXT_LEN}")
    marker = card_marker(text)

    def f(off: int, length: int, name: str) -> str:
        return _field(text, off, length, name)

    if marker in ("", "J"):
        card_no = f(122, 36, "card_no")
        birth = _date(f(36, 16, "birth_date"), "birth_date", text)
        fields: _MainlandFields = {
            "name": f(0, 30, "name"),
            "sex_code": f(30, 2, "sex"),
            "birth_date": birth,
            "address": f(52, 70, "address"),
            "card_no": card_no,
            "authority": f(158, 30, "authority"),
            "valid_from": _date(f(188, 16, "valid_from"), "valid_from", text),
            "valid_to": _valid_to(text, 204),
        }
        if marker == "":
            nation = f(32, 4, "nation")
            if nation not in codes.NATIONS:
                # The code itself is named (a technician needs it to extend the table); it is two
                # characters of a code list, never free text.
                raise ProtocolError(
                    f"unknown nation code {nation!a}: not in the GB 3304 table (01-56, 97, 98)", field="nation"
                )
            card = IdCard(card_type="0", nation_code=nation, **fields)
        else:
            card = IdCard(
                card_type="1",
                pass_no=f(220, 18, "pass_no") or None,
                issue_count=f(238, 4, "issue_count") or None,
                **fields,
            )
        _check_number(card_no, birth)
    elif marker == "I":
        card = IdCard(
            card_type="2",
            english_name=f(0, 120, "english_name"),
            sex_code=f(120, 2, "sex"),
            card_no=f(122, 30, "card_no"),
            nationality=f(152, 6, "nationality"),
            name=f(158, 30, "name"),
            valid_from=_date(f(188, 16, "valid_from"), "valid_from", text),
            valid_to=_valid_to(text, 204),
            birth_date=_date(f(220, 16, "birth_date"), "birth_date", text),
            card_version=f(236, 4, "card_version"),
            authority=f(240, 8, "issuing_office"),
        )
        if len(card.card_no) != 15:
            raise ProtocolError(
                f"foreign permanent resident number must be 15 characters, got {len(card.card_no)}", field="card_no"
            )
    elif marker == "Y":  # 2023 card; layout from a single source (documented in docs/drivers.md)
        birth = _date(f(36, 16, "birth_date"), "birth_date", text)
        card_no = f(122, 36, "card_no")
        nationality, link = f(242, 6, "nationality"), f(250, 6, "old_number_link")
        card = IdCard(
            card_type="2",
            name=f(0, 30, "name"),
            sex_code=f(30, 2, "sex"),
            issue_count=f(32, 4, "renewal") or None,
            birth_date=birth,
            english_name=_y_english_name(text),
            card_no=card_no,
            valid_from=_date(f(188, 16, "valid_from"), "valid_from", text),
            valid_to=_valid_to(text, 204),
            nationality=nationality,
            pass_no=link or None,
            card_version="Y",
            y_field_158=f(158, 30, "field_158") or None,
            old_card_no=old_foreign_number(card_no, nationality, link),
        )
        if len(card_no) != 18:
            raise ProtocolError(f"card number must be 18 characters, got {len(card_no)}", field="card_no")
    else:
        raise ProtocolError(
            f"unknown card type marker {marker!r} at offset {CARD_TYPE_OFFSET}",
            frame_hex=text[CARD_TYPE_OFFSET : CARD_TYPE_OFFSET + 2].hex(" "),
        )
    if card.sex_code not in codes.SEX_NAMES:
        raise ProtocolError("unknown sex code: not a GB/T 2261.1 code (0, 1, 2, 9)", field="sex")
    return card


def mrz_check_digit(chars: str) -> str:
    """The ICAO 9303 check digit of ``chars``: digits count as themselves, A-Z as 10-35, ``<`` as 0;
    weights 7, 3, 1 repeating; the sum mod 10. Raises ``ValueError`` on any other character."""
    total = 0
    for i, ch in enumerate(chars):
        if ch.isascii() and ch.isdigit():
            value = int(ch)
        elif "A" <= ch <= "Z":
            value = ord(ch) - ord("A") + 10
        elif ch == "<":
            value = 0
        else:
            raise ValueError("only digits, A-Z and < have a check-digit value")
        total += value * (7, 3, 1)[i % 3]
    return str(total % 10)


def old_foreign_number(card_no: str, nationality: str, link: str) -> str | None:
    """The 15-character number of the earlier foreign permanent resident card, rebuilt from a 2023
    (Y) card: nationality (3 letters) + the province in the new number (characters 2-3) + the first
    two link characters (the city) + the birth date YYMMDD in the new number (characters 9-14) +
    the third link character (the sequence) + the ICAO 9303 check digit over those 14. ``None``
    when the card has no link (a first card) or its parts do not have that shape: the old number is
    informational and never stops a read (logged at debug, without the values)."""
    if not link:
        return None
    if not (
        len(card_no) == 18
        and card_no[:17].isascii()
        and card_no[:17].isdigit()
        and len(nationality) == 3
        and nationality.isascii()
        and nationality.isalpha()
        and nationality.isupper()
        and len(link) == 3
        and link.isascii()
        and link.isdigit()
    ):
        log.debug(
            "old number not rebuilt: the link must be 3 digits, the nationality 3 capital letters "
            "and the number 17 digits and a check character"
        )
        return None
    body = nationality + card_no[1:3] + link[0:2] + card_no[8:14] + link[2]
    return body + mrz_check_digit(body)


def _y_english_name(text: bytes) -> str:
    # Characters 1-35 and 36-46 of one name: a space at the end of the first part belongs to the name.
    first = _field(text, 52, 70, "english_name", strip=False)
    return (first + _field(text, 220, 22, "english_name")).strip(" \x00")


def _check_number(card_no: str, birth: dt.date) -> None:
    problems = codes.validate_resident_id(card_no)
    if problems:
        raise ProtocolError("card number: " + "; ".join(problems), field="card_no")
    if codes.resident_id_birth_date(card_no) != birth:
        raise ProtocolError("birth date disagrees with the birth date inside the card number", field="birth_date")


def _put(buf: bytearray, off: int, length: int, value: str) -> None:
    raw = value.encode("utf-16-le")
    if len(raw) > length:
        raise ValueError(f"value too long for the {length}-byte field at {off}")
    buf[off : off + length] = raw + " ".encode("utf-16-le") * ((length - len(raw)) // 2)


def _d(value: dt.date | None) -> str:
    return LONG_TERM if value is None else value.strftime("%Y%m%d")


def encode_text(card: IdCard) -> bytes:
    """The 256-byte text block for ``card`` (inverse of ``decode_text``; fixtures and the simulator)."""
    buf = bytearray(" ".encode("utf-16-le") * (TEXT_LEN // 2))
    if card.card_type in ("0", "1"):
        _put(buf, 0, 30, card.name)
        _put(buf, 30, 2, card.sex_code)
        if card.card_type == "0":
            _put(buf, 32, 4, card.nation_code or "")
        _put(buf, 36, 16, _d(card.birth_date))
        _put(buf, 52, 70, card.address)
        _put(buf, 122, 36, card.card_no)
        _put(buf, 158, 30, card.authority)
        _put(buf, 188, 16, _d(card.valid_from))
        _put(buf, 204, 16, _d(card.valid_to))
        if card.card_type == "1":
            _put(buf, 220, 18, card.pass_no or "")
            _put(buf, 238, 4, card.issue_count or "")
            _put(buf, 248, 2, "J")
    elif card.card_type == "2" and card.card_version == "Y":
        eng = card.english_name or ""
        _put(buf, 0, 30, card.name)
        _put(buf, 30, 2, card.sex_code)
        _put(buf, 32, 4, card.issue_count or "")
        _put(buf, 36, 16, _d(card.birth_date))
        _put(buf, 52, 70, eng[:35])
        _put(buf, 122, 36, card.card_no)
        _put(buf, 158, 30, card.y_field_158 or "")
        _put(buf, 188, 16, _d(card.valid_from))
        _put(buf, 204, 16, _d(card.valid_to))
        _put(buf, 220, 22, eng[35:46])
        _put(buf, 242, 6, card.nationality or "")
        _put(buf, 248, 2, "Y")
        _put(buf, 250, 6, card.pass_no or "")
    elif card.card_type == "2":
        _put(buf, 0, 120, card.english_name or "")
        _put(buf, 120, 2, card.sex_code)
        _put(buf, 122, 30, card.card_no)
        _put(buf, 152, 6, card.nationality or "")
        _put(buf, 158, 30, card.name)
        _put(buf, 188, 16, _d(card.valid_from))
        _put(buf, 204, 16, _d(card.valid_to))
        _put(buf, 220, 16, _d(card.birth_date))
        _put(buf, 236, 4, card.card_version or "")
        _put(buf, 240, 8, card.authority)
        _put(buf, 248, 2, "I")
    else:
        raise ValueError(f"unknown card_type {card.card_type!r}")
    return bytes(buf)


def decode_read_response(frame: bytes) -> IdCard:
    """Decode a complete 30 01 or 30 10 response frame into an ``IdCard`` (WLT and fingerprint raw)."""
    resp = parse_response(frame).raise_for_status()
    with_fp = len(resp.data) >= 6 and len(resp.data) in (6 + 1280, 6 + 1280 + 512, 6 + 1280 + 1024)
    payload = split_read_data(resp.data, with_fingerprint=with_fp)
    card = decode_text(payload.text)
    return dataclasses.replace(card, photo_wlt=payload.wlt, fingerprint=payload.fingerprint)


def read_response(card: IdCard, wlt: bytes, fingerprint: bytes | None = None) -> bytes:
    """A complete read response frame for ``card`` (simulator, fixtures, tests)."""
    return build_response(SW_OK, build_read_data(encode_text(card), wlt, fingerprint))
