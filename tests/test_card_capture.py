"""``fvagent card capture``: one real read recorded as hex with a synthetic identity in place of the
personal bytes, end to end over the pty SAM simulator (and the sdt shim); ``card decode`` reads it."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from agent.cli import main
from drivers.card_reader import codec
from drivers.card_reader.anonymize import anonymize_answer
from drivers.card_reader.fake import SAMPLES_DIR, load_fixtures
from drivers.card_reader.simulator import SYNTHETIC_WLT
from tests.test_card_codec import CORPUS, FOREIGN_Y_LINKED, HMT
from tests.test_card_quirks import MOTHER, _assert_clean

REAL_WLT = b"WLf\x00~\x002\x00\x00\xff\x85" + bytes((i * 37 + 11) % 256 for i in range(1013))
"""A stand-in for the mother's photo, different from SYNTHETIC_WLT."""


def _config(tmp_path, section: str):
    path = tmp_path / "fvagent.toml"
    path.write_text("[card_reader]\n" + section)
    return str(path)


def _decode(path, capsys) -> dict:
    assert main(["card", "decode", str(path), "--show-personal"]) == 0
    return json.loads(capsys.readouterr().out)


def _clean_bytes(data: bytes, card) -> None:
    for value in (card.name, card.card_no, card.address, card.birth_date.strftime("%Y%m%d")):
        assert not value or value.encode("utf-16-le") not in data
    assert REAL_WLT not in data


def test_capture_over_the_simulator_then_decode(sim, tmp_path, capsys):
    card = dataclasses.replace(MOTHER, valid_to=None)  # long-term: 长期 is kept
    sim.present(card, wlt=REAL_WLT)
    cfg = _config(tmp_path, f'driver = "sam-serial"\nport = "{sim.port}"\nbaudrate = 115200\n')
    out = tmp_path / "capture.txt"
    assert main(["card", "capture", "--config", cfg, "--out", str(out), "--timeout", "5"]) == 0
    io = capsys.readouterr()
    assert "decodes as a synthetic card of type 0" in io.out and "present the card" in io.err
    _assert_clean(io.out + io.err)
    text = out.read_text()
    _assert_clean(text)
    data = bytes.fromhex(text)
    assert len(data) == 1295 and data[:14] == bytes.fromhex("AA AA AA 96 69 05 08 00 00 90 01 00 04 00")
    _clean_bytes(data, card)
    assert data[270 : 270 + 1024] == SYNTHETIC_WLT  # the photo replaced too
    got = _decode(out, capsys)
    assert got["card_type"] == "0" and got["sex_code"] == card.sex_code and got["nation_code"] == card.nation_code
    assert got["valid_to"] == "长期" and got["birth_date"] == "1990-01-01"
    assert got["name"] != card.name and len(got["name"]) == len(card.name)  # same layout, other person
    assert len(got["address"]) == len(card.address) and got["card_no"] != card.card_no


def test_capture_keeps_the_module_quirks(sim, tmp_path, capsys):
    sim.present(MOTHER, wlt=REAL_WLT)
    real = codec.wrap_in_envelope(codec.read_response(MOTHER, REAL_WLT)) + b"\xf6"
    sim.inject(codec.READ_TEXT_PHOTO, real)
    cfg = _config(tmp_path, f'driver = "sam-serial"\nport = "{sim.port}"\nbaudrate = 115200\n')
    out = tmp_path / "capture.txt"
    assert main(["card", "capture", "-c", cfg, "--out", str(out), "--timeout", "5"]) == 0
    data = bytes.fromhex(out.read_text())
    assert data[:10] == bytes.fromhex("AA 05 12 A0 10 AA AA AA 96 69") and data[-1:] == b"\xf6"
    assert len(data) == len(real)
    _clean_bytes(data, MOTHER)
    capsys.readouterr()
    assert _decode(out, capsys)["birth_date"] == "1990-01-01"  # envelope sum and CHK recomputed


def test_line_noise_before_the_answer_is_not_captured(sim, tmp_path, capsys):
    sim.present(MOTHER, wlt=REAL_WLT)
    sim.inject(codec.READ_TEXT_PHOTO, b"\x00\x13" + codec.read_response(MOTHER, REAL_WLT))
    cfg = _config(tmp_path, f'driver = "sam-serial"\nport = "{sim.port}"\nbaudrate = 115200\n')
    out = tmp_path / "capture.txt"
    assert main(["card", "capture", "-c", cfg, "--out", str(out), "--timeout", "5"]) == 0
    assert bytes.fromhex(out.read_text())[:5] == codec.PREAMBLE
    capsys.readouterr()
    assert _decode(out, capsys)["card_type"] == "0"


