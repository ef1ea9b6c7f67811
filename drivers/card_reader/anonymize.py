"""A read answer with its personal bytes replaced by a synthetic identity of the same layout.

``fvagent card capture`` records one real read so that a technician can send it to add a reader
model; this module makes that capture safe to send. It works on the bytes, not on a decoded card,
so whatever made the read odd survives: the module envelope, bytes after the declared length, the
padding style, the card type marker, the sex and nation codes, reserved bytes, and a checksum
that was wrong stays wrong by the same difference. Replaced: every name, the number, the birth
date, the address, the issuing authority, the validity dates (长期 is kept), the HK/Macau/Taiwan
pass number, the Y card's old-number link and field 158, the photo (with ``SYNTHETIC_WLT``) and
the fingerprint (zeros). The synthetic number agrees with the synthetic birth date and carries a
valid check character, so ``fvagent card decode`` decodes the result.
"""

from __future__ import annotations

from core.codes import resident_id_check_digit
from drivers.card_reader import codec

SYNTHETIC_BIRTH = "19900101"
SYNTHETIC_VALID_FROM = "20200101"
SYNTHETIC_VALID_TO = "20400101"
_CHINESE = "测试样本名字示例甲乙丙丁戊己庚辛壬癸子丑寅卯辰巳午未申酉戌亥"
_ADDRESS = "示例省示例市示例区样本路一号测试小区二栋三单元四楼五号六七八九十百千万"
_AUTHORITY = "示例市公安局示例分局样本派出所"
_ENGLISH = "SAMPLE, TEST PERSON EXAMPLE NAME "
MAX_KEPT_TRAILING = 4
"""Bytes after the declared length kept as they are (module junk such as F6 or 00); a longer tail
could be another answer and is zeroed."""


def anonymize_answer(raw: bytes) -> bytes:
    """``raw`` (a reader's answer to 30 01 / 30 10, possibly in a module envelope, possibly with
    bytes after it) with the personal bytes replaced; same length. An answer without read data
    (a status) is returned unchanged; one whose shape is not a read response keeps only its frame
    header (the rest is zeroed)."""
    raw = bytes(raw)
    start = codec.ENVELOPE_HEAD_LEN if codec.is_envelope(raw) else 0
    if raw[start : start + 5] != codec.PREAMBLE or len(raw) < start + codec.HEADER_LEN:
        return bytes(len(raw))  # nothing recognisable: nothing of it may leave
    declared = codec.frame_length(raw[start : start + codec.HEADER_LEN])
    end = start + declared  # where the frame ends (the envelope's sum, then any tail, follow)
    frame = bytearray(raw[start : min(end, len(raw))])
    data_len = declared - codec.STATUS_HEADER_LEN - 1
    if data_len <= 0:
        return raw
    with_fp = data_len in (6 + 1280, 6 + 1280 + 512, 6 + 1280 + 1024)
    text_at = codec.STATUS_HEADER_LEN + (6 if with_fp else 4)
    if data_len in (4 + 1280,) or with_fp:
        text = bytes(frame[text_at : text_at + codec.TEXT_LEN])
        if len(text) == codec.TEXT_LEN:
            frame[text_at : text_at + codec.TEXT_LEN] = anonymize_text(text)
        else:
            frame[text_at:] = bytes(len(frame) - text_at)
        photo_at = text_at + codec.TEXT_LEN
        photo = frame[photo_at : photo_at + codec.WLT_LEN]
        from drivers.card_reader.simulator import SYNTHETIC_WLT

        frame[photo_at : photo_at + len(photo)] = SYNTHETIC_WLT[: len(photo)]
        fp_at = photo_at + codec.WLT_LEN
        frame[fp_at : declared - 1] = bytes(max(0, min(len(frame), declared - 1) - fp_at))
    else:
        frame[codec.STATUS_HEADER_LEN :] = bytes(len(frame) - codec.STATUS_HEADER_LEN)
    if len(frame) == declared:  # a whole frame: its CHK stays right, or wrong by the same difference
        old = raw[start:end]
        frame[-1] = codec.checksum(bytes(frame[5:-1])) ^ codec.checksum(old[5:-1]) ^ old[-1]
    out = bytearray(raw[:start]) + frame
    rest = raw[start + len(frame) :]
    if start and rest:  # the envelope's sum: right, or wrong by the same difference
        old_sum, new_sum = sum(raw[1 : start + len(frame)]), sum(out[1:])
        out.append((rest[0] - old_sum + new_sum) & 0xFF)
        rest = rest[1:]
    out += rest[:MAX_KEPT_TRAILING] + bytes(max(0, len(rest) - MAX_KEPT_TRAILING))
    return bytes(out)


