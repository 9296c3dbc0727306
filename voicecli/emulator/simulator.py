"""The provider emulator behind `voicecli simulate` and the tests.

It plays the provider's side of a call against a running server: posts the inbound webhook
(signed as the provider signs it), follows the returned document to the media WebSocket,
streams audio in real-time frames of the provider's encoding (silence between utterances,
as a phone line does), presses keys, and records what the caller would hear.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from voicecli.call.audio import read_wav, resample, silence
from voicecli.emulator.base import CallerSide, SimCall
from voicecli.errors import ServerNotRunningError, VoicecliError
from voicecli.providers import load_caller
from voicecli.providers.base import WebhookRejected
from voicecli.settings import Settings

RATE = 8000


@dataclass(frozen=True)
class Say:
    """Speak this audio (8 kHz 16-bit mono), then wait for the agent's reply."""

    pcm16: bytes
    label: str = ""


@dataclass(frozen=True)
class Press:
    """Press a key, then wait for the agent's reply."""

    digit: str


Step = Say | Press


@dataclass
class SimResult:
    """What happened on an emulated call."""

    call: SimCall
    heard: bytearray = field(default_factory=bytearray)  # what the caller heard, on a timeline
    ended_by: str = ""
    sent_messages: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)  # every message the server sent
    record: dict[str, Any] | None = None
    record_error: str | None = None  # why the server's record could not be read after the call
    # A dialled call: the HTTP status the server gave the provider's final status callback.
    status_callback: int | None = None

    @property
    def heard_seconds(self) -> float:
        return len(self.heard) / (2 * RATE)


class _Line:
    """The caller's end of the socket: a 20 ms clock sending audio or silence, and playout."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, caller: CallerSide, call: SimCall, seq: int):
        self.ws, self.caller, self.call = ws, caller, call
        self.seq = seq
        self.frame_bytes = RATE * 2 * caller.frame_ms // 1000
        self.outgoing = bytearray()
        self.t0 = time.monotonic()
        self.playout_end = 0.0
        self.last_audio = 0.0
        self.closed = asyncio.Event()
        self.drained = asyncio.Event()
        self.sent = 0

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    async def send(self, message: dict[str, Any]) -> None:
        if not self.ws.closed:
            await self.ws.send_str(json.dumps(message))
            self.sent += 1

    async def clock(self) -> None:
        """Send one frame every frame_ms on a real-time clock, as the provider does."""
        period = self.caller.frame_ms / 1000
        next_at = time.monotonic()
        while not self.ws.closed:
            chunk = bytes(self.outgoing[: self.frame_bytes])
            del self.outgoing[: self.frame_bytes]
            if not self.outgoing:
                self.drained.set()
            chunk += silence(self.caller.frame_ms, RATE)[len(chunk) :]
            try:
                await self.send(self.caller.media(self.call, chunk, self.next_seq()))
            except ConnectionError:
                return
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def heard(self, result: SimResult, pcm16: bytes) -> None:
        """Place agent audio where the caller's phone would play it."""
        now = time.monotonic()
        start = max(now, self.playout_end)
        self.playout_end = start + len(pcm16) / (2 * RATE)
        self.last_audio = now
        offset = int((start - self.t0) * RATE) * 2
        if len(result.heard) < offset:
            result.heard.extend(bytes(offset - len(result.heard)))
        result.heard[offset : offset + len(pcm16)] = pcm16

    async def receive(self, result: SimResult) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            message = json.loads(msg.data)
            result.received.append(message)
            got = self.caller.read(message)
            if got.pcm16:
                self.heard(result, got.pcm16)
            elif got.event in ("clear", "clearAudio"):
                self.playout_end = time.monotonic()  # the phone drops what it had buffered
            if got.event == "stop":
                break
        self.closed.set()

    async def agent_turn(self, first_audio_timeout: float, quiet_s: float = 1.0) -> None:
        """Wait for the agent to start speaking, then to finish (its audio played out)."""
        start = time.monotonic()
        while not self.closed.is_set() and self.last_audio < start:
            if time.monotonic() - start > first_audio_timeout:
                return
            await asyncio.sleep(0.05)
        while not self.closed.is_set():
            now = time.monotonic()
            if now > self.playout_end + quiet_s and now > self.last_audio + quiet_s:
                return
            await asyncio.sleep(0.05)

    async def speak(self, pcm16: bytes) -> None:
        """Queue speech on the line and return once it has all been sent (or the call ended)."""
        self.drained.clear()
        self.outgoing.extend(pcm16)
        waits = {asyncio.ensure_future(self.drained.wait()), asyncio.ensure_future(self.closed.wait())}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()


