"""The call store on both backends, for real: SQLite files and a real PostgreSQL server.

Every test taking `store` (or `location`) runs once per backend; the SQLite-only ones (file
mode, WAL, the dedicated thread) name `db_path`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from voicecli.store import (
    EVENT_KEEP_S,
    MIGRATIONS,
    TERMINAL_STATUSES,
    CallStore,
    DuplicateCall,
    Holder,
    SlotCount,
    SQLiteCallStore,
    TranscriptEntry,
    utcnow_iso,
)
from voicecli.store.postgres import PostgresCallStore

REPO = Path(__file__).resolve().parent.parent
API_KEYS = [
    "id",
    "provider",
    "agent",
    "direction",
    "from",
    "to",
    "provider_call_id",
    "status",
    "started_at",
    "ended_at",
    "duration_s",
    "end_reason",
    "instance",
    "recording_path",
    "recording_s",
    "recording_error",
    "answered_by",
    "voicemail",
]
BACKENDS = {"sqlite": SQLiteCallStore, "postgres": PostgresCallStore}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "nested" / "calls.db"  # parents do not exist yet


@pytest.fixture(params=sorted(BACKENDS))
def location(request: pytest.FixtureRequest, db_path: Path) -> str:
    """Where a store is: an SQLite file's path, or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return str(db_path)
    return request.getfixturevalue("database_url")


def _store(location: str) -> CallStore:
    if location.startswith(("postgresql://", "postgres://")):
        return PostgresCallStore(location)
    return SQLiteCallStore(Path(location))


async def _opened(location: str) -> CallStore:
    fresh = _store(location)
    await fresh.open()
    return fresh


@pytest.fixture
async def store(location: str) -> AsyncIterator[CallStore]:
    opened = await _opened(location)
    yield opened
    await opened.close()


@pytest.fixture
async def others(location: str) -> AsyncIterator[list[CallStore]]:
    """Two more store objects on the same database: other processes, as far as it can tell."""
    opened = [await _opened(location) for _ in range(2)]
    yield opened
    for other in opened:
        await other.close()


async def _sql(location: str, statement: str, *args: Any) -> None:
    """Write to the database behind the store's back (to age a lease without waiting for it)."""
    if location.startswith("postgresql://"):
        conn = await asyncpg.connect(location)
        try:
            await conn.execute(statement, *args)
        finally:
            await conn.close()
        return
    with sqlite3.connect(location) as db:
        db.execute(statement.replace("$1", "?").replace("$2", "?"), args)
    db.close()


async def _expire(location: str, holder: str) -> None:
    await _sql(location, "UPDATE holders SET expires_at = expires_at - 3600 WHERE id = $1", holder)


def _holder(name: str) -> Holder:
    instance = name.partition("/")[0]
    return Holder(id=name, instance=instance, host="test-host", pid=4242)


def _when(iso: str) -> datetime:
    moment = datetime.fromisoformat(iso)
    assert moment.utcoffset() is not None and moment.utcoffset().total_seconds() == 0, iso
    return moment


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_each_store_has_exactly_the_protocol_signatures(backend: str) -> None:
    cls = BACKENDS[backend]
    names = [n for n, v in vars(CallStore).items() if inspect.iscoroutinefunction(v)]
    assert {"open", "close", "create", "take_slot", "reap", "maintain", "wait_for_events"} <= set(names)
    assert "mark_interrupted" not in names
    for name in names:
        assert inspect.signature(getattr(cls, name)) == inspect.signature(getattr(CallStore, name)), name
        assert inspect.iscoroutinefunction(getattr(cls, name)), name
    lease = inspect.signature(cls.lease_connection)  # returns its own LeaseConnection class
    assert lease.parameters == inspect.signature(CallStore.lease_connection).parameters
    assert not inspect.iscoroutinefunction(cls.lease_connection)
    assert isinstance(vars(cls)["location"], property)
    assert TERMINAL_STATUSES == {
        "completed",
        "busy",
        "no-answer",
        "failed",
        "canceled",
        "interrupted",
        "no-stream",
        "transferred",
    }


# --- call records and transcripts ---------------------------------------------------------------


async def test_create_then_get_survives_a_reopen(store: CallStore, location: str) -> None:
    record = await store.create(
        provider="twilio",
        agent="demo",
        direction="inbound",
        from_number="+15550001111",
        to_number="+15550002222",
        provider_call_id="CA123",
    )
    assert record.id.startswith("call_") and record.status == "ringing"
    assert record.ended_at is None and record.duration_s is None and record.end_reason is None
    _when(record.started_at)
    assert await store.get(record.id) == record
    assert await store.get("call_missing") is None

    await store.close()
    again = await _opened(location)
    try:
        assert await again.get(record.id) == record
    finally:
        await again.close()


async def test_ids_are_unique_and_sort_in_creation_order(store: CallStore) -> None:
    ids = [(await store.create(provider="twilio", agent="a", direction="inbound")).id for _ in range(100)]
    assert ids == sorted(ids) and len(set(ids)) == 100
    given = await store.create(provider="vobiz", agent="a", direction="outbound", call_id="call_given")
    assert given.id == "call_given" and (await store.get("call_given")) == given
    with pytest.raises(DuplicateCall):
        await store.create(provider="vobiz", agent="a", direction="outbound", call_id="call_given")
    assert await store.get("call_given") == given


