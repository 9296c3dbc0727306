"""`SQLiteCallStore`: the shared store in one SQLite file, for every worker on one machine.

Every SQLite call of a process runs on one dedicated thread: the event loop never blocks on
the database. Processes share the file (WAL); BEGIN IMMEDIATE serialises their writes, so a
check-then-take (a slot under a limit) is atomic across all of them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import astuple, replace
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from voicecli.store.migrations import MIGRATIONS
from voicecli.store.outbox import (
    CLAIM_S,
    DELIVERY_COLUMNS,
    Delivery,
    Outcome,
    event_body,
    new_delivery_id,
    transition_event,
)
from voicecli.store.records import (
    EVENT_KEEP_S,
    LEASE_S,
    PROGRESS_ORDER,
    TERMINAL_STATUSES,
    AnsweredBy,
    CallRecord,
    CallStatus,
    Direction,
    DuplicateCall,
    Event,
    Holder,
    Role,
    SlotCount,
    StoreUnavailable,
    TranscriptEntry,
    TranscriptSummary,
    VoicemailMode,
    apply_update,
    check_ending,
    new_record,
    transcript_stamp,
    utcnow_iso,
)

P = ParamSpec("P")
T = TypeVar("T")

# How long a write waits for another process's write lock: well inside Twilio's 15 s for a
# webhook's answer. While the store refuses writes, each waits only briefly (a webhook gets
# its 503 at once) until a write goes through again.
STORE_WAIT_S = 5.0
DOWN_WAIT_S = 0.2
# SQLite's primary result codes for "not now" rather than "never": busy, locked, read-only,
# I/O error, full, cannot open, locking protocol (sqlite3.h). Anything else is a bug, raised.
_UNAVAILABLE_CODES = frozenset({5, 6, 8, 10, 13, 14, 15})


def _unavailable(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _UNAVAILABLE_CODES


# --- Schema: the named migrations (migrations.py), each applied once, recorded in `_migrations`.


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so a read-then-write is atomic even against
    # other processes (every worker, a CLI opening the same file); COMMIT makes it durable.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def migrate(db: sqlite3.Connection) -> None:
    """Apply the migrations this database has not had yet, each in its own transaction."""
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    for step in MIGRATIONS:
        with _transaction(db):
            # Checked inside the write lock: another process may have just applied it.
            if db.execute("SELECT 1 FROM _migrations WHERE name = ?", (step.name,)).fetchone():
                continue
            for statement in step.sqlite:
                db.execute(statement)
            db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (step.name, utcnow_iso()))


# The database's clock in Unix seconds: what leases, events and settings are stamped with.
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
_LIVE = tuple(sorted(PROGRESS_ORDER))  # statuses of a call not yet ended


# --- Work done on the store's thread: plain functions taking the connection first.

_COLUMNS = (
    "id, provider, agent, direction, from_number, to_number, provider_call_id,"
    " status, started_at, ended_at, duration_s, end_reason, instance,"
    " recording_path, recording_s, recording_error, answered_by, voicemail"
)
_COLUMN_COUNT = len(_COLUMNS.split(","))


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Transcripts are private: created 0600 (SQLite gives its -wal and -shm files the same mode).
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, so every write commits at once.
    # check_same_thread stays on: any use off the store's thread is a bug and should fail loudly.
    db = sqlite3.connect(path, isolation_level=None, timeout=STORE_WAIT_S)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL survives a killed process; only an OS crash can lose the last commits.
        db.execute("PRAGMA synchronous=NORMAL")
        # No checkpoint inside a commit: copying the log back into the database ends in an
        # fsync (tens of ms here) that would stall whichever slot take or transcript line
        # happened to commit. The lease keeper's thread checkpoints instead (`renew`).
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute("PRAGMA foreign_keys=ON")
        migrate(db)
    except BaseException:
        db.close()
        raise
    return db


def _fetch_one(db: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> CallRecord | None:
    row = db.execute(f"SELECT {_COLUMNS} FROM calls WHERE {where} LIMIT 1", params).fetchone()
    return CallRecord(*row) if row else None


def _touch(db: sqlite3.Connection) -> None:
    """A write that changes nothing: whether the store takes writes."""
    with _transaction(db):
        db.execute("UPDATE _migrations SET applied_at = applied_at WHERE name = ?", (MIGRATIONS[0].name,))


def _insert(db: sqlite3.Connection, record: CallRecord, webhook_url: str | None) -> None:
    with _transaction(db):
        db.execute(f"INSERT INTO calls ({_COLUMNS}) VALUES ({', '.join('?' * _COLUMN_COUNT)})", astuple(record))
        if webhook_url:
            db.execute("INSERT INTO call_webhooks (call_id, url) VALUES (?, ?)", (record.id, webhook_url))
            _enqueue(db, None, record)


def _update(db: sqlite3.Connection, call_id: str, changes: dict[str, Any]) -> CallRecord | None:
    with _transaction(db):
        record = _fetch_one(db, "id = ?", (call_id,))
        if record is None:
            return None
        updated = apply_update(record, **changes)
        if updated != record:
            _rewrite(db, updated, record.status)
        return updated


def _rewrite(db: sqlite3.Connection, record: CallRecord, before: str) -> None:
    """Write a changed record, and the webhook event the change emits, in the caller's transaction."""
    assignments = ", ".join(f"{name} = ?" for name in _COLUMNS.split(", ")[1:])
    db.execute(f"UPDATE calls SET {assignments} WHERE id = ?", (*astuple(record)[1:], record.id))
    _enqueue(db, before, record)


