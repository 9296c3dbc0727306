"""The call store on real SQLite files: records are never lost, and the event loop never blocks on them."""

from __future__ import annotations

import asyncio
import inspect
import json
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from voicecli.store import (
    MIGRATIONS,
    TERMINAL_STATUSES,
    CallStore,
    SQLiteCallStore,
    TranscriptEntry,
    utcnow_iso,
)

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
]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "nested" / "calls.db"  # parents do not exist yet


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteCallStore]:
    opened = SQLiteCallStore(db_path)
    await opened.open()
    yield opened
    await opened.close()


async def _reopened(path: Path) -> SQLiteCallStore:
    fresh = SQLiteCallStore(path)
    await fresh.open()
    return fresh


def _when(iso: str) -> datetime:
    moment = datetime.fromisoformat(iso)
    assert moment.utcoffset() is not None and moment.utcoffset().total_seconds() == 0, iso
    return moment


def test_sqlite_store_has_exactly_the_protocol_signatures() -> None:
    names = [n for n, v in vars(CallStore).items() if inspect.iscoroutinefunction(v)]
    assert {"open", "close", "create", "update", "finish", "list", "mark_interrupted"} <= set(names)
    for name in names:
        assert inspect.signature(getattr(SQLiteCallStore, name)) == inspect.signature(getattr(CallStore, name)), name
    assert TERMINAL_STATUSES == {"completed", "busy", "no-answer", "failed", "canceled", "interrupted", "no-stream"}


async def test_create_then_get_survives_a_reopen(store: SQLiteCallStore, db_path: Path) -> None:
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
    again = await _reopened(db_path)
    try:
        assert await again.get(record.id) == record
    finally:
        await again.close()


async def test_ids_are_unique_and_sort_in_creation_order(store: SQLiteCallStore) -> None:
    ids = [(await store.create(provider="twilio", agent="a", direction="inbound")).id for _ in range(100)]
    assert ids == sorted(ids) and len(set(ids)) == 100
    given = await store.create(provider="vobiz", agent="a", direction="outbound", call_id="call_given")
    assert given.id == "call_given" and (await store.get("call_given")) == given
    with pytest.raises(sqlite3.IntegrityError):
        await store.create(provider="vobiz", agent="a", direction="outbound", call_id="call_given")


async def test_list_is_newest_first_with_filters(store: SQLiteCallStore) -> None:
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
    assert await store.list(status="busy") == []
    with pytest.raises(ValueError):
        await store.list(limit=0)


async def test_list_breaks_started_at_ties_by_id(store: SQLiteCallStore) -> None:
    # Gathered, every create stamps started_at in one pass of the loop: many share a millisecond.
    made = await asyncio.gather(*(store.create(provider="twilio", agent="a", direction="inbound") for _ in range(30)))
    listed = await store.list(limit=30)
    assert [r.id for r in listed] == [r.id for r in reversed(made)]
    assert len({r.started_at for r in made}) < 30, "expected some calls in the same millisecond"


async def test_find_by_provider_call_id_is_scoped_to_the_provider(store: SQLiteCallStore) -> None:
    twilio = await store.create(provider="twilio", agent="a", direction="inbound", provider_call_id="X1")
    exotel = await store.create(provider="exotel", agent="a", direction="inbound", provider_call_id="X1")
    assert await store.find_by_provider_call_id("twilio", "X1") == twilio
    assert await store.find_by_provider_call_id("exotel", "X1") == exotel
    assert await store.find_by_provider_call_id("vobiz", "X1") is None

    outbound = await store.create(provider="vobiz", agent="a", direction="outbound", status="queued")
    updated = await store.update(outbound.id, provider_call_id="V-9", status="ringing")
    assert updated is not None and updated.provider_call_id == "V-9" and updated.status == "ringing"
    assert await store.find_by_provider_call_id("vobiz", "V-9") == updated


async def test_transcript_in_order_and_the_api_json_shape(store: SQLiteCallStore) -> None:
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

    plain = record.to_json()
    assert list(plain) == API_KEYS
    assert plain["from"] == "+1" and plain["to"] is None and plain["id"] == record.id
    full = json.loads(json.dumps(record.to_json(entries)))
    assert list(full) == [*API_KEYS, "transcript"]
    assert full["transcript"][0] == {"role": "agent", "text": "Hello, how can I help?", "at": entries[0].at}
    assert all(list(item) == ["role", "text", "at"] for item in full["transcript"])
    assert record.to_json([])["transcript"] == []


