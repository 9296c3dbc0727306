"""One owner for every call: records always end, tokens open one stream, callbacks cannot be forged.

Each test drives the server the way a provider or an attacker would, over HTTP and the
WebSocket, and checks what a user sees: records, slots, hang-ups, status codes.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import aiohttp
from aiohttp import WSCloseCode

from tests.conftest import TWILIO_TOKEN, VOBIZ_TOKEN, twilio_env, vobiz_env
from tests.wire import WireCall, agent_audio
from voicecli.providers.plivo_family import hmac_b64 as _hmac_b64
from voicecli.server.lifecycle import Timeouts

SECRET = "exotel-stream-secret-1"


async def _until(predicate, within_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not await predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def _until_first_call_ended(server) -> None:
    async def ended() -> bool:
        return (await server.state.store.list())[0].ended_at is not None

    await _until(ended)


async def _talking(wire: WireCall, http: aiohttp.ClientSession, **connect) -> aiohttp.ClientWebSocketResponse:
    """Ring, stream and start one call; it is admitted once the agent's greeting arrives."""
    await wire.ring(http)
    ws = await wire.connect(http, **connect)
    await wire.start(ws)
    heard, closed = await agent_audio(ws, wire.caller, 1.0)
    assert heard > 0 and not closed
    return ws


# --- bug 2: whatever raises after admission, the slot comes back and the record ends -----


async def test_a_call_whose_agent_cannot_start_ends_failed_and_frees_its_slot(start_server, project: Path) -> None:
    # Served without the start-up key check: the Deepgram STT cannot be built for a call.
    (project / "agents" / "broken.toml").write_text(
        (project / "agents" / "demo.toml")
        .read_text()
        .replace('name = "demo"', 'name = "broken"')
        .replace('provider = "pocketsphinx"', 'provider = "deepgram"')
    )
    server = await start_server(agents=["demo", "broken"], TWILIO_MAX_CONCURRENT="1")
    async with aiohttp.ClientSession() as http:
        broken = WireCall(server.state.settings, server.url, agent="broken")
        await broken.ring(http)
        ws = await broken.connect(http)
        await broken.start(ws)
        assert (await ws.receive(timeout=10)).type == aiohttp.WSMsgType.CLOSE

        await _until_first_call_ended(server)
        [record] = await server.state.store.list()
        assert record.status == "failed" and "could not run" in (record.end_reason or "")
        # The only slot came back: the next caller is answered.
        await _talking(WireCall(server.state.settings, server.url), http)


# --- bug 3: records always end; nothing new while draining ---------------------------


async def test_webhooks_no_stream_follows_end_no_stream_and_leave_the_active_list(start_server) -> None:
    server = await start_server(timeouts=Timeouts(stream_wait_s=1.0))
    async with aiohttp.ClientSession() as http:
        for _ in range(5):
            async with http.post(server.url + "/telephony/exotel/inbound/demo") as resp:
                assert resp.status == 200
        twilio = WireCall(server.state.settings, server.url)
        await twilio.ring(http)

        async def active() -> list:
            async with http.get(server.url + "/api/calls", params={"active": "1"}, headers=server.headers) as resp:
                return await resp.json()

        assert len(await active()) == 6

        async def none_active() -> bool:
            return await active() == []

        await _until(none_active, 5)
    records = await server.state.store.list()
    assert {r.status for r in records} == {"no-stream"} and len(records) == 6
    assert all("no media stream within 1s" in (r.end_reason or "") for r in records)


async def test_while_draining_webhooks_and_dials_get_503_but_vouched_streams_still_run(start_server) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as http:
        talking = await _talking(WireCall(server.state.settings, server.url), http)
        vouched = WireCall(server.state.settings, server.url)
        await vouched.ring(http)  # answered before the drain: its stream is still welcome
        drain = asyncio.create_task(server.state.calls.drain(30.0, asyncio.Event()))
        await asyncio.sleep(0.1)
        async with http.post(server.url + "/telephony/exotel/inbound/demo") as resp:
            assert resp.status == 503 and "shutting down" in await resp.text()
        body = {"phone_number": "+15551234567", "agent_name": "demo"}
        async with http.post(server.url + "/api/calls/outbound", json=body, headers=server.headers) as resp:
            assert resp.status == 503
        ws = await vouched.connect(http)
        await vouched.start(ws)
        heard, _ = await agent_audio(ws, vouched.caller, 1.0)
        assert heard > 0
        await talking.close()
        await ws.close()
        await asyncio.wait_for(drain, 15)
    assert len(await server.state.store.list()) == 2  # nothing recorded for the refused two


