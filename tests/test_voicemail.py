"""Voicemail detection on dialled calls (issue 18, protocols.md F3).

Twilio and Vobiz are asked to detect machines on the dial and post their verdict, signed, to
`/telephony/{provider}/amd/{call_id}`: the fake REST APIs keep the dial's fields and post the
verdict as the provider would, while the emulator picks the call up through what the dial
handed the provider. Exotel has no detection in its v1 API: the callee's first words are
classified in the pipeline (the script agent's keyword classifier over PocketSphinx).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import REPO
from tests.processes import CLEAN_ENV, run_voicecli, until
from voicecli.call.audio import rms, ulaw_decode, ulaw_encode
from voicecli.emulator.api import ProviderApi
from voicecli.emulator.simulator import Press, Say, SimResult, Step, answer_dialled_call, speech
from voicecli.providers import load_api, load_caller

CUSTOMER = "+15551234567"
# The verdict comes this long after the stream: the greeting has been synthesized and is
# waiting at the gate by then (a provider takes seconds to decide).
VERDICT_AFTER_S = 1.0
GREETING = "Hi, this is Ada from voicecli."
MESSAGE = "Please call Ada back. Goodbye."
# A short agent: its greeting and message are what the tests listen for.
AGENT = f"""
name = "vm"
greeting = "{GREETING}"

[stt]
provider = "pocketsphinx"

[llm]
provider = "script"
fallback = "Sorry, I did not catch that."

[[llm.rules]]
dtmf = "0"
reply = "Thanks, goodbye!"
end_call = true

[tts]
provider = "espeak"

[outbound]
voicemail = "message"
voicemail_message = "{MESSAGE}"
"""


class Line:
    """Fake provider APIs whose dials the emulator picks up, running the given steps."""

    def __init__(self, apis: dict[str, ProviderApi]):
        self.apis = apis
        self.server: Any = None
        self.steps: list[Step] = []
        self.callee_first = False
        self.answered: list[asyncio.Task[SimResult]] = []
        self.picked: list[tuple[dict[str, Any], str]] = []  # (dial fields, provider call id)

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for api in self.apis.values():
            env.update(api.env())
        return env

    def pick_up(self, provider: str, dial: Any, provider_call_id: str) -> None:
        self.picked.append((dict(dial), provider_call_id))
        task = answer_dialled_call(
            self.server.state.settings,
            self.server.url,
            provider,
            dial,
            provider_call_id,
            self.steps,
            reply_timeout=15.0,
            linger_s=0.2,
            callee_first=self.callee_first,
        )
        self.answered.append(asyncio.create_task(task))


@pytest.fixture
async def line(project: Path) -> AsyncIterator[Line]:
    (project / "agents" / "vm.toml").write_text(AGENT)
    async with AsyncExitStack() as stack:
        apis = {name: await stack.enter_async_context(load_api(name)) for name in ("twilio", "vobiz", "exotel")}
        fake = Line(apis)
        for name, api in apis.items():
            api.on_dial = lambda dial, call_id, name=name: fake.pick_up(name, dial, call_id)
        yield fake
        for task in fake.answered:
            task.cancel()
        await asyncio.gather(*fake.answered, return_exceptions=True)


async def _dial(http: aiohttp.ClientSession, server: Any, **body: Any) -> dict[str, Any]:
    body = {"phone_number": CUSTOMER, "agent_name": "vm", **body}
    async with http.post(server.url + "/api/calls/outbound", json=body, headers=server.headers) as resp:
        assert resp.status == 201, await resp.text()
        return await resp.json()


async def _streaming(server: Any, call_id: str) -> None:
    async def live() -> bool:
        record = await server.state.store.get(call_id)
        return record is not None and record.status == "in-progress"

    await until(live, 10, "the dialled call's stream")


def _agent_audio_s(result: SimResult, provider: str, settings: Any) -> float:
    """Seconds of speech the agent sent (its messages that are not silence)."""
    caller = load_caller(provider, settings)
    chunks = [caller.read(message).pcm16 for message in result.received]
    return sum(len(pcm) for pcm in chunks if rms(pcm) > 100) / (2 * 8000)


async def _said(server: Any, call_id: str) -> list[str]:
    return [t.text for t in await server.state.store.transcript(call_id) if t.role == "agent"]


async def _left_the_message_and_hung_up(server: Any, line: Any, call_id: str, provider: str, hang_up: str) -> None:
    """The machine got the message alone (the greeting was held, then dropped), then the
    provider's REST hang-up at `hang_up`, and the record says so."""
    [result] = await asyncio.gather(*line.answered)
    assert result.ended_by == "agent" and 1.0 < _agent_audio_s(result, provider, server.state.settings) < 3.5
    call = await server.state.store.get(call_id)
    assert call is not None and call.answered_by == "machine" and call.status == "completed"
    assert "left the voicemail message" in (call.end_reason or "")
    assert await _said(server, call_id) == [MESSAGE]
    assert [r["path"] for r in line.apis[provider].of_kind("hangup")] == [hang_up]


