"""Servers sharing one store: events reach the process carrying a call, and a server that
loses its lease ends its calls rather than run a provider over its limit.

Both servers run in this test's process on one project's SQLite file, each its own holder,
as two workers of one machine are.
"""

from __future__ import annotations

import asyncio
import secrets

import aiohttp

from tests.conftest import vobiz_env
from tests.test_call_owner import _talking, _vobiz_signed
from tests.wire import WireCall, agent_audio
from voicecli.store import RENEW_S


async def _until(predicate, within_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not await predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_a_hang_up_callback_on_one_server_ends_the_call_the_other_carries(start_server, fake_vobiz) -> None:
    env = vobiz_env(fake_vobiz)
    carrier, other = await start_server(**env), await start_server(**env)
    assert carrier.state.holder != other.state.holder
    async with aiohttp.ClientSession() as http:
        wire = WireCall(carrier.state.settings, carrier.url, provider="vobiz")
        ws = await _talking(wire, http)
        # Vobiz posts the hang-up to whichever instance its URL reaches: the other one.
        url = other.url + "/telephony/vobiz/status"
        headers = _vobiz_signed(url, "".join(secrets.choice("0123456789") for _ in range(20)))
        form = {"CallUUID": wire.call.provider_call_id, "Event": "Hangup", "CallStatus": "completed"}
        async with http.post(url, data=form, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
        _, closed = await agent_audio(ws, wire.caller, 5.0)
        assert closed  # the carrier heard of it and ended the call
    [record] = await other.state.store.list()
    assert record.instance == carrier.state.holder and record.status == "completed"


async def test_a_server_that_loses_its_lease_ends_its_calls_then_admits_again(start_server, fake_vobiz) -> None:
    server = await start_server(**vobiz_env(fake_vobiz, VOBIZ_MAX_CONCURRENT="1"))
    store = server.state.store
    async with aiohttp.ClientSession() as http:
        first = WireCall(server.state.settings, server.url, provider="vobiz")
        ws = await _talking(first, http)
        # Another instance judged this one dead (its lease looked expired) and took its slot back.
        assert await store.reap([server.state.holder], "its server stopped unexpectedly") == 1
        _, closed = await agent_audio(ws, first.caller, RENEW_S + 3)
        assert closed  # it ended the call rather than carry it on a slot it no longer holds
        [record] = await store.list()
        assert record.status == "interrupted"

        async def rejoined() -> bool:
            return server.state.holder in {h.id for h in await store.holders()} and not server.state.limiter.suspended

        await _until(rejoined, RENEW_S + 3)
        second = WireCall(server.state.settings, server.url, provider="vobiz")
        await (await _talking(second, http)).close()  # the one slot is there to take again
