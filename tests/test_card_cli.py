"""``fvagent card decode``: captured frames (raw or hex) into JSON, masked unless asked."""

from __future__ import annotations

import json

from agent.cli import main
from drivers.card_reader import codec
from drivers.card_reader.fake import SAMPLES_DIR, load_fixtures
from drivers.card_reader.simulator import SYNTHETIC_WLT

CARD = load_fixtures(SAMPLES_DIR)[0]
FRAME = codec.read_response(CARD, SYNTHETIC_WLT)


def test_hex_with_any_spacing_masked(tmp_path, capsys):
    hexed = FRAME.hex().upper()
    text = "\n".join(
        " ".join(hexed[i : i + 2] for i in range(j, min(j + 32, len(hexed)), 2)) for j in range(0, len(hexed), 32)
    )
    (tmp_path / "cap.txt").write_text(text + "\n")
    assert main(["card", "decode", str(tmp_path / "cap.txt")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["card_no"] == CARD.card_no[:4] + "*" * 10 + CARD.card_no[-4:]
    assert out["name"] != CARD.name and out["nation"] == "壮" and out["sex"] == "女"
    assert out["valid_to"] == "2035-05-01" and out["photo_wlt_bytes"] == 1024


def test_raw_bytes_show_personal(tmp_path, capsys):
    (tmp_path / "cap.bin").write_bytes(FRAME)
    assert main(["card", "decode", str(tmp_path / "cap.bin"), "--show-personal"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["card_no"] == CARD.card_no and out["name"] == CARD.name


def test_bad_frame_names_what_is_wrong(tmp_path, capsys):
    (tmp_path / "cap.bin").write_bytes(FRAME[:-1] + bytes([FRAME[-1] ^ 0x10]))
    assert main(["card", "decode", str(tmp_path / "cap.bin")]) != 0
    err = capsys.readouterr().err
    assert "bad checksum" in err and CARD.card_no not in err
    (tmp_path / "odd.txt").write_text("AA AA A")
    assert main(["card", "decode", str(tmp_path / "odd.txt")]) != 0
    assert "odd number of digits" in capsys.readouterr().err


def test_decodes_a_spy_capture_of_the_real_driver(tmp_path, capsys):
    from drivers import registry
    from drivers.card_reader.simulator import SamSimulator

    capture = tmp_path / "cap.txt"
    with SamSimulator(tmp_path / "tty") as sim:
        opts = {"port": f"spy://{sim.port}?file={capture}", "baudrate": 115200, "poll_interval_s": 0.02}
        with registry.create("card_reader", "sam-serial", opts) as reader:
            sim.present(CARD)
            assert reader.read_card(3.0) is not None
    assert main(["card", "decode", str(capture), "--show-personal"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["card_no"] == CARD.card_no and out["address"] == CARD.address


def test_hex_with_0x_and_commas(tmp_path, capsys):
    (tmp_path / "cap.txt").write_text(",".join(f"0x{b:02x}" for b in FRAME))
    assert main(["card", "decode", str(tmp_path / "cap.txt")]) == 0
    assert json.loads(capsys.readouterr().out)["card_no"].endswith(CARD.card_no[-4:])


def test_text_that_is_not_hex_names_the_character_and_where(tmp_path, capsys):
    hexed = FRAME.hex(" ").upper().split(" ")
    lines = [" ".join(hexed[i : i + 16]) for i in range(0, len(hexed), 16)]
    lines[2] = "0x" + lines[2][:7] + "G" + lines[2][8:]  # a typo in the third line
    (tmp_path / "cap.txt").write_text("\n".join(lines))
    assert main(["card", "decode", str(tmp_path / "cap.txt")]) != 0
    err = capsys.readouterr().err
    assert "text but not hex: 'G' at line 3, column 10" in err and "preamble" not in err


def test_foreign_and_hmt_cards_masked(tmp_path, capsys):
    for card in load_fixtures(SAMPLES_DIR)[1:]:
        (tmp_path / "cap.bin").write_bytes(codec.read_response(card, SYNTHETIC_WLT))
        assert main(["card", "decode", str(tmp_path / "cap.bin")]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["card_type"] == card.card_type and out["sex"] == "女" and out["nation"] is None
        assert card.card_no not in json.dumps(out) and card.name not in json.dumps(out, ensure_ascii=False)
        if card.pass_no:
            assert out["pass_no"] != card.pass_no
        if card.english_name:
            assert out["english_name"] != card.english_name


def test_a_y_card_shows_its_old_number_masked(tmp_path, capsys):
    from tests.test_card_codec import CORPUS, FOREIGN_Y_LINKED

    (tmp_path / "cap.bin").write_bytes(CORPUS["Y"])
    assert main(["card", "decode", str(tmp_path / "cap.bin")]) == 0
    out = json.loads(capsys.readouterr().out)
    old = FOREIGN_Y_LINKED.old_card_no
    assert out["old_card_no"] == old[:4] + "*" * 7 + old[-4:] and out["y_field_158"].startswith("R*")
    assert main(["card", "decode", str(tmp_path / "cap.bin"), "--show-personal"]) == 0
    assert json.loads(capsys.readouterr().out)["old_card_no"] == old
