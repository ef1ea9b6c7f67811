"""The mock platform's own SQLite: what it accepted, and every request it saw.

Tables: ``requests`` (one row per business request: arrival time, path, request id, the answer),
``registrations`` (one row per registered machineCode), ``verifications`` (one row per accepted
upload, duplicates included, so tests can count them by natural key). Thread-safe: one connection
behind a lock, shared by the server's event loop and the test or admin readers.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, TypedDict

from core.records import JsonObject, Payload

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    path TEXT NOT NULL,
    request_id TEXT,
    http_status INTEGER,
    code INTEGER,
    exception_code TEXT,
    msg TEXT
);
CREATE TABLE IF NOT EXISTS registrations (
    machine_code TEXT PRIMARY KEY,
    device_no TEXT NOT NULL,
    status INTEGER NOT NULL,
    payload TEXT NOT NULL,
    at REAL NOT NULL,
    request_id TEXT
);
CREATE TABLE IF NOT EXISTS verifications (
    id INTEGER PRIMARY KEY,
    machine_code TEXT NOT NULL,
    card_no TEXT NOT NULL,
    verify_time TEXT NOT NULL,
    payload TEXT NOT NULL,
    encrypted INTEGER NOT NULL,
    at REAL NOT NULL,
    request_id TEXT
);
CREATE INDEX IF NOT EXISTS verifications_key ON verifications (machine_code, card_no, verify_time);
"""

_IMAGE_FIELDS = ("headImg", "cameraImg", "fingerCollectImg")


class RequestRow(TypedDict):
    """One request the mock saw (faulted ones included)."""

    at: float
    """Arrival, epoch seconds."""
    path: str
    request_id: str | None
    http_status: int | None
    """None when the connection was dropped."""
    code: int | None
    exception_code: str | None
    msg: str | None


