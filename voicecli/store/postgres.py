"""`PostgresCallStore`: the store on PostgreSQL, shared by any number of instances and machines.

asyncpg throughout: a small pool for the work, one dedicated connection that LISTENs for
events, and `lease_connection()` for the lease keeper's own thread. Every time the database
compares (leases, slots, events, nonces, settings) is Unix seconds by the database's clock,
so instances whose clocks disagree still agree on who is alive.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import astuple, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
from loguru import logger

from voicecli.server.urls import hide_password
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
    LeaseConnection,
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

T = TypeVar("T")

_NOW = "extract(epoch from clock_timestamp())::double precision"  # the database's clock
_CHANNEL = "voicecli_events"
# Advisory lock keys. The one-key and two-key forms are separate key spaces in PostgreSQL.
_MIGRATION_LOCK = 0x766F696365636C69  # "voicecli"
_EVENT_LOCK = 0x65766E74  # "evnt"
# (0x736C6F74, "slot", with hashtext(provider): taken inside voicecli_take_slot, migration m004.)
_LIVE = sorted(PROGRESS_ORDER)  # the statuses of a call not yet ended
_COLUMNS = (
    "id, provider, agent, direction, from_number, to_number, provider_call_id,"
    " status, started_at, ended_at, duration_s, end_reason, instance,"
    " recording_path, recording_s, recording_error, answered_by, voicemail"
)
_NAMES = _COLUMNS.split(", ")
_INSERT = f"INSERT INTO calls ({_COLUMNS}) VALUES ({', '.join(f'${n + 1}' for n in range(len(_NAMES)))})"
_REWRITE = f"UPDATE calls SET {', '.join(f'{name} = ${n + 2}' for n, name in enumerate(_NAMES[1:]))} WHERE id = $1"
_SCHEMES = ("postgresql", "postgres")
# A write that meets one of these may work later (the server is down, unreachable, read-only
# or full); anything else is a bug, raised as it is.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.ReadOnlySQLTransactionError,
    asyncpg.DiskFullError,
    asyncpg.InsufficientResourcesError,
)
_TRANSCRIPT = "SELECT role, text, at, latency_ms FROM transcript WHERE call_id = $1 ORDER BY id"
_TAKE_SLOT = "SELECT voicecli_take_slot($1, $2, $3, $4, $5, $6)"  # migration m004
_SLOT_COUNTS = f"""SELECT s.provider, count(*) AS held, count(s.reserved_for) AS reserved
    FROM slots s JOIN holders h ON h.id = s.holder WHERE h.expires_at > {_NOW} GROUP BY s.provider"""


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Give a connection back to the pool as it is: no reset query. asyncpg's default reset
    (advisory unlock all, CLOSE ALL, UNLISTEN *, RESET ALL) is a round trip every pool user
    waits for, doubling a one-statement take; pool connections never hold session state to
    undo (no cursors, LISTENs or SETs; the migration's session lock is released before the pool
    serves anything, or the pool is closed; LISTEN has its own connection), and asyncpg still
    rolls back a transaction left open before this runs."""


async def _rewrite(conn: asyncpg.Connection, record: CallRecord, before: str) -> None:
    """Write a changed record, and the webhook event the change emits, in the caller's transaction."""
    await conn.execute(_REWRITE, *astuple(record))
    await _enqueue(conn, before, record)


async def _enqueue(conn: asyncpg.Connection, before: str | None, record: CallRecord) -> None:
    """The outbox row for the event this change emits, if the call has a webhook."""
    event = transition_event(before, record)
    if event is None:
        return
    url = await conn.fetchval("SELECT url FROM call_webhooks WHERE call_id = $1", record.id)
    if url is None:
        return
    delivery_id = new_delivery_id()
    transcript = None
    if event == "call.ended":
        rows = await conn.fetch(_TRANSCRIPT, record.id)
        transcript = [TranscriptEntry(*row) for row in rows]
    body = event_body(event, delivery_id, record, transcript, utcnow_iso())
    await conn.execute(
        f"""INSERT INTO webhook_outbox (id, call_id, event, url, body, created_at, retry_from, next_try_at)
            VALUES ($1, $2, $3, $4, $5, {_NOW}, {_NOW}, {_NOW})""",
        delivery_id,
        record.id,
        event,
        url,
        body,
    )


