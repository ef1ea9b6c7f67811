"""The driver contract, run against every registered driver of each kind (cameras: extend DEVICES)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from core.card import IdCard
from core.errors import ConfigError, DriverError, DriverNotFound
from drivers import registry
from drivers.base import CardReader, Driver, ProbeResult


@contextlib.contextmanager
def _card_reader_device(name: str, tmp_path) -> Iterator[tuple[dict[str, Any], Any]]:
    """Options that make driver ``name`` work here, and a callable that presents a card."""
    from drivers.card_reader.fake import SAMPLES_DIR, load_fixtures

    card = load_fixtures(SAMPLES_DIR)[0]
    if name == "fake":
        yield {"sequence": ["01-resident"], "poll_interval_s": 0.01}, lambda driver: None
    elif name == "sam-serial":
        from drivers.card_reader.simulator import SamSimulator

        with SamSimulator(tmp_path / "tty") as sim:
            yield (
                {"port": str(sim.port), "baudrate": 115200, "poll_interval_s": 0.02},
                lambda driver: sim.present(card),
            )
    elif name == "sam-usb":
        from tests.test_card_sam import FakeUsbDevice

        dev = FakeUsbDevice(card)
        dev.present = False

        def present(driver):
            dev.present = True

        # No USB here: the registry-built driver gets the injected device (its constructor hook).
        def inject(driver):
            driver._injected = dev

        yield {"endpoint_out": 2, "endpoint_in": 0x81, "poll_interval_s": 0.02}, (inject, present)
    elif name == "sdt":
        import os

        from drivers.card_reader.simulator import SYNTHETIC_WLT
        from tests import sdt_shim

        before = os.environ.get("SDT_SHIM_DIR")
        shim = sdt_shim.ShimCard(tmp_path / "sdt-state")
        try:
            yield (
                {"library": str(sdt_shim.build(tmp_path)), "poll_interval_s": 0.01},
                lambda driver: shim.present(card, SYNTHETIC_WLT),
            )
        finally:
            if before is None:
                os.environ.pop("SDT_SHIM_DIR", None)
            else:
                os.environ["SDT_SHIM_DIR"] = before
    else:
        pytest.skip(f"no stand-in device for {name} here (sam-usb is tested with an injected device)")


@pytest.mark.parametrize("name", registry.available("card_reader"))
def test_card_reader_contract(name, tmp_path):
    cls = registry.load_class("card_reader", name)
    assert issubclass(cls, CardReader) and cls.kind == "card_reader"
    assert "poll_interval_s" in cls.Settings.model_fields and "wlt_decoder" in cls.Settings.model_fields
    with pytest.raises(ConfigError, match="unknown key"):
        registry.validate_settings("card_reader", name, {"no_such_key": 1})
    with _card_reader_device(name, tmp_path) as (options, present):
        driver = registry.create("card_reader", name, options)
        if isinstance(present, tuple):
            inject, present = present
            inject(driver)
        assert isinstance(driver, Driver) and not driver.is_open and "closed" in repr(driver)
        driver.close()  # safe when never opened
        with pytest.raises(DriverError, match="not open"):
            driver.read_card(0.0)
        with driver:
            assert driver.is_open and "open" in repr(driver)
            driver.open()  # idempotent
            present(driver)
            card = driver.read_card(3.0)
            assert isinstance(card, IdCard) and card.simulated == cls.simulated
            assert card.card_no not in repr(card)
            assert driver.read_card(0.05) is None  # one read per tap
            assert isinstance(driver.probe(), ProbeResult) and driver.probe().ok
        assert not driver.is_open
        driver.close()  # idempotent


def test_unknown_driver_lists_the_installed_ones():
    with pytest.raises(DriverNotFound) as info:
        registry.create("card_reader", "acme", {})
    for name in ("fake", "sam-serial", "sam-usb", "sdt"):
        assert name in str(info.value)


def test_a_vendor_package_adds_a_driver_and_a_missing_dependency_is_named(tmp_path, monkeypatch):
    # A vendor package as pip would install it: a module and a dist-info declaring the entry points.
    dist = tmp_path / "acme_fvagent-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-fvagent\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[fvagent.card_readers]\nacme = acme_fvagent_reader:AcmeReader\nacme-sdk = acme_fvagent_sdk:SdkReader\n"
    )
    (tmp_path / "acme_fvagent_reader.py").write_text(
        "from drivers.card_reader.fake import FakeCardReader\n\n\nclass AcmeReader(FakeCardReader):\n    pass\n"
    )
    (tmp_path / "acme_fvagent_sdk.py").write_text("import acme_vendor_sdk  # not installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    assert {"acme", "acme-sdk"} <= set(registry.available("card_reader"))
    with registry.create("card_reader", "acme", {"sequence": ["02-hmt"], "poll_interval_s": 0.01}) as reader:
        assert type(reader).__name__ == "AcmeReader" and reader.read_card(1.0).card_type == "1"
    with pytest.raises(DriverNotFound, match="'acme-sdk' cannot load: module 'acme_vendor_sdk' is missing") as info:
        registry.create("card_reader", "acme-sdk", {})
    assert "acme_vendor_sdk" in info.value.hint and "reinstalling acme-fvagent" in info.value.hint
    with pytest.raises(ConfigError, match="cannot load"):
        registry.validate_settings("card_reader", "acme-sdk", {})
    # A module whose pip package has another name is named by its package.
    (tmp_path / "acme_fvagent_sdk.py").write_text("import serial.nonexistent_part  # a broken pyserial\n")
    monkeypatch.delitem(sys.modules, "acme_fvagent_sdk", raising=False)
    with pytest.raises(DriverNotFound) as info:
        registry.create("card_reader", "acme-sdk", {})
    assert "pip install pyserial" in info.value.hint
