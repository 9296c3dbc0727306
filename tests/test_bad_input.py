"""Junk on the media socket and junk webhooks: the server stays up and the record is kept."""

from __future__ import annotations

import io
import json

import aiohttp
import pytest

from tests.conftest import twilio_env
from tests.wire import WireCall, agent_audio, only_call_when_ended

JUNK = [
    "not json at all",
    "[]",
    "null",
    "42",
    json.dumps({"no_event": True}),
    json.dumps({"event": 123}),
    json.dumps({"event": "bogus", "streamSid": "MZx"}),
    json.dumps({"event": "media", "media": None}),
    json.dumps({"event": "media", "media": []}),
    json.dumps({"event": "media", "media": {"payload": "!!! not base64 !!!"}}),
    json.dumps({"event": "media", "media": {"payload": 17}}),
    json.dumps({"event": "dtmf", "dtmf": {"digit": "Z"}}),
    json.dumps({"event": "dtmf", "dtmf": None}),
    json.dumps({"event": "media", "media": {"payload": "A" * 300_000}}),  # oversized
]


async def test_junk_on_the_media_socket_is_skipped_and_the_call_goes_on(start_server, fake_twilio) -> None:
    server = await start_server(**twilio_env(fake_twilio))
    async with aiohttp.ClientSession() as http:
        wire = WireCall(server.state.settings, server.url)
        await wire.ring(http)
        ws = await wire.connect(http)
        await wire.start(ws)
        for junk in JUNK:
            await ws.send_str(junk)
        await ws.send_bytes(b"\x00\x01binary")
        heard, closed = await agent_audio(ws, wire.caller, 2.0)
        assert heard > 0 and not closed  # the greeting still plays
        await wire.press(ws, "1")
        _, closed = await agent_audio(ws, wire.caller, 6.0)
        assert not closed
        await wire.press(ws, "0")
        _, closed = await agent_audio(ws, wire.caller, 15.0)
        assert closed  # the agent said goodbye and hung up: the call survived the junk
        async with http.get(server.url + "/healthz") as resp:
            assert resp.status == 200
    record = await only_call_when_ended(server.state.store)
    assert record.status == "completed"
    texts = [t.text for t in await server.state.store.transcript(record.id)]
    assert "You pressed one. Our plans start at twenty dollars a month." in texts


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"", {}),
        (b"\xff\xfe garbage", {"Content-Type": "application/x-www-form-urlencoded"}),
        (json.dumps({"CallSid": "CA1"}).encode(), {"Content-Type": "application/json"}),
        (b"From=%2B1555&To=%2B1666", {"Content-Type": "application/x-www-form-urlencoded"}),
        (b"CallSid=" + b"x" * 2_000_000, {"Content-Type": "application/x-www-form-urlencoded"}),
    ],
)
async def test_junk_webhooks_get_a_4xx_and_leave_the_server_healthy(start_server, body, headers) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as http:
        # A BytesIO, as aiohttp asks for large bodies (raw bytes that big raise a ResourceWarning).
        data = io.BytesIO(body)
        async with http.post(server.url + "/telephony/twilio/inbound/demo", data=data, headers=headers) as resp:
            assert 400 <= resp.status < 500
        async with http.get(server.url + "/healthz") as resp:
            assert resp.status == 200
    assert await server.state.store.list() == []