# Due, and nobody's: unclaimed, its claim lapsed, or its claimer gone (killed, reaped).
_DUE = f"""status = 'pending' AND next_try_at <= {_NOW} AND (claimed_until IS NULL OR claimed_until < {_NOW}
    OR claimed_by NOT IN (SELECT id FROM holders WHERE expires_at > {_NOW}))"""


async def _locked_call(conn: asyncpg.Connection, call_id: str) -> CallRecord | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM calls WHERE id = $1 FOR UPDATE", call_id)
    return CallRecord(*row) if row else None


async def _interrupt(conn: asyncpg.Connection, where: str, args: Sequence[Any], reason: str) -> int:
    """End `interrupted` the live calls matching `where` (inside the caller's transaction)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM calls WHERE status = ANY($1::text[]) AND ({where}) ORDER BY id FOR UPDATE",
        _LIVE,
        *args,
    )
    now = utcnow_iso()
    for row in rows:
        record = CallRecord(*row)
        await _rewrite(conn, apply_update(record, status="interrupted", end_reason=reason, now=now), record.status)
    return len(rows)


async def _publish(conn: asyncpg.Connection, kind: str, target: str | None, call_id: str | None, data: Any) -> None:
    # Serialized so ids become visible in order: a reader that has seen id N never later
    # finds an id below N committing (a BIGSERIAL alone hands out ids before commit order).
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _EVENT_LOCK)
    await conn.execute(
        f"INSERT INTO events (kind, target, call_id, data, created_at) VALUES ($1, $2, $3, $4, {_NOW})",
        kind,
        target,
        call_id,
        json.dumps(dict(data or {})),
    )
    await conn.execute("SELECT pg_notify($1, '')", _CHANNEL)  # delivered at commit


class PostgresLeaseConnection:
    """One connection of its own, opened lazily on the loop of the thread that renews."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: asyncpg.Connection | None = None

    async def renew(self, holder: str) -> bool:
        """Push the lease LEASE_S ahead (database clock); False when the holder row is gone."""
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(self._url, timeout=LEASE_S / 2)
            status = await self._conn.execute(
                f"UPDATE holders SET expires_at = {_NOW} + $2 WHERE id = $1", holder, LEASE_S, timeout=LEASE_S / 2
            )
        except BaseException:
            # Whatever state it was left in, the next renewal starts on a fresh connection.
            await self.close()
            raise
        return status == "UPDATE 1"

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()  # never waits on a server that may be gone


