"""The ``fake`` card reader: a real, registered driver that yields simulated cards.

Cards come from a fixtures directory (one ``.json`` or ``.toml`` file per card, see
docs/drivers.md), in the order of ``sequence`` (file stems) or sorted by name, or from
``present(card)`` in tests. Faults declared in ``faults`` replace the tap with that number (1-based):
``timeout`` (DeviceTimeout), ``garbled`` (ProtocolError with the frame), ``pulled`` (card pulled
mid-read: CardReadError 0x41), ``unplug`` (DeviceNotFound; the reader stays gone until reopened).
A faulted card is presented again on the next tap, as a person does. With ``cycle_interval_s`` the
reader presents the next card every so many seconds forever (soak tests); without it each card is
read once. Every card is marked ``simulated=True``.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import logging
import time
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.card import IdCard
from core.errors import (
    CardReadError,
    ConfigError,
    DeviceNotFound,
    DeviceTimeout,
    ProtocolError,
)
from drivers.base import CardReader, CardReaderSettings, DriverSettings
from drivers.card_reader import codec

log = logging.getLogger(__name__)

FIXTURE_SUFFIXES = (".json", ".toml")
SAMPLES_DIR = Path(__file__).parent / "samples"
"""The shipped synthetic sample cards."""


class Fault(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    at: int
    """Tap number (1-based) that fails instead of reading."""
    kind: Literal["timeout", "garbled", "pulled", "unplug"]


class FakeCardReaderSettings(CardReaderSettings):
    fixtures_dir: str | None = None
    """Directory of card fixtures (default: the shipped samples)."""
    sequence: list[str] = Field(default_factory=list)
    """Fixture stems in the order to present them (default: all, sorted by name)."""
    cycle_interval_s: float | None = None
    """Present the next card every so many seconds, cycling forever (soak tests); None: each once."""
    faults: list[Fault] = Field(default_factory=list)
    """Faults injected at given tap numbers."""

    @field_validator("cycle_interval_s")
    @classmethod
    def _positive(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("cycle_interval_s must be > 0")
        return v


def _date(value: Any, key: str, path: Path) -> dt.date | None:
    if value is None or value == "长期":
        return None
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(
            f"card fixture {path.name}: {key} must be YYYY-MM-DD", problems=[(key, "must be an ISO date YYYY-MM-DD")]
        ) from None


def load_fixture(path: Path) -> IdCard:
    """One card fixture file -> ``IdCard`` (simulated). Raises ``ConfigError`` naming the problem.

    Keys are ``IdCard`` fields; dates are ISO strings (``valid_to`` may be "长期" or null); ``photo``
    names a JPEG and ``photo_wlt`` a raw WLT file, both relative to the fixture file. The text
    fields must survive the card layout (the fixture is checked by encoding and decoding it).
    """
    try:
        doc = json.loads(path.read_text("utf-8")) if path.suffix == ".json" else tomllib.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read card fixture {path}: {exc}") from exc
    doc = dict(doc)
    fields = {f.name for f in dataclasses.fields(IdCard)}
    photo = doc.pop("photo", None)
    wlt = doc.pop("photo_wlt", None)
    unknown = set(doc) - fields
    if unknown:
        raise ConfigError(
            f"card fixture {path.name}: unknown keys {sorted(unknown)}",
            problems=[(k, "unknown key") for k in sorted(unknown)],
        )
    for key in ("birth_date", "valid_from", "valid_to"):
        if key in doc:
            doc[key] = _date(doc[key], key, path)
    doc.setdefault("valid_to", None)
    if photo:
        doc["photo_jpeg"] = (path.parent / photo).read_bytes()
    if wlt:
        doc["photo_wlt"] = (path.parent / wlt).read_bytes()
    try:
        card = IdCard(simulated=True, **doc)
        codec.decode_text(codec.encode_text(card))  # same rules as a real card
    except (TypeError, ValueError, ProtocolError) as exc:
        raise ConfigError(f"card fixture {path.name} is not a valid card: {exc}") from exc
    return card


def load_fixtures(directory: Path, sequence: list[str] | None = None) -> list[IdCard]:
    files = {p.stem: p for p in sorted(directory.iterdir()) if p.suffix in FIXTURE_SUFFIXES}
    if sequence:
        missing = [s for s in sequence if s not in files]
        if missing:
            raise ConfigError(
                f"sequence names fixtures not in {directory}: {missing}",
                problems=[("sequence", f"no fixture {m!r}") for m in missing],
            )
        return [load_fixture(files[s]) for s in sequence]
    return [load_fixture(p) for p in files.values()]


class FakeCardReader(CardReader):
    """Simulated reader over fixture cards, with scripted faults. ``calls`` records what happened."""

    simulated: ClassVar[bool] = True
    Settings: ClassVar[type[DriverSettings]] = FakeCardReaderSettings
    settings: FakeCardReaderSettings

    def __init__(self, settings: DriverSettings | None = None, *, name: str | None = None) -> None:
        super().__init__(settings, name=name or "fake")
        self.queue: collections.deque[IdCard] = collections.deque()
        """Cards waiting to be tapped (``present()`` appends)."""
        self.calls: list[str] = []
        self._cards: list[IdCard] = []
        self._taps = 0
        self._next_index = 0
        self._next_at = 0.0
        self._unplugged = False

    def describe(self) -> str:
        return f"fake reader over {self.settings.fixtures_dir or 'the shipped samples'}"

    def present(self, card: IdCard) -> None:
        """Put ``card`` on the reader (tests, the demo)."""
        self.queue.append(dataclasses.replace(card, simulated=True))

    def _open(self) -> None:
        self.calls.append("open")
        if self._unplugged:
            self._unplugged = False
        directory = Path(self.settings.fixtures_dir) if self.settings.fixtures_dir else SAMPLES_DIR
        if not directory.is_dir():
            raise DeviceNotFound(
                f"fake reader fixtures directory not found: {directory}",
                device=str(directory),
                hint="set [card_reader] fixtures_dir to a directory of card fixtures",
            )
        if not self._cards:
            self._cards = load_fixtures(directory, self.settings.sequence or None)
            if self.settings.cycle_interval_s is None:
                self.queue.extend(self._cards)
            self._next_at = time.monotonic()

    def _close(self) -> None:
        self.calls.append("close")

    def _poll_card(self) -> IdCard | None:
        if self._unplugged:
            raise DeviceNotFound("fake reader unplugged", device=self.describe())
        if self.settings.cycle_interval_s is not None and not self.queue and self._cards:
            now = time.monotonic()
            if now >= self._next_at:
                self.queue.append(self._cards[self._next_index % len(self._cards)])
                self._next_index += 1
                self._next_at = now + self.settings.cycle_interval_s
        if not self.queue:
            return None
        self._taps += 1
        fault = next((f for f in self.settings.faults if f.at == self._taps), None)
        if fault is not None:
            self.calls.append(f"fault:{fault.kind}")
            self._raise(fault.kind)
        card = self.queue.popleft()
        self.calls.append("read")
        return card

    def _raise(self, kind: str) -> None:
        if kind == "timeout":
            raise DeviceTimeout("fake reader: no answer (injected timeout)", device=self.describe())
        if kind == "garbled":
            frame = bytes.fromhex("aaaaaa966900040000909b")
            raise ProtocolError("bad checksum: CHK is 0x9B, computed 0x94 (injected)", frame_hex=frame.hex(" "))
        if kind == "pulled":
            raise CardReadError(
                f"SAM status 0x41: {codec.status_meaning(0x41)} (injected: card pulled)",
                sw3="0x41",
                meaning=codec.status_meaning(0x41),
            )
        self._unplugged = True
        raise DeviceNotFound("fake reader unplugged (injected)", device=self.describe())