async def test_twilio_machine_verdict_leaves_the_message_and_hangs_up(start_server, line) -> None:
    server = line.server = await start_server(agents=["vm"], **line.env())
    api = line.apis["twilio"]
    async with aiohttp.ClientSession() as http:
        record = await _dial(http, server, provider="twilio")  # the agent's default: message
        [(dial, call_sid)] = line.picked
        amd_url = f"{server.url}/telephony/twilio/amd/{record['id']}"
        assert dial["MachineDetection"] == "DetectMessageEnd" and dial["AsyncAmd"] == "true"
        assert dial["AsyncAmdStatusCallback"].endswith(f"/telephony/twilio/amd/{record['id']}")
        assert dial["AsyncAmdStatusCallbackMethod"] == "POST"
        await _streaming(server, record["id"])
        await asyncio.sleep(VERDICT_AFTER_S)
        form = {"CallSid": call_sid, "AnsweredBy": "machine_end_beep"}
        async with http.post(amd_url, data=form) as resp:
            assert resp.status == 403  # verified like every Twilio webhook
        assert await api.post_machine_verdict(http, server.url, dial, call_sid, "machine_end_beep") == 200  # type: ignore[attr-defined]
    hang_up = f"/2010-04-01/Accounts/{api.credentials['account_sid']}/Calls/{call_sid}.json"
    await _left_the_message_and_hung_up(server, line, record["id"], "twilio", hang_up)


async def test_twilio_human_verdict_lets_the_conversation_go_on(start_server, line) -> None:
    server = line.server = await start_server(agents=["vm"], **line.env())
    line.steps = [Press("0")]
    api = line.apis["twilio"]
    async with aiohttp.ClientSession() as http:
        record = await _dial(http, server, provider="twilio", voicemail="hangup")
        [(dial, call_sid)] = line.picked
        await _streaming(server, record["id"])
        assert await api.post_machine_verdict(http, server.url, dial, call_sid, "human") == 200  # type: ignore[attr-defined]
        [result] = await asyncio.gather(*line.answered)
        async with http.get(server.url + "/api/calls", params={"answered_by": "human"}, headers=server.headers) as resp:
            assert [c["id"] for c in await resp.json()] == [record["id"]]
        async with http.get(
            server.url + "/api/calls", params={"answered_by": "machine"}, headers=server.headers
        ) as resp:
            assert await resp.json() == []
    assert result.ended_by == "agent"
    call = await server.state.store.get(record["id"])
    assert call is not None and call.answered_by == "human" and call.status == "completed"
    said = " ".join(await _said(server, record["id"]))  # one turn or two, as the aggregator closes them
    assert said.startswith(GREETING) and said.endswith("Thanks, goodbye!")


async def test_vobiz_machine_verdict_waits_for_the_greeting_to_end_then_leaves_the_message(start_server, line) -> None:
    server = line.server = await start_server(agents=["vm"], **line.env())
    api = line.apis["vobiz"]
    async with aiohttp.ClientSession() as http:
        record = await _dial(http, server, provider="vobiz", voicemail="message")
        [(dial, call_uuid)] = line.picked
        assert dial["machine_detection"] == "true" and dial["machine_detection_method"] == "POST"
        assert dial["machine_detection_url"].endswith(f"/telephony/vobiz/amd/{record['id']}")
        await _streaming(server, record["id"])
        await asyncio.sleep(VERDICT_AFTER_S)
        form = {"CallUUID": call_uuid, "Event": "MachineDetection", "Machine": "true"}
        async with http.post(f"{server.url}/telephony/vobiz/amd/{record['id']}", data=form) as resp:
            assert resp.status == 403  # signed like Vobiz's other callbacks
        assert await api.post_machine_verdict(http, server.url, dial, call_uuid, True) == 200  # type: ignore[attr-defined]
    hang_up = f"/api/v1/Account/{api.credentials['auth_id']}/Call/{call_uuid}/"
    await _left_the_message_and_hung_up(server, line, record["id"], "vobiz", hang_up)


