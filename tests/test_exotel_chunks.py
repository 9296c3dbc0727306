"""Exotel's chunk rule (protocols.md B2) as the serializer applies it to agent audio."""

from __future__ import annotations

import base64
import json

from pipecat.frames.frames import EndFrame, InterruptionFrame, OutputAudioRawFrame

from voicecli.providers.exotel_chunks import ExotelChunkingSerializer


def _audio(n_bytes: int) -> OutputAudioRawFrame:
    return OutputAudioRawFrame(audio=b"\x01\x02" * (n_bytes // 2), sample_rate=8000, num_channels=1)


def _payload(message: str | bytes | None) -> bytes:
    assert isinstance(message, str)
    data = json.loads(message)
    assert data["event"] == "media" and data["stream_sid"] == "sid1"
    return base64.b64decode(data["media"]["payload"])


async def test_audio_is_held_until_a_whole_valid_message_is_ready() -> None:
    serializer = ExotelChunkingSerializer("sid1")
    assert await serializer.serialize(_audio(320)) is None  # 20 ms: too short to send alone
    sent = _payload(await serializer.serialize(_audio(3300)))
    assert len(sent) == 3520  # everything whole: 11 x 320; the 100 bytes left wait
    assert sent[:4] == b"\x01\x02\x01\x02"


async def test_the_tail_of_an_utterance_is_padded_with_silence() -> None:
    serializer = ExotelChunkingSerializer("sid1")
    await serializer.serialize(_audio(1000))
    tail = _payload(serializer.flush())
    assert len(tail) == 3200 and tail[:1000] == b"\x01\x02" * 500 and tail[1000:] == bytes(2200)
    assert serializer.flush() is None  # nothing left twice


async def test_a_long_utterance_is_split_under_100_kb() -> None:
    serializer = ExotelChunkingSerializer("sid1")
    first = _payload(await serializer.serialize(_audio(150_000)))
    assert len(first) == 99_840
    rest = _payload(await serializer.serialize(_audio(0)))
    assert len(rest) == 150_000 - 99_840 - (150_000 - 99_840) % 320


async def test_barge_in_drops_what_was_not_sent_and_the_end_sends_the_rest() -> None:
    serializer = ExotelChunkingSerializer("sid1")
    await serializer.serialize(_audio(1000))
    clear = json.loads(await serializer.serialize(InterruptionFrame()))
    assert clear["event"] == "clear"
    assert serializer.flush() is None
    await serializer.serialize(_audio(640))
    assert len(_payload(await serializer.serialize(EndFrame()))) == 3200
