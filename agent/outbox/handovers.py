"""Hand-over marks: the desk's note that the case of a failed verification was handed over to the
police, by whom and when. Kept beside the record (the operator's name sealed), never uploaded; each
mark is an event of the audit chain."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from agent.outbox import chain
from agent.outbox.db import Database
from agent.outbox.sealing import KeyRing, open_operator, seal_operator
from core.clock import Clock
from core.errors import CryptoError, OutboxCorrupt, OutboxError


@dataclasses.dataclass(frozen=True)
class Handover:
    """The desk's mark that a failed verification was handed over to the police: by whom, when."""

    record_id: int
    at: float
    operator: str


class Handovers:
    """The ``handovers`` table."""

    def __init__(self, db: Database, keys: KeyRing, clock: Clock) -> None:
        self._db = db
        self._keys = keys
        self._clock = clock

    def mark_handed_over(self, record_id: int, operator: str) -> Handover:
        """Note that the desk handed the case of ``record_id`` over to the police, by ``operator``, now.

        The record itself is not changed and the mark is never uploaded. A record is marked once:
        marking it again returns the first mark unchanged. Raises ``OutboxError`` for an unknown id.
        """
        now = self._clock()
        with self._db.write("store the hand-over mark") as conn:
            t = conn.execute("SELECT uid FROM records WHERE id = ?", (int(record_id),)).fetchone()
            if t is None:
                raise OutboxError(f"no record with id {record_id}", record_id=record_id)
            sealed = seal_operator(self._keys.current, t[0], operator)
            cur = conn.execute(
                "INSERT OR IGNORE INTO handovers (record_id, at, operator) VALUES (?, ?, ?)",
                (int(record_id), now, sealed),
            )
            if cur.rowcount:
                self._db.chained(chain.on_handover(conn, self._keys.chain_key, int(record_id), now, sealed))
        found = self.handovers([record_id]).get(int(record_id))
        if found is None:  # deleted by retention between the two transactions: only a sent record can be
            raise OutboxError(f"no record with id {record_id}", record_id=record_id)
        return found

    def handovers(self, record_ids: Iterable[int]) -> dict[int, Handover]:
        """The hand-over marks of those records that have one, by record id."""
        ids = [int(i) for i in record_ids]
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._db.read("read the hand-over marks") as conn:
            rows = conn.execute(
                f"SELECT h.record_id, h.at, h.operator, r.uid FROM handovers h JOIN records r "
                f"ON r.id = h.record_id WHERE h.record_id IN ({marks})",
                ids,
            ).fetchall()
        return {
            int(record_id): Handover(
                record_id=int(record_id), at=float(at), operator=self._open(record_id, uid, sealed)
            )
            for record_id, at, sealed, uid in rows
        }

    def _open(self, record_id: int, uid: str, sealed: bytes) -> str:
        """The operator's name in a mark, under whichever key sealed it: a mark made before a key
        rotation is sealed under a key that is retired now."""
        for key in self._keys.all():
            try:
                return open_operator(key, uid, sealed)
            except (CryptoError, UnicodeDecodeError):
                continue
        raise OutboxCorrupt(
            f"record {record_id}: its hand-over mark does not open (altered on disk)", record_id=record_id
        )
