"""Recordings and per-turn latency, checked on real calls: the WAV as audio, the latency rows as numbers."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import time
import wave
from collections.abc import Callable
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import make_settings
from tests.processes import serving, until
from tests.test_shutdown import _wait_for_server
from tests.wire import WireCall, in_store, only_call_when_ended
from voicecli.call.audio import silence, ulaw_decode, ulaw_encode
from voicecli.call.recording import JITTER_S, RATE, CallRecorder, repair, wav_header
from voicecli.cli import app
from voicecli.emulator.simulator import speech
from voicecli.server.recordings import REPAIRED
from voicecli.store import CallRecord

FRAME = 320  # 20 ms of 8 kHz 16-bit audio
LOUD = 500  # a sample this loud is sound, not the line's silence
ALIGN_S = 0.06
QUESTIONS = ("What is your pricing?", "What are your hours?")


def record_demo(project: Path) -> None:
    """The shipped demo agent, recording its calls."""
    path = project / "agents" / "demo.toml"
    path.write_text(path.read_text() + "record = true\n")


def channels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, RATE)
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    return frames[:, 0], frames[:, 1]


def onset(samples: np.ndarray, after_s: float = 0.0) -> float:
    """Seconds to the first loud sample at or after `after_s`."""
    start = round(after_s * RATE)
    loud = np.flatnonzero(np.abs(samples[start:].astype(np.int32)) > LOUD)
    assert len(loud), f"no sound after {after_s:.2f} s"
    return (start + loud[0]) / RATE


class Caller:
    """A caller on a 20 ms clock: sends silence or speech, notes when it spoke and heard."""

    def __init__(self, wire: WireCall, ws: aiohttp.ClientWebSocketResponse):
        self.wire, self.ws = wire, ws
        self.outgoing = bytearray()
        self.first_heard: float | None = None
        self.last_heard = 0.0
        self.heard_since: list[float] = []  # first agent audio after each question
        self.spoke: list[tuple[float, float]] = []  # (first, last) speech frame sent, per question
        self._waiting = asyncio.Event()
        self._tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._clock())]

    async def _receive(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT and self.wire.caller.read(json.loads(msg.data)).pcm16:
                now = time.monotonic()
                self.first_heard = self.first_heard or now
                self.last_heard = now
                if len(self.heard_since) < len(self.spoke) and not self.outgoing:
                    self.heard_since.append(now)
                    self._waiting.set()

    async def _clock(self) -> None:
        next_at = time.monotonic()
        while not self.ws.closed:
            chunk = bytes(self.outgoing[:FRAME])
            del self.outgoing[:FRAME]
            await self.wire.media(self.ws, chunk + silence(20, RATE)[len(chunk) :])
            now = time.monotonic()
            if chunk and len(self.spoke) == len(self.heard_since):
                self.spoke.append((now, now))
            elif chunk:
                self.spoke[-1] = (self.spoke[-1][0], now)
            next_at += 0.02
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def quiet(self, seconds: float = 0.6, within_s: float = 20.0) -> None:
        """Until the agent has been silent for `seconds` (its words played out)."""
        deadline = time.monotonic() + within_s
        while self.first_heard is None or time.monotonic() - self.last_heard < seconds:
            assert time.monotonic() < deadline, "the agent never went quiet"
            await asyncio.sleep(0.05)

    async def ask(self, pcm16: bytes) -> None:
        self._waiting.clear()
        self.outgoing.extend(pcm16)
        await asyncio.wait_for(self._waiting.wait(), 15)

    async def hang_up(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ws.close()


runner = CliRunner()


async def test_a_recorded_call_holds_both_sides_where_the_caller_heard_them(project, start_server) -> None:
    record_demo(project)
    server = await start_server()
    questions = [speech(q) for q in QUESTIONS]
    async with aiohttp.ClientSession() as http:
        wire = WireCall(server.state.settings, server.url)
        caller = Caller(wire, await wire.open(http))
        for pcm in questions:
            await caller.quiet()
            await caller.ask(pcm)
        await caller.quiet()
        await caller.hang_up()
        record = await only_call_when_ended(server.state.store)

        # The record, and the API's view of it.
        assert record.status == "completed"
        path = project / ".voicecli" / "recordings" / f"{record.id}.wav"
        assert record.recording_path == str(path) and record.recording_error is None
        assert (path.stat().st_mode & 0o777) == 0o600
        left, right = channels(path)
        assert record.recording_s == pytest.approx(len(left) / RATE, abs=0.01)
        async with http.get(f"{server.url}/api/calls/{record.id}/recording", headers=server.headers) as resp:
            assert resp.status == 200 and resp.content_type == "audio/wav"
            assert await resp.read() == path.read_bytes()
        async with http.get(f"{server.url}/api/calls/{record.id}/recording") as resp:
            assert resp.status == 401

    # The file's clock starts at the greeting's first audio, as the caller's did.
    assert caller.first_heard is not None
    greeting = onset(right)
    assert greeting < 1.0
    for (spoke_at, _), heard_at, pcm in zip(caller.spoke, caller.heard_since, questions, strict=True):
        sent = np.frombuffer(ulaw_decode(ulaw_encode(pcm)), dtype="<i2")
        offset = np.flatnonzero(np.abs(sent.astype(np.int32)) > LOUD)[0] / RATE
        expected = greeting + spoke_at - caller.first_heard + offset
        # The caller's words on the left, where they were sent, and the same words.
        said = onset(left, expected - 0.5)
        assert said == pytest.approx(expected, abs=ALIGN_S)
        start = round((said - offset) * RATE)
        heard = left[start : start + len(sent)].astype(float)
        assert np.corrcoef(heard, sent[: len(heard)].astype(float))[0, 1] > 0.9
        # The reply on the right, as heard; never on the caller's channel, nor the caller on the agent's.
        reply = onset(right, said)
        assert reply == pytest.approx(greeting + heard_at - caller.first_heard, abs=ALIGN_S)
        assert np.abs(right[round(said * RATE) : round((said + len(sent) / RATE - 0.3) * RATE)]).max() == 0
    assert np.abs(left[: round((onset(left) - 0.1) * RATE)]).max() == 0

    # Latency: the greeting answers nobody; each reply from the caller's last sound to its first audio.
    transcript = await server.state.store.transcript(record.id)
    agent_rows = [t for t in transcript if t.role == "agent"]
    assert [t.text for t in agent_rows[1:]] == [
        "Our plans start at twenty dollars a month.",
        "We are open from nine to five, Monday to Friday.",
    ]
    assert agent_rows[0].latency_ms is None
    for row, (_, last_sent), heard_at in zip(agent_rows[1:], caller.spoke, caller.heard_since, strict=True):
        assert row.latency_ms is not None and 200 < row.latency_ms < 2500
        # The caller's own measure: its last speech frame sent (the words' tail is quiet) to the reply.
        assert row.latency_ms / 1000 == pytest.approx(heard_at - last_sent, abs=0.25)
    latencies = sorted(t.latency_ms for t in agent_rows[1:] if t.latency_ms is not None)

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/api/calls/{record.id}", headers=server.headers) as resp:
            detail = await resp.json()
    assert detail["recording_s"] == record.recording_s
    assert [t["latency_ms"] for t in detail["transcript"] if t["role"] == "agent"][1:] == [
        t.latency_ms for t in agent_rows[1:]
    ]
    assert detail["latency"]["replies"] == 2
    assert detail["latency"]["p50_ms"] == round(sum(latencies) / 2)

    shown = await asyncio.to_thread(runner.invoke, app, ["calls", "show", record.id, "--server", server.url])
    assert shown.exit_code == 0, shown.output
    assert str(path) in shown.output and "recording_s" in shown.output
    assert f"p50 {detail['latency']['p50_ms']} ms" in shown.output
    assert f"[{agent_rows[1].latency_ms} ms]" in shown.output
    saved = project / "call.wav"
    got = await asyncio.to_thread(
        runner.invoke, app, ["calls", "recording", record.id, "-o", str(saved), "--server", server.url]
    )
    assert got.exit_code == 0, got.output
    assert saved.read_bytes() == path.read_bytes()


async def test_the_recording_api_says_when_there_is_none_or_it_is_elsewhere(project, start_server) -> None:
    server = await start_server()
    store = server.state.store
    plain = await store.create(provider="twilio", agent="demo", direction="inbound")
    remote = await store.create(provider="twilio", agent="demo", direction="inbound", instance="far-host-7-abc123/w2")
    await store.set_recording(remote.id, path="/nowhere/on/this/disk.wav", seconds=3.0)
    async with aiohttp.ClientSession(headers=server.headers) as http:
        for call_id, words in (
            (plain.id, "has no recording"),
            (remote.id, "instance far-host-7-abc123"),
            ("call_unknown", "no call"),
        ):
            async with http.get(f"{server.url}/api/calls/{call_id}/recording") as resp:
                assert resp.status == 404
                assert words in (await resp.json())["error"]


async def test_a_recording_the_disk_refuses_to_start_leaves_the_call_going(project, start_server) -> None:
    record_demo(project)
    (project / "blocked").write_text("a file where the recordings folder should be\n")
    server = await start_server(VOICECLI_RECORDINGS_DIR="blocked/recordings")
    async with aiohttp.ClientSession() as http:
        wire = WireCall(server.state.settings, server.url)
        caller = Caller(wire, await wire.open(http))
        await until(lambda: caller.first_heard, 10, "the greeting")  # the call goes on, unrecorded
        await caller.hang_up()
        record = await only_call_when_ended(server.state.store)
        async with http.get(f"{server.url}/api/calls/{record.id}/recording", headers=server.headers) as resp:
            assert resp.status == 404 and "recording not started" in (await resp.json())["error"]
    assert record.status == "completed" and record.recording_path is None
    assert record.recording_error and "recording not started" in record.recording_error
    assert str(project / "blocked" / "recordings") in record.recording_error


async def test_agent_audio_a_barge_in_cleared_is_not_in_the_recording(tmp_path: Path) -> None:
    # The call's clock, moved by hand: the file's layout is what the clock says, not the test's pace.
    now = [100.0]
    recorder = await CallRecorder.open(tmp_path / "barge.wav", clock=lambda: now[0])
    tone = (np.full(RATE * 2, 8000, dtype="<i2")).tobytes()
    recorder.agent(tone, RATE, plays_at=100.5)  # two seconds sent at once, playing from 0.5 s
    now[0] = 101.0
    recorder.cleared(101.0)  # the caller barged in at 1 s: the rest was never heard
    # Caller frames read late in a burst at 1.2 s: spoken just before, never ahead of now.
    now[0] = 101.2
    for _ in range(10):
        recorder.caller(np.full(160, 3000, dtype="<i2").tobytes(), RATE)
    now[0] = 101.5
    seconds, error = await recorder.close()
    assert error is None and seconds == pytest.approx(1.5, abs=0.01)
    left, right = channels(tmp_path / "barge.wav")
    assert onset(right) == pytest.approx(0.5, abs=0.001)
    assert np.all(right[round(0.5 * RATE) : RATE] == 8000) and not right[RATE:].any()
    # All 200 ms of it, unbroken, ending no later than a network jitter's allowance after now.
    said = round(onset(left) * RATE)
    assert RATE <= said <= round((1.0 + JITTER_S) * RATE)
    assert np.all(left[said : said + 1600] == 3000) and not left[said + 1600 :].any() and not left[:said].any()


def test_repair_gives_a_killed_recording_its_length(tmp_path: Path) -> None:
    path = tmp_path / "cut.wav"
    audio = np.arange(-4000, 4000, dtype="<i2").tobytes()
    path.write_bytes(wav_header(0) + audio + b"\x01")  # what a kill leaves: sizes 0, a partial frame
    assert repair(path) == pytest.approx(len(audio) / 4 / RATE)
    with wave.open(str(path)) as wav:
        assert wav.getnframes() == len(audio) // 4 and wav.readframes(wav.getnframes()) == audio
    not_ours = tmp_path / "other.wav"
    not_ours.write_bytes(b"x" * 100)
    with pytest.raises(ValueError, match="not a voicecli recording"):
        repair(not_ours)


def _serve_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "VOICECLI_"))}


async def test_a_killed_server_leaves_a_recording_that_plays_up_to_the_kill(project: Path) -> None:
    record_demo(project)
    with serving(project, _serve_env()) as proc:
        url = await _wait_for_server(project, proc)
        async with aiohttp.ClientSession() as http:
            wire = WireCall(make_settings(project), url)
            caller = Caller(wire, await wire.open(http))
            opened = time.monotonic()
            await until(lambda: caller.first_heard, 10, "the greeting")
            await asyncio.sleep(2.0)
            proc.kill()  # SIGKILL: nothing of voicecli runs after this
            killed = time.monotonic()
            proc.wait(10)
            await caller.hang_up()
    [record] = await in_store(project, lambda store: store.list())
    assert record.status == "in-progress" and record.recording_s is None
    path = Path(record.recording_path or "")
    with wave.open(str(path)) as wav:
        assert wav.getnframes() == 0  # the header a kill leaves: no length yet
    # No server: the CLI reads the store, and will not hand out a file still missing its length.
    unfinished = await asyncio.to_thread(runner.invoke, app, ["calls", "recording", record.id])
    assert unfinished.exit_code == 1 and "not finished" in unfinished.output

    with serving(project, _serve_env()) as proc:
        url = await _wait_for_server(project, proc)
        [record] = await in_store(project, lambda store: store.list())
        assert record.status == "interrupted"
        assert record.recording_error == REPAIRED
        left, right = channels(path)
        # Everything up to the kill, less what had not yet left memory (up to half a second, and
        # room for a busy machine).
        assert killed - opened - 1.0 < len(left) / RATE < killed - opened + 0.1
        assert record.recording_s == pytest.approx(len(left) / RATE, abs=0.01)
        greeting = onset(right)
        assert np.abs(right[round(greeting * RATE) :]).max() > 5000  # the greeting, as heard up to the kill
        # Served by the restarted server: a new instance, but the file is on its disk.
        async with aiohttp.ClientSession() as http:
            token = (project / ".voicecli" / "api_token").read_text().strip()
            expected = await asyncio.to_thread(path.read_bytes)
            async with http.get(f"{url}/api/calls/{record.id}/recording", headers=_bearer(token)) as resp:
                assert resp.status == 200 and await resp.read() == expected


async def _ended_call(project: Path) -> CallRecord | None:
    [record] = await in_store(project, lambda store: store.list())
    return record if record.ended_at and record.recording_s is not None else None


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _file_size_limit(size: int) -> Callable[[], None]:
    def limit() -> None:
        # Writes past `size` bytes fail with EFBIG (Python ignores SIGXFSZ), as on a full disk.
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


async def test_a_full_disk_ends_the_recording_and_not_the_call(project: Path) -> None:
    record_demo(project)
    # The store fits (made first: about 140 kB, its write-ahead log checkpointed every 2 s); the
    # recording (32 kB a second) runs out of room during the greeting.
    await in_store(project, lambda store: store.list())
    limit = 200 * 1024
    with serving(project, _serve_env(), before_exec=_file_size_limit(limit)) as proc:
        url = await _wait_for_server(project, proc)
        async with aiohttp.ClientSession() as http:
            wire = WireCall(make_settings(project), url)
            caller = Caller(wire, await wire.open(http))
            await caller.quiet(within_s=30)
            await caller.ask(speech(QUESTIONS[0]))  # answered after the disk filled
            await caller.quiet()
            await caller.hang_up()

        async def ended() -> CallRecord | None:
            return await _ended_call(project)

        record = await until(ended, 10, "the call's end")
        assert proc.poll() is None  # the server still serves
    assert record.status == "completed" and "caller hung up" in (record.end_reason or "")
    transcript = await in_store(project, lambda store: store.transcript(record.id))
    assert "Our plans start at twenty dollars a month." in [t.text for t in transcript]
    assert record.recording_error and "disk error" in record.recording_error
    assert "File too large" in record.recording_error
    # What fitted is a WAV that plays: its header was finished with the length written.
    left, _ = channels(Path(record.recording_path or ""))
    assert record.recording_s == pytest.approx(len(left) / RATE, abs=0.01)
    assert (limit - 44) / 4 / RATE - 0.5 < record.recording_s <= (limit - 44) / 4 / RATE
