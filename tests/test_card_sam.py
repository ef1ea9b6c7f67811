"""The real sam-serial driver end to end over a pty SAM simulator; sam-usb framing over an injected device."""

from __future__ import annotations

import time

import pytest

from core.errors import (
    CardReadError,
    DeviceNotFound,
    DeviceTimeout,
    DriverError,
    ProtocolError,
)
from drivers import registry
from drivers.card_reader import codec
from drivers.card_reader.fake import SAMPLES_DIR, load_fixtures
from drivers.card_reader.sam import SamUsbReader
from drivers.card_reader.simulator import SYNTHETIC_WLT, SamSimulator

CARDS = load_fixtures(SAMPLES_DIR)  # resident, J, I


def _reader(sim, **options):
    opts = {"port": str(sim.port), "baudrate": 115200, "poll_interval_s": 0.02, "exchange_timeout_s": 0.5}
    opts.update(options)
    return registry.create("card_reader", "sam-serial", opts)


def test_reads_all_three_card_types_once_per_tap(sim):
    with _reader(sim) as reader:
        assert reader.read_card(0.1) is None  # no card: a normal None
        for card in CARDS:
            sim.present(card)
            got = reader.read_card(3.0)
            assert got is not None and got.card_type == card.card_type
            assert (got.name, got.card_no, got.birth_date, got.valid_to) == (
                card.name,
                card.card_no,
                card.birth_date,
                card.valid_to,
            )
            assert got.photo_wlt == SYNTHETIC_WLT and got.photo_jpeg is None and not got.simulated
            assert reader.read_card(0.2) is None  # the card stays: no second read
            sim.remove()
        assert sim.reads == 3
        assert {codec.parse_request(f)[:2] for f in sim.requests} >= {
            codec.FIND_CARD,
            codec.SELECT_CARD,
            codec.READ_TEXT_PHOTO,
        }


def test_card_staying_in_field_is_not_read_again_even_when_the_sam_finds_it(sim):
    with _reader(sim) as reader:
        sim.present(CARDS[0])
        assert reader.read_card(3.0) is not None
        sim.read_done = False  # a SAM that keeps reporting the card: the driver's own debounce holds
        assert reader.read_card(0.3) is None
        sim.remove()
        assert reader.read_card(0.2) is None
        sim.present(CARDS[0])  # presented again: read again
        assert reader.read_card(3.0) is not None
        assert sim.reads == 2


def test_failed_read_is_retried_after_the_card_is_presented_again(sim):
    with _reader(sim) as reader:
        sim.present(CARDS[0])
        sim.inject(codec.READ_TEXT_PHOTO, codec.build_response(0x41))
        with pytest.raises(CardReadError) as info:
            reader.read_card(3.0)
        assert info.value.sw3 == "0x41" and info.value.meaning == "read card failed"
        assert reader.read_card(0.3) is None  # still in the field: not retried behind the person's back
        sim.remove()
        assert reader.read_card(0.2) is None
        sim.present(CARDS[0])
        assert reader.read_card(3.0).card_no == CARDS[0].card_no


@pytest.mark.parametrize(
    "command,raw,error,message",
    [
        (codec.READ_TEXT_PHOTO, codec.build_response(0x90, b"\x01\x02")[:-1] + b"\x00", ProtocolError, "bad checksum"),
        (
            codec.READ_TEXT_PHOTO,
            codec.build_response(0x90, b"\x01\x00\x04\x00" + bytes(10)),
            ProtocolError,
            "read data is 14 bytes",
        ),
        (codec.SELECT_CARD, codec.build_response(0x81), CardReadError, "select card failed"),
        (codec.READ_TEXT_PHOTO, codec.build_response(0x32), CardReadError, "SAM failed to authenticate the card"),
    ],
)
def test_fault_frames(sim, command, raw, error, message):
    with _reader(sim) as reader:
        sim.present(CARDS[1])
        sim.inject(command, raw)
        with pytest.raises(error, match=message):
            reader.read_card(3.0)


@pytest.mark.parametrize(
    "answer,message",
    [
        (codec.build_response(0x60), "SAM status 0x60 on find-card: SAM self-test failed"),
        (codec.build_response(0x66), "SAM status 0x66 on find-card: SAM not authorized"),
        (codec.build_response(0x9F, bytes(4))[:-1] + b"\x00", "find-card with a bad frame: bad checksum"),
    ],
)
def test_a_bad_answer_to_find_is_a_reader_fault_shown_by_the_service_slot(sim, answer, message):
    # No card is involved: not CardReadError/ProtocolError ("present the card again", every poll),
    # but a DriverError that makes the slot close the reader, show the fault and retry with backoff.
    from agent.service.hardware import DriverSlot

    now = [0.0]
    slot = DriverSlot("card_reader", lambda: _reader(sim), label="card reader", clock=lambda: now[0])
    reader = slot.get()
    sim.inject(codec.FIND_CARD, answer)
    with pytest.raises(DriverError, match=message) as info:
        reader.read_card(1.0)
    assert not isinstance(info.value, (CardReadError, ProtocolError))
    slot.fault(info.value)
    state = slot.state()
    assert state.state == "fault" and message.split(": ")[-1] in (state.detail or "")
    now[0] = 1.0
    reader = slot.get()  # the SAM answers again: the reader is back
    sim.present(CARDS[0])
    assert reader is not None and reader.read_card(3.0) is not None and slot.healthy
    slot.close()