def _enqueue(db: sqlite3.Connection, before: str | None, record: CallRecord) -> None:
    """The outbox row for the event this change emits, if the call has a webhook."""
    event = transition_event(before, record)
    if event is None:
        return
    row = db.execute("SELECT url FROM call_webhooks WHERE call_id = ?", (record.id,)).fetchone()
    if row is None:
        return
    delivery_id = new_delivery_id()
    transcript = _transcript(db, record.id) if event == "call.ended" else None
    body = event_body(event, delivery_id, record, transcript, utcnow_iso())
    db.execute(
        f"""INSERT INTO webhook_outbox (id, call_id, event, url, body, created_at, retry_from, next_try_at)
            VALUES (?, ?, ?, ?, ?, {_NOW}, {_NOW}, {_NOW})""",
        (delivery_id, record.id, event, row[0], body),
    )


# Due, and nobody's: unclaimed, its claim lapsed, or its claimer gone (killed, reaped).
_DUE = f"""status = 'pending' AND next_try_at <= {_NOW} AND (claimed_until IS NULL OR claimed_until < {_NOW}
    OR claimed_by NOT IN (SELECT id FROM holders WHERE expires_at > {_NOW}))"""


def _claim_deliveries(db: sqlite3.Connection, holder: str, limit: int, claim_s: float) -> list[Delivery]:
    # Read first: the poll runs in every process, and most find nothing to take the write lock for.
    if db.execute(f"SELECT 1 FROM webhook_outbox WHERE {_DUE} LIMIT 1").fetchone() is None:
        return []
    with _transaction(db):
        rows = db.execute(
            f"SELECT {DELIVERY_COLUMNS} FROM webhook_outbox WHERE {_DUE} ORDER BY next_try_at LIMIT ?", (limit,)
        ).fetchall()
        ids = [row[0] for row in rows]
        if ids:
            db.execute(
                f"UPDATE webhook_outbox SET claimed_by = ?, claimed_until = {_NOW} + ?"
                f" WHERE id IN ({', '.join('?' * len(ids))})",
                (holder, claim_s, *ids),
            )
    return [Delivery(*row) for row in rows]


def _record_attempt(
    db: sqlite3.Connection, delivery_id: str, holder: str, outcome: str, error: str | None, retry_in_s: float
) -> None:
    status = {"delivered": "delivered", "retry": "pending", "failed": "failed"}[outcome]
    with _transaction(db):
        db.execute(
            f"""UPDATE webhook_outbox SET status = ?, tries = tries + 1, last_error = ?,
                    next_try_at = {_NOW} + ?, delivered_at = CASE WHEN ? = 'delivered' THEN {_NOW} END,
                    claimed_by = NULL, claimed_until = NULL
                WHERE id = ? AND claimed_by = ?""",
            (status, error, retry_in_s, status, delivery_id, holder),
        )


def _deliveries(db: sqlite3.Connection, limit: int) -> list[Delivery]:
    rows = db.execute(f"SELECT {DELIVERY_COLUMNS} FROM webhook_outbox ORDER BY created_at DESC, id LIMIT ?", (limit,))
    return [Delivery(*row) for row in rows]