# --- bug 4: tokens are single-use and bound to call, provider and agent -----------------


async def test_an_exotel_token_opens_no_twilio_stream(start_server, fake_twilio) -> None:
    server = await start_server(**twilio_env(fake_twilio, TWILIO_MAX_CONCURRENT="1"))
    async with aiohttp.ClientSession() as http:
        exotel = WireCall(server.state.settings, server.url, provider="exotel")
        await exotel.ring(http)  # Exotel signs nothing: anyone can get this token
        token = exotel.parameters["token"]
        twilio = WireCall(server.state.settings, server.url)
        await twilio.ring(http)
        ws = await twilio.connect(http)
        await twilio.start(ws, {**twilio.parameters, "stream_token": token})
        assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == WSCloseCode.POLICY_VIOLATION
        # On Exotel's own route it works, counted against Exotel's limit, not Twilio's.
        ws = await exotel.connect(http)
        await exotel.start(ws)
        assert server.state.limiter.in_use("exotel") == 1 and server.state.limiter.in_use("twilio") == 0
        await ws.close()


async def test_a_token_opens_one_stream_and_dies_with_its_call(start_server, fake_twilio) -> None:
    server = await start_server(**twilio_env(fake_twilio))
    async with aiohttp.ClientSession() as http:
        wire = WireCall(server.state.settings, server.url)
        first = await _talking(wire, http)
        second = await wire.connect(http)
        await wire.start(second)  # the same token again, while the call runs
        assert (await second.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
        assert second.close_code == WSCloseCode.POLICY_VIOLATION
        await first.close()

        async def ended() -> bool:
            return (await server.state.store.list())[0].status == "completed"

        await _until(ended)
        third = await wire.connect(http)
        await wire.start(third)
        assert (await third.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
    assert server.state.limiter.in_use("twilio") == 0
    assert [r.status for r in await server.state.store.list()] == ["completed"]


async def test_a_replayed_twilio_webhook_gets_no_second_token(start_server, fake_twilio) -> None:
    from twilio.request_validator import RequestValidator

    server = await start_server(**twilio_env(fake_twilio))
    form = {"CallSid": "CA" + "7" * 32, "From": "+15551230000", "To": "+15559870000"}
    url = server.url + "/telephony/twilio/inbound/demo"
    headers = {"X-Twilio-Signature": RequestValidator(TWILIO_TOKEN).compute_signature(url, form)}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=form, headers=headers) as resp:
            assert resp.status == 200 and "stream_token" in await resp.text()
        async with http.post(url, data=form, headers=headers) as resp:
            text = await resp.text()
            assert resp.status == 409 and "stream_token" not in text and form["CallSid"] in text
    assert len(await server.state.store.list()) == 1


async def test_the_hang_up_goes_to_the_webhooks_call_not_the_one_the_stream_names(start_server, fake_vobiz) -> None:
    server = await start_server(**vobiz_env(fake_vobiz))
    async with aiohttp.ClientSession() as http:
        wire = WireCall(server.state.settings, server.url, provider="vobiz")
        real_uuid = wire.call.provider_call_id
        await wire.ring(http)
        # The stream claims another call (an attacker's choice) in its URL and its start.
        other = "0f0f0f0f-0000-4000-8000-000000000000"
        ws = await http.ws_connect(wire.ws_url.replace(real_uuid, other))
        wire.call.provider_call_id = other
        await wire.start(ws)
        await agent_audio(ws, wire.caller, 0.5)
        await wire.press(ws, "0")  # the demo hangs up on 0
        await agent_audio(ws, wire.caller, 15.0)
    [delete] = fake_vobiz.find("DELETE", "/Call/")
    assert delete["path"].endswith(f"/Call/{real_uuid}/")


async def test_with_exotel_stream_secret_its_webhook_and_callback_need_it(start_server) -> None:
    server = await start_server(EXOTEL_STREAM_SECRET=SECRET)
    async with aiohttp.ClientSession() as http:
        inbound = server.url + "/telephony/exotel/inbound/demo"
        for params in ({}, {"secret": "wrong"}):
            async with http.get(inbound, params={"CallSid": "e1", **params}) as resp:
                assert resp.status == 403
        async with http.post(server.url + "/telephony/exotel/status", data={"Status": "completed"}) as resp:
            assert resp.status == 403
        assert await server.state.store.list() == []
        # The emulator does what App Bazaar does with the URL README tells users to paste.
        exotel = WireCall(server.state.settings, server.url, provider="exotel")
        ws = await _talking(exotel, http)
        await ws.close()


# --- bug 6: callbacks are each provider's own, verified, and mint nothing ---------------


async def test_an_exotel_callback_cannot_end_or_reopen_a_twilio_call(start_server, fake_twilio) -> None:
    server = await start_server(**twilio_env(fake_twilio))
    async with aiohttp.ClientSession() as http:
        wire = WireCall(server.state.settings, server.url)
        ws = await _talking(wire, http)
        [record] = await server.state.store.list()
        url = f"{server.url}/telephony/exotel/status/{record.id}"
        for form in ({"Status": "completed"}, {"EventType": "answered", "Status": "in-progress"}):
            async with http.post(url, data=form) as resp:
                text = await resp.text()
                assert resp.status == 404 and "token" not in text and "Stream" not in text
        heard, closed = await agent_audio(ws, wire.caller, 0.5)
        assert not closed
        await ws.close()

        async def ended() -> bool:
            return (await server.state.store.get(record.id)).status == "completed"

        await _until(ended)
    assert "caller hung up" in ((await server.state.store.get(record.id)).end_reason or "")


def _vobiz_signed(url: str, nonce: str) -> dict[str, str]:
    return {"X-Vobiz-Signature-V3": _hmac_b64(VOBIZ_TOKEN, f"{url}.{nonce}"), "X-Vobiz-Signature-V3-Nonce": nonce}


async def test_a_replayed_vobiz_signature_is_refused_and_ends_no_other_call(start_server, fake_vobiz) -> None:
    server = await start_server(**vobiz_env(fake_vobiz))
    url = server.url + "/telephony/vobiz/status"
    async with aiohttp.ClientSession() as http:
        first, second = (WireCall(server.state.settings, server.url, provider="vobiz") for _ in range(2))
        first_ws, second_ws = await _talking(first, http), await _talking(second, http)
        headers = _vobiz_signed(url, "".join(secrets.choice("0123456789") for _ in range(20)))
        form = {"CallUUID": first.call.provider_call_id, "Event": "Hangup", "CallStatus": "completed"}
        async with http.post(url, data=form, headers=headers) as resp:
            assert resp.status == 200
        # The captured signature, replayed with the other call's id in the body.
        async with http.post(url, data={**form, "CallUUID": second.call.provider_call_id}, headers=headers) as resp:
            assert resp.status == 403 and "replayed" in await resp.text()
        _, first_closed = await agent_audio(first_ws, first.caller, 5.0)
        _, second_closed = await agent_audio(second_ws, second.caller, 0.5)
        assert first_closed and not second_closed
        await second_ws.close()
    statuses = {r.provider_call_id: r.status for r in await server.state.store.list()}
    assert statuses[first.call.provider_call_id] == "completed"


# --- bug 7: the REST hang-up goes even when the stop message cannot --------------------


async def test_the_vobiz_hang_up_is_sent_when_its_stop_message_fails(start_server, fake_vobiz) -> None:
    server = await start_server(**vobiz_env(fake_vobiz))
    async with aiohttp.ClientSession() as http:
        wire = WireCall(server.state.settings, server.url, provider="vobiz")
        ws = await _talking(wire, http)
        await agent_audio(ws, wire.caller, 10.0)  # the greeting, to its end
        await wire.press(ws, "0")  # "Thanks for calling. Goodbye!", then the agent hangs up
        heard = 0
        while heard == 0 or (await agent_audio(ws, wire.caller, 0.3))[0] > 0:
            heard += (await agent_audio(ws, wire.caller, 0.3))[0]
        # The goodbye is sent (faster than it plays): the socket breaks before the stop message.
        ws._response.connection.transport.abort()  # type: ignore[union-attr]

        await _until_first_call_ended(server)
    assert fake_vobiz.find("DELETE", f"/Call/{wire.call.provider_call_id}/")


# --- bug 9: settings changes never overwrite each other ----------------------------------


async def test_concurrent_settings_changes_all_survive(start_server, project: Path) -> None:
    server = await start_server()
    changes = [{"twilio_max_concurrent": 3}, {"exotel_max_concurrent": 4}, {"vobiz_max_concurrent": 5}]
    url = server.url + "/api/settings/telephony"
    async with aiohttp.ClientSession() as http:

        async def put(change: dict) -> int:
            async with http.put(url, json=change, headers=server.headers) as resp:
                return resp.status

        assert await asyncio.gather(*(put(c) for c in changes)) == [200, 200, 200]
        async with http.get(url, headers=server.headers) as resp:
            current = await resp.json()
    for change in changes:
        for name, value in change.items():
            assert current[name] == value
    stored = await server.state.store.stored_settings()
    assert all(stored[name] == value for c in changes for name, value in c.items())  # none lost
