"""Raw provider wire helpers for tests that need finer control than the simulator gives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from voicecli.emulator.base import CallerSide, SimCall
from voicecli.emulator.simulator import _local_ws_url
from voicecli.providers import load_caller
from voicecli.runtime import DB_FILE
from voicecli.settings import Settings
from voicecli.store import TERMINAL_STATUSES, CallRecord, SQLiteCallStore

T = TypeVar("T")


class WireCall:
    """One emulated call driven message by message."""

    def __init__(self, settings: Settings, server_url: str, provider: str = "twilio", agent: str = "demo"):
        self.caller: CallerSide = load_caller(provider, settings)
        self.call: SimCall = self.caller.new_call("+15551230000", "+15559870000")
        self.server_url, self.agent = server_url, agent
        self.stream_url = ""
        self.parameters: dict[str, str] = {}
        self.seq = 0

    async def ring(self, http: aiohttp.ClientSession) -> None:
        self.stream_url, self.parameters = await self.caller.ring(http, self.server_url, self.agent, self.call)

    @property
    def ws_url(self) -> str:
        return _local_ws_url(self.stream_url, self.server_url)

    async def connect(self, http: aiohttp.ClientSession, **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
        return await http.ws_connect(self.ws_url, **kwargs)

    async def open(self, http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        """Ring, connect and start: the call's socket, streaming."""
        await self.ring(http)
        ws = await self.connect(http)
        await self.start(ws)
        return ws

    async def start(self, ws: aiohttp.ClientWebSocketResponse, parameters: dict[str, str] | None = None) -> None:
        opening = self.caller.opening(self.call, self.parameters if parameters is None else parameters)
        for message in opening:
            await ws.send_str(json.dumps(message))
        self.seq = len(opening) - 1

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    async def press(self, ws: aiohttp.ClientWebSocketResponse, digit: str) -> None:
        await ws.send_str(json.dumps(self.caller.dtmf(self.call, digit, self.next_seq())))

    async def media(self, ws: aiohttp.ClientWebSocketResponse, pcm16: bytes) -> None:
        await ws.send_str(json.dumps(self.caller.media(self.call, pcm16, self.next_seq())))


async def agent_audio(ws: aiohttp.ClientWebSocketResponse, caller: CallerSide, seconds: float) -> tuple[int, bool]:
    """Read for up to `seconds`: (bytes of agent audio, whether the server closed the socket)."""
    total = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            msg = await ws.receive(timeout=left)
        except TimeoutError:
            break
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return total, True
        if msg.type == aiohttp.WSMsgType.TEXT:
            total += len(caller.read(json.loads(msg.data)).pcm16)
    return total, False


async def only_call_when_ended(store: Any, seconds: float = 10.0) -> CallRecord:
    """The one call record, once the server has closed it (closing runs after the socket goes)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        [record] = await store.list()
        if record.status in TERMINAL_STATUSES or loop.time() > deadline:
            return record
        await asyncio.sleep(0.05)


async def in_store(project: Path, work: Callable[[SQLiteCallStore], Awaitable[T]]) -> T:
    """`work(store)` on the project's SQLite store, as another process (the CLI, a restart) would."""
    store = SQLiteCallStore(project / ".voicecli" / DB_FILE)
    await store.open()
    try:
        return await work(store)
    finally:
        await store.close()


async def open_greeted(
    server: Any, http: aiohttp.ClientSession, provider: str = "twilio", agent: str = "demo"
) -> tuple[WireCall, aiohttp.ClientWebSocketResponse, CallRecord]:
    """An inbound call streaming to the in-process `server`, once its greeting is in the
    transcript: (the caller, its socket, the call's record)."""
    from tests.processes import until

    live = WireCall(server.state.settings, server.url, provider, agent=agent)
    ws = await live.open(http)
    [record] = await server.state.store.list()

    async def greeted() -> bool:
        return any(r.role == "agent" for r in await server.state.store.transcript(record.id))

    await until(greeted, 15, "the greeting")
    return live, ws, record