def _retry_delivery(db: sqlite3.Connection, delivery_id: str) -> bool:
    with _transaction(db):
        cursor = db.execute(
            f"""UPDATE webhook_outbox SET status = 'pending', next_try_at = {_NOW}, retry_from = {_NOW},
                    claimed_by = NULL, claimed_until = NULL
                WHERE id = ? AND status = 'failed'""",
            (delivery_id,),
        )
    return cursor.rowcount > 0


def _add_transcript(
    db: sqlite3.Connection, call_id: str, role: str, text: str, at: str, latency_ms: int | None
) -> None:
    with _transaction(db):
        db.execute(
            "INSERT INTO transcript (call_id, role, text, at, latency_ms) VALUES (?, ?, ?, ?, ?)",
            (call_id, role, text, at, latency_ms),
        )


def _transcript(db: sqlite3.Connection, call_id: str) -> list[TranscriptEntry]:
    rows = db.execute("SELECT role, text, at, latency_ms FROM transcript WHERE call_id = ? ORDER BY id", (call_id,))
    return [TranscriptEntry(*row) for row in rows]


def _set_recording(db: sqlite3.Connection, call_id: str, fields: dict[str, Any]) -> None:
    # Its own columns only: no status change, so no webhook event, and a record already ended
    # (the recording closes just before `finish`, or is repaired long after) still takes it.
    given = {name: value for name, value in fields.items() if value is not None}
    if given:
        with _transaction(db):
            assignments = ", ".join(f"{name} = ?" for name in given)
            db.execute(f"UPDATE calls SET {assignments} WHERE id = ?", (*given.values(), call_id))


def _unfinished_recordings(db: sqlite3.Connection) -> list[CallRecord]:
    marks = ", ".join("?" * len(_LIVE))
    rows = db.execute(
        f"""SELECT {_COLUMNS} FROM calls WHERE recording_path IS NOT NULL AND recording_s IS NULL
            AND status NOT IN ({marks}) ORDER BY id""",
        _LIVE,
    )
    return [CallRecord(*row) for row in rows]


def _list(db: sqlite3.Connection, limit: int, filters: dict[str, str | None], active_only: bool) -> list[CallRecord]:
    where = [f"{name} = ?" for name, value in filters.items() if value is not None]
    params: list[Any] = [value for value in filters.values() if value is not None]
    if active_only:
        where.append(f"status NOT IN ({', '.join('?' * len(TERMINAL_STATUSES))})")
        params.extend(sorted(TERMINAL_STATUSES))
    sql = f"SELECT {_COLUMNS} FROM calls {'WHERE ' + ' AND '.join(where) if where else ''}"
    rows = db.execute(f"{sql} ORDER BY started_at DESC, id DESC LIMIT ?", (*params, limit))
    return [CallRecord(*row) for row in rows]


def _transcript_summaries(db: sqlite3.Connection, call_ids: Sequence[str]) -> dict[str, TranscriptSummary]:
    marks = ", ".join("?" * len(call_ids))
    # One pass over the index: the count and the newest utterance's id per call.
    rows = db.execute(
        f"""SELECT t.call_id, s.turns, t.role, t.text FROM transcript t
            JOIN (SELECT call_id, COUNT(*) AS turns, MAX(id) AS last_id FROM transcript
                  WHERE call_id IN ({marks}) GROUP BY call_id) s ON t.id = s.last_id""",
        tuple(call_ids),
    )
    return {call_id: TranscriptSummary(turns, role, text) for call_id, turns, role, text in rows}


def _interrupt(db: sqlite3.Connection, where: str, params: tuple[Any, ...], reason: str) -> int:
    """End as interrupted the live calls matching `where` (inside the caller's transaction)."""
    marks = ", ".join("?" * len(_LIVE))
    rows = db.execute(f"SELECT {_COLUMNS} FROM calls WHERE status IN ({marks}) AND ({where})", (*_LIVE, *params))
    now = utcnow_iso()
    records = [CallRecord(*row) for row in rows.fetchall()]
    for record in records:
        _rewrite(db, apply_update(record, status="interrupted", end_reason=reason, now=now), record.status)
    return len(records)


def _drop_holders(db: sqlite3.Connection, ids: list[str], reason: str) -> int:
    marks = ", ".join("?" * len(ids))
    db.execute(f"DELETE FROM slots WHERE holder IN ({marks})", ids)
    db.execute(f"DELETE FROM holders WHERE id IN ({marks})", ids)
    return _interrupt(db, f"instance IN ({marks})", tuple(ids), reason)