def _put(buf: bytearray, off: int, length: int, value: str) -> None:
    """Write ``value`` into the field, padded the way the card padded it (spaces or zeros)."""
    last = bytes(buf[off + length - 2 : off + length])
    pad = last if last in (b" \x00", b"\x00\x00") else b" \x00"
    raw = value.encode("utf-16-le")[:length]
    buf[off : off + length] = raw + pad * ((length - len(raw)) // 2)


def _used(text: bytes, off: int, length: int) -> int:
    """How many characters of the field the card used (its value without the padding)."""
    value = text[off : off + length]
    chars = [value[i : i + 2] for i in range(0, len(value), 2)]
    while chars and chars[-1] in (b" \x00", b"\x00\x00"):
        chars.pop()
    return len(chars)


def _same_length(text: bytes, off: int, length: int, filler: str) -> str:
    n = _used(text, off, length)
    return (filler * (n // len(filler) + 1))[:n]


def _date_field(buf: bytearray, off: int, value: str) -> None:
    if bytes(buf[off : off + 4]) == codec.LONG_TERM_BYTES:
        return  # 长期 says nothing about the person and is what the decoder must handle
    _put(buf, off, 16, value)


def _sex_digit(number: str, position: int) -> str:
    ch = number[position : position + 1]
    return "1" if ch.isdigit() and int(ch) % 2 else "2"


def anonymize_text(text: bytes) -> bytes:
    """The 256-byte text block with the personal fields of its layout (by the marker at 248)
    replaced; an unknown marker keeps only the marker."""
    buf = bytearray(text)
    marker = bytes(text[codec.CARD_TYPE_OFFSET : codec.CARD_TYPE_OFFSET + 2])
    old_no = text[122:158].decode("utf-16-le", "replace").strip()
    if marker in (b" \x00", b"\x00\x00", b"J\x00"):
        _put(buf, 0, 30, _same_length(text, 0, 30, _CHINESE))
        _put(buf, 36, 16, SYNTHETIC_BIRTH)
        _put(buf, 52, 70, _same_length(text, 52, 70, _ADDRESS))
        prefix = "450000" if marker != b"J\x00" else (old_no[:2] if old_no[:2] in ("81", "82", "83") else "81") + "0000"
        first17 = prefix + SYNTHETIC_BIRTH + "00" + _sex_digit(old_no, 16)
        _put(buf, 122, 36, first17 + resident_id_check_digit(first17))
        _put(buf, 158, 30, _same_length(text, 158, 30, _AUTHORITY))
        _date_field(buf, 188, SYNTHETIC_VALID_FROM)
        _date_field(buf, 204, SYNTHETIC_VALID_TO)
        if marker == b"J\x00":
            n = _used(text, 220, 18)
            _put(buf, 220, 18, ("H" + "0" * 17)[:n])
    elif marker == b"I\x00":
        _put(buf, 0, 120, _same_length(text, 0, 120, _ENGLISH))
        nationality = text[152:158].decode("utf-16-le", "replace")[:3]
        body = (
            (nationality if nationality.isascii() and nationality.isalpha() else "XXX")
            + "0000"
            + SYNTHETIC_BIRTH[2:]
            + _sex_digit(old_no, 13)
        )
        _put(buf, 122, 30, body + codec.mrz_check_digit(body.upper()))
        _put(buf, 158, 30, _same_length(text, 158, 30, _CHINESE))
        _date_field(buf, 188, SYNTHETIC_VALID_FROM)
        _date_field(buf, 204, SYNTHETIC_VALID_TO)
        _put(buf, 220, 16, SYNTHETIC_BIRTH)
    elif marker == b"Y\x00":
        _put(buf, 0, 30, _same_length(text, 0, 30, _CHINESE))
        _put(buf, 36, 16, SYNTHETIC_BIRTH)
        _put(buf, 52, 70, _same_length(text, 52, 70, _ENGLISH))
        digits = old_no[3:6] if old_no[3:6].isdigit() else "000"
        first17 = "900" + digits + SYNTHETIC_BIRTH + "00" + _sex_digit(old_no, 16)
        _put(buf, 122, 36, first17 + resident_id_check_digit(first17))
        if _used(text, 158, 30):
            _put(buf, 158, 30, _same_length(text, 158, 30, "RESERVED "))
        _date_field(buf, 188, SYNTHETIC_VALID_FROM)
        _date_field(buf, 204, SYNTHETIC_VALID_TO)
        _put(buf, 220, 22, _same_length(text, 220, 22, _ENGLISH))
        if _used(text, 250, 6):
            _put(buf, 250, 6, "015"[: _used(text, 250, 6)])
    else:
        buf[: codec.CARD_TYPE_OFFSET] = b" \x00" * (codec.CARD_TYPE_OFFSET // 2)
        buf[codec.CARD_TYPE_OFFSET + 2 :] = b" \x00" * ((codec.TEXT_LEN - codec.CARD_TYPE_OFFSET - 2) // 2)
    return bytes(buf)
