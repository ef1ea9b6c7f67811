"""The outbox schema and its forward migrations, versioned by ``PRAGMA user_version``.

Each migration runs inside the caller's ``BEGIN IMMEDIATE`` transaction together with the new
``user_version``, so a crash mid-migration leaves the old version intact. Version 1 is the first
released layout; later versions only add (columns, tables, indexes). Tests build a version-1 file
with ``migrate(conn, target=1)`` and check it opens as current.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import sqlite_utils


def _v1(db: sqlite_utils.Database) -> None:
    # Plain SQL: AUTOINCREMENT (ids are never reused after retention deletes rows) is not something
    # sqlite-utils' create() expresses. The sealed blobs live in their own table so that scans of
    # the small columns (counts, due records, sizes) never walk through photo pages.
    db.execute("""
        CREATE TABLE records (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            uid TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            last_error TEXT,
            last_outcome TEXT,
            request_id TEXT,
            sent_at REAL,
            bytes INTEGER NOT NULL DEFAULT 0
        )""")
    db.execute("""
        CREATE TABLE payloads (
            record_id INTEGER PRIMARY KEY REFERENCES records(id) ON DELETE CASCADE,
            data BLOB NOT NULL,
            photos BLOB
        )""")
    db.table("records").create_index(["state", "next_attempt_at", "id"], index_name="records_due")
    db.create_table("meta", {"key": str, "value": bytes}, pk="key")


def _v2(db: sqlite_utils.Database) -> None:
    records = db.table("records")
    records.add_column("updated_at", float)
    records.add_column("simulated", int, not_null_default=0)
    records.add_column("held_reason", str)
    records.add_column("idempotency_key", str)
    records.add_column("card_index", bytes)
    records.add_column("meta", str)
    records.add_column("photos_erased_at", float)
    db.table("payloads").add_column("raw_wlt", bytes)
    db.execute("UPDATE records SET updated_at = COALESCE(sent_at, created_at)")
    records.create_index(["idempotency_key"], index_name="records_idempotency", unique=True)
    records.create_index(["card_index", "created_at"], index_name="records_card")
    records.create_index(["state", "sent_at"], index_name="records_sent")
    db.create_table(
        "attempts",
        {
            "id": int,
            "record_id": int,
            "attempt": int,
            "request_id": str,
            "started_at": float,
            "finished_at": float,
            "outcome": str,
            "http_status": int,
            "exception_code": str,
            "message": str,
        },
        pk="id",
        not_null={"record_id", "attempt", "started_at"},
    )
    db.table("attempts").create_index(["record_id", "attempt"], index_name="attempts_record")
    db.table("attempts").create_index(["request_id"], index_name="attempts_request")


def _v3(db: sqlite_utils.Database) -> None:
    # Hand-over marks (the desk told the police about a failed verification) are facts about the
    # desk's follow-up, not about the record: they live beside it, one per record, never edited.
    # The operator's name is sealed like the payload (``operator``).
    db.execute("""
        CREATE TABLE handovers (
            record_id INTEGER PRIMARY KEY REFERENCES records(id) ON DELETE CASCADE,
            at REAL NOT NULL,
            operator BLOB NOT NULL
        )""")


def _v4(db: sqlite_utils.Database) -> None:
    # The audit chain (agent/outbox/chain.py): append-only, one row per commit and state change.
    # Rows that exist already are chained when the key is at hand (Outbox.open), marked as upgraded.
    db.execute("""
        CREATE TABLE chain (
            seq INTEGER PRIMARY KEY,
            record_id INTEGER,
            kind TEXT NOT NULL,
            at REAL NOT NULL,
            body TEXT NOT NULL,
            digest BLOB NOT NULL
        )""")
    db.table("chain").create_index(["record_id", "seq"], index_name="chain_record")
    records = db.table("records")
    records.add_column("chain_seq", int)
    records.add_column("key_id", str)
    # Only the rows there now are chained at the upgrade: a row added later without its event is
    # reported by `audit verify`, never chained.
    db.execute("INSERT INTO meta(key, value) SELECT 'chain.upgrade', X'31' WHERE EXISTS(SELECT 1 FROM records)")


MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (_v1, _v2, _v3, _v4)
CURRENT = len(MIGRATIONS)


def version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, *, target: int = CURRENT) -> int:
    """Bring the database up to ``target`` inside one ``BEGIN IMMEDIATE`` transaction; return the
    version found. A file newer than this fvagent raises ``ValueError`` (the caller explains it)."""
    found = version(conn)
    if found > CURRENT:
        raise ValueError(f"outbox schema version {found} is newer than this fvagent knows ({CURRENT})")
    if found >= target:
        return found
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = version(conn)  # another process may have migrated while we waited for the lock
        db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
        for number in range(found + 1, target + 1):
            MIGRATIONS[number - 1](db)
        conn.execute(f"PRAGMA user_version = {int(target)}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found