async def test_list_is_newest_first_with_filters(store: CallStore) -> None:
    specs = [
        ("twilio", "demo", "ringing"),
        ("exotel", "demo", "in-progress"),
        ("twilio", "sales", "completed"),
        ("vobiz", "sales", "queued"),
        ("twilio", "demo", "failed"),
    ]
    made = []
    for provider, agent, status in specs:
        made.append(await store.create(provider=provider, agent=agent, direction="outbound", status=status))
        await asyncio.sleep(0.002)  # distinct started_at, so the order is by time, not only by id
    newest_first = [r.id for r in reversed(made)]

    assert [r.id for r in await store.list()] == newest_first
    assert [r.id for r in await store.list(limit=2)] == newest_first[:2]
    assert [r.id for r in await store.list(provider="twilio")] == [made[4].id, made[2].id, made[0].id]
    assert [r.id for r in await store.list(agent="sales")] == [made[3].id, made[2].id]
    assert [r.id for r in await store.list(status="in-progress")] == [made[1].id]
    assert [r.id for r in await store.list(active_only=True)] == [made[3].id, made[1].id, made[0].id]
    assert [r.id for r in await store.list(provider="twilio", active_only=True)] == [made[0].id]
    assert [r.id for r in await store.list(provider="twilio", agent="demo", status="failed")] == [made[4].id]
    assert await store.list(status="busy") == []
    with pytest.raises(ValueError):
        await store.list(limit=0)


async def test_list_breaks_started_at_ties_by_id(store: CallStore) -> None:
    # Gathered, every create stamps started_at in one pass of the loop: many share a millisecond.
    made = await asyncio.gather(*(store.create(provider="twilio", agent="a", direction="inbound") for _ in range(30)))
    listed = await store.list(limit=30)
    assert [r.id for r in listed] == [r.id for r in reversed(made)]
    assert len({r.started_at for r in made}) < 30, "expected some calls in the same millisecond"


async def test_find_by_provider_call_id_is_scoped_to_the_provider(store: CallStore) -> None:
    twilio = await store.create(provider="twilio", agent="a", direction="inbound", provider_call_id="X1")
    exotel = await store.create(provider="exotel", agent="a", direction="inbound", provider_call_id="X1")
    assert await store.find_by_provider_call_id("twilio", "X1") == twilio
    assert await store.find_by_provider_call_id("exotel", "X1") == exotel
    assert await store.find_by_provider_call_id("vobiz", "X1") is None
    await asyncio.sleep(0.002)
    newer = await store.create(provider="twilio", agent="b", direction="inbound", provider_call_id="X1")
    assert await store.find_by_provider_call_id("twilio", "X1") == newer

    outbound = await store.create(provider="vobiz", agent="a", direction="outbound", status="queued")
    updated = await store.update(outbound.id, provider_call_id="V-9", status="ringing")
    assert updated is not None and updated.provider_call_id == "V-9" and updated.status == "ringing"
    assert await store.find_by_provider_call_id("vobiz", "V-9") == updated


async def test_transcript_in_order_and_the_api_json_shape(store: CallStore) -> None:
    record = await store.create(provider="twilio", agent="demo", direction="inbound", from_number="+1")
    await store.add_transcript(record.id, "agent", "Hello, how can I help?")
    await store.add_transcript(record.id, "caller", "What time is it?", at="2024-05-01T10:00:00+00:00")
    await store.add_transcript(record.id, "agent", "Noon.")
    other = await store.create(provider="twilio", agent="demo", direction="inbound")
    await store.add_transcript(other.id, "caller", "not this call")

    entries = await store.transcript(record.id)
    assert [(e.role, e.text) for e in entries] == [
        ("agent", "Hello, how can I help?"),
        ("caller", "What time is it?"),
        ("agent", "Noon."),
    ]
    assert entries[1].at == "2024-05-01T10:00:00.000Z"
    assert all(isinstance(e, TranscriptEntry) for e in entries)
    with pytest.raises(ValueError):
        await store.add_transcript(record.id, "robot", "hi")  # type: ignore[arg-type]

    summaries = await store.transcript_summaries([record.id, other.id, "call_silent"])
    assert set(summaries) == {record.id, other.id}
    assert (summaries[record.id].turns, summaries[record.id].last_role) == (3, "agent")
    assert summaries[record.id].last_text == "Noon." and summaries[other.id].turns == 1
    assert await store.transcript_summaries([]) == {}

    plain = record.to_json()
    assert list(plain) == API_KEYS
    assert plain["from"] == "+1" and plain["to"] is None and plain["id"] == record.id
    full = json.loads(json.dumps(record.to_json(entries)))
    assert list(full) == [*API_KEYS, "transcript"]
    assert full["transcript"][0] == {
        "role": "agent",
        "text": "Hello, how can I help?",
        "at": entries[0].at,
        "latency_ms": None,
    }
    assert all(list(item) == ["role", "text", "at", "latency_ms"] for item in full["transcript"])
    assert record.to_json([])["transcript"] == []


