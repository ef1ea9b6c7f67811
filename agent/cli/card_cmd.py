"""``fvagent card decode FILE``: decode a captured SAM read response into JSON.

FILE holds the reader's answer to 30 01 / 30 10 as raw bytes or as hex text with any spacing
(a pyserial ``spy://`` capture's hex columns pasted together works; see docs/drivers.md). The card
number and name are masked unless ``--show-personal`` is given; a bad frame is reported by name.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from agent.errors import ConfigError

_NOT_HEX = re.compile(r"[^0-9A-Fa-f\s:,]")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    card = sub.add_parser("card", help="ID-card reader tools")
    csub = card.add_subparsers(dest="card_command", metavar="COMMAND")
    card.set_defaults(func=lambda args: (card.print_help(), 2)[1])
    dec = csub.add_parser("decode", help="decode a captured read response (raw or hex) into JSON")
    dec.add_argument("file", type=Path, help="the captured frame: raw bytes, or hex text with any spacing")
    dec.add_argument("--show-personal", action="store_true", help="print the card number and name unmasked")
    dec.set_defaults(func=cmd_decode)


_SPY_RX = re.compile(r"^\S+ RX +[0-9A-Fa-f]{4}  (.{1,49})")


def _from_spy_log(text: str) -> bytes | None:
    """The last complete read response in a pyserial ``spy://`` log (its RX hex columns), or None."""
    from drivers.card_reader import codec

    rx = bytearray()
    for line in text.splitlines():
        m = _SPY_RX.match(line)
        if m:
            rx += bytes.fromhex(m.group(1).strip())
    if not rx:
        return None
    frames, i = [], rx.find(codec.PREAMBLE)
    while i >= 0:
        try:
            total = codec.frame_length(bytes(rx[i:i + codec.HEADER_LEN]))
            frames.append(bytes(rx[i:i + total]))
        except Exception:  # not a frame start: keep scanning
            pass
        i = rx.find(codec.PREAMBLE, i + 1)
    reads = [f for f in frames if len(f) > 1000]
    return (reads or frames or [bytes(rx)])[-1]


def frame_from_capture(data: bytes) -> bytes:
    """Raw bytes, a pyserial ``spy://`` log (the last read response in it), or hex text (any
    whitespace, ``:`` or ``,`` separators, optional ``0x``) -> the frame bytes."""
    if data[:3] == b"\xaa\xaa\xaa":
        return data
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return data
    spy = _from_spy_log(text)
    if spy is not None:
        return spy
    text = re.sub(r"0[xX]", "  ", text)  # blanks of the same width keep the positions for the message
    bad = _NOT_HEX.search(text)
    if bad:
        # Text that is not hex cannot be a frame (a raw frame starts with AA): name the culprit
        # instead of reporting the text's first bytes as a bad preamble.
        line = text.count("\n", 0, bad.start()) + 1
        column = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        raise ConfigError(f"the capture is text but not hex: {bad.group()!r} at line {line}, column {column}",
                          hint="give raw bytes, hex text (spaces, line breaks, ':', ',' and 0x are ignored) "
                               "or a pyserial spy:// log with the reader's RX lines")
    digits = re.sub(r"[\s:,]", "", text)
    if len(digits) % 2:
        raise ConfigError(f"hex text has an odd number of digits ({len(digits)})",
                          hint="check the capture for a missing or extra hex digit")
    return bytes.fromhex(digits)


def card_json(card, *, show_personal: bool) -> dict[str, object]:  # type: ignore[no-untyped-def]
    from agent.privacy import mask_card_no, mask_name

    return {
        "card_type": card.card_type,
        "name": card.name if show_personal else mask_name(card.name),
        "english_name": (card.english_name if show_personal else mask_name(card.english_name)) or None,
        "sex_code": card.sex_code, "sex": card.sex_name,
        "nation_code": card.nation_code, "nation": card.nation_name,
        "birth_date": card.birth_date.isoformat() if show_personal else card.birth_date.strftime("%Y-**-**"),
        "address": card.address if show_personal else mask_name(card.address),
        "card_no": card.card_no if show_personal else mask_card_no(card.card_no),
        "authority": card.authority,
        "valid_from": card.valid_from.isoformat(),
        "valid_to": card.valid_to.isoformat() if card.valid_to else "长期",
        "nationality": card.nationality, "pass_no": card.pass_no if show_personal else mask_card_no(card.pass_no) or None,
        "issue_count": card.issue_count, "card_version": card.card_version,
        "photo_wlt_bytes": len(card.photo_wlt or b""), "fingerprint_bytes": len(card.fingerprint or b""),
    }


def cmd_decode(args: argparse.Namespace) -> int:
    from drivers.card_reader import codec

    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {args.file}: {exc.strerror}", hint="give the path of a captured frame") from exc
    frame = frame_from_capture(data)
    card = codec.decode_read_response(frame)
    json.dump(card_json(card, show_personal=args.show_personal), sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")
    return 0
