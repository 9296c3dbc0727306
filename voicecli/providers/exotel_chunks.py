"""Exotel's outbound chunk rule applied to pipecat's Exotel serializer (protocols.md B2).

Its own module because it subclasses a pipecat class: exotel.py stays importable without
pipecat, so `doctor` and the tunnel can use the provider cheaply.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from pipecat.frames.frames import AudioRawFrame, CancelFrame, EndFrame, Frame, InterruptionFrame
from pipecat.serializers.exotel import ExotelFrameSerializer


class ExotelChunkingSerializer(ExotelFrameSerializer):
    """pipecat's Exotel serializer, with outbound audio re-chunked to Exotel's rule.

    Every media message must be a multiple of 320 bytes, at least 3,200 bytes and at most
    100 KB; shorter or odd-sized messages cause jitter and 20 ms gaps (protocols.md B2).
    Audio is buffered until a valid message can be sent; the tail of each utterance is
    padded with silence and sent when the bot stops speaking (flush) or the call ends.
    """

    STEP = 320
    MIN = 3200
    MAX = 99_840  # the largest multiple of 320 under 100 KB

    def __init__(self, stream_sid: str, call_sid: str | None = None, params: Any = None):
        super().__init__(stream_sid, call_sid, params)
        self._pending = bytearray()

    def _media(self, pcm: bytes) -> str:
        payload = base64.b64encode(pcm).decode("ascii")
        return json.dumps({"event": "media", "stream_sid": self._stream_sid, "media": {"payload": payload}})

    async def serialize(self, frame: Frame) -> str | bytes | None:
        if isinstance(frame, InterruptionFrame):
            self._pending.clear()  # barge-in: what was not sent is never to be heard
            return await super().serialize(frame)
        if isinstance(frame, AudioRawFrame):
            pcm = await self._output_resampler.resample(frame.audio, frame.sample_rate, self._exotel_sample_rate)
            self._pending += pcm or b""
            size = min(len(self._pending) - len(self._pending) % self.STEP, self.MAX)
            if size < self.MIN:
                return None
            chunk = bytes(self._pending[:size])
            del self._pending[:size]
            return self._media(chunk)
        if isinstance(frame, EndFrame | CancelFrame):
            return self.flush()
        return await super().serialize(frame)

    def flush(self) -> str | None:
        """Send what is buffered, padded with silence to a valid size (end of an utterance)."""
        if not self._pending:
            return None
        size = max(self.MIN, -(-len(self._pending) // self.STEP) * self.STEP)
        chunk = bytes(self._pending) + bytes(size - len(self._pending))
        self._pending.clear()
        return self._media(chunk)
