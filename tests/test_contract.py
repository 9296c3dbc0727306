"""One contract, every registered provider: the same call, limits and junk handling over each
wire protocol. Nothing here names a provider: what differs lives in its emulator."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.wire import WireCall, agent_audio, only_call_when_ended
from voicecli.call.audio import rms
from voicecli.emulator.api import ProviderApi
from voicecli.emulator.base import CallerSide
from voicecli.emulator.simulator import Press, Say, SimResult, simulate_call, speech
from voicecli.providers import PROVIDERS, load_api, load_caller, provider_class
from voicecli.providers.base import DetectsMachines, HangsUp
from voicecli.settings import load_settings


@dataclass
class Setup:
    """A provider's environment, its fake REST API, and its caller side."""

    name: str
    api: ProviderApi
    caller: CallerSide

    @property
    def env(self) -> dict[str, str]:
        return self.api.env()

    def check_hang_up(self, result: SimResult) -> None:
        """The agent's hang-up as the provider wants it: its stop message, its REST call."""
        call, record = result.call, result.record
        if self.caller.stop_event:
            stops = [m for m in result.received if m.get("event") == self.caller.stop_event]
            assert [self.caller.stream_id_of(m) for m in stops] == [call.stream_id]
        hangups = self.api.of_kind("hangup")
        if issubclass(provider_class(self.name), HangsUp):
            [hangup] = hangups
            assert call.provider_call_id in hangup["path"]
            # The fake API refuses bad credentials as the provider does: this one was accepted.
            assert f"hung up through {provider_class(self.name).label}'s REST API" in record["end_reason"]
        else:  # no hang-up API: closing the stream is the hang-up
            assert hangups == []

    def audio_messages(self, result: SimResult) -> list[dict[str, Any]]:
        return [m for m in result.received if self.caller.read(m).event == "media"]


@pytest.fixture(params=list(PROVIDERS))
async def setup(request, project) -> AsyncIterator[Setup]:
    name = request.param
    async with load_api(name) as api:
        yield Setup(name, api, load_caller(name, load_settings(project, environ=api.env())))


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
    assert all(setup.caller.stream_id_of(m) == result.call.stream_id for m in audio)
    # The provider's own rules for what it is sent (Exotel's 320-byte chunks, Plivo's format).
    assert [v for m in result.received for v in setup.caller.violations(m)] == []


async def test_dtmf_reaches_the_agent(start_server, setup: Setup) -> None:
    server = await start_server(**setup.env)
    result = await simulate_call(
        server.state.settings, server.url, "demo", setup.name, [Press("2")], linger_s=0.2, api_token=server.token
    )
    said = [(t["role"], t["text"]) for t in result.record["transcript"]]
    reply = ("agent", "You pressed two. We are open from nine to five, Monday to Friday.")
    assert reply in said
    assert said.index(("caller", "[pressed 2]")) < said.index(reply)  # the key press, in its place
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


async def test_status_lists_every_provider_with_its_limit_and_capabilities(start_server) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/api/status", headers=server.headers) as resp:
            providers = (await resp.json())["providers"]
    assert list(providers) == list(PROVIDERS)
    for name, entry in providers.items():
        assert (entry["active"], entry["limit"]) == (0, 10)
        hangs_up = issubclass(provider_class(name), HangsUp)
        assert ("hang-up" in entry["capabilities"]) == hangs_up
        detects = issubclass(provider_class(name), DetectsMachines)
        assert ("machine detection" in entry["capabilities"]) == detects
