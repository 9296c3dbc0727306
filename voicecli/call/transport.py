"""A pipecat transport over an aiohttp WebSocket, driven by the provider's serializer.

pipecat ships only a FastAPI/Starlette WebSocket transport (../shared/pipecat-notes.md), so
this is the aiohttp pair. Every inbound message is handled on its own: what the serializer
raises for one message is counted and logged, never the end of the call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from loguru import logger
from pipecat.frames.frames import (
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InputTransportMessageFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputTransportMessageFrame,
    OutputTransportMessageUrgentFrame,
    StartFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.serializers.base_serializer import FrameSerializer
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams

if TYPE_CHECKING:
    from voicecli.call.recording import CallRecorder

Messages = AsyncIterator[tuple[str, dict[str, Any]]]

# Caller audio is handed to the pipeline in frames of at least this many milliseconds.
INPUT_FRAME_MS = 40


class CallLine:
    """The shared state of one call's socket: who closed it, and when its audio ends playing."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        messages: Messages,
        serializer: FrameSerializer,
        is_stop: Callable[[dict[str, Any]], bool],
        on_caller_gone: Callable[[str], Awaitable[None]],
        log: Any = logger,
        on_key: Callable[[str], Awaitable[None]] | None = None,
        recorder: CallRecorder | None = None,
    ):
        self.ws = ws
        self.messages = messages
        self.serializer = serializer
        self.is_stop = is_stop
        self.on_caller_gone = on_caller_gone
        self.on_key = on_key  # a key press, for the transcript
        self.log = log
        self.undecodable = 0  # well-formed messages the serializer could not read
        self.audio_sent_s = 0.0
        # Monotonic time at which the caller will have heard everything sent so far.
        self.playout_end = 0.0
        self.recorder = recorder  # both sides of the call, as the caller heard them
        # Per-turn latency (README, "Latency"): the caller's last sound by the voice detector,
        # the one the last reply answered, and the latency of the reply not yet transcribed.
        self.last_speech: float | None = None
        self._answered: float | None = None
        self._reply_latency_ms: int | None = None

    @property
    def bad_messages(self) -> int:
        """Messages skipped: junk the reader dropped (not JSON, binary, oversized) and the undecodable."""
        return self.undecodable + getattr(self.messages, "skipped", 0)

    @property
    def open(self) -> bool:
        return not self.ws.closed

    async def send(self, payload: str | bytes) -> bool:
        if self.ws.closed:
            return False
        try:
            if isinstance(payload, bytes):
                await self.ws.send_bytes(payload)
            else:
                await self.ws.send_str(payload)
        except (ConnectionError, RuntimeError) as exc:
            self.log.debug(f"send failed, socket closing: {exc}")
            return False
        return True

    def note_audio(self, pcm16: bytes, rate: int, channels: int = 1) -> None:
        """Agent audio just sent: when the caller hears it, and the recording's right channel."""
        now = time.monotonic()
        plays_at = max(self.playout_end, now)
        if plays_at == now:
            self._reply_starts(now)
        seconds = len(pcm16) / (2 * rate * channels)
        self.playout_end = plays_at + seconds
        self.audio_sent_s += seconds
        if self.recorder is not None:
            self.recorder.agent(pcm16, rate, plays_at)

    def note_caller_audio(self, pcm16: bytes, rate: int) -> None:
        if self.recorder is not None:
            self.recorder.caller(pcm16, rate)

    def clear_playout(self) -> None:
        """The provider was told to drop the agent audio it holds (barge-in): none of it is heard."""
        now = time.monotonic()
        self.playout_end = now
        if self.recorder is not None:
            self.recorder.cleared(now)

    def caller_stopped(self, wall_time: float) -> None:
        """The voice detector's stop: the caller's last sound was at `wall_time` (time.time())."""
        self.last_speech = time.monotonic() - max(0.0, time.time() - wall_time)

    def _reply_starts(self, now: float) -> None:
        # The caller is hearing silence and agent audio starts: a reply, when the caller has
        # spoken since the last one began. Its first frame plays at once (nothing queued).
        if self.last_speech is not None and self.last_speech != self._answered:
            self._answered = self.last_speech
            self._reply_latency_ms = max(0, round((now - self.last_speech) * 1000))

    def take_reply_latency(self) -> int | None:
        """The latency of the reply now transcribed (None for one that answered no speech)."""
        latency, self._reply_latency_ms = self._reply_latency_ms, None
        return latency

    async def wait_playout(self, limit_s: float = 15.0) -> None:
        """Wait until the caller has heard the audio already sent (bounded)."""
        delay = min(limit_s, self.playout_end - time.monotonic())
        if delay > 0:
            await asyncio.sleep(delay)

    async def close(self) -> None:
        if not self.ws.closed:
            await self.ws.close()


