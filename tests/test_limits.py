"""Per-provider concurrency: admission as README states it, slots freed on every way a call ends."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import WSCloseCode

from tests.conftest import TWILIO_TOKEN, twilio_env
from tests.wire import WireCall, agent_audio


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


async def test_a_burst_of_calls_never_exceeds_the_limit_and_the_losers_are_told_so(start_server, fake_twilio) -> None:
    server = await start_server(**twilio_env(fake_twilio, TWILIO_MAX_CONCURRENT="2"))
    peak = 0

    def watch() -> None:
        nonlocal peak
        peak = max(peak, server.state.limiter.in_use("twilio"))

    async with aiohttp.ClientSession() as http:
        wires = [WireCall(server.state.settings, server.url) for _ in range(8)]
        await asyncio.gather(*(w.ring(http) for w in wires))
        sockets = await asyncio.gather(*(w.connect(http) for w in wires))  # unproven: nothing taken yet
        watch()
        await asyncio.gather(*(w.start(ws) for w, ws in zip(wires, sockets, strict=True)))
        closed = []
        for ws in sockets:
            watch()
            msg = await ws.receive(timeout=5)
            closed.append(msg.type == aiohttp.WSMsgType.CLOSE)
        assert closed.count(False) == 2 and peak == 2
        assert {ws.close_code for ws, was in zip(sockets, closed, strict=True) if was} == {WSCloseCode.TRY_AGAIN_LATER}
        for ws in sockets:
            await ws.close()
    await _until(lambda: server.state.limiter.in_use("twilio") == 0)
    records = await server.state.store.list()
    refused = [r for r in records if r.status == "failed"]
    assert len(refused) == 6 and all("limit of 2" in (r.end_reason or "") for r in refused)


async def test_an_upgrade_at_the_limit_gets_503_and_takes_nothing(start_server, fake_twilio) -> None:
    server = await start_server(**twilio_env(fake_twilio, TWILIO_MAX_CONCURRENT="1"))
    async with aiohttp.ClientSession() as http:
        first, second = WireCall(server.state.settings, server.url), WireCall(server.state.settings, server.url)
        await first.ring(http)
        await second.ring(http)
        ws = await first.connect(http)
        await first.start(ws)
        await _until(lambda: server.state.limiter.in_use("twilio") == 1)
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await second.connect(http)
        assert info.value.status == 503
        assert server.state.limiter.in_use("twilio") == 1
        await ws.close()


async def test_a_stream_that_never_starts_holds_no_slot_and_is_closed(start_server, fake_twilio) -> None:
    server = await start_server(**twilio_env(fake_twilio, TWILIO_MAX_CONCURRENT="1"))
    async with aiohttp.ClientSession() as http:
        idle = WireCall(server.state.settings, server.url)
        await idle.ring(http)
        ws = await idle.connect(http)
        # Not yet a call: a real one gets the only slot meanwhile.
        real = WireCall(server.state.settings, server.url)
        await real.ring(http)
        real_ws = await real.connect(http)
        await real.start(real_ws)
        heard, closed = await agent_audio(real_ws, real.caller, 1.0)
        assert heard > 0 and not closed
        msg = await ws.receive(timeout=8)  # the server gives up after 5 s
        assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == WSCloseCode.POLICY_VIOLATION
        await real_ws.close()
        await _until(lambda: server.state.limiter.in_use("twilio") == 0)


async def test_idle_upgrades_cannot_keep_signed_calls_out(start_server, fake_twilio) -> None:
    """Twelve clients that only upgrade, over and over, while signed calls come in (bug 5)."""
    from voicecli.server.limits import UNPROVEN_PER_CLIENT

    server = await start_server(**twilio_env(fake_twilio, TWILIO_MAX_CONCURRENT="4"))
    url = server.url + "/ws/twilio/demo"
    async with aiohttp.ClientSession() as http:
        idle = [await http.ws_connect(url) for _ in range(UNPROVEN_PER_CLIENT)]
        # Past the per-address cap, an upgrade that proves nothing is refused outright.
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(url)
        assert info.value.status == 429
        admitted = 0
        for _ in range(2):
            wires = [WireCall(server.state.settings, server.url) for _ in range(4)]
            for wire in wires:
                await wire.ring(http)
            sockets = [await wire.connect(http, headers=_signed(wire)) for wire in wires]
            for wire, ws in zip(wires, sockets, strict=True):
                await wire.start(ws)
            for wire, ws in zip(wires, sockets, strict=True):
                heard, closed = await agent_audio(ws, wire.caller, 0.5)
                admitted += heard > 0 and not closed
                await ws.close()
            await _until(lambda: server.state.limiter.in_use("twilio") == 0)
        assert admitted == 8
        for ws in idle:
            await ws.close()


def _signed(wire: WireCall) -> dict[str, str]:
    from twilio.request_validator import RequestValidator

    return {"X-Twilio-Signature": RequestValidator(TWILIO_TOKEN).compute_signature(wire.ws_url, {})}
