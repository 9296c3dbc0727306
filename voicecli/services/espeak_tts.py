"""Offline text-to-speech with eSpeak NG, the library and voices shipped in the `espeakng-loader` wheel.

eSpeak is driven through ctypes as described in ../shared/pipecat-notes.md ("Offline speech"). The C
library keeps one global state (voice, rate, callback) and is not thread-safe, so every call
holds one lock.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
import warnings
from collections.abc import AsyncGenerator
from typing import Any

from loguru import logger
from pipecat.frames.frames import ErrorFrame, Frame, TTSAudioRawFrame
from pipecat.services.settings import TTSSettings
from pipecat.utils.tracing.service_decorators import traced_tts

with warnings.catch_warnings():
    # pipecat 1.14's tts_service subclasses its own deprecated AudioContextTTSService at import.
    warnings.filterwarnings("ignore", "`AudioContextTTSService` is deprecated", DeprecationWarning)
    from pipecat.services.tts_service import TTSService

from voicecli.call.audio import resample

# From espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report a bad data path as an error instead of calling exit()
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAMETER_RATE = 1
_EE_OK = 0
_EE_NOT_FOUND = 2
# eSpeak's own default speed and the range it accepts, in words per minute.
DEFAULT_RATE_WPM = 175
MIN_RATE_WPM, MAX_RATE_WPM = 80, 450

# Audio frames pushed downstream: 40 ms, the chunk the output transport sends by default.
_CHUNK_MS = 40

# int callback(short *wav, int numsamples, espeak_EVENT *events); the events are not used.
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Engine:
    """The loaded library, its output rate, and the buffer its callback fills (use under `_lock`)."""

    def __init__(self) -> None:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int

        data_path = espeakng_loader.get_data_path().encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise RuntimeError(f"eSpeak NG failed to initialise (data path {data_path.decode()})")
        self.lib = lib
        self.sample_rate: int = rate
        self._chunks: list[bytes] = []
        # Kept on the instance: ctypes frees a callback whose Python object is collected.
        self._callback = _SynthCallback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav: Any, num_samples: int, events: Any) -> int:
        # Synchronous mode calls back on the synthesizing thread, inside espeak_Synth.
        if wav and num_samples > 0:
            self._chunks.append(ctypes.string_at(wav, num_samples * 2))
        return 0  # 0 = go on synthesizing

    def set_voice(self, voice: str, rate_wpm: int | None) -> None:
        result = self.lib.espeak_SetVoiceByName(voice.encode())
        if result == _EE_NOT_FOUND:
            raise ValueError(f"unknown eSpeak voice {voice!r}")
        if result != _EE_OK:
            raise RuntimeError(f"eSpeak could not select voice {voice!r} (error {result})")
        # Rate is global state too, so it is set on every call rather than remembered.
        self.lib.espeak_SetParameter(_PARAMETER_RATE, rate_wpm or DEFAULT_RATE_WPM, 0)

    def synthesize(self, text: str) -> bytes:
        encoded = text.encode() + b"\0"
        self._chunks.clear()
        result = self.lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if result != _EE_OK:
            raise RuntimeError(f"eSpeak synthesis failed (error {result})")
        self.lib.espeak_Synchronize()
        audio = b"".join(self._chunks)
        self._chunks.clear()
        return audio


_lock = threading.Lock()
_engine: _Engine | None = None


def _loaded_engine() -> _Engine:
    global _engine
    if _engine is None:
        _engine = _Engine()
    return _engine


def _check_rate(rate_wpm: int | None) -> None:
    if rate_wpm is not None and not MIN_RATE_WPM <= rate_wpm <= MAX_RATE_WPM:
        raise ValueError(f"eSpeak rate must be {MIN_RATE_WPM} to {MAX_RATE_WPM} words a minute, got {rate_wpm}")


def check_voice(voice: str) -> None:
    """Raise ValueError if eSpeak has no voice called `voice`."""
    with _lock:
        _loaded_engine().set_voice(voice, None)


def synthesize(text: str, voice: str = "en-us", rate_wpm: int | None = None) -> tuple[bytes, int]:
    """Speak `text` with eSpeak NG: 16-bit mono PCM and its sample rate (22050 Hz)."""
    _check_rate(rate_wpm)
    with _lock:
        engine = _loaded_engine()
        engine.set_voice(voice, rate_wpm)
        if not text.strip():
            return b"", engine.sample_rate
        return engine.synthesize(text), engine.sample_rate


class EspeakTTSService(TTSService):
    """Pipecat TTS service speaking with eSpeak NG, offline, resampled to the pipeline's output rate."""

    def __init__(self, *, voice: str = "en-us", rate_wpm: int | None = None, **kwargs: Any) -> None:
        _check_rate(rate_wpm)
        # Fails at start-up, by name, rather than on the first reply of the first call.
        check_voice(voice)
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            settings=TTSSettings(model=None, voice=voice, language=None),
            **kwargs,
        )
        self._rate_wpm = rate_wpm

    def can_generate_metrics(self) -> bool:
        """eSpeak reports TTFB and usage metrics."""
        return True

    def _speak(self, text: str, voice: str) -> bytes:
        pcm, rate = synthesize(text, voice, self._rate_wpm)
        return resample(pcm, rate, self.sample_rate)

    @traced_tts
    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Synthesize `text` off the event loop and yield it as 40 ms audio frames."""
        voice = str(self._settings.voice or "en-us")
        try:
            await self.start_tts_usage_metrics(text)
            # The base class pushes TTSStartedFrame before and TTSStoppedFrame after (push_*_frame).
            audio = await asyncio.to_thread(self._speak, text, voice)
            await self.stop_ttfb_metrics()
            chunk = self.sample_rate * 2 * _CHUNK_MS // 1000
            for start in range(0, len(audio), chunk):
                yield TTSAudioRawFrame(
                    audio=audio[start : start + chunk],
                    sample_rate=self.sample_rate,
                    num_channels=1,
                    context_id=context_id,
                )
        except (ValueError, RuntimeError) as e:
            logger.error(f"{self}: eSpeak failed: {e}")
            yield ErrorFrame(error=f"eSpeak failed: {e}")
        finally:
            await self.stop_ttfb_metrics()
