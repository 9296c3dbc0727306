"""Per-provider concurrency: 503 at the upgrade, slots freed on every way a call ends."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import twilio_env
from tests.wire import WireCall


async def _until(predicate, within_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_third_stream_gets_503_and_a_slot_frees_when_a_call_ends(start_server, fake_twilio) -> None:
    server = await start_server(**twilio_env(fake_twilio, TWILIO_MAX_CONCURRENT="2"))
    async with aiohttp.ClientSession() as http:
        wires = [WireCall(server.state.settings, server.url) for _ in range(3)]
        for wire in wires:
            await wire.ring(http)
        first, second = await wires[0].connect(http), await wires[1].connect(http)
        await wires[0].start(first)
        await wires[1].start(second)
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await wires[2].connect(http)
        assert info.value.status == 503
        await first.close()  # the caller hangs up
        await _until(lambda: server.state.limiter.in_use("twilio") == 1)
        third = await wires[2].connect(http)
        await wires[2].start(third)
        await second.close()
        await third.close()
        await _until(lambda: server.state.limiter.in_use("twilio") == 0)
    statuses = sorted(c.status for c in await server.state.store.list())
    assert statuses == ["completed", "completed", "completed"]


async def test_a_burst_of_connects_never_exceeds_the_limit(start_server, fake_twilio) -> None:
    server = await start_server(**twilio_env(fake_twilio, TWILIO_MAX_CONCURRENT="2"))
    peak = 0

    async with aiohttp.ClientSession() as http:
        wires = [WireCall(server.state.settings, server.url) for _ in range(12)]
        await asyncio.gather(*(w.ring(http) for w in wires))
        results = await asyncio.gather(*(w.connect(http) for w in wires), return_exceptions=True)
        peak = server.state.limiter.in_use("twilio")
        opened = [r for r in results if isinstance(r, aiohttp.ClientWebSocketResponse)]
        refused = [r for r in results if isinstance(r, aiohttp.WSServerHandshakeError)]
        assert len(opened) == 2 and len(refused) == 10
        assert all(r.status == 503 for r in refused)
        assert peak == 2
        for ws in opened:
            await ws.close()
    await _until(lambda: server.state.limiter.in_use("twilio") == 0)


async def test_a_stream_that_never_starts_is_closed_and_frees_its_slot(start_server, fake_twilio) -> None:
    server = await start_server(**twilio_env(fake_twilio, TWILIO_MAX_CONCURRENT="1"))
    async with aiohttp.ClientSession() as http:
        wire = WireCall(server.state.settings, server.url)
        await wire.ring(http)
        ws = await wire.connect(http)
        assert server.state.limiter.in_use("twilio") == 1
        msg = await ws.receive(timeout=8)  # the server gives up after 5 s
        assert msg.type == aiohttp.WSMsgType.CLOSE
        await _until(lambda: server.state.limiter.in_use("twilio") == 0)