class WebsocketInput(BaseInputTransport):
    """Reads provider messages, turns them into frames, and notices the caller leaving."""

    def __init__(self, line: CallLine, params: TransportParams, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._line = line
        self._receive_task: asyncio.Task | None = None

    async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]  # pipecat's own mismatch
        await super().setup(setup)
        await self._line.serializer.setup(setup)

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        if not self._receive_task:
            self._receive_task = self.create_task(self._receive())
        await self.set_transport_ready(frame)

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)
        await self._stop_receiving()

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._stop_receiving()

    async def push_audio_frame(self, frame: InputAudioRawFrame) -> None:
        # pipecat queues each frame for a task that only hands it on (this transport has no
        # audio filter), and on Python 3.11 that task's wait_for makes a Task per frame.
        # Pushed here, from the receive task, frames keep their order for one hop less.
        if self._params.audio_in_enabled and self._params.audio_in_passthrough and not self._paused:
            await self.push_frame(frame)

    async def _stop_receiving(self) -> None:
        if self._receive_task:
            await self.cancel_task(self._receive_task)
            self._receive_task = None

    async def _receive(self) -> None:
        line = self._line
        reason = "caller hung up"
        # Providers send 20 ms frames. Every frame costs the pipeline the same (a queue hop per
        # processor, observers, VAD bookkeeping), whatever its length, so two are handed on as
        # one 40 ms frame: half the per-frame work for 10 ms more median media latency.
        pending: list[bytes] = []
        pending_bytes = 0
        async for text, message in line.messages:
            if line.is_stop(message):
                break
            try:
                frame = await line.serializer.deserialize(text)
            except Exception as exc:  # serializers raise on malformed payloads
                line.undecodable += 1
                line.log.warning(f"skipped a bad {message.get('event')!r} message: {type(exc).__name__}: {exc}")
                continue
            if frame is None:
                continue
            if isinstance(frame, InputAudioRawFrame):
                line.note_caller_audio(frame.audio, frame.sample_rate)
                pending.append(frame.audio)
                pending_bytes += len(frame.audio)
                if pending_bytes * 1000 < INPUT_FRAME_MS * frame.sample_rate * 2 * frame.num_channels:
                    continue
                if len(pending) > 1:
                    # The latest frame carries them all (in order), so nothing is copied twice.
                    frame.audio = b"".join(pending)
                    frame.num_frames = len(frame.audio) // (2 * frame.num_channels)
                pending.clear()
                pending_bytes = 0
                await self.push_audio_frame(frame)
            elif isinstance(frame, InputTransportMessageFrame):
                await self.broadcast_frame(InputTransportMessageFrame, message=frame.message)
            else:
                await self.push_frame(frame)
                if isinstance(frame, InputDTMFFrame) and line.on_key is not None:
                    # After the push: the key reaches the agent first, the transcript a moment later.
                    await line.on_key(str(frame.button.value))
        else:
            # The reader ends a stream that floods it (providers/base.py); else the caller went.
            reason = getattr(line.messages, "refused", None) or "caller hung up (stream closed)"
        await line.on_caller_gone(reason)


class WebsocketOutput(BaseOutputTransport):
    """Serializes the pipeline's audio and control frames onto the socket, paced."""

    def __init__(self, line: CallLine, params: TransportParams, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._line = line
        self._send_interval = 0.0
        self._next_send_time = 0.0

    async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]  # pipecat's own mismatch
        await super().setup(setup)
        await self._line.serializer.setup(setup)

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        # Send at twice real time, as pipecat's own transports do: the provider buffers,
        # and barge-in (`clear`) discards what is buffered.
        self._send_interval = (self.audio_chunk_size / self.sample_rate) / 2
        await self.set_transport_ready(frame)

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)
        await self._write_frame(frame)

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._write_frame(frame)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            await self._write_frame(frame)
            self._next_send_time = 0.0
            self._line.clear_playout()
        elif isinstance(frame, VADUserStoppedSpeakingFrame) and direction == FrameDirection.DOWNSTREAM:
            self._line.caller_stopped(frame.timestamp - frame.stop_secs)

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM) -> None:
        # The end of an utterance: a serializer that buffers audio into provider-sized
        # messages (Exotel's 320-byte rule) sends its padded tail now, not with the next one.
        if isinstance(frame, BotStoppedSpeakingFrame) and direction == FrameDirection.DOWNSTREAM:
            flush = getattr(self._line.serializer, "flush", None)
            if flush is not None and self._line.open and (payload := flush()):
                await self._line.send(payload)
        await super().push_frame(frame, direction)

    async def send_message(self, frame: OutputTransportMessageFrame | OutputTransportMessageUrgentFrame) -> None:
        await self._write_frame(frame)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        if not self._line.open:
            return False
        frame = OutputAudioRawFrame(
            audio=frame.audio, sample_rate=self.sample_rate, num_channels=self._params.audio_out_channels
        )
        if not await self._write_frame(frame):
            return False
        self._line.note_audio(frame.audio, self.sample_rate, frame.num_channels)
        now = time.monotonic()
        delay = max(0.0, self._next_send_time - now)
        await asyncio.sleep(delay)
        self._next_send_time = (now if delay == 0 else self._next_send_time) + self._send_interval
        return True

    async def _write_frame(self, frame: Frame) -> bool:
        if not self._line.open:
            return False
        try:
            payload = await self._line.serializer.serialize(frame)
        except Exception as exc:
            self._line.log.error(f"cannot serialize {frame.name}: {type(exc).__name__}: {exc}")
            return False
        if payload:
            return await self._line.send(payload)
        return True


class WebsocketTransport(BaseTransport):
    """The input/output pair for one call's media WebSocket."""

    def __init__(self, line: CallLine, params: TransportParams):
        super().__init__()
        self._input = WebsocketInput(line, params, name="ws-input")
        self._output = WebsocketOutput(line, params, name="ws-output")

    def input(self) -> WebsocketInput:
        return self._input

    def output(self) -> WebsocketOutput:
        return self._output
