"""Real SAM modules' quirks (issue 14), each shown with a synthetic frame, and the rule that no
personal byte of a frame ever reaches an error or a log, at any level (invented identities only)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

import pytest

from core.card import IdCard
from core.codes import resident_id_check_digit
from core.errors import DeviceTimeout, DriverError, FvagentError, ProtocolError
from drivers import registry
from drivers.card_reader import codec
from drivers.card_reader.sam import FIND_ATTEMPTS, SamUsbReader
from tests.test_card_codec import CORPUS, FOREIGN_Y, FOREIGN_Y_LINKED, RESIDENT, WLT
from tests.test_card_sam import FakeUsbDevice, _reader

NO = "45010219910817" + "004"
NO += resident_id_check_digit(NO)
MOTHER = IdCard(
    card_type="0",
    name="农样本",
    sex_code="2",
    birth_date=dt.date(1991, 8, 17),
    card_no=NO,
    valid_from=dt.date(2016, 2, 1),
    valid_to=dt.date(2036, 2, 1),
    nation_code="08",
    address="广西壮族自治区南宁市示例区样本路7号",
    authority="南宁市公安局示例分局",
)
"""An invented identity whose every personal value is searched for in errors and logs."""


# -- the quirks, one synthetic frame each ---------------------------------------------------------------


@pytest.mark.parametrize("tail", [b"\xf6", b"\x00", b"\x00\x00\x00"])
def test_bytes_after_the_declared_length_are_ignored_and_counted(tail, caplog):
    caplog.set_level(logging.DEBUG, logger="drivers.card_reader.codec")
    frame = codec.read_response(MOTHER, WLT) + tail
    assert codec.decode_read_response(frame) == dataclasses.replace(MOTHER, photo_wlt=WLT)
    assert f"ignored {len(tail)} bytes after the 1295-byte answer" in caplog.text


def test_a_module_envelope_is_unwrapped_and_its_sum_checked():
    inner = codec.read_response(MOTHER, WLT)
    frame = codec.wrap_in_envelope(inner)
    assert frame[:10] == bytes.fromhex("AA 05 12 A0 10 AA AA AA 96 69")  # as seen on real modules
    assert frame[-1] == sum(frame[1:-1]) % 256
    assert codec.decode_read_response(frame) == dataclasses.replace(MOTHER, photo_wlt=WLT)
    assert codec.unit_length(frame[:10]) == len(frame) == len(inner) + 6
    short = codec.wrap_in_envelope(codec.build_response(codec.SW_FIND_OK, bytes(4)))
    assert short[:3] == bytes.fromhex("AA 00 12") and codec.parse_response(short).sw3 == codec.SW_FIND_OK
    with pytest.raises(ProtocolError, match="module envelope: bad sum"):
        codec.decode_read_response(frame[:-1] + bytes([frame[-1] ^ 0x5A]))
    with pytest.raises(ProtocolError, match="truncated module envelope"):
        codec.decode_read_response(frame[:-3])


def test_the_usb_trailing_byte_after_sw3_is_trimmed():
    # Telpo-style: a status answer "... 10 14" and then one 00 that belongs to nothing.
    answer = bytes.fromhex("AA AA AA 96 69 00 04 00 00 10 14 00")
    resp = codec.parse_response(answer)
    assert (resp.sw3, resp.data, resp.meaning) == (0x10, b"", "checksum error in the frame the SAM received")


def test_an_unknown_nation_code_is_a_card_error_naming_the_code():
    text = bytearray(codec.encode_text(MOTHER))
    text[32:36] = "77".encode("utf-16-le")
    frame = codec.build_response(codec.SW_OK, codec.build_read_data(bytes(text), WLT))
    with pytest.raises(ProtocolError, match="unknown nation code '77': not in the GB 3304 table") as info:
        codec.decode_read_response(frame)
    assert info.value.field == "nation"


def _find_requests(sim) -> int:
    return sum(1 for f in sim.requests if codec.parse_request(f)[:2] == codec.FIND_CARD)


@pytest.mark.parametrize("quirk", ["trailing F6", "envelope", "envelope + trailing"])
def test_the_serial_reader_takes_quirky_read_answers(sim, quirk, caplog):
    caplog.set_level(logging.DEBUG, logger="drivers.card_reader")
    card = {"trailing F6": RESIDENT, "envelope": RESIDENT, "envelope + trailing": FOREIGN_Y_LINKED}[quirk]
    with _reader(sim) as reader:
        sim.present(card)
        sim.inject(codec.READ_TEXT_PHOTO, CORPUS[quirk])
        got = reader.read_card(3.0)
        assert got is not None and got.card_no == card.card_no and got.photo_wlt == WLT
        sim.remove()
        assert reader.read_card(0.2) is None  # the leftover bytes do not spoil the next answers
        sim.present(MOTHER)
        assert reader.read_card(3.0).card_no == MOTHER.card_no
    assert "bytes left after the previous answer" in caplog.text  # the stray byte, or the envelope's sum


@pytest.mark.parametrize("envelope,trailing", [(True, b""), (False, b"\xf6"), (True, b"\x00")])
def test_a_module_quirky_on_every_answer_works_end_to_end(tmp_path, envelope, trailing):
    from drivers.card_reader.fake import SAMPLES_DIR, load_fixtures
    from drivers.card_reader.simulator import SamSimulator

    with SamSimulator(tmp_path / "ttyQ", envelope=envelope, trailing=trailing) as quirky:
        # no baud rate given: the status probe itself meets the quirk first
        opts = {"port": str(quirky.port), "poll_interval_s": 0.02, "exchange_timeout_s": 0.5}
        with registry.create("card_reader", "sam-serial", opts) as reader:
            assert reader.probe().ok
            for card in load_fixtures(SAMPLES_DIR) + [MOTHER]:
                quirky.present(card)
                got = reader.read_card(3.0)
                assert got is not None and got.card_no == card.card_no
                assert reader.read_card(0.1) is None
                quirky.remove()
                assert reader.read_card(0.1) is None


def test_find_answered_0x10_is_sent_again_not_a_reader_fault(sim):
    with _reader(sim) as reader:
        sim.present(MOTHER)
        for _ in range(FIND_ATTEMPTS - 1):
            sim.inject(codec.FIND_CARD, codec.build_response(0x10))
        before = _find_requests(sim)
        got = reader.read_card(3.0)
        assert got is not None and got.card_no == MOTHER.card_no and reader.is_open
        assert _find_requests(sim) - before == FIND_ATTEMPTS  # the 0x10 answers and the one that found it
        sim.remove()
        for _ in range(FIND_ATTEMPTS):  # a SAM that keeps answering 0x10 is a reader fault after all
            sim.inject(codec.FIND_CARD, codec.build_response(0x10))
        with pytest.raises(DriverError, match="SAM status 0x10 on find-card"):
            reader.read_card(1.0)


def test_an_unknown_nation_code_fails_that_tap_only(sim):
    text = bytearray(codec.encode_text(MOTHER))
    text[32:36] = "77".encode("utf-16-le")
    with _reader(sim) as reader:
        sim.present(MOTHER)
        sim.inject(codec.READ_TEXT_PHOTO, codec.build_response(codec.SW_OK, codec.build_read_data(bytes(text), WLT)))
        with pytest.raises(ProtocolError, match="unknown nation code '77'"):
            reader.read_card(3.0)
        sim.remove()
        assert reader.read_card(0.2) is None
        sim.present(MOTHER)  # presented again: the reader is fine
        assert reader.read_card(3.0).card_no == MOTHER.card_no


class QuirkyUsbDevice(FakeUsbDevice):
    """A USB module that appends a 00 after every answer (Telpo-style), optionally wraps each answer
    in its envelope, and answers find with 0x10 the first ``garbled_finds`` times."""

    def __init__(self, card, *, envelope=False, garbled_finds=0):
        super().__init__(card)
        self.envelope, self.garbled_finds = envelope, garbled_finds

    def write(self, endpoint, data, timeout):
        super().write(endpoint, data, timeout)
        if codec.parse_request(bytes(data))[:2] == codec.FIND_CARD and self.garbled_finds:
            self.garbled_finds -= 1
            self.pending = codec.build_response(0x10)
        if self.envelope:
            self.pending = codec.wrap_in_envelope(self.pending)
        self.pending += b"\x00"


@pytest.mark.parametrize("envelope", [False, True])
def test_the_usb_reader_takes_the_trailing_byte_the_envelope_and_0x10(envelope, caplog):
    caplog.set_level(logging.DEBUG, logger="drivers.card_reader.codec")
    dev = QuirkyUsbDevice(MOTHER, envelope=envelope, garbled_finds=1)
    with SamUsbReader(SamUsbReader.Settings(endpoint_out=2, endpoint_in=0x81), usb_device=dev) as reader:
        card = reader.read_card(1.0)
    assert card is not None and card.card_no == MOTHER.card_no
    assert [codec.parse_request(w[1])[:2] for w in dev.writes] == [
        codec.FIND_CARD,
        codec.FIND_CARD,
        codec.SELECT_CARD,
        codec.READ_TEXT_PHOTO,
    ]
    assert "ignored 1 bytes after the" in caplog.text


class LateTrailingUsbDevice(FakeUsbDevice):
    """The trailing 00 comes in a packet of its own, after the answer: the next read starts with it."""

    def write(self, endpoint, data, timeout):
        stale = self.pending  # what the previous answer left: sent before this answer
        super().write(endpoint, data, timeout)
        self.packets = [stale] if stale else []
        self.tail = b"\x00"

    def read(self, endpoint, size, timeout):
        if self.packets:
            return bytearray(self.packets.pop(0))
        packet = super().read(endpoint, size, timeout)
        if not self.pending:
            self.pending, self.tail = self.tail, b""  # the stray byte waits for the next command
        return packet


def test_the_usb_reader_drops_a_stray_byte_left_from_the_previous_answer(caplog):
    caplog.set_level(logging.DEBUG, logger="drivers.card_reader.sam")
    dev = LateTrailingUsbDevice(MOTHER)
    with SamUsbReader(SamUsbReader.Settings(endpoint_out=2, endpoint_in=0x81), usb_device=dev) as reader:
        card = reader.read_card(1.0)
    assert card is not None and card.card_no == MOTHER.card_no
    assert "dropped 1 bytes before the answer" in caplog.text


# -- no personal byte in an error or a log ---------------------------------------------------------------


def _forbidden(card: IdCard) -> list[str]:
    """Every way a personal value of ``card`` could show in a text: as itself, as UCS-2 hex (spaced
    or not, either case), and the birth date in the forms a message would use."""
    values = [
        card.name,
        card.card_no,
        card.address,
        card.card_no[6:14],
        card.birth_date.isoformat(),
        card.birth_date.strftime("%Y%m%d"),
        card.birth_date.strftime("%y%m%d"),
    ]
    out = []
    for value in values:
        raw = value.encode("utf-16-le")
        out += [value, raw.hex(), raw.hex(" "), raw.hex().upper(), raw.hex(" ").upper()]
        out += [raw[:8].hex(" "), raw[:8].hex(" ").upper()]  # even a few characters' worth
    return out


def _assert_clean(text: str, card: IdCard = MOTHER) -> None:
    leaked = [f for f in _forbidden(card) if f in text]
    assert not leaked, f"personal data in {text!r}: {leaked}"


def _broken_frames() -> dict[str, bytes]:
    good = codec.read_response(MOTHER, WLT)
    text = codec.encode_text(MOTHER)

    def with_text(off: int, raw: bytes) -> bytes:
        t = bytearray(text)
        t[off : off + len(raw)] = raw
        return codec.build_response(codec.SW_OK, codec.build_read_data(bytes(t), WLT))

    return {
        "bad checksum": good[:-1] + bytes([good[-1] ^ 0x21]),
        "truncated": good[:700],
        "misaligned capture (starts at the name)": good[14:],
        "bad preamble": b"\xaa\xaa\xab" + good[3:],
        "bad length": good[:5] + b"\xff\xff" + good[7:],
        "envelope with a bad sum": codec.wrap_in_envelope(good)[:-1] + b"\x00",
        "birth date not a date": with_text(36, "1991-8-1".encode("utf-16-le")),
        "valid_from not a date": with_text(188, "2016-2-1".encode("utf-16-le")),
        "birth date disagrees": with_text(36, "19910818".encode("utf-16-le")),
        "bad check digit": with_text(122 + 34, ("0" if NO[17] != "0" else "1").encode("utf-16-le")),
        "name not UCS-2": with_text(4, b"\x00\xd8\x41\x00"),  # a lone surrogate inside the name
        "unknown sex": with_text(30, "7".encode("utf-16-le")),
        "unknown marker": with_text(248, "Q".encode("utf-16-le")),
        "photo length wrong": codec.build_response(codec.SW_OK, codec.build_read_data(text, WLT[:-1])),
    }


@pytest.mark.parametrize("name", list(_broken_frames()))
def test_broken_frames_never_show_personal_data(name, caplog):
    caplog.set_level(logging.DEBUG)
    frame = _broken_frames()[name]
    with pytest.raises(FvagentError) as info:
        codec.decode_read_response(frame)
    exc = info.value
    _assert_clean(f"{exc} {exc.message} {exc.context!r} {exc.hint or ''}")
    _assert_clean(caplog.text)


def test_the_frame_header_is_all_an_error_shows():
    frame = codec.read_response(MOTHER, WLT)
    assert codec.frame_hex(frame) == "aa aa aa 96 69 05 08 00 00 90 ... (1295 bytes)"
    assert codec.frame_hex(frame[14:]) == "(1281 bytes, no frame header)"
    assert codec.frame_hex(codec.build_response(0x41)) == "aa aa aa 96 69 00 04 00 00 41 45"
    assert codec.frame_hex(codec.wrap_in_envelope(frame)).startswith("aa 05 12 a0 10 aa aa aa 96 69 05 08 00 00 90 ...")


def test_a_read_cut_off_on_the_wire_shows_no_personal_data(sim, caplog):
    caplog.set_level(logging.DEBUG)
    with _reader(sim) as reader:
        sim.present(MOTHER)
        sim.inject(codec.READ_TEXT_PHOTO, codec.read_response(MOTHER, WLT)[:900])  # the cable is pulled mid-read
        with pytest.raises(DeviceTimeout) as info:
            reader.read_card(4.0)
    _assert_clean(f"{info.value} {info.value.context!r}")
    assert "900 of 1295 bytes" in str(info.value)
    _assert_clean(caplog.text)


def test_card_decode_of_a_broken_capture_shows_no_personal_data(tmp_path, capsys):
    from agent.cli import main

    for name, frame in _broken_frames().items():
        (tmp_path / "cap.txt").write_text(frame.hex(" "))
        assert main(["card", "decode", str(tmp_path / "cap.txt")]) != 0, name
        _assert_clean(capsys.readouterr().err)


# -- the 2023 foreign permanent resident card (Y) -----------------------------------------------------------


def test_mrz_check_digit_matches_the_icao_specimen():
    # ICAO Doc 9303 part 3 specimen: document number L898902C3 -> 6, birth 740812 -> 2, expiry 120415 -> 9.
    assert [codec.mrz_check_digit(v) for v in ("L898902C3", "740812", "120415")] == ["6", "2", "9"]
    assert codec.mrz_check_digit("<<<") == "0"
    with pytest.raises(ValueError):
        codec.mrz_check_digit("a")


def test_the_old_number_is_rebuilt_from_the_link():
    # new number 9 32 418 19791231 00 1 7 (invented); link 015: city 01, sequence 5
    old = codec.old_foreign_number("932418197912310017", "LAO", "015")
    assert old[:14] == "LAO" + "32" + "01" + "791231" + "5"
    # by hand: L21 A10 O24 3 2 0 1 7 9 1 2 3 1 5, weights 7 3 1 ... -> 147+30+24+21+6+0+7+21+9+7+6+3+7+15 = 303
    assert old == "LAO320179123153" and len(old) == 15
    assert codec.old_foreign_number("932418197912310017", "LAO", "") is None  # first card: no link
    assert codec.old_foreign_number("932418197912310017", "LAO", "0A5") is None  # not the link's shape


def test_y_card_decodes_the_old_number_and_field_158():
    card = codec.decode_read_response(CORPUS["Y"])
    assert card.old_card_no == codec.old_foreign_number(FOREIGN_Y.card_no, "LAO", "015") and card.pass_no == "015"
    assert card.y_field_158 == "RESERVED TEXT"
    plain = codec.decode_read_response(codec.read_response(dataclasses.replace(FOREIGN_Y, pass_no=None), WLT))
    assert plain.old_card_no is None and plain.y_field_158 is None


def test_the_y_card_record_for_the_platform_is_unchanged():
    from tests.test_records import build

    linked = codec.decode_read_response(CORPUS["Y"])
    bare = dataclasses.replace(linked, old_card_no=None, y_field_158=None, photo_wlt=None)
    assert build(linked).to_payload() == build(bare).to_payload()
    assert build(linked).to_payload()["police"] == ""
