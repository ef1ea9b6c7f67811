"""``fvagent card decode FILE`` and ``fvagent card capture --config PATH --out FILE``.

``decode``: FILE holds the reader's answer to 30 01 / 30 10 as raw bytes or as hex text with any
spacing (a pyserial ``spy://`` capture's hex columns pasted together works; see docs/drivers.md).
The card number and name are masked unless ``--show-personal`` is given; a bad frame is reported
by name.

``capture``: one real read through the configured reader, written as hex with the personal bytes
replaced by a synthetic identity of the same layout (drivers/card_reader/anonymize.py), so a
technician can send it to add a reader model; ``card decode`` reads the file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent.cli import Subparsers, add_command, add_group, config_path
from core.errors import ConfigError

if TYPE_CHECKING:
    from core.card import IdCard
    from drivers.base import CardReader

_NOT_HEX = re.compile(r"[^0-9A-Fa-f\s:,]")


def register(sub: Subparsers) -> None:
    """ID-card reader tools"""
    csub = add_group(sub, "card", "COMMAND", register)
    dec = add_command(csub, "decode", cmd_decode, config=False)
    dec.add_argument("file", type=Path, help="the captured frame: raw bytes, or hex text with any spacing")
    dec.add_argument("--show-personal", action="store_true", help="print the card number and name unmasked")

    cap = add_command(csub, "capture", cmd_capture)
    cap.add_argument("--out", required=True, type=Path, metavar="FILE", help="where to write the hex capture")
    cap.add_argument(
        "--timeout", type=float, default=60.0, metavar="SECONDS", help="how long to wait for a card (default 60)"
    )


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
            total = codec.frame_length(bytes(rx[i : i + codec.HEADER_LEN]))
            frames.append(bytes(rx[i : i + total]))
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
        raise ConfigError(
            f"the capture is text but not hex: {bad.group()!r} at line {line}, column {column}",
            hint="give raw bytes, hex text (spaces, line breaks, ':', ',' and 0x are ignored) "
            "or a pyserial spy:// log with the reader's RX lines",
        )
    digits = re.sub(r"[\s:,]", "", text)
    if len(digits) % 2:
        raise ConfigError(
            f"hex text has an odd number of digits ({len(digits)})",
            hint="check the capture for a missing or extra hex digit",
        )
    return bytes.fromhex(digits)


def card_json(card: IdCard, *, show_personal: bool) -> dict[str, object]:
    from core.privacy import mask_card_no, mask_name

    return {
        "card_type": card.card_type,
        "name": card.name if show_personal else mask_name(card.name),
        "english_name": (card.english_name if show_personal else mask_name(card.english_name)) or None,
        "sex_code": card.sex_code,
        "sex": card.sex_name,
        "nation_code": card.nation_code,
        "nation": card.nation_name,
        "birth_date": card.birth_date.isoformat() if show_personal else card.birth_date.strftime("%Y-**-**"),
        "address": card.address if show_personal else mask_name(card.address),
        "card_no": card.card_no if show_personal else mask_card_no(card.card_no),
        "authority": card.authority,
        "valid_from": card.valid_from.isoformat(),
        "valid_to": card.valid_to.isoformat() if card.valid_to else "长期",
        "nationality": card.nationality,
        "pass_no": card.pass_no if show_personal else mask_card_no(card.pass_no) or None,
        "issue_count": card.issue_count,
        "card_version": card.card_version,
        "old_card_no": card.old_card_no if show_personal else mask_card_no(card.old_card_no) or None,
        "y_field_158": card.y_field_158 if show_personal else mask_name(card.y_field_158) or None,
        "appended_address": card.appended_address if show_personal else mask_name(card.appended_address) or None,
        "photo_wlt_bytes": len(card.photo_wlt or b""),
        "fingerprint_bytes": len(card.fingerprint or b""),
    }


def cmd_decode(args: argparse.Namespace) -> int:
    """decode a captured read response (raw or hex) into JSON"""
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


def _reader_from_config(path: str) -> CardReader:
    """The configured card reader, from the [card_reader] section alone (a capture is taken before
    the platform is set up, too)."""
    import tomllib

    from agent.config import DriverSection
    from drivers import registry
    from drivers.base import CardReader

    try:
        raw = tomllib.loads(Path(path).read_text("utf-8"))
    except OSError as exc:
        raise ConfigError(
            f"cannot read config file {path}: {exc.strerror}", hint="give the configuration with --config PATH"
        ) from exc
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    section = DriverSection.model_validate(raw.get("card_reader", {}))
    reader = registry.create("card_reader", section.driver, section.options)
    if not isinstance(reader, CardReader):  # a card_reader entry point that is not one
        raise ConfigError(f"[card_reader] driver {section.driver!r} is not a card reader")
    if reader.simulated:
        raise ConfigError(
            f"[card_reader] driver {section.driver!r} is simulated: there is no real read to capture",
            hint="set [card_reader] driver to the real reader (sam-serial, sam-usb, sdt)",
        )
    return reader


def _hex_lines(data: bytes) -> str:
    return "".join(data[i : i + 16].hex(" ").upper() + "\n" for i in range(0, len(data), 16))


def _leaks(card: IdCard, data: bytes) -> list[str]:
    """The personal fields of ``card`` whose bytes still appear in ``data`` (must be none)."""
    from drivers.card_reader.anonymize import SYNTHETIC_BIRTH

    fields = {
        "name": card.name,
        "card_no": card.card_no,
        "address": card.address,
        "english_name": card.english_name or "",
        "birth_date": card.birth_date.strftime("%Y%m%d"),
    }
    if fields["birth_date"] == SYNTHETIC_BIRTH:  # born on the synthetic date: that is no leak
        del fields["birth_date"]
    return [k for k, v in fields.items() if len(v) >= 2 and v.encode("utf-16-le") in data]


def cmd_capture(args: argparse.Namespace) -> int:
    """record one real read as hex, personal data replaced by a synthetic identity"""
    import time

    from core.errors import CardReadError, DriverError, ProtocolError
    from drivers.card_reader import codec
    from drivers.card_reader.anonymize import anonymize_answer

    reader = _reader_from_config(config_path(args))
    reader.keep_raw_answer = True
    card, failure = None, None
    print(f"fvagent: present the card to {reader.describe()} (waiting up to {args.timeout:g} s)", file=sys.stderr)
    deadline = time.monotonic() + max(0.0, args.timeout)
    try:
        with reader:
            while reader.raw_answer is None and time.monotonic() < deadline:
                try:
                    card = reader.read_card(min(1.0, max(0.0, deadline - time.monotonic())))
                except (CardReadError, ProtocolError) as exc:
                    failure = exc  # the read's answer is what the capture is for
                    break
            raw = reader.raw_answer
    finally:
        reader.raw_answer = None
    if raw is None:
        if failure is not None:
            raise failure
        raise DriverError(
            f"no card was read within {args.timeout:g} s",
            device=reader.describe(),
            hint="present the card flat on the reader, or give a longer --timeout",
        )
    safe = anonymize_answer(raw)
    leaked = _leaks(card, safe) if card is not None else []
    if leaked:  # never write a capture the anonymizer did not clean
        raise DriverError(
            f"the capture still holds {', '.join(leaked)}: not written",
            hint="report this to the fvagent maintainers with the reader model (no capture)",
        )
    try:
        synthetic = codec.decode_read_response(safe)
        result = f"decodes as a synthetic card of type {synthetic.card_type}"
    except (CardReadError, ProtocolError) as exc:
        result = f"reproduces the read's error: {exc.message}"
    try:
        args.out.write_text(_hex_lines(safe), "ascii")
    except OSError as exc:
        raise ConfigError(f"cannot write {args.out}: {exc.strerror}", hint="give a writable --out path") from exc
    if failure is not None:
        print(f"fvagent: the read failed: {failure}", file=sys.stderr)
    print(
        f"capture written to {args.out}: {len(safe)} bytes, personal data replaced by a synthetic identity; it {result}"
    )
    return 0
