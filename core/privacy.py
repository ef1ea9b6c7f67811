"""Masking of personal data for logs, the CLI and the operator page.

ID numbers, names and photos never appear unmasked outside the outbox. These helpers are the one
place that decides how a masked value looks. Free text has one rule for ID numbers,
``mask_id_numbers`` (the log safety net applies it alone), and ``mask_personal`` adds the names
and addresses a platform's message may quote to it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping


def mask_card_no(card_no: str | None) -> str:
    """``450203199001011234`` -> ``4502**********1234``: first four and last four kept."""
    if not card_no:
        return ""
    if len(card_no) <= 8:
        return card_no[:1] + "*" * (len(card_no) - 1)
    return card_no[:4] + "*" * (len(card_no) - 8) + card_no[-4:]


def mask_name(name: str | None) -> str:
    """``张小红`` -> ``张**``; a Latin name keeps its first letter only."""
    if not name:
        return ""
    return name[0] + "*" * (len(name) - 1)


# Resident ID and the new foreign permanent resident card: 17 digits + digit/X; HK/Macau/Taiwan
# residence permits have the same shape (81/82/83 prefix); old 15-digit resident IDs; old foreign
# permanent resident cards: 3 letters + 12 digits. Bounded by non-alphanumerics so longer numbers
# (timestamps, hex digests) are left alone.
_ID_NUMBER = re.compile(r"(?<![0-9A-Za-z])(?:\d{17}[0-9Xx]|\d{15}|[A-Z]{3}\d{12})(?![0-9A-Za-z])")


def mask_id_numbers(text: str) -> str:
    """``text`` with every ID-number-shaped token masked (first four and last four kept)."""
    return _ID_NUMBER.sub(lambda m: mask_card_no(m.group(0)), text)


# A name or an address the platform quotes after its field name (realName/姓名, address/地址/住址),
# up to the next separator: masked even when it is not the record's own value.
_QUOTED_PERSONAL = re.compile(
    r"(?P<key>realName|姓名|名字|address|地址|住址)(?P<sep>\s*[:：=]?\s*[\"'“‘「]?)"
    r"(?P<value>[^\s,，;；。:：\"'”’」)）\]]+)"
)


def mask_personal(text: str, known: tuple[str, ...] = ()) -> str:
    """``text`` (a platform's message, an error) with personal data masked: every occurrence of the
    ``known`` values (the record's name, address, birth date) and of a value quoted after a name or
    address field is masked like a name, and every ID-number-shaped token like an ID number."""
    for value in sorted({v for v in known if v and len(v) >= 2}, key=len, reverse=True):
        text = text.replace(value, mask_name(value))
    text = _QUOTED_PERSONAL.sub(lambda m: m.group("key") + m.group("sep") + mask_name(m.group("value")), text)
    return mask_id_numbers(text)


PHOTO_FIELDS = ("headImg", "cameraImg", "fingerCollectImg")


def _text(value: object) -> str | None:
    # Record values are JSON; only a string has anything to mask (None masks to "", as before).
    return value if isinstance(value, str) else None


def mask_record(payload: Mapping[str, object]) -> dict[str, object]:
    """A verification record without its photos, name and card number masked, address, birthday and
    issuing authority replaced by ``***``."""
    record = {k: v for k, v in payload.items() if k not in PHOTO_FIELDS}
    if "realName" in record:
        record["realName"] = mask_name(_text(record["realName"]))
    if "cardNo" in record:
        record["cardNo"] = mask_card_no(_text(record["cardNo"]))
    for name in ("address", "birthday", "police"):
        if record.get(name):
            record[name] = "***"
    return record
