"""Masking of personal data for logs, the CLI and the operator page.

ID numbers, names and photos never appear unmasked outside the outbox. These helpers are the one
place that decides how a masked value looks.
"""

from __future__ import annotations


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