def _join(db: sqlite3.Connection, holder: Holder) -> None:
    with _transaction(db):
        db.execute(
            f"""INSERT INTO holders (id, instance, host, pid, started_at, expires_at)
                VALUES (?, ?, ?, ?, {_NOW}, {_NOW} + ?)
                ON CONFLICT (id) DO UPDATE SET instance = excluded.instance, host = excluded.host,
                    pid = excluded.pid, expires_at = excluded.expires_at""",
            (holder.id, holder.instance, holder.host, holder.pid, LEASE_S),
        )


def _leave(db: sqlite3.Connection, holder: str) -> None:
    with _transaction(db):
        db.execute("DELETE FROM slots WHERE holder = ?", (holder,))
        db.execute("DELETE FROM holders WHERE id = ?", (holder,))


def _holders(db: sqlite3.Connection) -> list[Holder]:
    rows = db.execute(f"SELECT id, instance, host, pid, expires_at <= {_NOW} FROM holders ORDER BY started_at, id")
    return [Holder(id, instance, host, pid, bool(expired)) for id, instance, host, pid, expired in rows]


def _reap(db: sqlite3.Connection, ids: list[str], reason: str) -> int:
    if not ids:
        return 0
    with _transaction(db):
        return _drop_holders(db, ids, reason)


def _nothing_to_maintain(db: sqlite3.Connection) -> bool:
    # Reads only: every process sweeps every RENEW_S, and a write lock taken for nothing
    # would make slot takes on other workers wait (SQLite's busy wait sleeps whole ms).
    marks = ", ".join("?" * len(_LIVE))
    checks = (
        (f"SELECT 1 FROM holders WHERE expires_at <= {_NOW} LIMIT 1", ()),
        (
            f"""SELECT 1 FROM calls WHERE status IN ({marks})
                AND (instance IS NULL OR instance NOT IN (SELECT id FROM holders)) LIMIT 1""",
            _LIVE,
        ),
        ("SELECT 1 FROM slots WHERE holder NOT IN (SELECT id FROM holders) LIMIT 1", ()),
        (f"SELECT 1 FROM events WHERE created_at < {_NOW} - ? LIMIT 1", (EVENT_KEEP_S,)),
    )
    return not any(db.execute(sql, params).fetchone() for sql, params in checks)


def _maintain(db: sqlite3.Connection, reason: str) -> int:
    if _nothing_to_maintain(db):
        return 0
    with _transaction(db):
        expired = [row[0] for row in db.execute(f"SELECT id FROM holders WHERE expires_at <= {_NOW}")]
        ended = _drop_holders(db, expired, reason) if expired else 0
        # Calls whose carrier is no holder: a server killed before leases existed, or reaped.
        ended += _interrupt(db, "instance IS NULL OR instance NOT IN (SELECT id FROM holders)", (), reason)
        db.execute("DELETE FROM slots WHERE holder NOT IN (SELECT id FROM holders)")
        db.execute(f"DELETE FROM events WHERE created_at < {_NOW} - ?", (EVENT_KEEP_S,))
    return ended


def _live_slots(db: sqlite3.Connection, provider: str) -> int:
    return db.execute(
        f"""SELECT COUNT(*) FROM slots s JOIN holders h ON h.id = s.holder
            WHERE s.provider = ? AND h.expires_at > {_NOW}""",
        (provider,),
    ).fetchone()[0]


def _take_slot(
    db: sqlite3.Connection, provider: str, limit: int, holder: str, claim: str | None, reserve: str | None
) -> str | None:
    # Check and take under one write lock: every process's admissions are serialised here.
    with _transaction(db):
        if claim is not None:
            row = db.execute("SELECT id FROM slots WHERE reserved_for = ? AND provider = ?", (claim, provider))
            found = row.fetchone()
            if found:
                db.execute("UPDATE slots SET holder = ?, reserved_for = NULL WHERE id = ?", (holder, found[0]))
                return found[0]
        if _live_slots(db, provider) >= limit:
            return None
        slot = uuid.uuid4().hex
        db.execute(
            f"INSERT INTO slots (id, provider, holder, reserved_for, taken_at) VALUES (?, ?, ?, ?, {_NOW})",
            (slot, provider, holder, reserve),
        )
        return slot