class PostgresCallStore:
    """The call store on PostgreSQL: a small asyncpg pool and a LISTEN connection for events."""

    def __init__(self, url: str) -> None:
        if urlsplit(url).scheme not in _SCHEMES:
            raise ValueError(f"not a PostgreSQL URL (postgresql://...): {hide_password(url)}")
        self.url = url
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._notified = asyncio.Event()
        self._connecting: asyncio.Task[None] | None = None  # the listener connection, being made
        self._listen_again_at = 0.0  # after a failed attempt, when to try again (monotonic)
        self._writes: set[asyncio.Task[Any]] = set()
        self._transcript_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._kept: deque[Callable[[], Awaitable[Any]]] = deque()  # writes waiting for the store
        self._kept_lock = asyncio.Lock()
        self._unwritable: str | None = None

    @property
    def unwritable(self) -> str | None:
        return self._unwritable

    @property
    def location(self) -> str:
        """The database URL without its password."""
        return hide_password(self.url)

    @property
    def pool(self) -> asyncpg.Pool:
        return self._check_open()

    def _check_open(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError(f"call store {self.location} is not open")
        return self._pool

    async def open(self) -> None:
        """Connect, and apply the migrations this database has not had yet (once, cluster-wide)."""
        if self._pool is not None:
            return
        pool = await asyncpg.create_pool(self.url, min_size=1, max_size=5, reset=_keep_session)
        self._notified = asyncio.Event()  # of this open's event loop
        try:
            async with pool.acquire() as conn:
                await self._migrate(conn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    @staticmethod
    async def _migrate(conn: asyncpg.Connection) -> None:
        # Session lock: two instances starting at once take turns, and the second finds all applied.
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
            done = {row["name"] for row in await conn.fetch("SELECT name FROM _migrations")}
            for migration in MIGRATIONS:
                if migration.name in done:
                    continue
                async with conn.transaction():
                    for statement in migration.postgres:
                        await conn.execute(statement)
                    await conn.execute(
                        "INSERT INTO _migrations (name, applied_at) VALUES ($1, $2)", migration.name, utcnow_iso()
                    )
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)

    async def close(self) -> None:
        """Finish the writes already handed over, then close every connection; safe to call twice."""
        pool = self._pool
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        if pool is None or self._pool is not pool:
            return  # never opened, or another close got here first
        self._pool = None
        self._notified.set()  # a reader waiting for events returns, and finds the store closed
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
        listener, self._listener = self._listener, None
        if listener is not None and not listener.is_closed():
            await listener.close()
        if pool is not None:
            await pool.close()

    async def _write(self, work: Callable[[], Awaitable[T]]) -> T:
        """A write, after any kept ones; StoreUnavailable if it cannot be made now."""
        return await self._hand_over(lambda: self._written(work))

    async def _keep(self, work: Callable[[], Awaitable[Any]]) -> Any:
        """A write that must not be lost: made now, or kept and made once the store takes
        writes (None is returned then)."""

        async def kept() -> Any:
            try:
                return await self._written(work)
            except StoreUnavailable:
                self._kept.append(work)
                return None

        return await self._hand_over(kept)

    async def _hand_over(self, write: Callable[[], Awaitable[T]]) -> T:
        # Shielded, as SQLite's writes are: once handed over, a write happens even if the
        # caller is cancelled meanwhile (a session finishing its record during a second Ctrl-C).
        self._check_open()  # a closed store refuses before anything starts
        task = asyncio.ensure_future(write())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return await asyncio.shield(task)

    async def _written(self, work: Callable[[], Awaitable[T]]) -> T:
        if self._kept:  # kept writes first: a call's transcript lines and its end, in order
            async with self._kept_lock:
                while self._kept:
                    try:
                        await self._guarded(self._kept[0])
                    except StoreUnavailable:
                        raise
                    except Exception as exc:  # never writable (not "not now"): dropped, not retried forever
                        logger.error(f"a kept write could not be made and is dropped: {type(exc).__name__}: {exc}")
                    self._kept.popleft()
        result = await self._guarded(work)
        self._unwritable = None
        return result

    async def _guarded(self, work: Callable[[], Awaitable[T]]) -> T:
        try:
            return await work()
        except _UNAVAILABLE as exc:
            self._unwritable = f"{type(exc).__name__}: {exc}"
            raise StoreUnavailable(f"the call store {self.location} cannot be written: {exc}") from None

    async def probe(self) -> bool:
        try:
            # A write that changes nothing: a read-only server refuses it.
            touch = "UPDATE _migrations SET applied_at = applied_at WHERE name = $1"
            await self._write(lambda: self.pool.execute(touch, MIGRATIONS[0].name))
        except StoreUnavailable:
            return False
        return True

    # --- call records and transcripts ----------------------------------------------------
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

        async def insert() -> None:
            try:
                if not webhook_url:
                    await self.pool.execute(_INSERT, *astuple(record))
                    return
                async with self.pool.acquire() as conn, conn.transaction():
                    await conn.execute(_INSERT, *astuple(record))
                    await conn.execute(
                        "INSERT INTO call_webhooks (call_id, url) VALUES ($1, $2)", record.id, webhook_url
                    )
                    await _enqueue(conn, None, record)
            except asyncpg.UniqueViolationError as exc:
                raise DuplicateCall(f"call id {record.id} is already taken") from exc

        await self._write(insert)
        return record

    async def _fetch_one(self, where: str, *args: Any) -> CallRecord | None:
        row = await self.pool.fetchrow(f"SELECT {_COLUMNS} FROM calls WHERE {where} LIMIT 1", *args)
        return CallRecord(*row) if row else None

    async def get(self, call_id: str) -> CallRecord | None:
        """The call with this id, if any."""
        return await self._fetch_one("id = $1", call_id)

    async def find_by_provider_call_id(self, provider: str, provider_call_id: str) -> CallRecord | None:
        """The newest call the provider knows by this id, if any."""
        where = "provider = $1 AND provider_call_id = $2 ORDER BY started_at DESC, id DESC"
        return await self._fetch_one(where, provider, provider_call_id)

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
        """Change a call under `apply_update`'s rules, atomically; None if there is no such call."""
        changes = dict(status=status, provider_call_id=provider_call_id, end_reason=end_reason)
        changes.update(from_number=from_number, to_number=to_number, answered_by=answered_by)
        return await self._write(self._change(call_id, changes))

    def _change(self, call_id: str, changes: dict[str, Any]) -> Callable[[], Awaitable[CallRecord | None]]:
        async def change() -> CallRecord | None:
            async with self.pool.acquire() as conn, conn.transaction():
                record = await _locked_call(conn, call_id)
                if record is None:
                    return None
                updated = apply_update(record, **changes)  # type: ignore[arg-type]
                if updated != record:
                    await _rewrite(conn, updated, record.status)
                return updated

        return change

    async def finish(self, call_id: str, status: CallStatus, end_reason: str) -> CallRecord | None:
        """End a call; the first end recorded wins and later ones change nothing.

        Kept while the store refuses writes, and written with the time it ended (None then)."""
        check_ending(status)
        changes: dict[str, Any] = dict(status=status, end_reason=end_reason, now=utcnow_iso())
        return await self._keep(self._change(call_id, changes))

    async def add_transcript(
        self, call_id: str, role: Role, text: str, at: str | None = None, latency_ms: int | None = None
    ) -> None:
        """Append an utterance to a call's transcript, committed at once."""
        stamp = transcript_stamp(role, at)

        async def insert() -> None:
            # One call's utterances go in one at a time, in the order handed over (asyncio.Lock
            # is FIFO): the pool would otherwise let a later line overtake an earlier one.
            lock, users = self._transcript_locks.get(call_id, (asyncio.Lock(), 0))
            self._transcript_locks[call_id] = (lock, users + 1)
            try:
                async with lock:
                    await self.pool.execute(
                        "INSERT INTO transcript (call_id, role, text, at, latency_ms) VALUES ($1, $2, $3, $4, $5)",
                        call_id,
                        role,
                        text,
                        stamp,
                        latency_ms,
                    )
            finally:
                lock, users = self._transcript_locks[call_id]
                if users == 1:
                    del self._transcript_locks[call_id]
                else:
                    self._transcript_locks[call_id] = (lock, users - 1)

        await self._keep(insert)

    async def set_recording(
        self, call_id: str, *, path: str | None = None, seconds: float | None = None, error: str | None = None
    ) -> None:
        """Note a call's recording (None leaves a field alone); its status is not touched."""
        fields = {"recording_path": path, "recording_s": seconds, "recording_error": error}
        given = {name: value for name, value in fields.items() if value is not None}
        if not given:
            return
        assignments = ", ".join(f"{name} = ${n + 2}" for n, name in enumerate(given))

        async def change() -> None:
            await self.pool.execute(f"UPDATE calls SET {assignments} WHERE id = $1", call_id, *given.values())

        await self._keep(change)

    async def unfinished_recordings(self) -> list[CallRecord]:
        """Ended calls whose recording was never closed (their server was killed)."""
        rows = await self.pool.fetch(
            f"""SELECT {_COLUMNS} FROM calls WHERE recording_path IS NOT NULL AND recording_s IS NULL
                AND NOT (status = ANY($1::text[])) ORDER BY id""",
            _LIVE,
        )
        return [CallRecord(*row) for row in rows]

    async def transcript(self, call_id: str) -> list[TranscriptEntry]:
        """A call's utterances in the order they were written."""
        rows = await self.pool.fetch(_TRANSCRIPT, call_id)
        return [TranscriptEntry(*row) for row in rows]

    async def claim_stream(
        self, call_id: str, *, provider: str, agent: str, instance: str | None, provider_call_id: str | None
    ) -> CallRecord | None:
        """Move a call waiting for its stream (queued/ringing) to in-progress, once, naming
        `instance` as its carrier; None if it is not this provider's and agent's, or not waiting."""

        async def claim() -> CallRecord | None:
            async with self.pool.acquire() as conn, conn.transaction():
                record = await _locked_call(conn, call_id)
                if record is None or record.provider != provider or record.agent != agent:
                    return None
                if record.status not in ("queued", "ringing"):
                    return None  # the token's single use: already streaming, or ended
                claimed = replace(
                    apply_update(record, status="in-progress"),
                    instance=instance,
                    provider_call_id=record.provider_call_id or provider_call_id,
                )
                await _rewrite(conn, claimed, record.status)
                return claimed

        return await self._write(claim)

    async def first_use(self, provider: str, nonce: str, keep_s: float) -> bool:
        """Note a signature nonce; False when it was already seen within `keep_s` (a replay)."""

        async def note() -> bool:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(f"DELETE FROM nonces WHERE seen_at < {_NOW} - $1", keep_s)
                status = await conn.execute(
                    f"INSERT INTO nonces (provider, nonce, seen_at) VALUES ($1, $2, {_NOW}) ON CONFLICT DO NOTHING",
                    provider,
                    nonce,
                )
                return status == "INSERT 0 1"

        return await self._write(note)

    async def transcript_summaries(self, call_ids: Sequence[str]) -> dict[str, TranscriptSummary]:
        """Turns so far and the last utterance of each call that has any (for the live table)."""
        rows = await self.pool.fetch(
            """SELECT t.call_id, s.turns, t.role, t.text FROM transcript t
               JOIN (SELECT call_id, COUNT(*) AS turns, MAX(id) AS last_id FROM transcript
                     WHERE call_id = ANY($1::text[]) GROUP BY call_id) s ON t.id = s.last_id""",
            list(call_ids),
        )
        return {row["call_id"]: TranscriptSummary(row["turns"], row["role"], row["text"]) for row in rows}

    # --- holders and their leases ----------------------------------------------------------
    # --- post-call webhooks: the outbox
    async def claim_deliveries(self, holder: str, limit: int, claim_s: float = CLAIM_S) -> list[Delivery]:
        # SKIP LOCKED: instances polling at once each take different rows, none waits.
        rows = await self.pool.fetch(
            f"""UPDATE webhook_outbox SET claimed_by = $1, claimed_until = {_NOW} + $3
                WHERE id IN (SELECT id FROM webhook_outbox WHERE {_DUE}
                             ORDER BY next_try_at LIMIT $2 FOR UPDATE SKIP LOCKED)
                RETURNING {DELIVERY_COLUMNS}""",
            holder,
            limit,
            claim_s,
        )
        return [Delivery(*row) for row in rows]

    async def record_attempt(
        self, delivery_id: str, holder: str, outcome: Outcome, error: str | None = None, retry_in_s: float = 0.0
    ) -> None:
        status = {"delivered": "delivered", "retry": "pending", "failed": "failed"}[outcome]
        await self._write(
            lambda: self.pool.execute(
                f"""UPDATE webhook_outbox SET status = $1, tries = tries + 1, last_error = $2,
                        next_try_at = {_NOW} + $3, delivered_at = CASE WHEN $1 = 'delivered' THEN {_NOW} END,
                        claimed_by = NULL, claimed_until = NULL
                    WHERE id = $4 AND claimed_by = $5""",
                status,
                error,
                retry_in_s,
                delivery_id,
                holder,
            )
        )

    async def deliveries(self, limit: int = 50) -> list[Delivery]:
        rows = await self.pool.fetch(
            f"SELECT {DELIVERY_COLUMNS} FROM webhook_outbox ORDER BY created_at DESC, id LIMIT $1", limit
        )
        return [Delivery(*row) for row in rows]

    async def retry_delivery(self, delivery_id: str) -> bool:
        done = await self.pool.execute(
            f"""UPDATE webhook_outbox SET status = 'pending', next_try_at = {_NOW}, retry_from = {_NOW},
                    claimed_by = NULL, claimed_until = NULL
                WHERE id = $1 AND status = 'failed'""",
            delivery_id,
        )
        return done.endswith(" 1")

    async def join(self, holder: Holder) -> None:
        """Register (or re-register) a holder with a fresh lease."""
        await self._write(
            lambda: self.pool.execute(
                f"""INSERT INTO holders (id, instance, host, pid, started_at, expires_at)
                    VALUES ($1, $2, $3, $4, {_NOW}, {_NOW} + $5)
                    ON CONFLICT (id) DO UPDATE SET instance = excluded.instance, host = excluded.host,
                        pid = excluded.pid, expires_at = excluded.expires_at""",
                holder.id,
                holder.instance,
                holder.host,
                holder.pid,
                LEASE_S,
            )
        )

    async def leave(self, holder: str) -> None:
        """A holder stops cleanly: its row and any slot it still holds go."""

        async def remove() -> None:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute("DELETE FROM holders WHERE id = $1", holder)
                await conn.execute("DELETE FROM slots WHERE holder = $1", holder)

        await self._write(remove)

    def lease_connection(self) -> LeaseConnection:
        """A new connection for `leases.LeaseKeeper`'s thread; opened on that thread's loop."""
        return PostgresLeaseConnection(self.url)

    async def holders(self) -> list[Holder]:
        """Every registered holder, with `expired` by the database's clock."""
        rows = await self.pool.fetch(
            f"SELECT id, instance, host, pid, expires_at <= {_NOW} AS expired FROM holders ORDER BY started_at, id"
        )
        return [Holder(*row) for row in rows]

    async def reap(self, holders: Collection[str], reason: str) -> int:
        """Holders known dead: delete them and their slots, and end their live calls `interrupted`."""
        ids = sorted(holders)

        async def reap() -> int:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute("DELETE FROM holders WHERE id = ANY($1::text[])", ids)
                await conn.execute("DELETE FROM slots WHERE holder = ANY($1::text[])", ids)
                return await _interrupt(conn, "instance = ANY($2::text[])", [ids], reason)

        return await self._write(reap) if ids else 0

    async def maintain(self, reason: str) -> int:
        """Reap expired holders, end the live calls no registered holder carries, drop old events."""

        async def sweep() -> int:
            async with self.pool.acquire() as conn, conn.transaction():
                # Holders before slots, in every transaction here: one lock order, no deadlock.
                await conn.execute(f"DELETE FROM holders WHERE expires_at <= {_NOW}")
                # Slots of holders reaped here, or left behind by one that vanished.
                await conn.execute("DELETE FROM slots WHERE NOT EXISTS (SELECT 1 FROM holders h WHERE h.id = holder)")
                carrier_gone = "instance IS NULL OR NOT EXISTS (SELECT 1 FROM holders h WHERE h.id = calls.instance)"
                ended = await _interrupt(conn, carrier_gone, [], reason)
                await conn.execute(f"DELETE FROM events WHERE created_at < {_NOW} - $1", EVENT_KEEP_S)
                return ended

        return await self._write(sweep)

    # --- slots: check and take in one statement -----------------------------------------------
    async def take_slot(
        self, provider: str, limit: int, holder: str, *, claim: str | None = None, reserve: str | None = None
    ) -> str | None:
        """A slot id, or None when the provider's live slots are at `limit`.

        `claim`: a call id whose dial reservation, if still there, is handed to `holder`
        (whatever the limit now); otherwise a new slot is taken if there is room.
        `reserve`: the new slot is a dial's reservation, named by that call id.
        Slots of expired holders do not count.
        """
        # One round trip (migration m004): the function queues on the provider's advisory lock,
        # so every instance's count is exact, and holds it only while it runs in the database.
        # Its COMMIT waits for the WAL flush (synchronous_commit stays as the server has it),
        # though the lock is held through that flush: with it off, a PostgreSQL crash may forget
        # the last takes while their calls go on uncounted, so new ones are admitted over the
        # limit, which this store exists to prevent. (Measured with it off: take p50 0.8 ->
        # 0.5 ms in the server, p99 unchanged.) The count reads slots_provider (EXPLAINed).
        return await self.pool.fetchval(_TAKE_SLOT, provider, limit, holder, claim, reserve, uuid.uuid4().hex)

    async def release_slot(self, slot: str) -> None:
        """Give a slot back; releasing one already gone does nothing."""
        await self._keep(lambda: self.pool.execute("DELETE FROM slots WHERE id = $1", slot))

    async def release_reservation(self, call_id: str) -> bool:
        """Give back the dial reservation for `call_id` if no stream claimed it; whether one was."""
        status = await self._keep(lambda: self.pool.execute("DELETE FROM slots WHERE reserved_for = $1", call_id))
        return status == "DELETE 1"

    async def slot_counts(self) -> dict[str, SlotCount]:
        """Live holders' slots per provider (providers with none are absent)."""
        rows = await self.pool.fetch(_SLOT_COUNTS)
        return {row["provider"]: SlotCount(row["held"], row["reserved"]) for row in rows}

    # --- events between processes --------------------------------------------------------------
    async def publish(
        self, kind: str, *, target: str | None = None, call_id: str | None = None, data: Mapping[str, Any] | None = None
    ) -> None:
        """Tell one holder (or, with no target, every process) something; listeners wake at once."""

        async def send() -> None:
            async with self.pool.acquire() as conn, conn.transaction():
                await _publish(conn, kind, target, call_id, data)

        await self._write(send)

    async def last_event(self) -> int:
        """The newest event's id (0 when none): where a new reader starts."""
        return await self.pool.fetchval("SELECT coalesce(max(id), 0) FROM events")

    async def events_after(self, after: int, holder: str) -> list[Event]:
        """Events newer than `after` meant for `holder` or for everyone, oldest first."""
        rows = await self.pool.fetch(
            "SELECT id, kind, target, call_id, data FROM events"
            " WHERE id > $1 AND (target IS NULL OR target = $2) ORDER BY id",
            after,
            holder,
        )
        return [Event(row["id"], row["kind"], row["target"], row["call_id"], json.loads(row["data"])) for row in rows]

    async def wait_for_events(self, within_s: float) -> None:
        """Return when an event may have arrived: at once on a NOTIFY, else after `within_s`.

        Meant for one reader per store: it reads `events_after` each time this returns.
        """
        self._check_open()
        lost = self._listener is None or self._listener.is_closed()
        if lost and self._connecting is None and time.monotonic() >= self._listen_again_at:
            # In the background: a wait never takes longer than `within_s`, even with no server.
            self._connecting = asyncio.create_task(self._listen())
        try:
            await asyncio.wait_for(self._notified.wait(), within_s)
        except TimeoutError:
            pass
        self._notified.clear()

    async def _listen(self) -> None:
        self._listener = None
        try:
            listener = await asyncpg.connect(self.url, timeout=LEASE_S / 2)
            try:
                await listener.add_listener(_CHANNEL, lambda *_: self._notified.set())
            except BaseException:
                listener.terminate()
                raise
        except Exception as exc:  # whatever stops it, the reader falls back on polling
            # Polling still works meanwhile; try again later, not on every poll.
            logger.warning(f"cannot listen for events on {self.location} ({exc}); polling instead")
            self._listen_again_at = time.monotonic() + LEASE_S
            return
        finally:
            self._connecting = None
        # A lost connection wakes the reader too; the next wait connects again.
        listener.add_termination_listener(lambda _: self._notified.set())
        self._listener = listener
        # Anything published while nobody listened is only found by reading: read now.
        self._notified.set()

    # --- settings and secrets every process shares ---------------------------------------------
    async def stored_settings(self) -> dict[str, Any]:
        """The settings layer kept in the store (what `config set` and the settings API wrote)."""
        rows = await self.pool.fetch("SELECT name, value FROM settings ORDER BY name")
        return {row["name"]: json.loads(row["value"]) for row in rows}

    async def change_settings(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply changes (None removes a name) and publish a `settings` event, in one transaction;
        the layer after the change."""
        changes = dict(changes)

        async def change() -> dict[str, Any]:
            async with self.pool.acquire() as conn, conn.transaction():
                for name, value in changes.items():
                    if value is None:
                        await conn.execute("DELETE FROM settings WHERE name = $1", name)
                        continue
                    await conn.execute(
                        f"""INSERT INTO settings (name, value, changed_at) VALUES ($1, $2, {_NOW})
                            ON CONFLICT (name) DO UPDATE
                            SET value = excluded.value, changed_at = excluded.changed_at""",
                        name,
                        json.dumps(value),
                    )
                await _publish(conn, "settings", None, None, {"changed": sorted(changes)})
                rows = await conn.fetch("SELECT name, value FROM settings ORDER BY name")
                return {row["name"]: json.loads(row["value"]) for row in rows}

        return await self._write(change)

    async def shared_secret(self, name: str, candidate: str) -> str:
        """The secret stored under `name`; `candidate` is stored first if there is none yet."""

        async def keep() -> str:
            async with self.pool.acquire() as conn:
                # ON CONFLICT waits for a racing insert to commit, so the SELECT sees the winner.
                await conn.execute(
                    "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING", name, candidate
                )
                return await conn.fetchval("SELECT value FROM secrets WHERE name = $1", name)

        return await self._write(keep)

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
        where: list[str] = []
        args: list[Any] = []
        filters = (("status", status), ("provider", provider), ("agent", agent), ("answered_by", answered_by))
        for name, value in filters:
            if value is not None:
                args.append(value)
                where.append(f"{name} = ${len(args)}")
        if active_only:
            args.append(sorted(TERMINAL_STATUSES))
            where.append(f"status <> ALL(${len(args)}::text[])")
        args.append(limit)
        sql = f"SELECT {_COLUMNS} FROM calls {'WHERE ' + ' AND '.join(where) if where else ''}"
        rows = await self.pool.fetch(f"{sql} ORDER BY started_at DESC, id DESC LIMIT ${len(args)}", *args)
        return [CallRecord(*row) for row in rows]
