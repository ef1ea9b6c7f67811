"""The fake reader: fixtures, scripted sequence, injected faults, cycling; config -> registry -> card."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

import pytest

from agent.config import parse_config
from core.errors import (
    CardReadError,
    ConfigError,
    DeviceNotFound,
    DeviceTimeout,
    ProtocolError,
)
from drivers import registry
from drivers.card_reader.fake import SAMPLES_DIR, load_fixtures


def test_shipped_samples_cover_all_three_card_types():
    cards = load_fixtures(SAMPLES_DIR)
    assert [c.card_type for c in cards] == ["0", "1", "2"]
    assert all(c.simulated and c.photo_jpeg and c.photo_jpeg[:3] == b"\xff\xd8\xff" for c in cards)


def test_card_from_config_through_the_registry(tmp_path):
    raw = tomllib.loads((Path(__file__).parent.parent / "deploy" / "fvagent.example.toml").read_text("utf-8"))
    raw["card_reader"] = tomllib.loads('driver = "fake"\npoll_interval_s = 0.01\nsequence = ["02-hmt"]\n')
    settings = parse_config(raw)
    reader = registry.create("card_reader", settings.card_reader.driver, settings.card_reader.options)
    with reader:
        card = reader.read_card(1.0)
        assert card is not None and card.card_type == "1" and card.simulated
        assert reader.read_card(0.05) is None


def _write(tmp_path, name, **overrides):
    doc = json.loads((SAMPLES_DIR / "01-resident.json").read_text("utf-8"))
    doc["photo"] = str(SAMPLES_DIR / doc["photo"])
    doc.update(overrides)
    (tmp_path / f"{name}.json").write_text(json.dumps(doc, ensure_ascii=False), "utf-8")


def test_fixtures_dir_and_toml(tmp_path):
    _write(tmp_path, "a")
    (tmp_path / "b.toml").write_text(
        (
            'card_type = "0"\nname = "农样例"\nsex_code = "1"\nnation_code = "01"\nbirth_date = "1960-01-01"\n'
            'card_no = "450102196001010016"\nvalid_from = "2010-01-01"\nvalid_to = "长期"\n'
        ),
        "utf-8",
    )
    reader = registry.create("card_reader", "fake", {"fixtures_dir": str(tmp_path), "poll_interval_s": 0.01})
    with reader:
        first, second = reader.read_card(1), reader.read_card(1)
    assert first.photo_jpeg is not None and second.valid_to is None and second.long_term


@pytest.mark.parametrize(
    "override,message",
    [
        ({"card_no": "450102199003070041"}, "check"),
        ({"birth_date": "1990-03-08"}, "birth date disagrees"),
        ({"hobby": "x"}, "unknown keys"),
        ({"birth_date": "7 March"}, "birth_date must be YYYY-MM-DD"),
    ],
)
def test_bad_fixture_is_named(tmp_path, override, message):
    _write(tmp_path, "bad", **override)
    reader = registry.create("card_reader", "fake", {"fixtures_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match=message) as info:
        reader.open()
    assert "bad.json" in str(info.value)


def test_missing_fixtures_dir(tmp_path):
    reader = registry.create("card_reader", "fake", {"fixtures_dir": str(tmp_path / "none")})
    with pytest.raises(DeviceNotFound, match="fixtures directory not found"):
        reader.open()


def test_injected_faults_then_the_card_is_presented_again():
    reader = registry.create(
        "card_reader",
        "fake",
        {
            "sequence": ["01-resident", "03-foreign"],
            "poll_interval_s": 0.01,
            "faults": [
                {"at": 1, "kind": "timeout"},
                {"at": 2, "kind": "garbled"},
                {"at": 3, "kind": "pulled"},
                {"at": 5, "kind": "unplug"},
            ],
        },
    )
    with reader:
        with pytest.raises(DeviceTimeout):
            reader.read_card(1)
        with pytest.raises(ProtocolError) as garbled:
            reader.read_card(1)
        assert garbled.value.frame_hex
        with pytest.raises(CardReadError) as pulled:
            reader.read_card(1)
        assert pulled.value.sw3 == "0x41"
        assert reader.read_card(1).card_type == "0"  # the same card, presented again
        with pytest.raises(DeviceNotFound):
            reader.read_card(1)
        with pytest.raises(DeviceNotFound):
            reader.read_card(1)  # stays unplugged until reopened
        reader.close()
        reader.open()
        assert reader.read_card(1).card_type == "2"
    assert reader.calls.count("open") == 2


def test_cycling_for_soak_runs():
    reader = registry.create("card_reader", "fake", {"cycle_interval_s": 0.05, "poll_interval_s": 0.01})
    seen = []
    with reader:
        t0 = time.monotonic()
        while len(seen) < 5:
            assert time.monotonic() - t0 < 5
            card = reader.read_card(1)
            if card is not None:
                seen.append(card.card_type)
    assert seen == ["0", "1", "2", "0", "1"]
    assert time.monotonic() - t0 >= 0.2  # one card per interval


def test_settings_are_validated():
    with pytest.raises(ConfigError) as info:
        registry.validate_settings("card_reader", "fake", {"cycle_interval_s": 0, "colour": "red"})
    keys = {k for k, _ in info.value.problems}
    assert keys == {"cycle_interval_s", "colour"}


def test_open_warns_that_it_is_simulated(caplog):
    with caplog.at_level("WARNING"), registry.create("card_reader", "fake", {}):
        pass
    assert "simulated card_reader" in caplog.text
