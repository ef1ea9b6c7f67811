"""The identity document as a card reader delivers it: the value that crosses the driver boundary."""

from __future__ import annotations

import dataclasses
import datetime as dt

from core import codes
from core.privacy import mask_card_no

LONG_TERM = "长期"
"""A card valid for life: its end date is this text, not a date."""


@dataclasses.dataclass(frozen=True)
class IdCard:
    """One identity document as read from a card, for all card types.

    ``card_type`` uses the platform's code: "0" resident ID, "1" HK/Macau/Taiwan residence permit
    (marker J), "2" foreign permanent resident card (markers I and Y). Dates are ``datetime.date``;
    ``valid_to`` is ``None`` for a long-term (长期) card. Photo and fingerprint bytes stay raw.
    """

    card_type: str
    name: str
    sex_code: str
    birth_date: dt.date
    card_no: str
    valid_from: dt.date
    valid_to: dt.date | None
    nation_code: str | None = None
    """GB/T 3304 code ("01".."56", "97", "98"); None on cards without one (J, I, Y)."""
    address: str = ""
    appended_address: str | None = None
    """The newest address added to the card after issue (追加住址), when the reader reads it (sdt);
    ``address`` stays the printed one. Not sent to the platform."""
    authority: str = ""
    photo_wlt: bytes | None = None
    """The chip photo as read (1024-byte WLT), before decoding."""
    photo_jpeg: bytes | None = None
    """The decoded card photo as JPEG, when a decoder (or a fake fixture) provided one."""
    fingerprint: bytes | None = None
    english_name: str | None = None
    nationality: str | None = None
    """ISO 3166 alpha-3 nationality for foreign cards."""
    pass_no: str | None = None
    """HK/Macau/Taiwan: the 通行证 number; Y cards: the link to the old number."""
    old_card_no: str | None = None
    """Y cards: the 15-character number of the holder's earlier card, rebuilt from the link with its
    ICAO 9303 check digit (``drivers.card_reader.codec.old_foreign_number``); ``None`` without a link.
    Not sent to the platform."""
    y_field_158: str | None = None
    """Y cards: the 30-byte field at offset 158 (reserved in the published layout) when not blank.
    Not sent to the platform."""
    issue_count: str | None = None
    card_version: str | None = None
    terminal_score: float | None = None
    """Relay: the face score a terminal computed itself, when its driver reports one."""
    terminal_result: int | None = None
    """Relay: the terminal's faceResult (0, 1, 2), when its driver reports one."""
    simulated: bool = False
    """True when a fake driver produced this card."""

    @property
    def long_term(self) -> bool:
        return self.valid_to is None

    @property
    def sex_name(self) -> str | None:
        """The GB/T 2261.1 name of ``sex_code`` (男, 女 ...), or ``None`` for an unknown code."""
        return codes.SEX_NAMES.get(self.sex_code)

    @property
    def nation_name(self) -> str | None:
        """The short GB/T 3304 name of ``nation_code`` (汉, 壮 ...), or ``None`` without one."""
        return codes.NATIONS.get(self.nation_code) if self.nation_code else None

    def __repr__(self) -> str:  # never show personal data in a repr (it ends up in logs)
        return f"IdCard(type={self.card_type}, no={mask_card_no(self.card_no)}, simulated={self.simulated})"