async def test_the_first_end_wins_and_ending_again_changes_nothing(store: SQLiteCallStore) -> None:
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


async def test_an_end_without_a_reason_takes_the_first_reason_given_later(store: SQLiteCallStore) -> None:
    record = await store.create(provider="twilio", agent="a", direction="outbound")
    busy = await store.update(record.id, status="busy")
    assert busy is not None and busy.status == "busy" and busy.end_reason is None and busy.ended_at
    filled = await store.update(record.id, status="completed", end_reason="line busy")
    assert filled is not None and filled.end_reason == "line busy"
    assert (filled.status, filled.ended_at, filled.duration_s) == ("busy", busy.ended_at, busy.duration_s)
    assert await store.finish(record.id, "failed", "later") == filled


async def test_a_live_status_only_moves_forward(store: SQLiteCallStore) -> None:
    record = await store.create(provider="twilio", agent="a", direction="outbound", status="queued")
    live = await store.update(record.id, status="in-progress")
    assert live is not None and live.status == "in-progress"
    late = await store.update(record.id, status="ringing", to_number="+44")
    assert late is not None and late.status == "in-progress" and late.to_number == "+44"


async def test_duration_is_end_minus_start(store: SQLiteCallStore) -> None:
    record = await store.create(provider="twilio", agent="a", direction="inbound", status="in-progress")
    await asyncio.sleep(0.3)
    done = await store.finish(record.id, "completed", "agent ended the call")
    assert done is not None and done.ended_at is not None and done.duration_s is not None
    expected = (_when(done.ended_at) - _when(done.started_at)).total_seconds()
    assert done.duration_s == pytest.approx(expected, abs=0.0015)
    assert 0.29 <= done.duration_s < 5

    refused = await store.create(provider="twilio", agent="a", direction="outbound", status="failed")
    assert refused.ended_at == refused.started_at and refused.duration_s == 0.0


async def test_a_store_closed_without_ending_its_calls_has_them_interrupted_on_reopen(
    store: SQLiteCallStore, db_path: Path
) -> None:
    ringing = await store.create(provider="twilio", agent="a", direction="inbound")
    live = await store.create(provider="exotel", agent="a", direction="inbound", status="in-progress")
    queued = await store.create(provider="vobiz", agent="a", direction="outbound", status="queued")
    ended = await store.create(provider="twilio", agent="a", direction="inbound", status="in-progress")
    ended = await store.finish(ended.id, "completed", "caller hung up")
    await store.add_transcript(live.id, "caller", "are you there?")
    await store.close()  # the "kill": nothing finished the live calls

    restarted = await _reopened(db_path)
    try:
        assert await restarted.mark_interrupted() == 3
        for before in (ringing, live, queued):
            after = await restarted.get(before.id)
            assert after is not None and after.status == "interrupted"
            assert after.end_reason == "server stopped unexpectedly"
            assert after.ended_at is not None and after.duration_s is not None
            assert _when(after.ended_at) >= _when(after.started_at)
        assert await restarted.get(ended.id) == ended
        assert [e.text for e in await restarted.transcript(live.id)] == ["are you there?"]
        assert await restarted.mark_interrupted("again") == 0
        assert await restarted.list(active_only=True) == []
    finally:
        await restarted.close()


