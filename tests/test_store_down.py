"""A store that cannot be written (another process holds its write lock): webhooks get 503
with Retry-After in seconds, /healthz says so, live calls go on, and what they wrote is
written once the store takes writes again."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp

from tests.processes import run_voicecli
from tests.wire import WireCall, agent_audio, in_store
from voicecli.runtime import DB_FILE
from voicecli.store import TERMINAL_STATUSES


@contextmanager
def write_lock(db: Path) -> Iterator[sqlite3.Connection]:
    """Hold the store's write lock, as another program writing the file would."""
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        yield locker
    finally:
        locker.execute("ROLLBACK")
        locker.close()


async def _status(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], str]:
    async with http.get(url) as resp:
        return resp.status, dict(resp.headers), await resp.text()


async def test_a_locked_store_gets_503s_keeps_the_live_call_and_writes_it_when_back(start_server) -> None:
    server = await start_server()
    store, db = server.state.store, server.state.settings.state_dir / DB_FILE
    async with aiohttp.ClientSession(headers=server.headers) as http:
        live = WireCall(server.state.settings, server.url, "twilio")
        ws = await live.open(http)
        await agent_audio(ws, live.caller, 1.0)  # the greeting begins
        [record] = await store.list()

        with write_lock(db):
            # A new call's webhook cannot be recorded: 503 within Twilio's 15 s, not a 500.
            began = time.monotonic()
            form = {"CallSid": "CAlocked", "From": "+15551112222", "To": "+15553334444"}
            ring = await http.post(f"{server.url}/telephony/twilio/inbound/demo", data=form)
            assert ring.status == 503, await ring.text()
            assert ring.headers["Retry-After"] == "5"
            assert "cannot be written" in await ring.text()
            assert time.monotonic() - began < 12
            status, _, body = await _status(http, f"{server.url}/healthz")
            assert status == 503 and "locked" in body
            # Reads still answer, at once.
            began = time.monotonic()
            status, _, _ = await _status(http, f"{server.url}/api/calls")
            assert status == 200 and time.monotonic() - began < 2

            # The live call goes on: the caller presses 0, the agent says goodbye and hangs up.
            await live.press(ws, "0")
            _, closed = await agent_audio(ws, live.caller, 15.0)
            assert closed
            assert (await store.get(record.id)).status == "in-progress"  # kept, not yet written

        # Back: within a few probes the kept writes are written, in order.
        deadline = time.monotonic() + 10
        while (await store.get(record.id)).status not in TERMINAL_STATUSES:
            assert time.monotonic() < deadline, "the kept end was never written"
            await asyncio.sleep(0.2)
        ended = await store.get(record.id)
        assert ended.status == "completed" and ended.end_reason.startswith("agent ended the call")
        texts = [entry.text for entry in await store.transcript(record.id)]
        assert "[pressed 0]" in texts and texts.index("[pressed 0]") < len(texts) - 1  # the goodbye follows
        assert (await store.slot_counts()).get("twilio") is None  # its slot came back
        status, _, _ = await _status(http, f"{server.url}/healthz")
        assert status == 200


async def test_serve_on_a_store_it_cannot_write_stops_with_one_line(project: Path) -> None:
    db = project / ".voicecli" / DB_FILE
    await in_store(project, lambda store: store.list())  # the store exists, as after a first run
    with write_lock(db):
        code, out, err = await run_voicecli(project, "serve", "--agent", "demo", "--port", "0")
    assert code != 0
    assert "cannot be written" in err and "Traceback" not in out + err, out + err