def _release_slot(db: sqlite3.Connection, slot: str) -> None:
    with _transaction(db):
        db.execute("DELETE FROM slots WHERE id = ?", (slot,))


def _release_reservation(db: sqlite3.Connection, call_id: str) -> bool:
    with _transaction(db):
        return db.execute("DELETE FROM slots WHERE reserved_for = ?", (call_id,)).rowcount == 1


def _slot_counts(db: sqlite3.Connection) -> dict[str, SlotCount]:
    rows = db.execute(
        f"""SELECT s.provider, COUNT(*), COUNT(s.reserved_for) FROM slots s JOIN holders h ON h.id = s.holder
            WHERE h.expires_at > {_NOW} GROUP BY s.provider"""
    )
    return {provider: SlotCount(held, reserved) for provider, held, reserved in rows}


def _insert_event(db: sqlite3.Connection, kind: str, target: str | None, call_id: str | None, data: str) -> None:
    db.execute(
        f"INSERT INTO events (kind, target, call_id, data, created_at) VALUES (?, ?, ?, ?, {_NOW})",
        (kind, target, call_id, data),
    )


def _publish(db: sqlite3.Connection, kind: str, target: str | None, call_id: str | None, data: str) -> None:
    with _transaction(db):
        _insert_event(db, kind, target, call_id, data)


def _last_event(db: sqlite3.Connection) -> int:
    # The sequence, not MAX(id): pruning may have emptied the table, never rewinding ids.
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    return int(row[0]) if row else 0


def _events_after(db: sqlite3.Connection, after: int, holder: str) -> list[Event]:
    rows = db.execute(
        """SELECT id, kind, target, call_id, data FROM events
           WHERE id > ? AND (target IS NULL OR target = ?) ORDER BY id""",
        (after, holder),
    )
    return [Event(id, kind, target, call_id, json.loads(data)) for id, kind, target, call_id, data in rows]


def _stored_settings(db: sqlite3.Connection) -> dict[str, Any]:
    return {name: json.loads(value) for name, value in db.execute("SELECT name, value FROM settings ORDER BY name")}


def _change_settings(db: sqlite3.Connection, changes: dict[str, Any]) -> dict[str, Any]:
    with _transaction(db):
        for name, value in changes.items():
            if value is None:
                db.execute("DELETE FROM settings WHERE name = ?", (name,))
            else:
                db.execute(
                    f"""INSERT INTO settings (name, value, changed_at) VALUES (?, ?, {_NOW})
                        ON CONFLICT (name) DO UPDATE SET value = excluded.value, changed_at = excluded.changed_at""",
                    (name, json.dumps(value)),
                )
        _insert_event(db, "settings", None, None, json.dumps({"changed": sorted(changes)}))
        return _stored_settings(db)


def _shared_secret(db: sqlite3.Connection, name: str, candidate: str) -> str:
    with _transaction(db):
        db.execute("INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)", (name, candidate))
        return db.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()[0]


def _claim_stream(
    db: sqlite3.Connection, call_id: str, provider: str, agent: str, instance: str | None, provider_call_id: str | None
) -> CallRecord | None:
    # The token's single use: only a call still waiting for its stream can be claimed, once.
    with _transaction(db):
        record = _fetch_one(db, "id = ?", (call_id,))
        if record is None or record.provider != provider or record.agent != agent:
            return None
        if record.status not in ("queued", "ringing"):
            return None
        claimed = replace(
            apply_update(record, status="in-progress"),
            instance=instance,
            provider_call_id=record.provider_call_id or provider_call_id,
        )
        _rewrite(db, claimed, record.status)
        return claimed


def _first_use(db: sqlite3.Connection, provider: str, nonce: str, now: float, keep_s: float) -> bool:
    with _transaction(db):
        db.execute("DELETE FROM nonces WHERE seen_at < ?", (now - keep_s,))
        inserted = db.execute(
            "INSERT OR IGNORE INTO nonces (provider, nonce, seen_at) VALUES (?, ?, ?)", (provider, nonce, now)
        )
        return inserted.rowcount == 1