async def test_a_recording_and_reply_latency_are_kept_with_the_call(store: CallStore, location: str) -> None:
    live = await store.create(provider="twilio", agent="demo", direction="inbound", status="in-progress")
    killed = await store.create(provider="twilio", agent="demo", direction="inbound", status="in-progress")
    for record in (live, killed):
        await store.set_recording(record.id, path=f"/recordings/{record.id}.wav")
    await store.add_transcript(live.id, "agent", "Hello!")
    await store.add_transcript(live.id, "caller", "Prices?")
    await store.add_transcript(live.id, "agent", "Twenty dollars.", latency_ms=640)
    await store.finish(killed.id, "interrupted", "its server stopped unexpectedly")
    # Only an ended call whose recording was never closed needs repair; a live one is being written.
    assert [r.id for r in await store.unfinished_recordings()] == [killed.id]

    await store.set_recording(live.id, seconds=12.5, error="disk full")
    await store.finish(live.id, "completed", "caller hung up")
    await store.set_recording(killed.id, seconds=3.25)  # after the end too: the status is not touched
    reopened = await _opened(location)
    try:
        got = await reopened.get(live.id)
        assert got is not None and got.status == "completed"
        assert (got.recording_path, got.recording_s, got.recording_error) == (
            f"/recordings/{live.id}.wav",
            12.5,
            "disk full",
        )
        assert [e.latency_ms for e in await reopened.transcript(live.id)] == [None, None, 640]
        repaired = await reopened.get(killed.id)
        assert repaired is not None and repaired.recording_s == 3.25 and repaired.status == "interrupted"
        assert await reopened.unfinished_recordings() == []
    finally:
        await reopened.close()


async def test_who_answered_is_kept_filtered_on_and_filled_in_after_the_end(store: CallStore) -> None:
    dialled = await store.create(provider="twilio", agent="demo", direction="outbound", voicemail="message")
    other = await store.create(provider="twilio", agent="demo", direction="outbound", voicemail="hangup")
    assert dialled.voicemail == "message" and dialled.answered_by is None
    assert (await store.update(dialled.id, answered_by="unknown")).answered_by == "unknown"  # type: ignore[union-attr]
    assert (await store.update(dialled.id, answered_by="machine")).answered_by == "machine"  # type: ignore[union-attr]
    assert [c.id for c in await store.list(answered_by="machine")] == [dialled.id]
    await store.finish(other.id, "completed", "agent ended the call")
    # A provider's verdict that comes after the call ended still fills the record in, once.
    assert (await store.update(other.id, answered_by="human")).answered_by == "human"  # type: ignore[union-attr]
    assert (await store.update(other.id, answered_by="machine")).answered_by == "human"  # type: ignore[union-attr]
    again = await store.get(other.id)
    assert again is not None and (again.answered_by, again.voicemail, again.status) == ("human", "hangup", "completed")
    with pytest.raises(ValueError):
        await store.update(dialled.id, answered_by="robot")  # type: ignore[arg-type]


async def test_the_first_end_wins_and_ending_again_changes_nothing(store: CallStore) -> None:
    record = await store.create(provider="twilio", agent="a", direction="inbound", status="in-progress")
    done = await store.finish(record.id, "completed", "caller hung up")
    assert done is not None and done.status == "completed" and done.end_reason == "caller hung up"
    assert done.ended_at is not None

    await asyncio.sleep(0.01)
    assert await store.finish(record.id, "failed", "pipeline error") == done
    assert await store.update(record.id, status="in-progress", from_number="+9") == done
    assert await store.update(record.id, end_reason="another reason") == done
    assert await store.get(record.id) == done

    with pytest.raises(ValueError):
        await store.finish(record.id, "ringing", "not an end")  # type: ignore[arg-type]
    assert await store.finish("call_missing", "completed", "x") is None
    assert await store.update("call_missing", status="ringing") is None


async def test_an_end_without_a_reason_takes_the_first_reason_given_later(store: CallStore) -> None:
    record = await store.create(provider="twilio", agent="a", direction="outbound")
    busy = await store.update(record.id, status="busy")
    assert busy is not None and busy.status == "busy" and busy.end_reason is None and busy.ended_at
    filled = await store.update(record.id, status="completed", end_reason="line busy")
    assert filled is not None and filled.end_reason == "line busy"
    assert (filled.status, filled.ended_at, filled.duration_s) == ("busy", busy.ended_at, busy.duration_s)
    assert await store.finish(record.id, "failed", "later") == filled
    assert await store.get(record.id) == filled


async def test_a_live_status_only_moves_forward(store: CallStore) -> None:
    record = await store.create(provider="twilio", agent="a", direction="outbound", status="queued")
    live = await store.update(record.id, status="in-progress")
    assert live is not None and live.status == "in-progress"
    late = await store.update(record.id, status="ringing", to_number="+44")
    assert late is not None and late.status == "in-progress" and late.to_number == "+44"
    assert await store.get(record.id) == late


async def test_duration_is_end_minus_start(store: CallStore) -> None:
    record = await store.create(provider="twilio", agent="a", direction="inbound", status="in-progress")
    await asyncio.sleep(0.3)
    done = await store.finish(record.id, "completed", "agent ended the call")
    assert done is not None and done.ended_at is not None and done.duration_s is not None
    expected = (_when(done.ended_at) - _when(done.started_at)).total_seconds()
    assert done.duration_s == pytest.approx(expected, abs=0.0015)
    assert 0.29 <= done.duration_s < 5

    refused = await store.create(provider="twilio", agent="a", direction="outbound", status="failed")
    assert refused.ended_at == refused.started_at and refused.duration_s == 0.0