def speech(text: str) -> bytes:
    """`text` spoken by the offline TTS, as 8 kHz 16-bit audio."""
    from voicecli.services.espeak_tts import synthesize

    pcm, rate = synthesize(text)
    return resample(pcm, rate, RATE)


def build_steps(say: Sequence[str], wavs: Sequence[Any], dtmf: Sequence[str]) -> list[Step]:
    """Spoken sentences, then WAV files, then key presses, in the order given."""
    steps: list[Step] = [Say(speech(text), text) for text in say]
    for path in wavs:
        try:
            pcm, rate = read_wav(path)
        except (OSError, ValueError, EOFError) as exc:
            raise VoicecliError(f"cannot play {path}: {exc}") from None
        steps.append(Say(resample(pcm, rate, RATE), str(path)))
    for digit in dtmf:
        if len(digit) != 1 or digit not in "0123456789*#":
            raise VoicecliError(f"--dtmf takes one key: 0-9, * or # (got {digit!r})")
        steps.append(Press(digit))
    return steps


def _local_ws_url(stream_url: str, server_url: str) -> str:
    """The document's stream path on the server we were told to call (a tunnel reaches the same)."""
    stream, server = urlsplit(stream_url), urlsplit(server_url)
    scheme = "wss" if server.scheme == "https" else "ws"
    return urlunsplit((scheme, server.netloc, stream.path, stream.query, ""))


async def simulate_call(
    settings: Settings,
    server_url: str,
    agent: str,
    provider: str,
    steps: Sequence[Step],
    *,
    from_number: str = "+15551230000",
    to_number: str = "+15559870000",
    reply_timeout: float = 20.0,
    linger_s: float = 1.0,
    api_token: str | None = None,
) -> SimResult:
    """Place one emulated inbound call and return what the caller heard and how it ended."""
    caller = load_caller(provider, settings)
    call = caller.new_call(from_number, to_number)

    async def ring(http: aiohttp.ClientSession) -> tuple[str, dict[str, str]]:
        return await caller.ring(http, server_url.rstrip("/"), agent, call)

    return await _run(caller, call, ring, server_url, provider, steps, reply_timeout, linger_s, api_token)


async def answer_dialled_call(
    settings: Settings,
    server_url: str,
    provider: str,
    dial: Mapping[str, Any],
    provider_call_id: str,
    steps: Sequence[Step],
    *,
    reply_timeout: float = 20.0,
    linger_s: float = 1.0,
    api_token: str | None = None,
    callee_first: bool = False,
) -> SimResult:
    """Pick up a call the server dialled, given what it sent the provider's REST API.

    `callee_first`: the first step starts at once (an answering machine's greeting), without
    waiting for the agent to speak.
    """
    caller = load_caller(provider, settings)
    call = replace(caller.new_call("+15559870000", "+15551230000"), provider_call_id=provider_call_id)

    async def pick_up(http: aiohttp.ClientSession) -> tuple[str, dict[str, str]]:
        return await caller.pick_up(http, server_url.rstrip("/"), dial, call)

    async def hang_up(http: aiohttp.ClientSession, result: SimResult) -> None:
        # After the stream, the provider reports the call's end to the dial's status URL.
        result.status_callback = await caller.call_ended(http, server_url.rstrip("/"), dial, call)

    return await _run(
        caller, call, pick_up, server_url, provider, steps, reply_timeout, linger_s, api_token, hang_up, callee_first
    )


