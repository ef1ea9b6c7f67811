"""Sealing a record's payload under the outbox key: one way for a new record and a completed held one.

A payload is sealed as two blobs bound to its row and role by the AAD (``fvagent-outbox:<uid>:<part>``):
``data`` (every field but the photos, JSON) and ``photos`` (``blobs.pack_photos``), so retention can
erase the photos alone. The card number is also kept as a keyed blind index, to find a card's records.
"""

from __future__ import annotations

import dataclasses
import json

from agent.outbox import chain
from agent.outbox.blobs import dumps, pack_photos, unpack_photos
from agent.outbox.keys import DataKey
from core.privacy import PHOTO_FIELDS  # sealed apart from the rest, so retention can erase them alone
from core.records import Payload


def aad(uid: str, part: str) -> bytes:
    """Binds each sealed blob to its row and its role: a blob copied to another row does not open."""
    return f"fvagent-outbox:{uid}:{part}".encode("ascii")


@dataclasses.dataclass(frozen=True)
class SealedPayload:
    """A payload as stored: the sealed blobs and the blind index of its card number."""

    data: bytes
    photos: bytes | None
    card_index: bytes | None

    @property
    def size(self) -> int:
        """Sealed bytes held (the row's ``bytes``, without a kept WLT photo)."""
        return len(self.data) + len(self.photos or b"")


def seal_payload(key: DataKey, uid: str, payload: Payload) -> SealedPayload:
    """Seal ``payload`` for the row ``uid`` under ``key``."""
    data = {k: v for k, v in payload.items() if k not in PHOTO_FIELDS}
    photos = {k: payload[k] for k in PHOTO_FIELDS if payload.get(k) is not None}
    card_no = payload.get("cardNo")
    return SealedPayload(
        data=key.seal(dumps(data), aad(uid, "data")),
        photos=key.seal(pack_photos(photos), aad(uid, "photos")) if photos else None,
        card_index=key.card_index(card_no) if isinstance(card_no, str) and card_no else None,
    )


def open_payload(key: DataKey, uid: str, data: bytes, photos: bytes | None) -> Payload:
    """The payload sealed by ``seal_payload`` (``photos`` None: without its photos).

    Raises ``CryptoError`` or ``ValueError`` when a blob does not open or is not what was sealed."""
    payload = json.loads(key.open(data, aad(uid, "data")))
    if not isinstance(payload, dict):
        raise ValueError("the sealed data is not a JSON object")
    if photos is not None:
        payload.update(unpack_photos(key.open(photos, aad(uid, "photos"))))
    return payload


def seal_wlt(key: DataKey, uid: str, raw_wlt: bytes) -> bytes:
    """The card's WLT photo kept with a held record."""
    return key.seal(bytes(raw_wlt), aad(uid, "wlt"))


def open_wlt(key: DataKey, uid: str, sealed: bytes) -> bytes:
    """Raises ``CryptoError`` when it does not open (altered on disk, or another key)."""
    return key.open(sealed, aad(uid, "wlt"))


def seal_operator(key: DataKey, uid: str, operator: str) -> bytes:
    """The desk operator's name on a hand-over mark."""
    return key.seal(operator.encode("utf-8"), aad(uid, "handover"))


def open_operator(key: DataKey, uid: str, sealed: bytes) -> str:
    """Raises ``CryptoError`` or ``UnicodeDecodeError`` when it does not open."""
    return key.open(sealed, aad(uid, "handover")).decode("utf-8")


@dataclasses.dataclass(frozen=True)
class KeyRing:
    """The keys an open outbox uses: the current one, and those retired by a rotation (by key id: they
    open the records marked with it); ``chain_key`` authenticates the audit chain."""

    current: DataKey
    retired: dict[str, DataKey] = dataclasses.field(default_factory=dict)
    chain_key: bytes = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "chain_key", chain.chain_key(self.current.key))

    def all(self) -> list[DataKey]:
        """The current key first, then the retired ones (records sealed before a rotation)."""
        return [self.current, *self.retired.values()]
