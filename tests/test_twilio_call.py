"""One real call, end to end: emulated Twilio against the real server and the offline demo agent."""

from __future__ import annotations

import time
from xml.etree import ElementTree

import aiohttp
from twilio.request_validator import RequestValidator

from tests.conftest import TWILIO_SID, TWILIO_TOKEN, twilio_env
from voicecli.call.audio import rms, silence
from voicecli.emulator.simulator import Press, Say, SimResult, simulate_call, speech


async def test_inbound_webhook_answers_the_specs_twiml(start_server, fake_twilio) -> None:
    server = await start_server(**twilio_env(fake_twilio, PUBLIC_BASE_URL="https://voice.example.com"))
    form = {
        "CallSid": "CA" + "1" * 32,
        "From": "+15551230000",
        "To": "+15559870000",
        "AccountSid": TWILIO_SID,
    }
    path = "/telephony/twilio/inbound/demo"
    signature = RequestValidator(TWILIO_TOKEN).compute_signature("https://voice.example.com" + path, form)
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + path, data=form, headers={"X-Twilio-Signature": signature}) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/xml"
            root = ElementTree.fromstring(await resp.text())
    stream = root.find("./Connect/Stream")
    assert stream is not None
    assert stream.get("url") == "wss://voice.example.com/ws/twilio/demo"  # no query string
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params["agent_name"] == "demo"
    assert params["direction"] == "inbound"
    assert params["from_number"] == "+15551230000"
    assert params["to_number"] == "+15559870000"
    assert params["twilio_call_sid"] == "CA" + "1" * 32
    assert params["stream_token"].startswith("call_")
    calls = await server.state.store.list()
    assert [(c.status, c.provider_call_id) for c in calls] == [("ringing", "CA" + "1" * 32)]


async def test_a_call_greets_answers_pricing_and_hangs_up_on_zero(start_server, fake_twilio) -> None:
    server = await start_server(**twilio_env(fake_twilio))
    result = await simulate_call(
        server.state.settings,
        server.url,
        "demo",
        "twilio",
        [Say(speech("What is your pricing?")), Press("0")],
        api_token=server.token,
    )
    # The agent hung up: the server closed the stream after the goodbye...
    assert result.ended_by == "agent"
    assert result.heard_seconds > 5 and rms(bytes(result.heard)) > 300
    # ...and hung up through Twilio's REST API (the fake one), with Basic auth.
    hangups = fake_twilio.find("POST", f"/Accounts/{TWILIO_SID}/Calls/{result.call.provider_call_id}.json")
    assert len(hangups) == 1
    assert hangups[0]["fields"] == {"Status": "completed"}
    assert hangups[0]["auth"].startswith("Basic ")

    record = result.record
    assert record is not None
    assert record["status"] == "completed"
    assert record["direction"] == "inbound" and record["provider"] == "twilio" and record["agent"] == "demo"
    assert record["from"] == "+15551230000" and record["to"] == "+15559870000"
    assert record["provider_call_id"] == result.call.provider_call_id
    assert record["ended_at"] and record["duration_s"] > 0
    assert "agent ended the call" in record["end_reason"]
    said = [(t["role"], t["text"]) for t in record["transcript"]]
    assert said[0][0] == "agent" and "voicecli demo line" in said[0][1]
    assert ("agent", "Our plans start at twenty dollars a month.") in said
    assert any(role == "caller" and "pric" in text for role, text in said)  # PocketSphinx: "price"/"pricing"
    assert said[-1] == ("agent", "Thanks for calling. Goodbye!")


async def test_agent_audio_arrives_as_twilio_media_messages(start_server, fake_twilio) -> None:
    server = await start_server(**twilio_env(fake_twilio))
    result = await simulate_call(server.state.settings, server.url, "demo", "twilio", [], linger_s=0.2)
    assert result.ended_by == "caller"
    # Everything the server sent was Twilio-shaped and carried this call's streamSid.
    assert all(m.get("streamSid") == result.call.stream_id for m in result.received)
    assert all(m["event"] in ("media", "clear", "mark") for m in result.received)
    assert result.heard_seconds > 3


async def silent_call(start_server, fake_twilio, project, edit: tuple[str, str]) -> tuple[SimResult, float]:
    """The demo agent, with one line of its TOML changed, and a caller who says nothing for 30 s.

    Returns the call and how long it lasted (seconds).
    """
    demo = project / "agents" / "demo.toml"
    old, new = edit
    assert old in demo.read_text()
    demo.write_text(demo.read_text().replace(old, new))
    server = await start_server(**twilio_env(fake_twilio))
    started = time.monotonic()
    result = await simulate_call(
        server.state.settings,
        server.url,
        "demo",
        "twilio",
        [Say(silence(30_000, 8000))],
        api_token=server.token,
    )
    return result, time.monotonic() - started


async def test_a_silent_caller_is_told_goodbye_after_the_agents_idle_timeout(
    start_server, fake_twilio, project
) -> None:
    result, lasted = await silent_call(
        start_server, fake_twilio, project, ("idle_timeout_s = 60", "idle_timeout_s = 2")
    )
    assert result.ended_by == "agent"
    assert lasted < 25  # greeting, 2 s of silence, goodbye: not the 30 s of silence
    record = result.record
    assert record is not None and record["status"] == "completed"
    assert "idle timeout" in record["end_reason"]
    said = [(t["role"], t["text"]) for t in record["transcript"]]
    assert said[0][0] == "agent" and "voicecli demo line" in said[0][1]
    assert said[-1] == ("agent", "Sorry, I have to end the call now. Goodbye!")
    assert not any(role == "caller" for role, _ in said)


async def test_a_call_is_ended_politely_at_the_agents_maximum_duration(start_server, fake_twilio, project) -> None:
    result, lasted = await silent_call(
        start_server, fake_twilio, project, ("max_duration_s = 600", "max_duration_s = 9")
    )
    assert result.ended_by == "agent"
    assert 9 < lasted < 25
    record = result.record
    assert record is not None and record["status"] == "completed"
    assert "maximum call duration" in record["end_reason"]
    assert [t["text"] for t in record["transcript"]][-1] == "Sorry, I have to end the call now. Goodbye!"
