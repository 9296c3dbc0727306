"""Offline speech on real audio: eSpeak speaks, the phone path (8 kHz mu-law) mangles, PocketSphinx hears."""

from __future__ import annotations

import subprocess
import sys
import warnings
import wave
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from pipecat.frames.frames import (
    InputAudioRawFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import run_test

from voicecli.call.audio import read_wav, resample, rms, silence, ulaw_decode, ulaw_encode, write_wav
from voicecli.services.espeak_tts import EspeakTTSService, synthesize
from voicecli.services.factories import FILLER_PHRASES
from voicecli.services.pocketsphinx_stt import PocketSphinxSTTService, transcribe

# What the demo agent's factory passes: its script keywords (agents/demo.toml) and the fillers.
KEYWORDS = ["pricing", "price", "cost", "hours", "open", "support", "help"]
PHRASES = [*KEYWORDS, *FILLER_PHRASES]
# The recogniser's model rate. Calls run at 8 kHz (voicecli/call/pipeline.py) and the STT resamples each
# utterance to this; the end-to-end tests (test_contract.py) cover that path.
PIPELINE_RATE = 16000


@cache
def phone_audio(text: str) -> bytes:
    """`text` as a caller's words reach the pipeline: eSpeak, 8 kHz mu-law, back up to 16 kHz."""
    pcm, rate = synthesize(text)
    narrowband = resample(pcm, rate, 8000)
    return resample(ulaw_decode(ulaw_encode(narrowband)), 8000, PIPELINE_RATE)


def keywords_in(text: str) -> set[str]:
    return set(text.split()) & set(KEYWORDS)


def tone(hz: float, seconds: float, rate: int, amplitude: float = 8000.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()


# --- mu-law, resampling, WAV ---


def _audioop():  # type: ignore[no-untyped-def]
    # audioop is deprecated (removed in 3.13); it is only the reference here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pytest.importorskip("audioop")


def test_ulaw_encode_matches_audioop_for_every_sample() -> None:
    every_sample = np.arange(-32768, 32768, dtype="<i2").tobytes()
    assert ulaw_encode(every_sample) == _audioop().lin2ulaw(every_sample, 2)


def test_ulaw_decode_matches_audioop_for_every_byte() -> None:
    every_byte = bytes(range(256))
    assert ulaw_decode(every_byte) == _audioop().ulaw2lin(every_byte, 2)


def test_ulaw_round_trip_keeps_speech_within_quantisation_error() -> None:
    pcm = phone_audio("What is your pricing?")
    original = np.frombuffer(pcm, dtype="<i2").astype(float)
    back = np.frombuffer(ulaw_decode(ulaw_encode(pcm)), dtype="<i2").astype(float)
    assert len(ulaw_encode(pcm)) == len(pcm) // 2
    # mu-law steps are at most 1/16 of a segment: about 3% of the sample plus a small floor.
    assert np.all(np.abs(back - original) <= 0.035 * np.abs(original) + 8)


def test_odd_length_pcm_is_rejected() -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        ulaw_encode(b"\x00\x01\x02")


def test_resample_keeps_duration_and_pitch() -> None:
    source = tone(440, 1.0, 8000)
    assert resample(source, 8000, 8000) == source
    up = np.frombuffer(resample(source, 8000, 16000), dtype="<i2")
    assert abs(len(up) - 16000) <= 2
    spectrum = np.abs(np.fft.rfft(up))
    assert abs(np.argmax(spectrum) * 16000 / len(up) - 440) < 2
    assert rms(up.tobytes()) == pytest.approx(rms(source), rel=0.02)


def test_silence_and_rms() -> None:
    assert silence(20, 8000) == bytes(320)
    assert rms(silence(100, 16000)) == 0.0
    assert rms(tone(1000, 0.5, 16000, amplitude=1000)) == pytest.approx(1000 / np.sqrt(2), rel=0.01)


def test_wav_round_trip(tmp_path: Path) -> None:
    pcm = phone_audio("Hello")
    write_wav(tmp_path / "hello.wav", pcm, PIPELINE_RATE)
    assert read_wav(tmp_path / "hello.wav") == (pcm, PIPELINE_RATE)


def test_read_wav_mixes_stereo_to_mono(tmp_path: Path) -> None:
    left = np.array([1000, -2000, 300], dtype="<i2")
    right = np.array([3000, 2000, -301], dtype="<i2")
    with wave.open(str(tmp_path / "stereo.wav"), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(np.column_stack([left, right]).tobytes())
    pcm, rate = read_wav(tmp_path / "stereo.wav")
    assert rate == 8000
    assert np.frombuffer(pcm, dtype="<i2").tolist() == [2000, 0, 0]


def test_read_wav_rejects_other_sample_widths_and_non_wav(tmp_path: Path) -> None:
    with wave.open(str(tmp_path / "8bit.wav"), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(8000)
        out.writeframes(bytes(100))
    with pytest.raises(ValueError, match="8-bit"):
        read_wav(tmp_path / "8bit.wav")
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(ValueError, match="not a PCM WAV"):
        read_wav(tmp_path / "text.wav")


def test_importing_audio_does_not_import_pipecat() -> None:
    code = (
        "import sys, voicecli.call.audio;"
        " print(sorted(m for m in sys.modules if m.split('.')[0] in ('pipecat', 'soxr')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- eSpeak ---


def test_espeak_speaks_a_sentence_at_22050_hz() -> None:
    pcm, rate = synthesize("What is your pricing?")
    assert rate == 22050
    assert 0.6 < len(pcm) / 2 / rate < 2.5
    assert rms(pcm) > 500


def test_espeak_rate_changes_duration() -> None:
    slow, rate = synthesize("I would like to know your opening hours", rate_wpm=120)
    fast, _ = synthesize("I would like to know your opening hours", rate_wpm=300)
    assert len(slow) / 2 / rate > 1.8 * len(fast) / 2 / rate


def test_espeak_empty_text_is_no_audio() -> None:
    assert synthesize("   ") == (b"", 22050)


def test_unknown_voice_raises_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="klingon-xx"):
        synthesize("hello", voice="klingon-xx")
    with pytest.raises(ValueError, match="klingon-xx"):
        EspeakTTSService(voice="klingon-xx")
    # The failure left the engine usable.
    assert rms(synthesize("hello")[0]) > 500


async def test_tts_service_streams_short_frames_at_the_pipeline_rate() -> None:
    tts = EspeakTTSService()
    down, _ = await run_test(
        tts,
        frames_to_send=[TTSSpeakFrame("What is your pricing?")],
        pipeline_params=PipelineParams(audio_in_sample_rate=PIPELINE_RATE, audio_out_sample_rate=PIPELINE_RATE),
    )
    kinds = [type(frame) for frame in down]
    audio_frames = [frame for frame in down if isinstance(frame, TTSAudioRawFrame)]
    assert kinds.index(TTSStartedFrame) < kinds.index(TTSAudioRawFrame) < kinds.index(TTSStoppedFrame)
    assert all(frame.sample_rate == PIPELINE_RATE and frame.num_channels == 1 for frame in audio_frames)
    assert all(0 < len(frame.audio) <= PIPELINE_RATE * 2 * 40 // 1000 for frame in audio_frames)
    audio = b"".join(frame.audio for frame in audio_frames)
    assert 0.6 < len(audio) / 2 / PIPELINE_RATE < 2.5
    # What the service said can be heard back through the phone path.
    narrowband = resample(audio, PIPELINE_RATE, 8000)
    heard = transcribe(resample(ulaw_decode(ulaw_encode(narrowband)), 8000, PIPELINE_RATE), PHRASES)
    assert "pricing" in heard.split()


# --- PocketSphinx on phone audio ---


@pytest.mark.parametrize(
    ("spoken", "keyword"),
    [
        ("What is your pricing?", "pricing"),
        ("What are your hours?", "hours"),
        ("I need support", "support"),
        ("Can you help me?", "help"),
        ("Tell me about pricing", "pricing"),
    ],
)
def test_phone_audio_is_recognised(spoken: str, keyword: str) -> None:
    heard = transcribe(phone_audio(spoken), PHRASES, PIPELINE_RATE)
    assert keyword in heard.split(), heard


def test_eight_khz_input_is_resampled_before_decoding() -> None:
    narrowband = resample(phone_audio("What is your pricing?"), PIPELINE_RATE, 8000)
    assert "pricing" in transcribe(narrowband, PHRASES, 8000).split()


def test_the_same_audio_gives_the_same_words_whatever_came_before() -> None:
    first = transcribe(phone_audio("I need support"), PHRASES)
    transcribe(phone_audio("My dog likes bananas"), PHRASES)
    assert transcribe(phone_audio("I need support"), PHRASES) == first


def test_silence_and_noise_are_not_keywords() -> None:
    assert transcribe(silence(1500, PIPELINE_RATE), PHRASES) == ""
    noise = np.random.default_rng(7).normal(0, 1500, PIPELINE_RATE).astype("<i2").tobytes()
    hum = tone(120, 1.0, PIPELINE_RATE, amplitude=3000)
    assert not keywords_in(transcribe(noise, PHRASES))
    assert not keywords_in(transcribe(hum, PHRASES))


@pytest.mark.parametrize("spoken", ["My dog likes bananas", "It is raining outside", "Good morning"])
def test_out_of_script_speech_is_not_forced_onto_a_keyword(spoken: str) -> None:
    heard = transcribe(phone_audio(spoken), PHRASES)
    assert heard, "speech should come out as some words"
    assert not keywords_in(heard), heard


def test_words_without_a_pronunciation_are_dropped() -> None:
    heard = transcribe(phone_audio("What is your pricing?"), [*PHRASES, "zyxwq", "20"])
    assert "pricing" in heard.split()


def test_only_english_is_offered() -> None:
    with pytest.raises(ValueError, match="de-DE"):
        PocketSphinxSTTService(phrases=PHRASES, language="de-DE")


def _caller_says(audio: bytes) -> list[object]:
    chunk = PIPELINE_RATE * 2 * 20 // 1000  # 20 ms, as a transport delivers it
    frames: list[object] = [VADUserStartedSpeakingFrame()]
    frames += [
        InputAudioRawFrame(audio=audio[i : i + chunk], sample_rate=PIPELINE_RATE, num_channels=1)
        for i in range(0, len(audio), chunk)
    ]
    return [*frames, VADUserStoppedSpeakingFrame()]


async def test_stt_service_transcribes_a_segment_in_a_pipeline() -> None:
    stt = PocketSphinxSTTService(phrases=PHRASES)
    down, _ = await run_test(
        stt,
        frames_to_send=_caller_says(phone_audio("What is your pricing?")),
        pipeline_params=PipelineParams(audio_in_sample_rate=PIPELINE_RATE, audio_out_sample_rate=PIPELINE_RATE),
    )
    transcripts = [frame for frame in down if isinstance(frame, TranscriptionFrame)]
    assert len(transcripts) == 1
    assert "pricing" in transcripts[0].text.split()
    assert transcripts[0].finalized


async def test_stt_service_says_nothing_for_silence() -> None:
    stt = PocketSphinxSTTService(phrases=PHRASES)
    down, _ = await run_test(
        stt,
        frames_to_send=_caller_says(silence(800, PIPELINE_RATE)),
        pipeline_params=PipelineParams(audio_in_sample_rate=PIPELINE_RATE, audio_out_sample_rate=PIPELINE_RATE),
    )
    assert not [frame for frame in down if isinstance(frame, TranscriptionFrame)]


async def test_run_stt_yields_one_transcription() -> None:
    stt = PocketSphinxSTTService(phrases=PHRASES, sample_rate=PIPELINE_RATE)
    await run_test(
        stt,
        frames_to_send=[],
        pipeline_params=PipelineParams(audio_in_sample_rate=PIPELINE_RATE, audio_out_sample_rate=PIPELINE_RATE),
    )
    frames = [frame async for frame in stt.run_stt(phone_audio("What are your hours?"))]
    assert len(frames) == 1 and isinstance(frames[0], TranscriptionFrame)
    assert "hours" in frames[0].text.split()
    assert [frame async for frame in stt.run_stt(silence(500, PIPELINE_RATE))] == []
