"""The media path's savings keep its behaviour: the shared VAD decides as pipecat's own does,
more cheaply, and audio frames end after their last reader."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADState
from pipecat.frames.frames import InputAudioRawFrame, OutputAudioRawFrame, TextFrame
from pipecat.tests.utils import run_test

from voicecli.call.audio import silence, ulaw_decode, ulaw_encode
from voicecli.call.models import SharedSileroVAD
from voicecli.call.pipeline import AudioEnd
from voicecli.emulator.simulator import speech

RATE = 8000
FRAME = 640  # the 40 ms frames the transport hands the pipeline


@cache
def phone_call_audio() -> bytes:
    """Three caller utterances with pauses, through the mu-law line."""
    parts = [silence(3000, RATE)]
    for sentence in ("What is your pricing?", "I would like to know your prices please", "Yes. No. Thank you."):
        parts += [speech(sentence), silence(1500, RATE)]
    return ulaw_decode(ulaw_encode(b"".join(parts)))


def with_noise(pcm: bytes, dbfs: float) -> bytes:
    samples = np.frombuffer(pcm, np.int16).astype(np.float32)
    noise = np.random.default_rng(7).standard_normal(len(samples)) * 32768 * 10 ** (dbfs / 20)
    return np.clip(samples + noise, -32768, 32767).astype(np.int16).tobytes()


def utterances(vad: SileroVADAnalyzer, pcm: bytes) -> list[tuple[int, int]]:
    """(first, last) 40 ms frame of each utterance: from SPEAKING after quiet, to QUIET again.

    These are the edges pipecat turns into the user started / stopped speaking events; a dip
    into STOPPING that returns to SPEAKING is neither.
    """
    vad.set_sample_rate(RATE)
    out: list[tuple[int, int]] = []
    start = None
    for index, offset in enumerate(range(0, len(pcm), FRAME)):
        state = vad._run_analyzer(pcm[offset : offset + FRAME])
        if state == VADState.SPEAKING and start is None:
            start = index
        elif state == VADState.QUIET and start is not None:
            out.append((start, index))
            start = None
    return out


class CountingModel:
    """Counts how often the ONNX model runs, and runs it."""

    def __init__(self, model):  # type: ignore[no-untyped-def]
        self.model = model
        self.runs = 0

    def __call__(self, *args):  # type: ignore[no-untyped-def]
        self.runs += 1
        return self.model(*args)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.model, name)


@pytest.mark.parametrize("noise_dbfs", [None, -70.0, -60.0, -45.0])
def test_shared_vad_hears_the_same_utterances_as_pipecats(noise_dbfs: float | None) -> None:
    pcm = phone_call_audio() if noise_dbfs is None else with_noise(phone_call_audio(), noise_dbfs)
    theirs = utterances(SileroVADAnalyzer(), pcm)
    ours = utterances(SharedSileroVAD(), pcm)

    assert len(ours) == len(theirs) == 5  # "Yes. No. Thank you." has pauses long enough to split it
    # The model restarts from a clean state after quiet, so an edge may move by up to two
    # frames (80 ms; measured over eSpeak rates 140-210 wpm and these noise levels).
    for (our_start, our_end), (their_start, their_end) in zip(ours, theirs, strict=True):
        assert abs(our_start - their_start) <= 2
        assert abs(our_end - their_end) <= 2


def test_shared_vad_skips_the_model_on_quiet_windows_only() -> None:
    vad = SharedSileroVAD()
    vad.set_sample_rate(RATE)
    vad._model = counting = CountingModel(vad._model)
    window_bytes = 2 * vad.num_frames_required()

    for _ in range(50):  # 2 s of a quiet line
        vad._run_analyzer(with_noise(silence(40, RATE), -70.0))
    assert counting.runs == 0

    loud = speech("I would like to know your prices please")
    for offset in range(0, len(loud) - FRAME, FRAME):
        vad._run_analyzer(loud[offset : offset + FRAME])
    windows = (len(loud) - FRAME) // window_bytes
    # Speech with its short pauses: the model runs on most windows, never more than once each.
    assert windows // 2 < counting.runs <= windows + 1


async def test_audio_end_drops_only_its_kind_of_audio() -> None:
    caller = InputAudioRawFrame(audio=silence(40, RATE), sample_rate=RATE, num_channels=1)
    agent = OutputAudioRawFrame(audio=silence(40, RATE), sample_rate=RATE, num_channels=1)
    said = TextFrame("hello")

    down, _ = await run_test(
        AudioEnd(InputAudioRawFrame),
        frames_to_send=[caller, said, agent],
        expected_down_frames=[TextFrame, OutputAudioRawFrame],
    )
    assert down[0].text == "hello" and down[1] is agent