class SQLiteLeaseConnection:
    """The lease keeper's own connection: its thread blocks on SQLite, never the server's loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    async def renew(self, holder: str) -> bool:
        if self._db is None:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=LEASE_S / 2)
        updated = self._db.execute(f"UPDATE holders SET expires_at = {_NOW} + ? WHERE id = ?", (LEASE_S, holder))
        # Off the server's loop and its store thread: fold the log back into the database
        # (PASSIVE never blocks a writer, it copies what no reader still needs).
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        return updated.rowcount == 1

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class SQLiteCallStore:
    """Call records in one SQLite file (WAL), all database work on one dedicated thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._executor: ThreadPoolExecutor | None = None
        # Touched only on the executor's thread:
        self._db: sqlite3.Connection | None = None
        # Writes waiting for the store to take them: (function, args, kwargs), oldest first.
        self._kept: deque[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = deque()
        self._unwritable: str | None = None

    @property
    def location(self) -> str:
        return str(self.path)

    @property
    def unwritable(self) -> str | None:
        return self._unwritable

    async def _run(self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A read on the store's thread."""
        return await self._submit(functools.partial(self._with_db, fn, *args, **kwargs))

    async def _write(self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A write on the store's thread, after any kept ones; StoreUnavailable if it cannot be made."""
        return await self._submit(functools.partial(self._write_on_thread, fn, *args, **kwargs))

    async def _keep(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], Any], *args: P.args, **kwargs: P.kwargs
    ) -> Any:
        """A write that must not be lost: made now, or kept and made once the store takes writes
        (None is returned then)."""
        return await self._submit(functools.partial(self._keep_on_thread, fn, *args, **kwargs))

    async def _submit(self, job: Callable[[], T]) -> T:
        if self._executor is None:
            raise RuntimeError(f"call store {self.path} is not open")
        # Shielded: once handed over, a write happens even if the caller is cancelled meanwhile
        # (a session finishing its record while a second Ctrl-C cancels it).
        return await asyncio.shield(asyncio.wrap_future(self._executor.submit(job)))

    # --- on the store's thread
    def _with_db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        db = self._db
        assert db is not None, "the store's connection is opened by its first job"
        try:
            return fn(db, *args, **kwargs)
        except sqlite3.Error as exc:
            if db.in_transaction:  # a failed COMMIT leaves its transaction open
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if not _unavailable(exc):
                raise
            if self._unwritable is None:
                db.execute(f"PRAGMA busy_timeout = {int(DOWN_WAIT_S * 1000)}")
            self._unwritable = str(exc)
            raise StoreUnavailable(f"the call store {self.path} cannot be written: {exc}") from None

    def _write_on_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        db = self._db
        assert db is not None, "the store's connection is opened by its first job"
        written = db.total_changes
        # Kept writes first: a call's transcript lines and its end are written in order.
        while self._kept:
            kept, kept_args, kept_kwargs = self._kept[0]
            try:
                self._with_db(kept, *kept_args, **kept_kwargs)
            except sqlite3.Error as exc:  # never writable (not "not now"): dropped, not retried forever
                from loguru import logger

                logger.error(f"a kept write could not be made and is dropped: {type(exc).__name__}: {exc}")
            self._kept.popleft()
        result = self._with_db(fn, *args, **kwargs)
        # Back only once something was written: many writes read first and may write nothing.
        if self._unwritable is not None and db.total_changes > written:
            self._unwritable = None
            db.execute(f"PRAGMA busy_timeout = {int(STORE_WAIT_S * 1000)}")
        return result

    def _keep_on_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return self._write_on_thread(fn, *args, **kwargs)
        except StoreUnavailable:
            self._kept.append((fn, args, kwargs))
            return None

    def _open_on_thread(self) -> None:
        try:
            self._db = _connect(self.path)
        except sqlite3.Error as exc:
            if _unavailable(exc):
                raise StoreUnavailable(f"the call store {self.path} cannot be written: {exc}") from None
            raise

    def _close_on_thread(self) -> None:
        if self._db is not None:
            if self._kept:  # one last try; what still fails is lost with this process
                try:
                    self._write_on_thread(_touch)
                except StoreUnavailable as exc:
                    from loguru import logger

                    logger.error(f"{len(self._kept)} write(s) of ended calls are lost: {exc}")
            self._db.close()
            self._db = None

    async def open(self) -> None:
        """Open (creating if needed) the database and bring its schema up to date."""
        if self._executor is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voicecli-store")
        try:
            await asyncio.wrap_future(executor.submit(self._open_on_thread))
        except BaseException:
            # Cancelled mid-open, the open still completes on the thread: close after it.
            executor.submit(self._close_on_thread)
            executor.shutdown(wait=False)
            raise
        self._executor = executor

    async def close(self) -> None:
        """Close the database after the work already handed to it; safe to call twice."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        # FIFO: the close runs after every job submitted before it.
        await asyncio.wrap_future(executor.submit(self._close_on_thread))
        executor.shutdown(wait=False)

    async def create(
        self,
        *,
        provider: str,
        agent: str,
        direction: Direction,
        from_number: str | None = None,
        to_number: str | None = None,
        provider_call_id: str | None = None,
        status: CallStatus = "ringing",
        call_id: str | None = None,
        instance: str | None = None,
        webhook_url: str | None = None,
        voicemail: VoicemailMode | None = None,
    ) -> CallRecord:
        """Record a new call (its events go to `webhook_url`); DuplicateCall if `call_id` is taken."""
        record = new_record(
            provider=provider,
            agent=agent,
            direction=direction,
            from_number=from_number,
            to_number=to_number,
            provider_call_id=provider_call_id,
            status=status,
            call_id=call_id,
            instance=instance,
            voicemail=voicemail,
        )
        try:
            await self._write(_insert, record, webhook_url)
        except sqlite3.IntegrityError:
            raise DuplicateCall(f"call id {record.id} is already taken") from None
        return record

    async def get(self, call_id: str) -> CallRecord | None:
        """The call with this id, if any."""
        return await self._run(_fetch_one, "id = ?", (call_id,))

    async def find_by_provider_call_id(self, provider: str, provider_call_id: str) -> CallRecord | None:
        """The newest call the provider knows by this id, if any."""
        return await self._run(
            _fetch_one,
            "provider = ? AND provider_call_id = ? ORDER BY started_at DESC, id DESC",
            (provider, provider_call_id),
        )

    async def update(
        self,
        call_id: str,
        *,
        status: CallStatus | None = None,
        provider_call_id: str | None = None,
        from_number: str | None = None,
        to_number: str | None = None,
        end_reason: str | None = None,
        answered_by: AnsweredBy | None = None,
    ) -> CallRecord | None:
        """Change a call (see `apply_update` for the rules); None if there is no such call."""
        changes = dict(status=status, provider_call_id=provider_call_id, end_reason=end_reason)
        changes.update(from_number=from_number, to_number=to_number, answered_by=answered_by)
        return await self._write(_update, call_id, changes)

    async def finish(self, call_id: str, status: CallStatus, end_reason: str) -> CallRecord | None:
        """End a call; the first end recorded wins and later ones change nothing.

        Kept while the store refuses writes, and written with the time it ended (None then)."""
        check_ending(status)
        return await self._keep(_update, call_id, dict(status=status, end_reason=end_reason, now=utcnow_iso()))

    async def probe(self) -> bool:
        try:
            await self._write(_touch)
        except StoreUnavailable:
            return False
        return True

    async def add_transcript(
        self, call_id: str, role: Role, text: str, at: str | None = None, latency_ms: int | None = None
    ) -> None:
        """Append an utterance to a call's transcript, committed at once."""
        stamp = transcript_stamp(role, at)
        await self._keep(_add_transcript, call_id, role, text, stamp, latency_ms)

    async def set_recording(
        self, call_id: str, *, path: str | None = None, seconds: float | None = None, error: str | None = None
    ) -> None:
        """Note a call's recording (None leaves a field alone); its status is not touched."""
        fields = {"recording_path": path, "recording_s": seconds, "recording_error": error}
        await self._keep(_set_recording, call_id, fields)

    async def unfinished_recordings(self) -> list[CallRecord]:
        """Ended calls whose recording was never closed (their server was killed)."""
        return await self._run(_unfinished_recordings)

    async def transcript(self, call_id: str) -> list[TranscriptEntry]:
        """A call's utterances in the order they were written."""
        return await self._run(_transcript, call_id)

    async def claim_stream(
        self, call_id: str, *, provider: str, agent: str, instance: str | None, provider_call_id: str | None
    ) -> CallRecord | None:
        """Move a call waiting for its stream to in-progress, once; None if it is not waiting.

        The record must be this provider's and agent's; a call already streaming, or ended,
        is never claimed again (a stream token works once).
        """
        return await self._write(_claim_stream, call_id, provider, agent, instance, provider_call_id)

    async def first_use(self, provider: str, nonce: str, keep_s: float) -> bool:
        """Note a signature nonce; False when it was already seen within `keep_s` (a replay)."""
        return await self._write(_first_use, provider, nonce, time.time(), keep_s)

    # --- post-call webhooks
    async def claim_deliveries(self, holder: str, limit: int, claim_s: float = CLAIM_S) -> list[Delivery]:
        return await self._write(_claim_deliveries, holder, limit, claim_s)

    async def record_attempt(
        self, delivery_id: str, holder: str, outcome: Outcome, error: str | None = None, retry_in_s: float = 0.0
    ) -> None:
        await self._write(_record_attempt, delivery_id, holder, outcome, error, retry_in_s)

    async def deliveries(self, limit: int = 50) -> list[Delivery]:
        return await self._run(_deliveries, limit)

    async def retry_delivery(self, delivery_id: str) -> bool:
        return await self._write(_retry_delivery, delivery_id)

    # --- holders and leases
    async def join(self, holder: Holder) -> None:
        """Register (or re-register) a holder with a fresh lease."""
        await self._write(_join, holder)

    async def leave(self, holder: str) -> None:
        """A holder stops cleanly: its row and any slot it still holds go."""
        await self._write(_leave, holder)

    def lease_connection(self) -> SQLiteLeaseConnection:
        """A connection of its own for the lease keeper's thread."""
        return SQLiteLeaseConnection(self.path)

    async def holders(self) -> list[Holder]:
        """Every registered holder, `expired` by the database's clock."""
        return await self._run(_holders)

    async def reap(self, holders: Collection[str], reason: str) -> int:
        """Drop holders known dead with their slots; their live calls end interrupted (how many)."""
        return await self._write(_reap, sorted(holders), reason)

    async def maintain(self, reason: str) -> int:
        """Reap expired holders, interrupt calls no holder carries, drop old events (calls ended)."""
        return await self._write(_maintain, reason)

    # --- slots
    async def take_slot(
        self, provider: str, limit: int, holder: str, *, claim: str | None = None, reserve: str | None = None
    ) -> str | None:
        """A slot id, or None at the limit; `claim` hands over a dial's reservation first."""
        return await self._write(_take_slot, provider, limit, holder, claim, reserve)

    async def release_slot(self, slot: str) -> None:
        await self._keep(_release_slot, slot)

    async def release_reservation(self, call_id: str) -> bool:
        return await self._keep(_release_reservation, call_id)

    async def slot_counts(self) -> dict[str, SlotCount]:
        return await self._run(_slot_counts)

    # --- events
    async def publish(
        self, kind: str, *, target: str | None = None, call_id: str | None = None, data: Mapping[str, Any] | None = None
    ) -> None:
        await self._write(_publish, kind, target, call_id, json.dumps(dict(data or {})))

    async def last_event(self) -> int:
        return await self._run(_last_event)

    async def events_after(self, after: int, holder: str) -> list[Event]:
        return await self._run(_events_after, after, holder)

    async def wait_for_events(self, within_s: float) -> None:
        # SQLite cannot wake another process: readers poll.
        await asyncio.sleep(within_s)

    # --- settings and secrets
    async def stored_settings(self) -> dict[str, Any]:
        return await self._run(_stored_settings)

    async def change_settings(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        return await self._write(_change_settings, dict(changes))

    async def shared_secret(self, name: str, candidate: str) -> str:
        return await self._write(_shared_secret, name, candidate)

    async def transcript_summaries(self, call_ids: Sequence[str]) -> dict[str, TranscriptSummary]:
        """Turns so far and the last utterance of each call that has any (for the live table)."""
        ids, found = list(call_ids), {}
        # In slices: old SQLite builds allow only 999 parameters in one statement.
        for start in range(0, len(ids), 500):
            found.update(await self._run(_transcript_summaries, ids[start : start + 500]))
        return found

    async def list(
        self,
        *,
        limit: int = 50,
        status: str | None = None,
        provider: str | None = None,
        agent: str | None = None,
        active_only: bool = False,
        answered_by: str | None = None,
    ) -> list[CallRecord]:
        """Calls newest first, optionally filtered; `active_only` keeps calls not yet ended."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        filters = {"status": status, "provider": provider, "agent": agent, "answered_by": answered_by}
        return await self._run(_list, limit, filters, active_only)