def test_a_failed_read_is_captured_with_its_error(sim, tmp_path, capsys):
    sim.present(MOTHER, wlt=REAL_WLT)
    bad = bytearray(codec.read_response(MOTHER, REAL_WLT))
    bad[-1] ^= 0x07  # a wrong CHK: the capture must stay wrong by the same difference
    sim.inject(codec.READ_TEXT_PHOTO, bytes(bad))
    cfg = _config(tmp_path, f'driver = "sam-serial"\nport = "{sim.port}"\nbaudrate = 115200\n')
    out = tmp_path / "capture.txt"
    assert main(["card", "capture", "-c", cfg, "--out", str(out), "--timeout", "5"]) == 0
    io = capsys.readouterr()
    assert "the read failed: bad checksum" in io.err and "reproduces the read's error: bad checksum" in io.out
    data = bytes.fromhex(out.read_text())
    _clean_bytes(data, MOTHER)
    assert codec.checksum(data[5:]) == 0x07


def test_no_card_and_a_fake_reader_are_clear_errors(sim, tmp_path, capsys):
    cfg = _config(tmp_path, f'driver = "sam-serial"\nport = "{sim.port}"\nbaudrate = 115200\n')
    out = tmp_path / "capture.txt"
    assert main(["card", "capture", "-c", cfg, "--out", str(out), "--timeout", "0.3"]) == 1
    assert "no card was read within 0.3 s" in capsys.readouterr().err and not out.exists()
    assert main(["card", "capture", "-c", _config(tmp_path, 'driver = "fake"\n'), "--out", str(out)]) == 2
    assert "is simulated: there is no real read to capture" in capsys.readouterr().err


def test_capture_through_the_sdt_library(tmp_path, capsys, monkeypatch):
    from tests import sdt_shim

    monkeypatch.setenv("SDT_SHIM_DIR", str(tmp_path / "state"))
    shim = sdt_shim.ShimCard(tmp_path / "state")
    shim.present(MOTHER, REAL_WLT)
    lib = sdt_shim.build(tmp_path)
    out = tmp_path / "capture.txt"
    assert (
        main(
            [
                "card",
                "capture",
                "-c",
                _config(tmp_path, f'driver = "sdt"\nlibrary = "{lib}"\n'),
                "--out",
                str(out),
                "--timeout",
                "5",
            ]
        )
        == 0
    )
    capsys.readouterr()
    data = bytes.fromhex(out.read_text())
    _clean_bytes(data, MOTHER)
    assert _decode(out, capsys)["card_no"] != MOTHER.card_no
    assert os.environ["SDT_SHIM_DIR"] == str(tmp_path / "state")


@pytest.mark.parametrize(
    "card", load_fixtures(SAMPLES_DIR) + [HMT, FOREIGN_Y_LINKED], ids=["resident", "J", "I", "J-codec", "Y"]
)
def test_every_layout_anonymizes_to_a_decodable_card(card):
    real = codec.read_response(card, REAL_WLT, bytes(range(256)) * 2)
    safe = anonymize_answer(real)
    assert len(safe) == len(real) and safe[:16] == real[:16]
    _clean_bytes(safe, card)
    if card.english_name:
        assert card.english_name.encode("utf-16-le") not in safe
    if card.pass_no and card.card_type == "1":
        assert card.pass_no.encode("utf-16-le") not in safe
    got = codec.decode_read_response(safe)
    assert (got.card_type, got.sex_code, got.nation_code, got.nationality, got.long_term) == (
        card.card_type,
        card.sex_code,
        card.nation_code,
        card.nationality,
        card.long_term,
    )
    assert got.fingerprint == bytes(512) and got.photo_wlt == SYNTHETIC_WLT
    assert anonymize_answer(safe) == safe or got.card_type == "2"  # the result is itself clean


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_the_quirk_corpus_survives_anonymizing(name):
    real = CORPUS[name]
    safe = anonymize_answer(real)
    assert len(safe) == len(real)
    assert codec.decode_read_response(safe).card_type == codec.decode_read_response(real).card_type


def test_answers_without_personal_data_pass_unchanged_and_unknown_bytes_are_zeroed():
    status = codec.build_response(0x41)
    assert anonymize_answer(status) == status
    misaligned = codec.read_response(MOTHER, REAL_WLT)[14:]
    assert anonymize_answer(misaligned) == bytes(len(misaligned))
