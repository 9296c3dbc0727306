"""Turn latency on the real server: from the caller's last speech frame sent to the agent's first audio."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from tests.wire import WireCall
from voicecli.call.audio import silence
from voicecli.emulator.simulator import speech

MENU_QUESTIONS = (
    "What is on the menu?",
    "What pizzas do you have?",
    "What toppings do you have?",
    "Can I see the menu?",
)
FRAME = 320  # 20 ms of 8 kHz 16-bit audio


async def turn_latency(server_url: str, settings, agent: str, sentence: str) -> float:
    """Ring, let the greeting play out, say `sentence` on a 20 ms clock; seconds to the reply's first audio."""
    call = WireCall(settings, server_url, agent=agent)
    audio = speech(sentence)
    async with aiohttp.ClientSession() as http:
        await call.ring(http)
        async with await call.connect(http) as ws:
            await call.start(ws)
            last_audio = time.monotonic()
            outgoing = bytearray()
            spoke_at: list[float] = []
            heard_at: list[float] = []
            replied = asyncio.Event()

            async def receive() -> None:
                nonlocal last_audio
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT and call.caller.read(json.loads(msg.data)).pcm16:
                        last_audio = time.monotonic()
                        if spoke_at and not heard_at:
                            heard_at.append(last_audio)
                            replied.set()

            async def clock() -> None:
                next_at = time.monotonic()
                while not ws.closed:
                    chunk = bytes(outgoing[:FRAME])
                    del outgoing[:FRAME]
                    await call.media(ws, chunk + silence(20, 8000)[len(chunk) :])
                    if chunk and not outgoing:
                        spoke_at.append(time.monotonic())
                    next_at += 0.02
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))

            tasks = [asyncio.create_task(receive()), asyncio.create_task(clock())]
            try:
                # The greeting has played out once its audio has paused for half a second.
                quiet = 0.0
                while quiet < 0.5:
                    await asyncio.sleep(0.5 - quiet)
                    quiet = time.monotonic() - last_audio
                outgoing.extend(audio)
                await asyncio.wait_for(replied.wait(), len(audio) / 16000 + 10)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    assert heard_at, f"no reply to {sentence!r}"
    return heard_at[0] - spoke_at[0]


async def test_the_pizza_shop_answers_each_menu_question_within_2_5_s(start_server) -> None:
    # The questions Smart Turn rated "not finished", which waited pipecat's 3 s fallback (issue 13).
    # The pizza agent has no [turn] table: the default fallback is what is tested. Loose on
    # purpose, for shared machines; bench/turn_latency.py has the exact figures.
    server = await start_server(agents=["pizza"])
    settings = server.state.settings
    # One call at a time: four at once on a shared 2-core machine timed the calls' own CPU queue
    # (Smart Turn runs one inference at a time), not a caller's wait (a CI run saw 2.5 and 2.9 s).
    latencies = [await turn_latency(server.url, settings, "pizza", q) for q in MENU_QUESTIONS]
    assert all(0 < latency < 2.5 for latency in latencies), dict(zip(MENU_QUESTIONS, latencies, strict=True))


async def test_the_demo_answers_within_its_max_wait(start_server) -> None:
    # The demo's [turn] table: Smart Turn with a 0.7 s fallback, so every reply starts well within 1 s
    # on an idle machine; 1.5 s here leaves room for a busy one.
    server = await start_server(agents=["demo"])
    latency = await turn_latency(server.url, server.state.settings, "demo", "What is your pricing?")
    assert 0 < latency < 1.5