async def test_a_stream_is_claimed_once_by_its_provider_and_agent(store: CallStore) -> None:
    record = await store.create(provider="twilio", agent="demo", direction="outbound", status="queued")
    claim = dict(instance="inst/w0", provider_call_id="CA77")
    assert await store.claim_stream(record.id, provider="exotel", agent="demo", **claim) is None
    assert await store.claim_stream(record.id, provider="twilio", agent="sales", **claim) is None
    claimed = await store.claim_stream(record.id, provider="twilio", agent="demo", **claim)
    assert claimed is not None and (claimed.status, claimed.instance) == ("in-progress", "inst/w0")
    assert claimed.provider_call_id == "CA77" and await store.get(record.id) == claimed
    assert await store.claim_stream(record.id, provider="twilio", agent="demo", **claim) is None
    assert await store.claim_stream("call_missing", provider="twilio", agent="demo", **claim) is None

    known = await store.create(provider="twilio", agent="demo", direction="inbound", provider_call_id="CA1")
    kept = await store.claim_stream(known.id, provider="twilio", agent="demo", instance=None, provider_call_id="CA2")
    assert kept is not None and kept.provider_call_id == "CA1"  # the id the provider gave first stays


async def test_claiming_a_stream_races_to_one_winner(store: CallStore, others: list[CallStore]) -> None:
    record = await store.create(provider="twilio", agent="demo", direction="inbound")
    stores = [store, *others]
    claims = await asyncio.gather(
        *(
            stores[n % 3].claim_stream(
                record.id, provider="twilio", agent="demo", instance=f"i{n}", provider_call_id=None
            )
            for n in range(12)
        )
    )
    winners = [claim for claim in claims if claim is not None]
    assert len(winners) == 1 and await store.get(record.id) == winners[0]


async def test_a_nonce_is_used_once_within_its_keep(store: CallStore, others: list[CallStore]) -> None:
    assert await store.first_use("twilio", "n1", 60) is True
    assert await store.first_use("twilio", "n1", 60) is False
    assert await others[0].first_use("twilio", "n1", 60) is False  # seen by another process
    assert await store.first_use("exotel", "n1", 60) is True  # each provider's nonces apart
    racing = await asyncio.gather(*(s.first_use("vobiz", "n2", 60) for s in [store, *others] for _ in range(4)))
    assert sorted(racing) == [False] * 11 + [True]
    await asyncio.sleep(0.05)
    assert await store.first_use("twilio", "n1", 0.01) is True  # older than its keep: no replay


async def test_racing_ends_leave_exactly_one_winner(store: CallStore) -> None:
    record = await store.create(provider="twilio", agent="a", direction="inbound", status="in-progress")
    statuses: list[Any] = ["completed", "failed", "busy", "canceled", "interrupted", "no-answer"] * 5
    results = await asyncio.gather(*(store.finish(record.id, s, f"reason {i}") for i, s in enumerate(statuses)))
    assert len(set(results)) == 1
    winner = results[0]
    assert winner is not None and await store.get(record.id) == winner
    if isinstance(store, SQLiteCallStore):  # one thread, first in first out: the first call wins
        assert (winner.status, winner.end_reason) == ("completed", "reason 0")
    else:  # a pool of connections: whichever committed first, and only that one
        assert (winner.status, winner.end_reason) in {(s, f"reason {i}") for i, s in enumerate(statuses)}


async def test_racing_ends_from_separate_stores_leave_one_winner(store: CallStore, others: list[CallStore]) -> None:
    record = await store.create(provider="twilio", agent="a", direction="inbound", status="in-progress")
    stores = [store, *others]
    results = await asyncio.gather(*(stores[i % 3].finish(record.id, "failed", f"reason {i}") for i in range(15)))
    final = await store.get(record.id)
    assert final is not None and final.end_reason is not None and all(result == final for result in results)


async def test_concurrent_transcript_writes_all_persist_in_order(store: CallStore, location: str) -> None:
    calls = [await store.create(provider="twilio", agent="a", direction="inbound") for _ in range(4)]
    writes = [(calls[n % 4].id, "caller" if n % 2 else "agent", f"line {n}") for n in range(200)]
    await asyncio.gather(*(store.add_transcript(call_id, role, text) for call_id, role, text in writes))
    await store.close()

    restarted = await _opened(location)
    try:
        for call in calls:
            expected = [text for call_id, _, text in writes if call_id == call.id]
            assert [e.text for e in await restarted.transcript(call.id)] == expected
            assert len(expected) == 50
    finally:
        await restarted.close()


async def test_a_write_handed_over_survives_the_caller_being_cancelled(store: CallStore, location: str) -> None:
    record = await store.create(provider="twilio", agent="a", direction="inbound")
    tasks = [asyncio.create_task(store.add_transcript(record.id, "agent", f"{n}")) for n in range(300)]
    await asyncio.sleep(0)  # every task starts and hands its write to the store
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(task.cancelled() for task in tasks) > 0  # the callers really were cancelled
    await store.close()  # after the writes handed over, which all happen
    restarted = await _opened(location)
    try:
        assert [e.text for e in await restarted.transcript(record.id)] == [f"{n}" for n in range(300)]
    finally:
        await restarted.close()


async def test_using_a_closed_store_is_an_error(location: str) -> None:
    store = _store(location)
    with pytest.raises(RuntimeError, match="not open"):
        await store.get("call_x")
    await store.open()
    await store.open()  # already open: nothing to do
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(RuntimeError, match="not open"):
        await store.create(provider="twilio", agent="a", direction="inbound")
    with pytest.raises(RuntimeError, match="not open"):
        await store.take_slot("twilio", 1, "h")


