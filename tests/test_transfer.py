"""Transfer to a person and key presses into a phone menu, on loopback: the fake Twilio and
Vobiz APIs get the provider's own transfer request, Vobiz's document answers only to a
signed request, and in-band DTMF tones decode back to the digits."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import twilio_env, vobiz_env
from tests.processes import until
from tests.wire import open_greeted
from voicecli.emulator.vobiz import VobizApi

DESK = """
greeting = "Front desk."
[stt]
provider = "pocketsphinx"
[tts]
provider = "espeak"
[llm]
provider = "script"
fallback = "Press two for a person."
[[llm.rules]]
dtmf = "2"
tool = "transfer_call"
arguments = { destination = "support" }
reply = "Transferring you."
error_reply = "Sorry, nobody can take your call right now."
[[llm.rules]]
dtmf = "3"
tool = "send_dtmf"
arguments = { digits = "1#" }
reply = "Done."

[transfer]
destinations = { sales = "+15551230001", support = "+15551230002" }
announce = "Connecting you now."
"""


async def _ended(store: Any, call_id: str) -> Any:
    async def ended() -> Any:
        record = await store.get(call_id)
        return record if record.status != "in-progress" else None

    return await until(ended, 15, "the call's end")


async def test_twilio_transfer_replaces_the_calls_twiml_and_is_not_hung_up(
    project: Path, start_server, fake_twilio
) -> None:
    (project / "agents" / "desk.toml").write_text(DESK)
    server = await start_server(agents=["desk"], **twilio_env(fake_twilio))
    async with aiohttp.ClientSession() as http:
        live, ws, record = await open_greeted(server, http, "twilio", "desk")
        await live.press(ws, "2")
        await until(lambda: fake_twilio.of_kind("transfer"), 10, "the transfer request")
        await ws.send_str(json.dumps(live.caller.hang_up(live.call, live.next_seq())))  # Twilio ends the stream
        await ws.close()
    ended = await _ended(server.state.store, record.id)
    [transfer] = fake_twilio.of_kind("transfer")
    assert transfer["path"].endswith(f"/Calls/{record.provider_call_id}.json")
    assert transfer["fields"]["Twiml"] == (
        f'<Response><Say>Connecting you now.</Say><Dial callerId="{record.to_number}">+15551230002</Dial></Response>'
    )
    assert ended.status == "transferred" and ended.end_reason.startswith("transferred to support")
    assert not fake_twilio.of_kind("hangup")  # a hang-up would cut the person being dialled
    rows = [(r.role, r.text) for r in await server.state.store.transcript(record.id)]
    assert ("tool", 'transfer_call({"destination": "support"}) -> {"transferred": "support"}') in rows


async def test_vobiz_transfer_points_the_a_leg_at_a_signed_document(project: Path, start_server, fake_vobiz) -> None:
    (project / "agents" / "desk.toml").write_text(DESK)
    server = await start_server(agents=["desk"], **vobiz_env(fake_vobiz))
    async with aiohttp.ClientSession() as http:
        live, ws, record = await open_greeted(server, http, "vobiz", "desk")
        await live.press(ws, "2")
        await until(lambda: fake_vobiz.of_kind("transfer"), 10, "the transfer request")
        [transfer] = fake_vobiz.of_kind("transfer")
        document = transfer["fields"]["aleg_url"]
        assert transfer["path"].endswith(f"/Call/{record.provider_call_id}/")
        assert transfer["fields"]["legs"] == "aleg" and transfer["fields"]["aleg_method"] == "POST"
        assert document == f"{server.url}/telephony/vobiz/transfer/{record.id}?to=support"
        # Vobiz fetches the new XML, signed; anyone else is refused.
        form = {"CallUUID": record.provider_call_id, "Event": "Transfer"}
        async with http.post(document, data=form) as resp:
            assert resp.status == 403
        signed = live.caller.sign(VobizApi.credentials["auth_token"], document, form)
        async with http.post(document, data=form, headers=signed) as resp:
            assert resp.status == 200
            xml = await resp.text()
        await ws.close()  # Vobiz moves the caller to the <Dial>: the stream goes
    assert xml == (
        f'<Response><Speak>Connecting you now.</Speak><Dial callerId="{record.to_number}">'
        "<Number>+15551230002</Number></Dial></Response>"
    )
    ended = await _ended(server.state.store, record.id)
    assert ended.status == "transferred"
    assert not fake_vobiz.of_kind("hangup")


def _goertzel(chunk: list[int], freq: int, rate: int) -> float:
    coeff, s1, s2 = 2 * math.cos(2 * math.pi * freq / rate), 0.0, 0.0
    for x in chunk:
        s1, s2 = x + coeff * s1 - s2, s1
    return s1 * s1 + s2 * s2 - coeff * s1 * s2


def _keys_in(pcm: bytes, rate: int = 8000) -> str:
    """The DTMF keys in 16-bit PCM, as a phone menu hears them: Goertzel over 20 ms blocks,
    a key counted once it holds for two blocks in a row (speech never does)."""
    from voicecli.call.dtmf_tones import COLUMNS, KEYS, ROWS

    samples = [int.from_bytes(pcm[i : i + 2], "little", signed=True) for i in range(0, len(pcm) - 1, 2)]
    block, keys, previous, counted = rate // 50, "", "", False
    for start in range(0, len(samples) - block, block):
        chunk = samples[start : start + block]
        rows = [_goertzel(chunk, f, rate) for f in ROWS]
        cols = [_goertzel(chunk, f, rate) for f in COLUMNS]
        row, col = max(range(4), key=rows.__getitem__), max(range(4), key=cols.__getitem__)
        # Both tones of one key dominate their groups, and carry most of the block's energy.
        energy = sum(x * x for x in chunk) * block / 2 or 1
        strong = rows[row] + cols[col] > 0.5 * energy
        clear = rows[row] > 20 * sorted(rows)[-2] and cols[col] > 20 * sorted(cols)[-2]
        key = KEYS[row * 4 + col] if strong and clear else ""
        if key and key == previous and not counted:
            keys, counted = keys + key, True
        elif key != previous:
            counted = False
        previous = key
    return keys


async def test_send_dtmf_plays_tones_that_decode_to_the_digits(project: Path, start_server) -> None:
    (project / "agents" / "desk.toml").write_text(DESK)
    server = await start_server(agents=["desk"])
    async with aiohttp.ClientSession() as http:
        live, ws, record = await open_greeted(server, http, "twilio", "desk")
        await asyncio.sleep(1.0)  # the greeting's audio plays out
        while True:  # what was sent before the press
            try:
                await ws.receive(timeout=0.3)
            except TimeoutError:
                break
        await live.press(ws, "3")
        heard = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 6
        while loop.time() < deadline:
            try:
                msg = await ws.receive(timeout=deadline - loop.time())
            except TimeoutError:
                break
            if msg.type == aiohttp.WSMsgType.TEXT:
                heard += live.caller.read(json.loads(msg.data)).pcm16
        await ws.close()
    assert _keys_in(heard) == "1#"
    rows = [(r.role, r.text) for r in await server.state.store.transcript(record.id)]
    assert ("tool", 'send_dtmf({"digits": "1#"}) -> {"sent": "1#"}') in rows
