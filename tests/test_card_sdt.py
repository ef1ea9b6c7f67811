"""The ``sdt`` driver (a vendor's SDT-API library through ctypes) against a C shim built here that
implements those calls over the project's synthetic sample cards, error returns included."""

from __future__ import annotations

import logging
import shutil

import pytest

from core.errors import (
    CardReadError,
    ConfigError,
    DeviceNotFound,
    DeviceTimeout,
    DriverError,
    ProtocolError,
)
from core.images import decode_image
from drivers import registry
from drivers.card_reader.fake import SAMPLES_DIR, load_fixtures
from drivers.card_reader.sdt import elf_architecture
from drivers.card_reader.simulator import SYNTHETIC_WLT
from tests import sdt_shim

CARDS = load_fixtures(SAMPLES_DIR)  # resident, J, I


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    d = tmp_path_factory.mktemp("sdt")
    return {
        "full": sdt_shim.build(d),
        "no_unpack": sdt_shim.build(d, "NO_UNPACK"),
        "no_read": sdt_shim.build(d, "NO_READ"),
    }


@pytest.fixture
def shim(tmp_path, monkeypatch):
    monkeypatch.setenv("SDT_SHIM_DIR", str(tmp_path / "state"))
    return sdt_shim.ShimCard(tmp_path / "state")


def _reader(lib, **options):
    return registry.create("card_reader", "sdt", {"library": str(lib), "poll_interval_s": 0.01} | options)


def test_reads_every_sample_card_once_per_tap_with_the_vendor_photo_decoder(libs, shim):
    with _reader(libs["full"]) as reader:
        assert reader.read_card(0.05) is None  # no card: a normal None
        for card in CARDS:
            shim.present(card, SYNTHETIC_WLT)
            got = reader.read_card(1.0)
            assert (got.card_type, got.name, got.card_no, got.birth_date, got.valid_to) == (
                card.card_type,
                card.name,
                card.card_no,
                card.birth_date,
                card.valid_to,
            )
            assert got.photo_wlt == SYNTHETIC_WLT and not got.simulated
            img = decode_image(got.photo_jpeg)  # decoded by the library's own unpack()
            assert img.shape == (126, 102, 3) and abs(int(img[10, 20, 2]) - 200) < 12  # R of the gradient
            assert abs(int(img[100, 20, 1]) - 200) < 12  # G = 2*y: the BMP's bottom-up rows were flipped
            assert reader.read_card(0.05) is None  # the card stays: no second read
            shim.remove()
            assert reader.read_card(0.05) is None
    calls = shim.calls()
    assert calls[0] == "SDT_OpenPort" and calls[-1] == "SDT_ClosePort"
    assert calls.count("SDT_ReadBaseMsg") == 3 and calls.count("unpack") == 3
    i = calls.index("SDT_ReadBaseMsg")
    assert calls[i - 2 : i] == ["SDT_StartFindIDCard", "SDT_SelectIDCard"] and calls[i + 1] == "SDT_ReadNewAppMsg"


def test_the_appended_address_is_read_and_the_printed_one_kept(libs, shim):
    with _reader(libs["full"]) as reader:
        shim.present(CARDS[0], SYNTHETIC_WLT, appended=["广西南宁市示例区旧址1号", "广西南宁市示例区新址2号"])
        got = reader.read_card(1.0)
    assert got.appended_address == "广西南宁市示例区新址2号" and got.address == CARDS[0].address


def test_without_unpack_the_wlt_decoder_or_the_raw_photo(libs, shim, tmp_path):
    with _reader(libs["no_unpack"]) as reader:
        shim.present(CARDS[1], SYNTHETIC_WLT)
        got = reader.read_card(1.0)
        assert got.photo_jpeg is None and got.photo_wlt == SYNTHETIC_WLT  # the record waits held
    # the decoder in a library of its own (photo_library): the SDK's base library has none
    with _reader(libs["no_unpack"], photo_library=str(libs["full"])) as reader:
        shim.remove()
        shim.present(CARDS[1], SYNTHETIC_WLT)
        assert reader.read_card(1.0).photo_jpeg[:3] == b"\xff\xd8\xff"


def test_unpack_refusing_keeps_the_raw_photo(libs, shim, caplog):
    with _reader(libs["full"], unpack_arg=603) as reader:
        shim.present(CARDS[0], SYNTHETIC_WLT)
        got = reader.read_card(1.0)
    assert got.photo_jpeg is None and got.photo_wlt == SYNTHETIC_WLT
    assert "unpack() returned 0 (unpack_arg 603)" in caplog.text


