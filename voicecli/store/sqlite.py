"""`SQLiteCallStore`: call records in one SQLite file, for a single server instance.

Every SQLite call runs on one dedicated worker thread: the event loop never blocks on the
database, and that single thread is also the single writer.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import astuple, replace
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from voicecli.store.records import (
    CALL_STATUSES,
    PROGRESS_ORDER,
    TERMINAL_STATUSES,
    CallRecord,
    CallStatus,
    Direction,
    Role,
    TranscriptEntry,
    TranscriptSummary,
    apply_update,
    format_iso,
    new_call_id,
    parse_iso,
    utcnow_iso,
)

P = ParamSpec("P")
T = TypeVar("T")

# --- Schema: ordered migrations, each applied once and recorded in `_migrations` (as simonw/llm does).

MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = []


def migration(fn: Callable[[sqlite3.Connection], None]) -> Callable[[sqlite3.Connection], None]:
    """Register a schema migration; they run in the order they are defined, never twice."""
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_calls_and_transcripts(db: sqlite3.Connection) -> None:
    """The calls table, their transcripts, and the indexes for lookups and newest-first lists."""
    db.execute(
        """CREATE TABLE calls (
            id TEXT PRIMARY KEY,
            provider TEXT NOT NULL,
            agent TEXT NOT NULL,
            direction TEXT NOT NULL,
            from_number TEXT,
            to_number TEXT,
            provider_call_id TEXT,
            status TEXT NOT NULL,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            duration_s REAL,
            end_reason TEXT
        )"""
    )
    # The integer key keeps utterances in the order they were written.
    db.execute(
        """CREATE TABLE transcript (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            call_id TEXT NOT NULL REFERENCES calls(id),
            role TEXT NOT NULL,
            text TEXT NOT NULL,
            at TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX calls_provider_call_id ON calls(provider, provider_call_id)")
    db.execute("CREATE INDEX calls_started_at ON calls(started_at, id)")
    db.execute("CREATE INDEX calls_status ON calls(status)")
    db.execute("CREATE INDEX transcript_call_id ON transcript(call_id, id)")


@migration
def m002_instances_and_nonces(db: sqlite3.Connection) -> None:
    """Which server carries each call, and the signature nonces already seen (replays refused)."""
    db.execute("ALTER TABLE calls ADD COLUMN instance TEXT")
    db.execute(
        """CREATE TABLE nonces (
            provider TEXT NOT NULL,
            nonce TEXT NOT NULL,
            seen_at REAL NOT NULL,
            PRIMARY KEY (provider, nonce)
        )"""
    )
    db.execute("CREATE INDEX nonces_seen_at ON nonces(seen_at)")


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so a read-then-write is atomic even against
    # another process (a CLI opening the same file); COMMIT at the end makes it durable.
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
    for fn in MIGRATIONS:
        with _transaction(db):
            # Checked inside the write lock: another process may have just applied it.
            if db.execute("SELECT 1 FROM _migrations WHERE name = ?", (fn.__name__,)).fetchone():
                continue
            fn(db)
            db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (fn.__name__, utcnow_iso()))


# --- Work done on the store's thread: plain functions taking the connection first.

_COLUMNS = (
    "id, provider, agent, direction, from_number, to_number, provider_call_id,"
    " status, started_at, ended_at, duration_s, end_reason, instance"
)
_COLUMN_COUNT = len(_COLUMNS.split(","))


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, so every write commits at once.
    # check_same_thread stays on: any use off the store's thread is a bug and should fail loudly.
    db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL survives a killed process; only an OS crash can lose the last commits.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        migrate(db)
    except BaseException:
        db.close()
        raise
    return db


def _fetch_one(db: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> CallRecord | None:
    row = db.execute(f"SELECT {_COLUMNS} FROM calls WHERE {where} LIMIT 1", params).fetchone()
    return CallRecord(*row) if row else None


def _insert(db: sqlite3.Connection, record: CallRecord) -> None:
    with _transaction(db):
        db.execute(f"INSERT INTO calls ({_COLUMNS}) VALUES ({', '.join('?' * _COLUMN_COUNT)})", astuple(record))


def _update(db: sqlite3.Connection, call_id: str, changes: dict[str, Any]) -> CallRecord | None:
    with _transaction(db):
        record = _fetch_one(db, "id = ?", (call_id,))
        if record is None:
            return None
        updated = apply_update(record, **changes)
        if updated != record:
            _rewrite(db, updated)
        return updated


def _rewrite(db: sqlite3.Connection, record: CallRecord) -> None:
    assignments = ", ".join(f"{name} = ?" for name in _COLUMNS.split(", ")[1:])
    db.execute(f"UPDATE calls SET {assignments} WHERE id = ?", (*astuple(record)[1:], record.id))


def _add_transcript(db: sqlite3.Connection, call_id: str, role: str, text: str, at: str) -> None:
    with _transaction(db):
        db.execute("INSERT INTO transcript (call_id, role, text, at) VALUES (?, ?, ?, ?)", (call_id, role, text, at))


def _transcript(db: sqlite3.Connection, call_id: str) -> list[TranscriptEntry]:
    rows = db.execute("SELECT role, text, at FROM transcript WHERE call_id = ? ORDER BY id", (call_id,))
    return [TranscriptEntry(*row) for row in rows]


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


def _mark_interrupted(db: sqlite3.Connection, reason: str, live_instances: list[str]) -> int:
    with _transaction(db):
        live = sorted(PROGRESS_ORDER)
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM calls WHERE status IN ({', '.join('?' * len(live))})"
            f" AND (instance IS NULL OR instance NOT IN ({', '.join('?' * len(live_instances))}))",
            (*live, *live_instances),
        ).fetchall()
        now = utcnow_iso()
        for row in rows:
            _rewrite(db, apply_update(CallRecord(*row), status="interrupted", end_reason=reason, now=now))
    return len(rows)


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
        _rewrite(db, claimed)
        return claimed