async def test_vobiz_human_verdict_lets_the_conversation_go_on(start_server, line) -> None:
    server = line.server = await start_server(agents=["vm"], **line.env())
    line.steps = [Press("0")]
    api = line.apis["vobiz"]
    async with aiohttp.ClientSession() as http:
        record = await _dial(http, server, provider="vobiz")
        [(dial, call_uuid)] = line.picked
        await _streaming(server, record["id"])
        assert await api.post_machine_verdict(http, server.url, dial, call_uuid, False) == 200  # type: ignore[attr-defined]
    [result] = await asyncio.gather(*line.answered)
    assert result.ended_by == "agent"
    call = await server.state.store.get(record["id"])
    assert call is not None and call.answered_by == "human" and call.status == "completed"
    said = " ".join(await _said(server, record["id"]))
    assert said.startswith(GREETING) and said.endswith("Thanks, goodbye!")


async def test_exotel_callee_whose_words_are_a_voicemail_greeting_is_hung_up_on(project, start_server, line) -> None:
    server = line.server = await start_server(agents=["vm"], **line.env())
    line.callee_first = True  # a machine speaks as soon as it answers
    # The greeting as Exotel gets it: off the phone network, which carries voices in G.711.
    greeting = ulaw_decode(ulaw_encode(speech("Hi, you have reached Sam. Please leave a message after the tone.")))
    line.steps = [Say(greeting)]
    args = ("call", CUSTOMER, "--provider", "exotel", "--voicemail", "hangup", "--server", server.url)
    code, out, err = await run_voicecli(project, *args, env={**CLEAN_ENV, "PYTHONPATH": str(REPO)})
    assert code == 0, err
    [dial] = line.apis["exotel"].of_kind("dial")
    assert not [k for k in dial["fields"] if "amd" in k.lower() or "machine" in k.lower()]  # v1 has none
    [result] = await asyncio.gather(*line.answered)
    assert result.ended_by == "agent" and _agent_audio_s(result, "exotel", server.state.settings) == 0
    [call] = await server.state.store.list()
    assert call.answered_by == "machine" and call.voicemail == "hangup" and call.status == "completed"
    assert "hung up" in (call.end_reason or "")
    said = [t.text for t in await server.state.store.transcript(call.id)]
    assert not [t for t in said if GREETING in t]


async def test_a_voicemail_mode_that_is_not_one_is_422_and_dials_nothing(start_server, line) -> None:
    server = line.server = await start_server(agents=["vm"], **line.env())
    async with aiohttp.ClientSession() as http:
        body = {"phone_number": CUSTOMER, "agent_name": "vm", "provider": "twilio", "voicemail": "beep"}
        async with http.post(server.url + "/api/calls/outbound", json=body, headers=server.headers) as resp:
            assert resp.status == 422 and "hangup, message, off" in (await resp.json())["error"]
        record = await _dial(http, server, provider="twilio", voicemail="off")  # no detection asked
    [(dial, _)] = line.picked
    assert not [k for k in dial if k in line.apis["twilio"].machine_fields]  # type: ignore[attr-defined]
    assert record["voicemail"] == "off" and record["answered_by"] is None
    assert [d["provider"] for d in line.apis["twilio"].of_kind("dial")] == ["twilio"]


async def test_a_verdict_that_reaches_another_instance_goes_to_the_one_carrying_the_call(start_server, line) -> None:
    # Two instances on one store, behind one public URL: the verdict lands on B, the call is on A.
    env = line.env() | {"PUBLIC_BASE_URL": "https://voicecli.example"}
    a = line.server = await start_server(agents=["vm"], **env)
    b = await start_server(agents=["vm"], **env)
    api = line.apis["vobiz"]
    async with aiohttp.ClientSession() as http:
        record = await _dial(http, a, provider="vobiz", voicemail="hangup")
        [(dial, call_uuid)] = line.picked
        assert dial["machine_detection_url"] == f"https://voicecli.example/telephony/vobiz/amd/{record['id']}"
        await _streaming(a, record["id"])
        await asyncio.sleep(VERDICT_AFTER_S)
        assert await api.post_machine_verdict(http, b.url, dial, call_uuid, True) == 200  # type: ignore[attr-defined]
    [result] = await asyncio.gather(*line.answered)
    assert result.ended_by == "agent" and _agent_audio_s(result, "vobiz", a.state.settings) == 0
    call = await a.state.store.get(record["id"])
    assert call is not None and call.instance == a.state.holder
    assert (call.answered_by, call.status) == ("machine", "completed") and "hung up" in (call.end_reason or "")