async def _run(
    caller: CallerSide,
    call: SimCall,
    connect: Callable[[aiohttp.ClientSession], Awaitable[tuple[str, dict[str, str]]]],
    server_url: str,
    provider: str,
    steps: Sequence[Step],
    reply_timeout: float,
    linger_s: float,
    api_token: str | None,
    after: Callable[[aiohttp.ClientSession, SimResult], Awaitable[None]] | None = None,
    callee_first: bool = False,
) -> SimResult:
    result = SimResult(call)
    server_url = server_url.rstrip("/")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)) as http:
        try:
            stream_url, parameters = await connect(http)
            await _talk(
                http,
                caller,
                call,
                result,
                stream_url,
                parameters,
                server_url,
                steps,
                reply_timeout,
                linger_s,
                callee_first,
            )
            if after is not None:
                await after(http, result)
            if api_token:
                try:
                    result.record = await fetch_record(http, server_url, api_token, provider, call.provider_call_id)
                except (aiohttp.ClientError, OSError) as exc:
                    # The server stopped as the call ended: the call itself is done and kept.
                    result.record_error = f"{type(exc).__name__}: {exc}"
            return result
        except WebhookRejected as exc:
            raise VoicecliError(f"the server refused the call: HTTP {exc.status}: {exc.reason}") from None
        except aiohttp.WSServerHandshakeError as exc:
            raise VoicecliError(f"the server refused the media stream: HTTP {exc.status} {exc.message}") from None
        except aiohttp.ClientConnectionError as exc:
            raise ServerNotRunningError(f"cannot reach the server at {server_url}: {exc}") from None


async def _talk(
    http: aiohttp.ClientSession,
    caller: CallerSide,
    call: SimCall,
    result: SimResult,
    stream_url: str,
    parameters: Mapping[str, str],
    server_url: str,
    steps: Sequence[Step],
    reply_timeout: float,
    linger_s: float,
    callee_first: bool = False,
) -> None:
    async with http.ws_connect(_local_ws_url(stream_url, server_url), autoping=True) as ws:
        opening = caller.opening(call, parameters)
        line = _Line(ws, caller, call, seq=len(opening) - 1)
        for message in opening:
            await line.send(message)
        tasks = [asyncio.create_task(line.receive(result)), asyncio.create_task(line.clock())]
        try:
            if not callee_first:
                await line.agent_turn(reply_timeout)
            for step in steps:
                if line.closed.is_set():
                    break
                if isinstance(step, Say):
                    await line.speak(step.pcm16)
                else:
                    await line.send(caller.dtmf(call, step.digit, line.next_seq()))
                await line.agent_turn(reply_timeout)
            if line.closed.is_set():
                result.ended_by = "agent"
            else:
                await asyncio.sleep(linger_s)
                result.ended_by = "caller"
                goodbye = caller.hang_up(call, line.next_seq())
                if goodbye:
                    await line.send(goodbye)
                await ws.close()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            result.sent_messages = line.sent


async def fetch_record(
    http: aiohttp.ClientSession, server_url: str, token: str, provider: str, provider_call_id: str
) -> dict[str, Any] | None:
    """The server's record of the call, once it is closed (waits a few seconds for it)."""
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + 10
    record = None
    while time.monotonic() < deadline:
        async with http.get(
            f"{server_url}/api/calls", params={"provider": provider, "limit": "200"}, headers=headers
        ) as resp:
            resp.raise_for_status()
            calls = await resp.json()
        match = next((c for c in calls if c["provider_call_id"] == provider_call_id), None)
        if match:
            async with http.get(f"{server_url}/api/calls/{match['id']}", headers=headers) as resp:
                record = await resp.json()
            if record.get("ended_at"):
                return record
        await asyncio.sleep(0.2)
    return record