def test_wrong_length_frame_times_out_then_the_reader_recovers(sim):
    with _reader(sim) as reader:
        sim.present(CARDS[0])
        # The length field promises more than comes: the driver waits its exchange timeout.
        sim.inject(codec.SELECT_CARD, bytes.fromhex("AA AA AA 96 69 00 0C 00 00 90 00"))
        with pytest.raises(DeviceTimeout, match="did not answer"):
            reader.read_card(3.0)
        sim.remove()
        assert reader.read_card(0.2) is None
        sim.present(CARDS[0])
        assert reader.read_card(3.0) is not None


def test_unplugged_reader_raises_device_not_found_and_comes_back(sim):
    reader = _reader(sim)
    reader.open()
    sim.present(CARDS[2])
    assert reader.read_card(3.0) is not None
    sim.unplug()
    with pytest.raises(DeviceNotFound):
        reader.read_card(1.0)
    reader.close()
    with pytest.raises(DeviceNotFound, match="cannot open serial port"):
        reader.open()  # still gone: the service retries with backoff
    sim.replug()
    deadline = time.monotonic() + 5
    while True:
        try:
            reader.open()
            break
        except DeviceNotFound:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    sim.present(CARDS[2])
    assert reader.read_card(3.0).card_type == "2"
    reader.close()


def test_unplugged_reader_is_reopened_with_backoff_by_the_service_slot(sim):
    from agent.service.hardware import DriverSlot

    now = [100.0]
    slot = DriverSlot("card_reader", lambda: _reader(sim), label="card reader", clock=lambda: now[0])
    reader = slot.get()
    sim.present(CARDS[0])
    assert reader.read_card(3.0) is not None
    sim.unplug()
    with pytest.raises(DeviceNotFound) as gone:
        reader.read_card(1.0)
    slot.fault(gone.value)
    assert not reader.is_open and slot.state().state == "fault"
    # Still unplugged: no attempt before it is due, each attempt fails, the pause doubles (1, 2, 4 s).
    for due in (101.0, 103.0):
        now[0] = due - 0.01
        failures = slot.failures
        assert slot.get() is None and slot.failures == failures
        now[0] = due
        assert slot.get() is None and slot.failures == failures + 1
    sim.replug()
    now[0] = 106.99
    assert slot.get() is None  # back, but the next attempt is due at 107
    now[0] = 107.0
    assert slot.get() is reader and reader.is_open and slot.healthy
    sim.present(CARDS[1])
    assert reader.read_card(3.0).card_type == "1"
    slot.close()


@pytest.mark.parametrize("sam_rate", [115200, 19200, 9600])
def test_auto_probe_tries_115200_first_then_the_slower_rates(tmp_path, sam_rate):
    with SamSimulator(tmp_path / "ttySAM", baudrate=sam_rate) as sim:
        reader = registry.create("card_reader", "sam-serial", {"port": str(sim.port), "exchange_timeout_s": 0.3})
        with reader:
            assert reader.baudrate == sam_rate
            probes = [
                rate
                for frame, rate in zip(sim.requests, sim.request_rates, strict=True)
                if codec.parse_request(frame)[:2] == codec.SAM_STATUS
            ]
            all_rates = [115200, 57600, 38400, 19200, 9600]
            assert probes == all_rates[: all_rates.index(sam_rate) + 1]  # each rate once, fastest first
            assert reader.probe().ok


def test_missing_port_is_device_not_found(tmp_path):
    reader = registry.create("card_reader", "sam-serial", {"port": str(tmp_path / "nope")})
    with pytest.raises(DeviceNotFound) as info:
        reader.open()
    assert "nope" in str(info.value) and info.value.hint
    assert not reader.probe().ok


def test_spy_url_captures_the_exchange(sim, tmp_path):
    capture = tmp_path / "capture.txt"
    with _reader(sim, port=f"spy://{sim.port}?file={capture}") as reader:
        sim.present(CARDS[0])
        assert reader.read_card(3.0) is not None
    assert "00 03 30 01 32" in capture.read_text().replace("  ", " ").lower() or "30 01 32" in capture.read_text()


