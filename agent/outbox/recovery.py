"""How the daemon opens its outbox so that neither a damaged file nor a lost key blocks the desk.

- a damaged file is moved aside (``outbox.db.damaged-<UTC>``), a new outbox starts, and every record
  that can still be read and opened is salvaged into it (``agent.outbox.salvage``); an incident
  names the copy and the counts until ``fvagent outbox ack-damage``;
- a missing, wrong or unreadable key: the outbox is set aside untouched (``outbox.db.awaiting-key-<UTC>``)
  and a new one starts under an interim key file (``outbox.key.interim-<UTC>``), so the configured
  key path stays free for the original to be put back; an incident says so until the old outbox is
  merged, which this open does by itself once the configured key opens it (or ``fvagent outbox merge``).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from agent.config import StorageSettings
from agent.outbox import incidents
from agent.outbox.db import OutboxQuarantined
from agent.outbox.keys import DataKey, key_path, load_key, new_interim_path
from agent.outbox.salvage import SalvageReport, salvage
from agent.outbox.store import DB_NAME, Outbox, rename_aside
from core.errors import KeyFileError, OutboxError

log = logging.getLogger(__name__)

AWAITING_KEY = ".awaiting-key-"
MERGED = ".merged-"


def open_for_service(storage: StorageSettings, *, clock: Callable[[], float] = time.time) -> Outbox:
    """Open the outbox for the daemon (with ``quick_check``), recovering as the module says.

    Raises what cannot be recovered from here: a full disk, permissions, a damaged file another
    process holds open."""
    try:
        outbox = Outbox.open(storage, check=True, clock=clock)
    except OutboxQuarantined as exc:  # moved aside: a new outbox starts, and takes what still reads
        outbox = Outbox.open(storage, check=True, clock=clock)
        salvage_damaged(outbox, exc.kept_as, exc.message)
    except KeyFileError as exc:
        path = Path(storage.dir) / DB_NAME
        if not path.exists():
            raise
        aside = _set_aside(path, AWAITING_KEY)
        interim = new_interim_path(storage)
        outbox = Outbox.open(storage.model_copy(update={"key_file": interim}), check=True, clock=clock)
        alert = (
            f"outbox: the data key did not open the outbox ({exc.message}); it is kept untouched as "
            f"{aside.name}, its records wait for the key; a NEW outbox runs under the interim key {interim.name} "
            f"(back it up). Put the original key back at {key_path(storage)} and restart, or run "
            f"fvagent outbox merge {aside}"
        )
        log.critical("%s", alert)
        incidents.record(outbox, "key", alert, copy=str(aside))
    merge_waiting(outbox, storage)
    return outbox


def salvage_damaged(outbox: Outbox, kept: Path, reason: str) -> SalvageReport | None:
    """Salvage the damaged copy ``kept`` into the (new) ``outbox`` and record the incident."""
    try:
        report: SalvageReport | None = salvage(kept, outbox)
        counts = report.summary() if report else ""
    except OutboxError as exc:
        report, counts = None, f"nothing could be salvaged ({exc.message})"
    alert = (
        f"outbox: the database was damaged and is kept as {kept.name}: {counts}; "
        "run fvagent outbox ack-damage once noted"
    )
    log.error("%s", alert)
    incidents.record(
        outbox,
        "damaged",
        alert,
        copy=str(kept),
        reason=reason,
        salvaged=len(report.salvaged) if report else 0,
        lost=report.lost if report else [],
    )
    return report


def merge(outbox: Outbox, old: Path, key: DataKey) -> SalvageReport:
    """Bring the records of ``old`` (an outbox sealed under ``key``, another key) into ``outbox``,
    sealed again under the outbox's key. The old file is renamed ``*.merged-<UTC>`` afterwards
    (kept), and its key incident is closed."""
    report = salvage(old, outbox, source_key=key)
    done = _set_aside(old, MERGED, strip=AWAITING_KEY)
    remaining = [i for i in incidents.current(outbox) if not (i.get("kind") == "key" and i.get("copy") == str(old))]
    outbox.set_state(incidents.STATE_NAME, remaining or None)
    if report.lost:
        incidents.record(
            outbox,
            "damaged",
            f"outbox: merged {old.name} (kept as {done.name}): {report.summary()}; "
            "run fvagent outbox ack-damage once noted",
            copy=str(done),
            lost=report.lost,
        )
    log.warning(
        "merged %s into %s: %s; kept as %s; the outbox stays sealed under %s: back it up",
        old,
        outbox.path,
        report.summary(),
        done.name,
        outbox.key_source,
    )
    return report


def merge_waiting(outbox: Outbox, storage: StorageSettings) -> None:
    """Merge every ``awaiting-key`` copy whose key is back at the configured place."""
    try:
        key = load_key(storage, may_create=False)
    except KeyFileError:
        return
    for old in sorted(Path(storage.dir).glob(DB_NAME + AWAITING_KEY + "*")):
        if old.name.endswith(("-wal", "-shm")) or not _opens_with(old, key):
            continue
        try:
            merge(outbox, old, key)
        except OutboxError as exc:
            log.error("the outbox %s waiting for its key could not be merged: %s", old, exc)


def _opens_with(path: Path, key: DataKey) -> bool:
    """Whether the key check value stored in ``path`` opens with ``key`` (read without writing)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
        try:
            t = conn.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return True  # unreadable this way: let the salvage decide (it checks every blob)
    return t is None or key.matches(bytes(t[0]))


def _set_aside(path: Path, marker: str, *, strip: str | None = None) -> Path:
    """Rename ``path`` (and its -wal/-shm) to ``<name><marker><UTC>``; ``strip`` cuts an earlier marker off."""
    base = path.name.split(strip)[0] if strip else path.name
    return rename_aside(path, base + marker)