KILLED_WRITER = """
import asyncio, os, signal, sys
from pathlib import Path
from voicecli.store import SQLiteCallStore
from voicecli.store.postgres import PostgresCallStore

async def main():
    where = sys.argv[1]
    store = PostgresCallStore(where) if where.startswith("postgresql://") else SQLiteCallStore(Path(where))
    await store.open()
    record = await store.create(provider="twilio", agent="demo", direction="inbound", status="in-progress")
    await store.add_transcript(record.id, "agent", "hello")
    await store.add_transcript(record.id, "caller", "hi")
    print(record.id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


async def test_a_killed_process_loses_nothing_it_wrote(location: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED_WRITER, location, cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == -9
    call_id = out.decode().strip()

    restarted = await _opened(location)
    try:
        record = await restarted.get(call_id)
        assert record is not None and record.status == "in-progress"
        assert [(e.role, e.text) for e in await restarted.transcript(call_id)] == [
            ("agent", "hello"),
            ("caller", "hi"),
        ]
        assert await restarted.maintain("killed") == 1  # no holder carries it
        after = await restarted.get(call_id)
        assert after is not None and (after.status, after.end_reason) == ("interrupted", "killed")
    finally:
        await restarted.close()


# --- holders, leases, reaping --------------------------------------------------------------------


async def _calls(store: CallStore, specs: list[tuple[str | None, str]]) -> list[Any]:
    made = []
    for instance, status in specs:
        record = await store.create(provider="twilio", agent="a", direction="inbound", instance=instance)
        if status in TERMINAL_STATUSES:
            record = await store.finish(record.id, status, "ended before")  # type: ignore[arg-type]
        elif status != "ringing":
            record = await store.update(record.id, status=status)  # type: ignore[arg-type]
        made.append(record)
    return made


async def test_reap_ends_exactly_the_named_holders_live_calls(store: CallStore) -> None:
    for name in ("i1/w0", "i1/w1", "i2/w0"):
        await store.join(_holder(name))
    dead_ringing, dead_live, dead_ended, sibling, other, unowned = await _calls(
        store,
        [
            ("i1/w0", "ringing"),
            ("i1/w0", "in-progress"),
            ("i1/w0", "completed"),
            ("i1/w1", "in-progress"),
            ("i2/w0", "queued"),
            (None, "ringing"),
        ],
    )
    for name in ("i1/w0", "i1/w0", "i1/w1"):
        assert await store.take_slot("twilio", 10, name) is not None

    assert await store.reap(["i1/w0"], "worker exited") == 2
    for before in (dead_ringing, dead_live):
        after = await store.get(before.id)
        assert after is not None and (after.status, after.end_reason) == ("interrupted", "worker exited")
        assert after.ended_at is not None and after.duration_s is not None
        assert _when(after.ended_at) >= _when(after.started_at)
    for untouched in (dead_ended, sibling, other, unowned):
        assert await store.get(untouched.id) == untouched
    assert [h.id for h in await store.holders()] == ["i1/w1", "i2/w0"]
    assert await store.slot_counts() == {"twilio": SlotCount(held=1, reserved=0)}
    assert await store.reap(["i1/w0"], "again") == 0
    assert await store.reap([], "nobody") == 0


async def test_an_expired_holders_slots_stop_counting_and_maintain_interrupts_its_calls(
    store: CallStore, location: str
) -> None:
    await store.join(_holder("old/w0"))
    await store.join(_holder("new/w0"))
    assert await store.take_slot("twilio", 2, "old/w0") is not None
    assert await store.take_slot("twilio", 2, "old/w0") is not None
    assert await store.take_slot("twilio", 2, "new/w0") is None  # at the limit
    old_live, old_ended, new_live, unowned, ghost = await _calls(
        store,
        [
            ("old/w0", "in-progress"),
            ("old/w0", "completed"),
            ("new/w0", "in-progress"),
            (None, "ringing"),
            ("gone/w0", "queued"),
        ],
    )

    await _expire(location, "old/w0")
    assert {h.id: h.expired for h in await store.holders()} == {"old/w0": True, "new/w0": False}
    assert await store.slot_counts() == {}  # the dead holder's slots no longer count
    assert await store.take_slot("twilio", 2, "new/w0") is not None
    assert await store.slot_counts() == {"twilio": SlotCount(held=1)}

    assert await store.maintain("server lost") == 3
    for before in (old_live, unowned, ghost):
        after = await store.get(before.id)
        assert after is not None and (after.status, after.end_reason) == ("interrupted", "server lost")
        assert after.ended_at is not None and after.duration_s is not None
    assert await store.get(old_ended.id) == old_ended
    assert await store.get(new_live.id) == new_live
    assert [h.id for h in await store.holders()] == ["new/w0"]
    assert await store.slot_counts() == {"twilio": SlotCount(held=1)}
    assert await store.maintain("again") == 0


async def test_maintain_drops_old_events(store: CallStore, location: str) -> None:
    await store.publish("old", target=None)
    await store.publish("new", target=None)
    await _sql(location, "UPDATE events SET created_at = created_at - $1 WHERE kind = 'old'", EVENT_KEEP_S + 60)
    assert await store.maintain("sweep") == 0
    assert [e.kind for e in await store.events_after(0, "anyone")] == ["new"]


async def test_joining_again_renews_and_leaving_frees_the_slots(store: CallStore, location: str) -> None:
    await store.join(_holder("i1/w0"))
    await _expire(location, "i1/w0")
    await store.join(_holder("i1/w0"))  # re-registered: a fresh lease
    [holder] = await store.holders()
    assert holder == _holder("i1/w0")
    slot = await store.take_slot("twilio", 5, "i1/w0")
    assert slot is not None and await store.slot_counts() == {"twilio": SlotCount(held=1)}
    await store.leave("i1/w0")
    assert await store.holders() == [] and await store.slot_counts() == {}
    await store.release_slot(slot)  # already gone: nothing happens


async def test_a_lease_is_renewed_from_another_thread_on_its_own_loop(store: CallStore, location: str) -> None:
    await store.join(_holder("i1/w0"))
    await _expire(location, "i1/w0")
    lease = store.lease_connection()
    results: list[Any] = []

    def keeper() -> None:
        async def renew() -> None:
            results.append(await lease.renew("i1/w0"))
            results.append(await lease.renew("i9/w9"))
            results.append(threading.current_thread().name)
            await lease.close()

        asyncio.run(renew())

    thread = threading.Thread(target=keeper, name="lease-keeper")
    thread.start()
    await asyncio.to_thread(thread.join, 30)
    assert results == [True, False, "lease-keeper"]
    assert [h.expired for h in await store.holders()] == [False]


async def test_a_postgres_lease_renewal_that_cannot_connect_raises(database_url: str) -> None:
    store = PostgresCallStore(urlsplit(database_url)._replace(path="/no_such_db").geturl())
    lease = store.lease_connection()
    with pytest.raises(asyncpg.PostgresError):
        await lease.renew("i1/w0")
    await lease.close()


# --- slots ----------------------------------------------------------------------------------------


async def test_thirty_racing_takers_on_three_stores_get_exactly_the_limit(
    store: CallStore, others: list[CallStore]
) -> None:
    stores = [store, *others]
    for n, each in enumerate(stores):
        await each.join(_holder(f"i{n}/w0"))
    taken = await asyncio.gather(*(stores[n % 3].take_slot("twilio", 10, f"i{n % 3}/w0") for n in range(30)))
    slots = [slot for slot in taken if slot is not None]
    assert len(slots) == 10 and len(set(slots)) == 10
    assert await others[1].slot_counts() == {"twilio": SlotCount(held=10)}
    assert await store.take_slot("exotel", 10, "i0/w0") is not None  # each provider has its own limit
    await others[0].release_slot(slots[0])
    assert await store.take_slot("twilio", 10, "i0/w0") is not None
    assert await store.take_slot("twilio", 10, "i0/w0") is None


async def test_a_reservation_is_claimed_once_then_counts_as_held(store: CallStore) -> None:
    for name in ("dialer/w0", "streamer/w0", "third/w0"):
        await store.join(_holder(name))
    reserved = await store.take_slot("vobiz", 1, "dialer/w0", reserve="call_a")
    assert reserved is not None
    assert await store.slot_counts() == {"vobiz": SlotCount(held=1, reserved=1)}
    assert await store.take_slot("vobiz", 1, "streamer/w0") is None  # the reservation fills the limit

    assert await store.take_slot("vobiz", 1, "streamer/w0", claim="call_a") == reserved
    assert await store.slot_counts() == {"vobiz": SlotCount(held=1, reserved=0)}
    assert await store.take_slot("vobiz", 1, "third/w0", claim="call_a") is None  # claimed once only
    assert await store.release_reservation("call_a") is False  # a claimed slot is no reservation
    await store.leave("dialer/w0")  # the dialer going does not free the streamer's slot
    assert await store.slot_counts() == {"vobiz": SlotCount(held=1, reserved=0)}
    await store.release_slot(reserved)
    assert await store.slot_counts() == {}

    again = await store.take_slot("vobiz", 1, "third/w0", reserve="call_b")
    assert again is not None and await store.release_reservation("call_b") is True
    assert await store.slot_counts() == {}
    assert await store.take_slot("vobiz", 1, "third/w0", claim="call_b") is not None  # none left: a new slot


async def test_a_claim_is_honoured_over_the_limit(store: CallStore) -> None:
    await store.join(_holder("i1/w0"))
    reserved = await store.take_slot("twilio", 2, "i1/w0", reserve="call_r")
    assert await store.take_slot("twilio", 2, "i1/w0") is not None
    assert await store.take_slot("twilio", 1, "i1/w0", claim="call_r") == reserved  # limit lowered since
    assert await store.slot_counts() == {"twilio": SlotCount(held=2)}


# --- events ---------------------------------------------------------------------------------------


async def test_events_reach_their_target_and_broadcasts_reach_everyone(
    store: CallStore, others: list[CallStore]
) -> None:
    start = await store.last_event()
    await store.publish("hangup", target="i1/w0", call_id="call_1", data={"reason": "api", "n": [1, 2]})
    await others[0].publish("settings")
    await others[1].publish("hangup", target="i2/w0", call_id="call_2")

    mine = await others[1].events_after(start, "i1/w0")
    assert [(e.kind, e.target, e.call_id) for e in mine] == [("hangup", "i1/w0", "call_1"), ("settings", None, None)]
    assert mine[0].data == {"reason": "api", "n": [1, 2]} and mine[1].data == {}
    assert [e.kind for e in await store.events_after(start, "i2/w0")] == ["settings", "hangup"]
    assert [e.kind for e in await store.events_after(start, "i3/w0")] == ["settings"]
    assert [e.kind for e in await store.events_after(mine[0].id, "i1/w0")] == ["settings"]
    every = await store.events_after(start, "i2/w0")
    assert mine[0].id < every[0].id < every[1].id == await others[0].last_event()


async def test_waiting_for_events_without_any_takes_about_the_wait(store: CallStore) -> None:
    await store.wait_for_events(0.05)  # the first wait may return at once (PostgreSQL connects)
    began = time.monotonic()
    await store.wait_for_events(0.3)
    assert 0.25 <= time.monotonic() - began < 2


async def _waiting(store: CallStore, within_s: float) -> asyncio.Task[None]:
    await store.wait_for_events(5)  # returns once listening (connecting wakes it), wake-up spent
    waiting = asyncio.create_task(store.wait_for_events(within_s))
    await asyncio.sleep(0.2)
    assert not waiting.done(), "returned with nothing published"
    return waiting


async def test_a_postgres_notify_wakes_a_waiter_in_another_store(database_url: str) -> None:
    waiter, publisher = await _opened(database_url), await _opened(database_url)
    try:
        waiting = await _waiting(waiter, 30)
        began = time.monotonic()
        await publisher.publish("hangup", target="i1/w0")
        await asyncio.wait_for(waiting, 5)
        assert time.monotonic() - began < 2
        assert [e.kind for e in await waiter.events_after(0, "i1/w0")] == ["hangup"]
    finally:
        await waiter.close()
        await publisher.close()


async def test_a_lost_postgres_listener_reconnects_on_the_next_wait(database_url: str) -> None:
    waiter, publisher = await _opened(database_url), await _opened(database_url)
    try:
        waiting = await _waiting(waiter, 30)
        await _sql(
            database_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        await asyncio.wait_for(waiting, 5)  # the loss itself wakes the reader, to read at once
        waiting = await _waiting(waiter, 30)
        await publisher.publish("settings")
        await asyncio.wait_for(waiting, 5)
    finally:
        await waiter.close()
        await publisher.close()


# --- settings and secrets ---------------------------------------------------------------------------


async def test_settings_round_trip_delete_and_publish_an_event(store: CallStore, others: list[CallStore]) -> None:
    assert await store.stored_settings() == {}
    start = await store.last_event()
    values = {"max_calls": 5, "greeting": "hi", "record": False, "voices": {"en": ["a", "b"]}}
    assert await store.change_settings(values) == values
    assert await others[0].stored_settings() == values
    after = await others[1].change_settings({"greeting": None, "max_calls": 7, "absent": None})
    assert after == {"max_calls": 7, "record": False, "voices": {"en": ["a", "b"]}}
    assert await store.stored_settings() == after

    events = await others[0].events_after(start, "i1/w0")
    assert [(e.kind, e.target) for e in events] == [("settings", None), ("settings", None)]


async def test_a_shared_secret_keeps_the_first_value(store: CallStore, others: list[CallStore]) -> None:
    stores = [store, *others]
    kept = await asyncio.gather(*(stores[n % 3].shared_secret("stream", f"candidate-{n}") for n in range(12)))
    assert len(set(kept)) == 1 and kept[0].startswith("candidate-")
    assert await others[1].shared_secret("stream", "later") == kept[0]
    assert await store.shared_secret("api", "other") == "other"  # each name its own


# --- PostgreSQL only ---------------------------------------------------------------------------------


def test_a_postgres_location_never_shows_the_password() -> None:
    assert PostgresCallStore("postgresql://app:s3cret@db.example:5432/voice").location == (
        "postgresql://app:****@db.example:5432/voice"
    )
    assert "hunter2" not in PostgresCallStore("postgres://app@db/voice?password=hunter2&sslmode=require").location
    assert PostgresCallStore("postgres://db/voice").location == "postgres://db/voice"
    with pytest.raises(ValueError, match="PostgreSQL"):
        PostgresCallStore("mysql://app:pw@db/voice")


async def test_postgres_migrations_run_once_when_instances_start_together(database_url: str) -> None:
    stores = [PostgresCallStore(database_url) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        record = await stores[0].create(provider="twilio", agent="a", direction="inbound")
        assert await stores[3].get(record.id) == record
    finally:
        for each in stores:
            await each.close()
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT name, applied_at FROM _migrations ORDER BY applied_at, name")
        plan = "\n".join(
            row[0] for row in await conn.fetch("EXPLAIN SELECT * FROM calls WHERE provider = 'x' AND instance = 'y'")
        )
    finally:
        await conn.close()
    assert [row["name"] for row in rows] == [m.name for m in MIGRATIONS]
    assert "calls" in plan
    again = await _opened(database_url)
    await again.close()
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetch("SELECT name, applied_at FROM _migrations ORDER BY applied_at, name") == rows
    finally:
        await conn.close()


# --- SQLite only ------------------------------------------------------------------------------------


def _schema(path: Path) -> tuple[list[tuple[str, str]], str, str]:
    with sqlite3.connect(path) as db:
        migrations = db.execute("SELECT name, applied_at FROM _migrations ORDER BY rowid").fetchall()
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        plan = " ".join(
            str(row[-1])
            for row in db.execute(
                "EXPLAIN QUERY PLAN SELECT * FROM calls WHERE provider = ? AND provider_call_id = ?",
                ("twilio", "CA1"),
            )
        )
    db.close()
    return migrations, mode, plan


async def test_sqlite_migrations_are_recorded_and_run_once(db_path: Path) -> None:
    first = await _opened(str(db_path))
    record = await first.create(provider="twilio", agent="a", direction="inbound")
    await first.close()
    migrations, mode, plan = _schema(db_path)
    assert [name for name, _ in migrations] == [m.name for m in MIGRATIONS]
    assert mode == "wal"
    assert "calls_provider_call_id" in plan

    for _ in range(2):
        again = await _opened(str(db_path))
        assert await again.get(record.id) == record
        await again.close()
    assert _schema(db_path)[0] == migrations  # same rows, same applied_at


async def test_the_sqlite_file_is_private(db_path: Path) -> None:
    store = await _opened(str(db_path))
    await store.create(provider="twilio", agent="a", direction="inbound")
    try:
        files = sorted(db_path.parent.glob("calls.db*"))  # the -wal and -shm files take its mode
        assert db_path in files and len(files) == 3, files
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    finally:
        await store.close()


async def test_sqlite_never_runs_on_the_event_loop_thread(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trace every statement SQLite executes and note the thread it ran on."""
    seen: list[tuple[int, str]] = []
    real_connect = sqlite3.connect

    def traced_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        seen.append((threading.get_ident(), threading.current_thread().name))
        db = real_connect(*args, **kwargs)
        db.set_trace_callback(lambda _sql: seen.append((threading.get_ident(), threading.current_thread().name)))
        return db

    monkeypatch.setattr(sqlite3, "connect", traced_connect)
    loop_thread = threading.get_ident()
    store = SQLiteCallStore(db_path)
    await store.open()
    work: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.get("call_x"),
        lambda: store.find_by_provider_call_id("twilio", "nope"),
        lambda: store.list(active_only=True),
        lambda: store.join(_holder("i1/w0")),
        lambda: store.take_slot("twilio", 3, "i1/w0"),
        lambda: store.slot_counts(),
        lambda: store.publish("settings"),
        lambda: store.events_after(0, "i1/w0"),
        lambda: store.change_settings({"max_calls": 3}),
        lambda: store.shared_secret("stream", "x"),
        lambda: store.maintain("sweep"),
    ]
    record = await store.create(provider="twilio", agent="a", direction="inbound")
    await store.update(record.id, status="in-progress")
    await store.add_transcript(record.id, "caller", "hi")
    await store.transcript(record.id)
    for job in work:
        await job()
    await store.close()

    assert len(seen) > 10, "the trace saw no statements: the test would prove nothing"
    threads = set(seen)
    assert len(threads) == 1, threads  # one dedicated thread for all reads and writes
    [(ident, name)] = threads
    assert ident != loop_thread and name.startswith("voicecli-store")