@pytest.mark.parametrize(
    "function,code,error,message",
    [
        ("SDT_SelectIDCard", 0x81, CardReadError, "SDT_SelectIDCard returned 0x81: select card failed"),
        ("SDT_ReadBaseMsg", 0x41, CardReadError, "SDT_ReadBaseMsg returned 0x41: read card failed"),
        ("SDT_ReadBaseMsg", 0x02, DeviceTimeout, "0x02: the PC timed out"),
        ("SDT_StartFindIDCard", 0x60, DriverError, "SDT_StartFindIDCard returned 0x60: SAM self-test failed"),
        ("SDT_StartFindIDCard", 0x01, DeviceNotFound, "port open failed"),
    ],
)
def test_error_returns(libs, shim, function, code, error, message):
    with _reader(libs["full"]) as reader:
        shim.present(CARDS[0], SYNTHETIC_WLT)
        shim.fail(function, code)
        with pytest.raises(error, match=message) as info:
            reader.read_card(1.0)
        if error is DriverError:
            assert not isinstance(info.value, (CardReadError, ProtocolError))
        if error is CardReadError:  # the card, not the reader: presented again, it reads
            assert reader.read_card(0.05) is None
            shim.remove()
            assert reader.read_card(0.05) is None
            shim.present(CARDS[0], SYNTHETIC_WLT)
            assert reader.read_card(1.0).card_no == CARDS[0].card_no


def test_find_answered_0x10_is_asked_again(libs, shim):
    with _reader(libs["full"]) as reader:
        shim.present(CARDS[0], SYNTHETIC_WLT)
        shim.fail("SDT_StartFindIDCard", 0x10)
        assert reader.read_card(1.0).card_no == CARDS[0].card_no
    assert shim.calls()[1:3] == ["SDT_StartFindIDCard", "SDT_StartFindIDCard"]


def test_a_short_read_is_a_protocol_error(libs, shim):
    with _reader(libs["full"]) as reader:
        shim.present(CARDS[0], SYNTHETIC_WLT[:1000])
        with pytest.raises(ProtocolError, match="returned 256 text and 1000 photo bytes"):
            reader.read_card(1.0)


def test_a_port_that_does_not_open_is_device_not_found(libs, shim):
    shim.set_port(1002)
    reader = _reader(libs["full"])
    with pytest.raises(DeviceNotFound, match=r"SDT_OpenPort\(1001\) returned 0x01: port open failed") as info:
        reader.open()
    assert "[card_reader] port" in info.value.hint and not reader.is_open
    assert not reader.probe().ok
    with _reader(libs["full"], port=1002) as reader:
        assert reader.probe().ok and "SAM status 0x90" in reader.probe().detail


def test_a_library_missing_the_sdt_functions_is_named(libs, shim):
    with pytest.raises(DriverError, match="lacks SDT_ReadBaseMsg") as info:
        _reader(libs["no_read"]).open()
    assert "sam-serial" in info.value.hint


def test_a_missing_library_is_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        registry.validate_settings("card_reader", "sdt", {"library": str(tmp_path / "libnone.so")})
    assert ("library", f"library not found: {tmp_path / 'libnone.so'}") in info.value.problems
    with pytest.raises(ConfigError, match="library"):
        registry.validate_settings("card_reader", "sdt", {})  # the key is required
    (tmp_path / "notes.so").write_text("not a library\n")
    with pytest.raises(ConfigError, match="is not an ELF shared library"):
        registry.validate_settings("card_reader", "sdt", {"library": str(tmp_path / "notes.so")})
    with pytest.raises(ConfigError, match="1-16 \\(serial\\) or 1001-1016 \\(USB\\)"):
        registry.validate_settings("card_reader", "sdt", {"library": str(tmp_path / "libnone.so"), "port": 99})


def test_a_library_for_another_architecture_names_both(libs, tmp_path):
    own_class, own_machine = elf_architecture(libs["full"])
    other = tmp_path / "libsdt_other.so"
    shutil.copy(libs["full"], other)
    foreign = 183 if own_machine != 183 else 62  # aarch64 here, or x86_64 on an arm64 machine
    data = bytearray(other.read_bytes())
    data[18:20] = foreign.to_bytes(2, "little")
    other.write_bytes(bytes(data))
    with pytest.raises(ConfigError) as info:
        registry.validate_settings("card_reader", "sdt", {"library": str(other)})
    text = str(info.value)
    names = {62: "x86_64, 64-bit", 183: "aarch64 (arm64), 64-bit"}
    assert f"is built for {names[foreign]}" in text and "but this machine runs" in text
    assert ("x86_64" in text) and ("aarch64" in text)


def test_logs_carry_no_personal_data(libs, shim, caplog):
    caplog.set_level(logging.DEBUG)
    card = CARDS[0]
    with _reader(libs["full"]) as reader:
        shim.present(card, SYNTHETIC_WLT)
        reader.read_card(1.0)
    for value in (card.name, card.card_no, card.address, card.birth_date.strftime("%Y%m%d")):
        assert value not in caplog.text