def test_fingerprint_read(sim):
    with _reader(sim, read_fingerprint=True) as reader:
        sim.present(CARDS[0], fingerprint=bytes(512))
        got = reader.read_card(3.0)
        assert got.fingerprint == bytes(512)


# -- USB framing over an injected device (no real USB on the test machine) -------------------------


class FakeUsbDevice:
    """Stands in for a pyusb Device: write() queues the SAM's answer, read() returns it in 64-B packets."""

    def __init__(self, card):
        self.card = card
        self.writes: list[tuple[int, bytes]] = []
        self.pending = b""
        self.gone = False
        self.present = True
        self.read_done = False

    def write(self, endpoint, data, timeout):
        if self.gone:
            raise OSError(19, "No such device")
        self.writes.append((endpoint, bytes(data)))
        cmd, para, _ = codec.parse_request(bytes(data))
        if (cmd, para) == codec.FIND_CARD:
            found = self.present and not self.read_done
            self.pending = codec.build_response(0x9F, bytes(4)) if found else codec.build_response(0x80)
        elif (cmd, para) in (codec.SAM_ID, codec.SAM_STATUS):
            self.pending = codec.build_response(0x90, bytes(16) if cmd == 0x12 else b"")
        elif (cmd, para) == codec.SELECT_CARD:
            self.pending = codec.build_response(0x90, bytes(8))
        else:
            self.read_done = True
            self.pending = codec.read_response(self.card, SYNTHETIC_WLT)

    def read(self, endpoint, size, timeout):
        if not self.pending:
            raise OSError(110, "Operation timed out")
        packet, self.pending = self.pending[:64], self.pending[64:]
        return bytearray(packet)


def test_usb_reader_frames_over_bulk_endpoints():
    dev = FakeUsbDevice(CARDS[1])
    reader = SamUsbReader(SamUsbReader.Settings(endpoint_out=0x02, endpoint_in=0x81), usb_device=dev)
    with reader:
        card = reader.read_card(1.0)
    assert card.card_type == "1" and card.card_no == CARDS[1].card_no
    assert [w[1] for w in dev.writes] == [
        codec.build_command(c) for c in (codec.FIND_CARD, codec.SELECT_CARD, codec.READ_TEXT_PHOTO)
    ]
    assert {w[0] for w in dev.writes} == {0x02}


def test_usb_errors_map_to_driver_errors():
    dev = FakeUsbDevice(CARDS[0])
    reader = SamUsbReader(
        SamUsbReader.Settings(endpoint_out=2, endpoint_in=0x81, exchange_timeout_s=0.2), usb_device=dev
    )
    reader.open()
    dev.gone = True
    with pytest.raises(DeviceNotFound, match="USB reader gone"):
        reader.read_card(0.5)
    dev.gone = False
    dev.write = lambda *a: None  # the SAM never answers
    with pytest.raises(DeviceTimeout):
        reader.read_card(0.5)


def test_usb_settings_validate_vid_pid():
    assert SamUsbReader.Settings().vid == "0400" and SamUsbReader.Settings().pid == "C35A"
    with pytest.raises(Exception, match="4 hex digits"):
        registry.validate_settings("card_reader", "sam-usb", {"vid": "xyz"})


@pytest.mark.parametrize("options,device", [({}, "0400:C35A"), ({"vid": "0483", "pid": "5750"}, "0483:5750")])
def test_usb_reader_looks_for_the_configured_vid_pid(options, device):
    # No reader (and no libusb backend) here: the lookup fails, naming the device it looked for.
    reader = registry.create("card_reader", "sam-usb", options)
    assert repr(reader) == f"<SamUsbReader USB {device} closed>"
    with pytest.raises(DeviceNotFound) as info:
        reader.open()
    assert device in str(info.value) and info.value.hint


def test_auto_detect_scans_the_usb_serial_ports(tmp_path, monkeypatch):
    from drivers.card_reader import sam

    (tmp_path / "ttyUSB0").write_text("")  # not a tty: cannot be opened as a serial port
    monkeypatch.setattr(sam, "AUTO_PORT_PATTERNS", (str(tmp_path / "ttyUSB*"), str(tmp_path / "ttyACM*")))
    with SamSimulator(tmp_path / "ttyACM0", baudrate=57600) as sim:
        reader = registry.create("card_reader", "sam-serial", {"exchange_timeout_s": 0.3, "poll_interval_s": 0.02})
        with reader:
            assert (reader.port, reader.baudrate) == (str(sim.port), 57600)
            sim.present(CARDS[0])
            assert reader.read_card(3.0) is not None
    monkeypatch.setattr(sam, "AUTO_PORT_PATTERNS", (str(tmp_path / "none*"),))
    with pytest.raises(DeviceNotFound, match="no serial port found"):
        registry.create("card_reader", "sam-serial", {}).open()