KILLED_WRITER = """
import asyncio, os, signal, sys
from pathlib import Path
from voicecli.store import SQLiteCallStore

async def main():
    store = SQLiteCallStore(Path(sys.argv[1]))
    await store.open()
    record = await store.create(provider="twilio", agent="demo", direction="inbound", status="in-progress")
    await store.add_transcript(record.id, "agent", "hello")
    await store.add_transcript(record.id, "caller", "hi")
    print(record.id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


async def test_a_killed_process_loses_nothing_it_wrote(db_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED_WRITER, str(db_path), cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == -9
    call_id = out.decode().strip()

    restarted = await _reopened(db_path)
    try:
        record = await restarted.get(call_id)
        assert record is not None and record.status == "in-progress"
        assert [(e.role, e.text) for e in await restarted.transcript(call_id)] == [
            ("agent", "hello"),
            ("caller", "hi"),
        ]
        assert await restarted.mark_interrupted("killed") == 1
        after = await restarted.get(call_id)
        assert after is not None and (after.status, after.end_reason) == ("interrupted", "killed")
    finally:
        await restarted.close()


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


async def test_migrations_are_recorded_and_run_once(db_path: Path) -> None:
    first = await _reopened(db_path)
    record = await first.create(provider="twilio", agent="a", direction="inbound")
    await first.close()
    migrations, mode, plan = _schema(db_path)
    assert [name for name, _ in migrations] == [fn.__name__ for fn in MIGRATIONS]
    assert mode == "wal"
    assert "calls_provider_call_id" in plan

    for _ in range(2):
        again = await _reopened(db_path)
        assert await again.get(record.id) == record
        await again.close()
    assert _schema(db_path)[0] == migrations  # same rows, same applied_at


async def test_concurrent_transcript_writes_all_persist_in_order(store: SQLiteCallStore, db_path: Path) -> None:
    calls = [await store.create(provider="twilio", agent="a", direction="inbound") for _ in range(4)]
    writes = [(calls[n % 4].id, "caller" if n % 2 else "agent", f"line {n}") for n in range(200)]
    await asyncio.gather(*(store.add_transcript(call_id, role, text) for call_id, role, text in writes))
    await store.close()

    restarted = await _reopened(db_path)
    try:
        for call in calls:
            expected = [text for call_id, _, text in writes if call_id == call.id]
            assert [e.text for e in await restarted.transcript(call.id)] == expected
            assert len(expected) == 50
    finally:
        await restarted.close()


async def test_racing_ends_leave_exactly_one_winner(store: SQLiteCallStore) -> None:
    record = await store.create(provider="twilio", agent="a", direction="inbound", status="in-progress")
    statuses: list[Any] = ["completed", "failed", "busy", "canceled", "interrupted", "no-answer"] * 5
    results = await asyncio.gather(*(store.finish(record.id, s, f"reason {i}") for i, s in enumerate(statuses)))
    assert len(set(results)) == 1
    winner = results[0]
    assert winner is not None and (winner.status, winner.end_reason) == ("completed", "reason 0")
    assert await store.get(record.id) == winner


async def test_a_write_handed_over_survives_the_caller_being_cancelled(store: SQLiteCallStore) -> None:
    record = await store.create(provider="twilio", agent="a", direction="inbound")
    tasks = [asyncio.create_task(store.add_transcript(record.id, "agent", f"{n}")) for n in range(300)]
    await asyncio.sleep(0)  # every task starts and hands its write to the store's thread
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(task.cancelled() for task in tasks) > 0  # the callers really were cancelled
    assert [e.text for e in await store.transcript(record.id)] == [f"{n}" for n in range(300)]


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
    record = await store.create(provider="twilio", agent="a", direction="inbound")
    await store.get(record.id)
    await store.find_by_provider_call_id("twilio", "nope")
    await store.update(record.id, status="in-progress")
    await store.add_transcript(record.id, "caller", "hi")
    await store.transcript(record.id)
    await store.list(active_only=True)
    await store.mark_interrupted()
    await store.close()

    assert len(seen) > 10, "the trace saw no statements: the test would prove nothing"
    threads = set(seen)
    assert len(threads) == 1, threads  # one dedicated thread for all reads and writes
    [(ident, name)] = threads
    assert ident != loop_thread and name.startswith("voicecli-store")


async def test_using_a_closed_store_is_an_error(db_path: Path) -> None:
    store = SQLiteCallStore(db_path)
    with pytest.raises(RuntimeError, match="not open"):
        await store.get("call_x")
    await store.open()
    await store.open()  # already open: nothing to do
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(RuntimeError, match="not open"):
        await store.create(provider="twilio", agent="a", direction="inbound")


def test_utcnow_iso_is_utc_with_milliseconds() -> None:
    stamp = utcnow_iso()
    assert stamp.endswith("Z") and len(stamp) == len("2024-01-01T00:00:00.000Z")
    _when(stamp)
