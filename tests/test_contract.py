"""One contract, three providers: the same call, limits and junk handling over each wire protocol."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.conftest import TWILIO_SID, VOBIZ_ID, VOBIZ_TOKEN, FakeApi, twilio_env, vobiz_env
from tests.wire import WireCall, agent_audio, only_call_when_ended
from voicecli.call.audio import rms
from voicecli.emulator.simulator import Press, Say, SimResult, simulate_call, speech

PROVIDERS = ["twilio", "exotel", "vobiz"]


@dataclass
class Setup:
    """A provider's environment, its fake REST API, and what its agent hang-up must look like."""

    name: str
    env: dict[str, str]
    api: FakeApi | None

    def check_hang_up(self, result: SimResult) -> None:
        call = result.call
        if self.name == "twilio":
            [request] = self.api.find("POST", f"/Accounts/{TWILIO_SID}/Calls/{call.provider_call_id}.json")
            assert request["form"] == {"Status": "completed"}
        elif self.name == "vobiz":
            assert {"event": "stop", "streamId": call.stream_id} in result.received
            [request] = self.api.find("DELETE", f"/Account/{VOBIZ_ID}/Call/{call.provider_call_id}/")
            assert (request["auth_id"], request["auth_token"]) == (VOBIZ_ID, VOBIZ_TOKEN)
            assert request["authorization"] is None  # headers, not Basic auth
        else:  # Exotel has no hang-up call: closing the stream is the hang-up
            assert self.api is None

    def audio_messages(self, result: SimResult) -> list[dict[str, Any]]:
        event = "playAudio" if self.name == "vobiz" else "media"
        return [m for m in result.received if m.get("event") == event]

    def stream_id_of(self, message: dict[str, Any]) -> str | None:
        return message.get({"twilio": "streamSid", "exotel": "stream_sid", "vobiz": "streamId"}[self.name])


@pytest.fixture(params=PROVIDERS)
def setup(request, fake_twilio, fake_vobiz) -> Setup:
    name = request.param
    if name == "twilio":
        return Setup(name, twilio_env(fake_twilio), fake_twilio)
    if name == "vobiz":
        return Setup(name, vobiz_env(fake_vobiz), fake_vobiz)
    return Setup(name, {}, None)


async def test_a_call_greets_answers_and_the_agent_hangs_up(start_server, setup: Setup) -> None:
    server = await start_server(**setup.env)
    result = await simulate_call(
        server.state.settings,
        server.url,
        "demo",
        setup.name,
        [Say(speech("What is your pricing?")), Press("0")],
        api_token=server.token,
    )
    assert result.ended_by == "agent"
    assert result.heard_seconds > 5 and rms(bytes(result.heard)) > 300
    setup.check_hang_up(result)
    record = result.record
    assert record is not None
    assert (record["status"], record["provider"], record["direction"]) == ("completed", setup.name, "inbound")
    assert (record["from"], record["to"]) == ("+15551230000", "+15559870000")
    assert record["provider_call_id"] == result.call.provider_call_id
    said = [(t["role"], t["text"]) for t in record["transcript"]]
    assert said[0][0] == "agent" and "demo line" in said[0][1]
    assert any(role == "caller" and "pric" in text for role, text in said)  # PocketSphinx: "price"/"pricing"
    assert ("agent", "Our plans start at twenty dollars a month.") in said
    assert said[-1] == ("agent", "Thanks for calling. Goodbye!")


async def test_greeting_audio_arrives_in_the_providers_own_shape(start_server, setup: Setup) -> None:
    server = await start_server(**setup.env)
    result = await simulate_call(server.state.settings, server.url, "demo", setup.name, [], linger_s=0.2)
    audio = setup.audio_messages(result)
    assert audio and result.heard_seconds > 3
    assert all(setup.stream_id_of(m) == result.call.stream_id for m in audio)
    if setup.name == "vobiz":
        assert all(m["media"]["contentType"] == "audio/x-mulaw" and m["media"]["sampleRate"] == 8000 for m in audio)
    if setup.name == "exotel":  # protocols.md B2: multiples of 320 bytes, 3,200 bytes to 100 KB
        sizes = [len(base64.b64decode(m["media"]["payload"])) for m in audio]
        assert all(size % 320 == 0 and 3200 <= size <= 100_000 for size in sizes), sizes


async def test_dtmf_reaches_the_agent(start_server, setup: Setup) -> None:
    server = await start_server(**setup.env)
    result = await simulate_call(
        server.state.settings, server.url, "demo", setup.name, [Press("2")], linger_s=0.2, api_token=server.token
    )
    said = [t["text"] for t in result.record["transcript"]]
    assert "You pressed two. We are open from nine to five, Monday to Friday." in said
    assert result.ended_by == "caller" and result.record["status"] == "completed"


async def test_the_limit_gives_503_at_the_upgrade(start_server, setup: Setup) -> None:
    env = {**setup.env, f"{setup.name.upper()}_MAX_CONCURRENT": "1"}
    server = await start_server(**env)
    async with aiohttp.ClientSession() as http:
        first, second = (WireCall(server.state.settings, server.url, setup.name) for _ in range(2))
        await first.ring(http)
        await second.ring(http)
        ws = await first.connect(http)
        await first.start(ws)
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await second.connect(http)
        assert info.value.status == 503
        await ws.close()


async def test_junk_messages_are_survived(start_server, setup: Setup) -> None:
    server = await start_server(**setup.env)
    async with aiohttp.ClientSession() as http:
        wire = WireCall(server.state.settings, server.url, setup.name)
        await wire.ring(http)
        ws = await wire.connect(http)
        await wire.start(ws)
        for junk in (
            "{",
            "[]",
            "null",
            json.dumps({"event": "media", "media": None}),
            json.dumps({"event": "media", "media": {"payload": "%%%"}}),
            json.dumps({"event": 7}),
        ):
            await ws.send_str(junk)
        await ws.send_bytes(b"\x00binary")
        await wire.press(ws, "1")
        heard, closed = await agent_audio(ws, wire.caller, 8.0)
        assert heard > 0 and not closed
        await ws.close()
    record = await only_call_when_ended(server.state.store)
    assert record.status == "completed"
    assert "You pressed one. Our plans start at twenty dollars a month." in [
        t.text for t in await server.state.store.transcript(record.id)
    ]