def _first_use(db: sqlite3.Connection, provider: str, nonce: str, now: float, keep_s: float) -> bool:
    with _transaction(db):
        db.execute("DELETE FROM nonces WHERE seen_at < ?", (now - keep_s,))
        inserted = db.execute(
            "INSERT OR IGNORE INTO nonces (provider, nonce, seen_at) VALUES (?, ?, ?)", (provider, nonce, now)
        )
        return inserted.rowcount == 1


class SQLiteCallStore:
    """Call records in one SQLite file (WAL), all database work on one dedicated thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None  # touched only on the executor's thread

    async def _run(self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._executor is None:
            raise RuntimeError(f"call store {self.path} is not open")
        job = self._executor.submit(functools.partial(self._with_db, fn, *args, **kwargs))
        # Shielded: once handed over, a write happens even if the caller is cancelled meanwhile
        # (a session finishing its record while a second Ctrl-C cancels it).
        return await asyncio.shield(asyncio.wrap_future(job))

    def _with_db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        assert self._db is not None, "the store's connection is opened by its first job"
        return fn(self._db, *args, **kwargs)

    def _open_on_thread(self) -> None:
        self._db = _connect(self.path)

    def _close_on_thread(self) -> None:
        if self._db is not None:
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
    ) -> CallRecord:
        """Record a new call; raises sqlite3.IntegrityError if `call_id` is already taken."""
        if direction not in ("inbound", "outbound"):
            raise ValueError(f"unknown call direction {direction!r}")
        if status not in CALL_STATUSES:
            raise ValueError(f"unknown call status {status!r}")
        now = utcnow_iso()
        record = CallRecord(
            id=call_id or new_call_id(),
            provider=provider,
            agent=agent,
            direction=direction,
            from_number=from_number,
            to_number=to_number,
            provider_call_id=provider_call_id,
            status=status,
            started_at=now,
            # A call recorded already over (a dial-out the provider refused) ended as it began.
            ended_at=now if status in TERMINAL_STATUSES else None,
            duration_s=0.0 if status in TERMINAL_STATUSES else None,
            end_reason=None,
            instance=instance,
        )
        await self._run(_insert, record)
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
    ) -> CallRecord | None:
        """Change a call (see `apply_update` for the rules); None if there is no such call."""
        changes = dict(status=status, provider_call_id=provider_call_id, end_reason=end_reason)
        changes.update(from_number=from_number, to_number=to_number)
        return await self._run(_update, call_id, changes)

    async def finish(self, call_id: str, status: CallStatus, end_reason: str) -> CallRecord | None:
        """End a call; the first end recorded wins and later ones change nothing."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"{status!r} does not end a call")
        return await self.update(call_id, status=status, end_reason=end_reason)

    async def add_transcript(self, call_id: str, role: Role, text: str, at: str | None = None) -> None:
        """Append an utterance to a call's transcript, committed at once."""
        if role not in ("caller", "agent"):
            raise ValueError(f"unknown transcript role {role!r}")
        stamp = format_iso(parse_iso(at)) if at is not None else utcnow_iso()
        await self._run(_add_transcript, call_id, role, text, stamp)

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
        return await self._run(_claim_stream, call_id, provider, agent, instance, provider_call_id)

    async def first_use(self, provider: str, nonce: str, keep_s: float) -> bool:
        """Note a signature nonce; False when it was already seen within `keep_s` (a replay)."""
        return await self._run(_first_use, provider, nonce, time.time(), keep_s)

    async def mark_interrupted(
        self, reason: str = "server stopped unexpectedly", live_instances: Collection[str] = ()
    ) -> int:
        """End as interrupted every live call whose server is not in `live_instances`; how many."""
        return await self._run(_mark_interrupted, reason, sorted(live_instances))

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
    ) -> list[CallRecord]:
        """Calls newest first, optionally filtered; `active_only` keeps calls not yet ended."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        filters = {"status": status, "provider": provider, "agent": agent}
        return await self._run(_list, limit, filters, active_only)