def test_utcnow_iso_is_utc_with_milliseconds() -> None:
    stamp = utcnow_iso()
    assert stamp.endswith("Z") and len(stamp) == len("2024-01-01T00:00:00.000Z")
    _when(stamp)


async def test_a_calls_webhook_events_are_written_with_its_changes_exactly_once(
    store: CallStore, others: list[CallStore]
) -> None:
    url = "https://hooks.example.com/voicecli"
    quiet = await store.create(provider="twilio", agent="demo", direction="inbound")  # no webhook
    call = await store.create(provider="twilio", agent="demo", direction="inbound", webhook_url=url)
    await store.claim_stream(call.id, provider="twilio", agent="demo", instance=None, provider_call_id="CA1")
    await store.add_transcript(call.id, "agent", "Hello!")
    await store.set_recording(call.id, path="/var/voicecli/rec.wav", seconds=4.5)  # no event of its own
    await store.finish(call.id, "completed", "caller hung up")
    await store.finish(call.id, "failed", "a second end changes nothing")
    await store.finish(quiet.id, "completed", "no webhook, no event")
    dialled = await store.create(provider="vobiz", agent="demo", direction="outbound", status="queued", webhook_url=url)
    await store.finish(dialled.id, "no-answer", "nobody answered")  # ended without starting

    found = await store.deliveries()
    assert sorted((d.call_id, d.event) for d in found) == sorted(
        [(call.id, "call.ended"), (call.id, "call.started"), (dialled.id, "call.ended")]
    )
    ended = json.loads(next(d.body for d in found if d.call_id == call.id and d.event == "call.ended"))
    assert ended["call"]["status"] == "completed" and ended["call"]["transcript"][0]["text"] == "Hello!"
    # The recording's length is the receiver's; where it lies on the server's disk is not.
    assert ended["call"]["recording_s"] == 4.5 and "recording_path" not in ended["call"]
    assert {d.url for d in found} == {url} and all(d.status == "pending" and d.tries == 0 for d in found)

    # Each due delivery goes to one claimer at a time, whichever process asks.
    await store.join(_holder("a"))
    await others[0].join(_holder("b"))
    first, second = await asyncio.gather(store.claim_deliveries("a", 10), others[0].claim_deliveries("b", 10))
    assert sorted(d.id for d in first + second) == sorted(d.id for d in found)
    mine = first[0] if first else second[0]
    owner, other = ("a", "b") if first else ("b", "a")
    await store.record_attempt(mine.id, other, "delivered")  # not its claim: nothing changes
    await store.record_attempt(mine.id, owner, "failed", "HTTP 400")
    [row] = [d for d in await store.deliveries() if d.id == mine.id]
    assert (row.status, row.tries, row.last_error) == ("failed", 1, "HTTP 400")
    assert await store.retry_delivery(mine.id) and not await store.retry_delivery(mine.id)
    assert [d.id for d in await store.claim_deliveries("a", 10)] == [mine.id]  # due again, at once
