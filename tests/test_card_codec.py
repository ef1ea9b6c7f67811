"""The SAM codec: frames, status codes, every text-block layout rule (synthetic identities only)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.card import IdCard
from core.codes import resident_id_check_digit
from core.errors import CardReadError, ProtocolError
from drivers.card_reader import codec

SPEC_FRAMES = {
    codec.RESET: "AA AA AA 96 69 00 03 10 FF EC",
    codec.SAM_STATUS: "AA AA AA 96 69 00 03 11 FF ED",
    codec.SAM_ID: "AA AA AA 96 69 00 03 12 FF EE",
    codec.FIND_CARD: "AA AA AA 96 69 00 03 20 01 22",
    codec.SELECT_CARD: "AA AA AA 96 69 00 03 20 02 21",
    codec.READ_TEXT_PHOTO: "AA AA AA 96 69 00 03 30 01 32",
    codec.READ_ADDRESS: "AA AA AA 96 69 00 03 30 03 30",
    codec.READ_TEXT_PHOTO_FP: "AA AA AA 96 69 00 03 30 10 23",
}


def _no(first17: str) -> str:
    return first17 + resident_id_check_digit(first17)


RESIDENT = IdCard(
    card_type="0",
    name="蓝测试",
    sex_code="2",
    birth_date=dt.date(1992, 4, 5),
    card_no=_no("45030219920405002"),
    valid_from=dt.date(2012, 6, 1),
    valid_to=dt.date(2022, 6, 1),
    nation_code="08",
    address="广西壮族自治区桂林市示例街3号",
    authority="桂林市公安局",
)
HMT = dataclasses.replace(
    RESIDENT,
    card_type="1",
    nation_code=None,
    card_no=_no("83000019800101002"),
    birth_date=dt.date(1980, 1, 1),
    pass_no="T98765432",
    issue_count="02",
)
FOREIGN_I = IdCard(
    card_type="2",
    name="测试娜",
    english_name="EXAMPLE, NINA",
    sex_code="2",
    birth_date=dt.date(1987, 2, 3),
    card_no="VNM450087020301",
    nationality="VNM",
    authority="4500",
    card_version="01",
    valid_from=dt.date(2018, 1, 1),
    valid_to=dt.date(2028, 1, 1),
)
FOREIGN_Y = IdCard(
    card_type="2",
    name="样例",
    english_name="A" * 35 + "BCDEFGHIJKL",
    sex_code="1",
    birth_date=dt.date(1979, 12, 31),
    card_no="932450197912310017",
    nationality="LAO",
    valid_from=dt.date(2024, 1, 1),
    valid_to=None,
    issue_count="00",
    card_version="Y",
    pass_no="LK1",
)
WLT = b"WLf\x00" + bytes(1020)


@pytest.mark.parametrize("command", list(SPEC_FRAMES))
def test_command_frames_match_the_spec_table(command):
    assert codec.build_command(command) == bytes.fromhex(SPEC_FRAMES[command])
    assert codec.parse_request(codec.build_command(command)) == (*command, b"")


def test_set_baud_frames():
    assert codec.set_baud_request(9600)[-1] == 0x67  # the spec's checksum for pp=04
    assert [codec.set_baud_request(b)[8] for b in (115200, 57600, 38400, 19200, 9600)] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="unsupported baud 4800"):
        codec.set_baud_request(4800)


@pytest.mark.parametrize(
    "hexframe,sw3,data_len",
    [
        ("AA AA AA 96 69 00 08 00 00 9F 00 00 00 00 97", 0x9F, 4),
        ("AA AA AA 96 69 00 04 00 00 80 84", 0x80, 0),
        ("AA AA AA 96 69 00 0C 00 00 90 00 00 00 00 00 00 00 00 9C", 0x90, 8),
        ("AA AA AA 96 69 00 04 00 00 81 85", 0x81, 0),
        ("AA AA AA 96 69 00 04 00 00 41 45", 0x41, 0),
        ("AA AA AA 96 69 00 04 00 00 60 64", 0x60, 0),
        ("AA AA AA 96 69 00 04 00 00 90 94", 0x90, 0),
    ],
)
def test_real_frames_from_the_spec_parse(hexframe, sw3, data_len):
    resp = codec.parse_response(bytes.fromhex(hexframe))
    assert (resp.sw3, len(resp.data)) == (sw3, data_len)


@pytest.mark.parametrize("sw3", sorted(codec.STATUS))
def test_every_status_code_has_its_meaning(sw3):
    resp = codec.parse_response(codec.build_response(sw3))
    assert resp.meaning == codec.STATUS[sw3] and "unknown" not in resp.meaning
    if sw3 == codec.SW_OK:
        assert resp.raise_for_status() is resp
    else:
        with pytest.raises(CardReadError) as info:
            resp.raise_for_status()
        assert info.value.sw3 == f"0x{sw3:02X}" and info.value.meaning == codec.STATUS[sw3]
        assert codec.STATUS[sw3] in str(info.value)


def test_status_table_is_complete():
    assert set(codec.STATUS) == {
        0x90,
        0x9F,
        0x91,
        0x10,
        0x11,
        0x21,
        0x23,
        0x24,
        0x31,
        0x32,
        0x33,
        0x37,
        0x3F,
        0x40,
        0x41,
        0x47,
        0x60,
        0x66,
        0x80,
        0x81,
    }
    assert codec.status_meaning(0x55) == "unknown status 0x55"


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda f: f[:-1] + bytes([f[-1] ^ 1]), "bad checksum"),
        (lambda f: b"\xaa\xaa\xab" + f[3:], "bad preamble"),
        (lambda f: f[:-2], "truncated response"),
        (lambda f: f[:5] + b"\x00\x00" + f[7:], "bad length field 0"),
        (lambda f: f[:4], "frame too short"),
        (lambda f: codec._frame(b"\x00\x00"), "body too short"),
    ],
)
def test_bad_frames_name_what_is_wrong(mutate, message):
    with pytest.raises(ProtocolError, match=message) as info:
        codec.parse_response(mutate(codec.build_response(0x90, b"\x01\x02")))
    assert info.value.frame_hex


def test_the_spec_bad_checksum_example_is_rejected():
    frame = bytearray(codec.read_response(RESIDENT, WLT))
    frame[-1] ^= 0x07  # like the spec's second dump: stored 33, computed 34
    with pytest.raises(ProtocolError, match="bad checksum"):
        codec.decode_read_response(bytes(frame))


def test_error_frames_do_not_carry_the_text_block():
    frame = bytearray(codec.read_response(RESIDENT, WLT))
    frame[-1] ^= 1
    with pytest.raises(ProtocolError) as info:
        codec.parse_response(bytes(frame))
    assert "(1295 bytes)" in info.value.frame_hex
    assert RESIDENT.card_no.encode("utf-16-le").hex(" ") not in str(info.value)


@pytest.mark.parametrize("card", [RESIDENT, HMT, FOREIGN_I, FOREIGN_Y], ids=["resident", "J", "I", "Y"])
def test_layouts_round_trip(card):
    frame = codec.read_response(card, WLT)
    assert len(frame) == 1295 and frame[:14] == bytes.fromhex("AA AA AA 96 69 05 08 00 00 90 01 00 04 00")
    got = codec.decode_read_response(frame)
    assert got == dataclasses.replace(card, photo_wlt=WLT)


def test_resident_offsets_as_in_the_spec():
    text = codec.encode_text(RESIDENT)
    assert text[30:32] == b"2\x00" and text[32:36] == b"0\x008\x00"
    assert text[36:52].decode("utf-16-le") == "19920405"
    assert text[122:158].decode("utf-16-le") == RESIDENT.card_no
    assert text[248:250] == b" \x00"
    assert codec.card_marker(text) == ""
    frame = codec.read_response(RESIDENT, WLT)
    assert frame[14 + 122 : 14 + 158].decode("utf-16-le") == RESIDENT.card_no  # absolute offset 136
    assert frame[270:274] == b"WLf\x00"  # the photo begins at 270


def test_long_term_is_the_spec_bytes_and_decodes_to_none():
    card = dataclasses.replace(RESIDENT, valid_to=None)
    text = codec.encode_text(card)
    assert text[204:220] == bytes.fromhex("7F 95 1F 67 20 00 20 00 20 00 20 00 20 00 20 00")
    assert codec.decode_text(text).valid_to is None and codec.decode_text(text).long_term


def test_markers_and_card_types():
    assert codec.decode_text(codec.encode_text(HMT)).card_type == "1"
    assert codec.encode_text(HMT)[248:250] == b"J\x00"
    assert codec.encode_text(FOREIGN_I)[248:250] == b"I\x00"
    assert codec.encode_text(FOREIGN_Y)[248:250] == b"Y\x00"
    assert codec.decode_text(codec.encode_text(HMT)).nation_code is None
    text = bytearray(codec.encode_text(RESIDENT))
    text[248:250] = b"Q\x00"
    with pytest.raises(ProtocolError, match="unknown card type marker 'Q'"):
        codec.decode_text(bytes(text))


def test_foreign_i_layout_offsets():
    text = codec.encode_text(FOREIGN_I)
    assert text[0:120].decode("utf-16-le").rstrip() == "EXAMPLE, NINA"
    assert text[122:152].decode("utf-16-le") == "VNM450087020301"
    assert text[152:158].decode("utf-16-le") == "VNM"
    assert text[220:236].decode("utf-16-le") == "19870203"


def test_y_english_name_spans_two_fields():
    text = codec.encode_text(FOREIGN_Y)
    assert text[52:122].decode("utf-16-le") == "A" * 35
    assert text[220:242].decode("utf-16-le") == "BCDEFGHIJKL"


def _with_field(card, off, value):
    text = bytearray(codec.encode_text(card))
    text[off : off + len(value) * 2] = value.encode("utf-16-le")
    return bytes(text)


def test_bad_check_digit_is_an_error():
    wrong = RESIDENT.card_no[:17] + ("0" if RESIDENT.card_no[17] != "0" else "1")
    with pytest.raises(ProtocolError, match="card number: .*check"):
        codec.decode_text(_with_field(RESIDENT, 122, wrong))


def test_birth_date_disagreeing_with_the_number_is_an_error():
    with pytest.raises(ProtocolError, match="birth date disagrees"):
        codec.decode_text(_with_field(RESIDENT, 36, "19920406"))


@pytest.mark.parametrize(
    "off,value,message",
    [
        (36, "1992-4-5", "birth_date is not a YYYYMMDD date"),
        (188, "20121301", "valid_from is not a YYYYMMDD date"),
        (30, "7", "unknown sex code: not a GB/T 2261.1 code"),
        (32, "77", "unknown nation code '77': not in the GB 3304 table"),
    ],
)
def test_bad_fields_are_named(off, value, message):
    with pytest.raises(ProtocolError, match=message):
        codec.decode_text(_with_field(RESIDENT, off, value))


def test_read_data_lengths_are_checked():
    data = codec.build_read_data(codec.encode_text(RESIDENT), WLT)
    with pytest.raises(ProtocolError, match="photo length is 1023"):
        codec.split_read_data(codec.build_read_data(codec.encode_text(RESIDENT), WLT[:-1]), with_fingerprint=False)
    with pytest.raises(ProtocolError, match="read data is 1283 bytes"):
        codec.split_read_data(data[:-1], with_fingerprint=False)


@pytest.mark.parametrize("fp_len,frame_len", [(1024, 2321), (512, 1809), (0, 1297)])
def test_fingerprint_read_frames(fp_len, frame_len):
    fp = bytes([7]) * fp_len
    frame = codec.read_response(RESIDENT, WLT, fp)
    assert len(frame) == frame_len
    card = codec.decode_read_response(frame)
    assert card.fingerprint == (fp or None) and card.photo_wlt == WLT


def test_sam_id_string():
    data = bytes([5, 0, 1, 0]) + (1).to_bytes(4, "little") + (2).to_bytes(4, "little") + (3).to_bytes(4, "little")
    assert codec.sam_id_string(data) == "05.01-1-0000000002-0000000003"


# -- property tests -----------------------------------------------------------------------------------
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=64))
def test_random_bytes_never_crash(data):
    try:
        codec.parse_response(data)
    except ProtocolError as exc:
        assert exc.message and exc.frame_hex is not None


@FAST
@given(st.integers(0, 255), st.binary(max_size=200))
def test_valid_frames_round_trip(sw3, data):
    resp = codec.parse_response(codec.build_response(sw3, data))
    assert (resp.sw3, resp.data) == (sw3, data)


@FAST
@given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=40))
def test_requests_round_trip(cmd, para, data):
    assert codec.parse_request(codec.build_request(cmd, para, data)) == (cmd, para, data)


_READ = codec.read_response(RESIDENT, WLT)
FOREIGN_Y_LINKED = dataclasses.replace(
    FOREIGN_Y,
    pass_no="015",
    y_field_158="RESERVED TEXT",
    old_card_no=codec.old_foreign_number(FOREIGN_Y.card_no, "LAO", "015"),
)
CORPUS = {
    "resident": _READ,
    "J": codec.read_response(HMT, WLT),
    "I": codec.read_response(FOREIGN_I, WLT),
    "Y": codec.read_response(FOREIGN_Y_LINKED, WLT),
    "fingerprint": codec.read_response(RESIDENT, WLT, bytes(range(256)) * 2),
    # Real modules' quirks (tests/test_card_quirks.py shows each one):
    "trailing F6": _READ + b"\xf6",  # a stray byte after the declared length
    "trailing 00": _READ + b"\x00",
    "envelope": codec.wrap_in_envelope(_READ),  # AA 05 12 A0 10 <frame> <sum>
    "envelope + trailing": codec.wrap_in_envelope(codec.read_response(FOREIGN_Y_LINKED, WLT)) + b"\x00",
}
"""Read responses the fuzz tests mutate: every layout, and every quirk of real modules the codec takes."""


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(CORPUS)),
    st.lists(st.tuples(st.integers(0, 2400), st.integers(1, 255)), min_size=1, max_size=4),
    st.integers(0, 3),
)
def test_mutated_read_frames_give_a_protocol_error(name, flips, cut):
    frame = bytearray(CORPUS[name])
    flips = [(pos % len(frame), xor) for pos, xor in flips]
    for pos, xor in flips:
        frame[pos] ^= xor
    frame = bytes(frame[: len(frame) - cut])
    try:
        card = codec.decode_read_response(frame)
    except ProtocolError as exc:
        assert exc.message
    except CardReadError as exc:  # a flipped SW3 that still checks out is a SAM status
        assert exc.sw3
    else:
        assert isinstance(card, IdCard)  # flips that cancel in the XOR and stay inside valid text


STATUS_CORPUS = {
    "find OK": bytes.fromhex("AA AA AA 96 69 00 08 00 00 9F 00 00 00 00 97"),
    "USB trailing byte after SW3": bytes.fromhex("AA AA AA 96 69 00 04 00 00 10 14 00"),  # Telpo-style
    "envelope around find OK": codec.wrap_in_envelope(bytes.fromhex("AA AA AA 96 69 00 08 00 00 9F 00 00 00 00 97")),
}
"""Status answers with the same quirks, for the fuzz test below."""


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(STATUS_CORPUS)),
    st.lists(st.tuples(st.integers(0, 40), st.integers(1, 255)), max_size=3),
    st.binary(max_size=4),
)
def test_mutated_status_answers_parse_or_name_the_fault(name, flips, tail):
    frame = bytearray(STATUS_CORPUS[name])
    for pos, xor in flips:
        frame[pos % len(frame)] ^= xor
    try:
        resp = codec.parse_response(bytes(frame) + tail)
    except ProtocolError as exc:
        assert exc.message and exc.frame_hex
    else:
        assert 0 <= resp.sw3 <= 255
        if not flips:
            assert resp == codec.parse_response(STATUS_CORPUS[name])


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(CORPUS)), st.binary(max_size=8))
def test_bytes_after_the_declared_length_never_change_the_card(name, tail):
    expected = codec.decode_read_response(CORPUS[name])
    assert codec.decode_read_response(CORPUS[name] + tail) == expected


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=256, max_size=256))
def test_random_text_blocks_never_crash(text):
    try:
        codec.decode_text(text)
    except ProtocolError as exc:
        assert exc.message


# -- the spec's layout tables, built by hand (not with encode_text) -----------------------------------
# Each row is (offset, value, IdCard attribute, expected). Values fill their field to the full length
# where the card allows it, so a wrong offset or a wrong length breaks a test.


def _spec_block(rows, marker):
    text = bytearray(b" \x00" * 128)
    for off, value, *_ in rows:
        raw = value.encode("utf-16-le")
        text[off : off + len(raw)] = raw
    text[248:250] = marker.encode("utf-16-le")
    return bytes(text)


_NAME15 = "蓝测试一二三四五六七八九十百千"
_ADDRESS35 = "广西壮族自治区桂林市七星区示例路一二三四五六七八九十号示例小区八栋三单"
_AUTHORITY15 = "桂林市公安局七星分局示例派出所"
_J_NO = _no("83000019800101002")
RESIDENT_ROWS = [
    (0, _NAME15, "name", _NAME15),
    (30, "2", "sex_code", "2"),
    (32, "08", "nation_code", "08"),
    (36, "19920405", "birth_date", dt.date(1992, 4, 5)),
    (52, _ADDRESS35, "address", _ADDRESS35),
    (122, RESIDENT.card_no, "card_no", RESIDENT.card_no),
    (158, _AUTHORITY15, "authority", _AUTHORITY15),
    (188, "20120601", "valid_from", dt.date(2012, 6, 1)),
    (204, "20320601", "valid_to", dt.date(2032, 6, 1)),
]
J_ROWS = [row for row in RESIDENT_ROWS if row[0] not in (32, 36, 122)] + [
    (36, "19800101", "birth_date", dt.date(1980, 1, 1)),
    (122, _J_NO, "card_no", _J_NO),
    (220, "H12345678", "pass_no", "H12345678"),
    (238, "03", "issue_count", "03"),
]
_ENGLISH60 = "EXAMPLE-SAMPLE, NINA MARIA THERESA ALEXANDRA JOSEPHINE TESTE"
I_ROWS = [
    (0, _ENGLISH60, "english_name", _ENGLISH60),
    (120, "2", "sex_code", "2"),
    (122, "VNM450087020301", "card_no", "VNM450087020301"),
    (152, "VNM", "nationality", "VNM"),
    (158, _NAME15, "name", _NAME15),
    (188, "20180101", "valid_from", dt.date(2018, 1, 1)),
    (204, "20280101", "valid_to", dt.date(2028, 1, 1)),
    (220, "19870203", "birth_date", dt.date(1987, 2, 3)),
    (236, "01", "card_version", "01"),
    (240, "4500", "authority", "4500"),
]
_ENGLISH35 = "ALEXANDROVNA-TESTOVA EXAMPLE MARIA "  # char 35 is a space: the name goes on in the second field
Y_ROWS = [
    (0, _NAME15, "name", _NAME15),
    (30, "1", "sex_code", "1"),
    (32, "02", "issue_count", "02"),
    (36, "19791231", "birth_date", dt.date(1979, 12, 31)),
    (52, _ENGLISH35, "english_name", _ENGLISH35 + "ELISABETH X"),
    (122, "932450197912310017", "card_no", "932450197912310017"),
    (188, "20240101", "valid_from", dt.date(2024, 1, 1)),
    (204, "20340101", "valid_to", dt.date(2034, 1, 1)),
    (220, "ELISABETH X", "english_name", _ENGLISH35 + "ELISABETH X"),
    (242, "LAO", "nationality", "LAO"),
    (250, "LK1", "pass_no", "LK1"),
]
LAYOUTS = {
    "resident": (RESIDENT_ROWS, " ", "0"),
    "J": (J_ROWS, "J", "1"),
    "I": (I_ROWS, "I", "2"),
    "Y": (Y_ROWS, "Y", "2"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_spec_layout_decodes_field_by_field(layout):
    rows, marker, card_type = LAYOUTS[layout]
    card = codec.decode_text(_spec_block(rows, marker))
    assert card.card_type == card_type
    for off, _, attr, expected in rows:
        assert getattr(card, attr) == expected, f"{layout}: {attr} at offset {off}"


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_encode_text_writes_the_spec_layout(layout):
    rows, marker, _ = LAYOUTS[layout]
    block = _spec_block(rows, marker)
    assert codec.encode_text(codec.decode_text(block)) == block


def test_j_nation_slot_is_reserved_and_resident_nation_is_read():
    j = codec.decode_text(_spec_block(J_ROWS + [(32, "01", None, None)], "J"))
    assert j.nation_code is None and j.nation_name is None
    resident = codec.decode_text(_spec_block(RESIDENT_ROWS, " "))
    assert (resident.nation_name, resident.sex_name) == ("壮", "女")


@pytest.mark.parametrize("layout", ["resident", "J", "I", "Y"])
def test_long_term_validity_in_every_layout(layout):
    rows, marker, _ = LAYOUTS[layout]
    block = bytearray(_spec_block(rows, marker))
    block[204:220] = bytes.fromhex("7F 95 1F 67 20 00 20 00 20 00 20 00 20 00 20 00")  # the spec's 长期 bytes
    card = codec.decode_text(bytes(block))
    assert card.valid_to is None and card.long_term
    assert codec.encode_text(card)[204:220] == bytes(block[204:220])


@pytest.mark.parametrize(
    "layout,off,value,message",
    [
        ("J", 36, "19800102", "birth date disagrees"),
        ("J", 122, _J_NO[:17] + ("1" if _J_NO[17] != "1" else "2"), "card number: .*check"),
        ("J", 122, "8300001980010100", "card number: .*18 characters"),
        ("resident", 122, RESIDENT.card_no[:17] + "x", "card number: .*upper-case X"),
        ("resident", 122, RESIDENT.card_no[:6] + "19921305" + RESIDENT.card_no[14:], "card number: .*not a real date"),
        ("I", 122, "VNM45008702030", "must be 15 characters"),
        ("I", 220, "19870230", "birth_date is not a YYYYMMDD date"),
        ("I", 120, "3", "unknown sex code"),
        ("Y", 122, "93245019791231001", "must be 18 characters"),
        ("Y", 188, "2024011", "valid_from is not a YYYYMMDD date"),
        ("resident", 204, "2032060", "valid_to is not a YYYYMMDD date"),
    ],
)
def test_layout_rule_violations_are_named(layout, off, value, message):
    rows, marker, _ = LAYOUTS[layout]
    rows = [row for row in rows if row[0] != off] + [(off, value, None, None)]
    with pytest.raises(ProtocolError, match=message):
        codec.decode_text(_spec_block(rows, marker))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(LAYOUTS)), st.integers(0, 127), st.integers(0, 0xFFFF))
def test_mutated_text_in_a_valid_frame_never_crashes(layout, char_index, char):
    # The frame checksum is recomputed, so the mutation reaches the text decoder.
    rows, marker, _ = LAYOUTS[layout]
    text = bytearray(_spec_block(rows, marker))
    text[char_index * 2 : char_index * 2 + 2] = char.to_bytes(2, "little")
    frame = codec.build_response(codec.SW_OK, codec.build_read_data(bytes(text), WLT))
    try:
        card = codec.decode_read_response(frame)
    except ProtocolError as exc:
        assert exc.message
    else:
        assert isinstance(card, IdCard) and card.photo_wlt == WLT


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1400))
def test_random_bodies_behind_a_valid_header_give_a_named_error(body):
    frame = codec._frame(body)  # right preamble, length and CHK: only the content is random
    try:
        codec.decode_read_response(frame)
    except ProtocolError as exc:
        assert exc.message
    except CardReadError as exc:
        assert exc.sw3 and exc.meaning