class MockStore:
    """The mock platform's database at ``path`` (created when missing; kept across restarts)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # OFF: a test double's records need to survive its process (they do: the OS holds the
        # writes), not a power cut; NORMAL made each WAL checkpoint fsync on the event loop.
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writes ---------------------------------------------------------------------------------

    def log_request(
        self,
        *,
        at: float,
        path: str,
        request_id: str | None,
        msg: str,
        http_status: int | None = None,
        code: int | None = None,
        exception_code: str | None = None,
    ) -> None:
        """One request seen; ``http_status`` None when no answer went back (a dropped connection)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO requests (at, path, request_id, http_status, code, exception_code, msg) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (at, path, request_id, http_status, code, exception_code, msg),
            )

    def register(self, payload: Payload, request_id: str) -> bool:
        """Store a registration; False when the machineCode is registered already (B2301)."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO registrations (machine_code, device_no, status, payload, at, request_id) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    str(payload["machineCode"]),
                    str(payload["deviceNo"]),
                    int(payload["status"]),
                    json.dumps(payload, ensure_ascii=False),
                    time.time(),
                    request_id,
                ),
            )
            return cur.rowcount == 1

    def registration(self, machine_code: str) -> JsonObject | None:
        with self._lock:
            row = self._db.execute(
                "SELECT device_no, status FROM registrations WHERE machine_code = ?", (machine_code,)
            ).fetchone()
        return None if row is None else {"deviceNo": row[0], "status": row[1]}

    def add_verification(
        self,
        payload: Payload,
        request_id: str,
        *,
        encrypted: bool,
        store_images: bool = True,
        text: str | None = None,
    ) -> None:
        """Keep an accepted record. ``text``: the JSON the payload was parsed from, stored as is when
        the images are kept (serializing 250 KB again would cost more than the rest of the insert)."""
        if not store_images:
            payload, text = _without_images(payload), None
        if text is None:
            text = json.dumps(payload, ensure_ascii=False)
        with self._lock:
            self._db.execute(
                "INSERT INTO verifications (machine_code, card_no, verify_time, payload, encrypted, at, request_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    str(payload["machineCode"]),
                    str(payload["cardNo"]),
                    str(payload["verifyTime"]),
                    text,
                    int(encrypted),
                    time.time(),
                    request_id,
                ),
            )

    def clear(self) -> None:
        """Forget everything (tests sharing one server between cases)."""
        with self._lock:
            self._db.executescript("DELETE FROM requests; DELETE FROM registrations; DELETE FROM verifications;")

    # -- reads ----------------------------------------------------------------------------------

    def verifications(self, *, include_images: bool = False) -> list[JsonObject]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, at, request_id, encrypted, payload FROM verifications ORDER BY id"
            ).fetchall()
        out: list[JsonObject] = []
        for rid, at, request_id, encrypted, payload_text in rows:
            payload = json.loads(payload_text)
            if not include_images:
                payload = _without_images(payload)
            out.append(
                {
                    "id": rid,
                    "received_at": at,
                    "request_id": request_id,
                    "encrypted": bool(encrypted),
                    "machineCode": payload.get("machineCode"),
                    "cardNo": payload.get("cardNo"),
                    "verifyTime": payload.get("verifyTime"),
                    "payload": payload,
                }
            )
        return out

    def registrations(self) -> list[JsonObject]:
        with self._lock:
            rows = self._db.execute("SELECT at, request_id, payload FROM registrations ORDER BY at").fetchall()
        out: list[JsonObject] = []
        for at, request_id, payload_text in rows:
            payload = json.loads(payload_text)
            out.append(
                {
                    "received_at": at,
                    "request_id": request_id,
                    "machineCode": payload.get("machineCode"),
                    "deviceNo": payload.get("deviceNo"),
                    "status": payload.get("status"),
                    "payload": payload,
                }
            )
        return out

    def requests(self, path: str | None = None) -> list[RequestRow]:
        sql = "SELECT at, path, request_id, http_status, code, exception_code, msg FROM requests"
        args: tuple[Any, ...] = ()
        if path is not None:
            sql += " WHERE path = ?"
            args = (path,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        return [
            RequestRow(at=at, path=p, request_id=rid, http_status=status, code=code, exception_code=exc, msg=msg)
            for at, p, rid, status, code, exc, msg in rows
        ]

    def stats(self) -> JsonObject:
        with self._lock:
            db = self._db
            total = db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
            by_path = dict(db.execute("SELECT path, COUNT(*) FROM requests GROUP BY path").fetchall())
            by_answer = {
                f"{status}/{exc or '-'}": n
                for status, exc, n in db.execute(
                    "SELECT http_status, exception_code, COUNT(*) FROM requests GROUP BY http_status, exception_code"
                )
            }
            first_last = db.execute("SELECT MIN(at), MAX(at) FROM requests").fetchone()
            rid_dupes = db.execute(
                "SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) AS n FROM requests "
                "WHERE request_id IS NOT NULL GROUP BY request_id HAVING n > 1)"
            ).fetchone()[0]
            verifications = db.execute("SELECT COUNT(*) FROM verifications").fetchone()[0]
            distinct = db.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM verifications GROUP BY machine_code, card_no, verify_time)"
            ).fetchone()[0]
            registrations = db.execute("SELECT COUNT(*) FROM registrations").fetchone()[0]
        span = (first_last[1] - first_last[0]) if total > 1 else 0.0
        return {
            "requests": total,
            "by_path": by_path,
            "by_answer": by_answer,
            "first_request_at": first_last[0],
            "last_request_at": first_last[1],
            "request_rate_rps": (total - 1) / span if span > 0 else None,
            "repeated_request_ids": rid_dupes,
            "registrations": registrations,
            "verifications": verifications,
            "distinct_verifications": distinct,
            "duplicate_verifications": verifications - distinct,
        }

    def duplicates(self) -> dict[tuple[str, str, str], int]:
        """Natural keys (machineCode, cardNo, verifyTime) stored more than once, with their counts."""
        with self._lock:
            rows = self._db.execute(
                "SELECT machine_code, card_no, verify_time, COUNT(*) FROM verifications "
                "GROUP BY machine_code, card_no, verify_time HAVING COUNT(*) > 1"
            ).fetchall()
        return {(m, c, v): n for m, c, v, n in rows}


def _without_images(payload: Payload) -> Payload:
    """The payload with each image replaced by ``<N base64 characters>`` (idempotent)."""
    out = dict(payload)
    for name in _IMAGE_FIELDS:
        value = out.get(name)
        if isinstance(value, str) and not value.startswith("<"):
            out[name] = f"<{len(value)} base64 characters>"
    return out
