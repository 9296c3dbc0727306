"""Offline speech-to-text with PocketSphinx, constrained to what the agent's script can answer.

PocketSphinx's large-vocabulary model does poorly on phone audio (../shared/pipecat-notes.md,
"Offline speech"), so each phrase set gets its own small language model: the phrases, the
short ones also inside a few carrier sentences ("what is your ..."), and a few generic words so
that other speech does not have to come out as a keyword. Trials with eSpeak through 8 kHz
mu-law (tests/test_offline_speech.py) chose the rest: carrier sentences, the segment trimmed to
its speech, the phone band folded up to 16 kHz, the model's noise removal off, and
whole-utterance decoding.

Decoding takes ~40 ms of CPU per second of speech and holds the GIL for all of it: it runs in
a worker thread, but the event loop still pauses for that long (about 50-90 ms per utterance).
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import threading
from collections.abc import AsyncGenerator, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger
from pipecat.frames.frames import Frame, StartFrame, TranscriptionFrame
from pipecat.services.settings import STTSettings
from pipecat.services.stt_service import SegmentedSTTService
from pipecat.transcriptions.language import Language
from pipecat.utils.time import time_now_iso8601

from voicecli.call.audio import resample, rms

# The acoustic model shipped in the pocketsphinx wheel is trained on 16 kHz audio.
MODEL_RATE = 16000

# Sentences a caller might put a short phrase (a script keyword) in.
CARRIERS = (
    "what is your {}",
    "what are your {}",
    "i need {}",
    "i want {}",
    "tell me about {}",
    "i want to talk to {}",
    "can you {} me",
    "{} please",
    "i have a question about {}",
)
# Phrases of at most this many words are keywords and go into the carriers; longer ones are
# sentences on their own (carriers around whole sentences cost keyword hits in trials).
_CARRIED_WORDS = 2

# Single words so that out-of-script speech can land somewhere other than a keyword. A longer
# list (150 common words) halved keyword hits, so it stays this short; "the", "a" and "my" went
# too: two-phone words soaked up keywords ("pizza" came out as "the"; pizza shop 22 -> 25 of 30).
GENERIC_WORDS = tuple("yes no okay hello hi bye goodbye thanks please sorry what who where when why how".split())

# Below this level (about -60 dBFS) a segment is silence and is not decoded: the decoder has
# turned pure silence into a short word ("to", "no"), and skipping it saves a decode.
_SILENCE_RMS = 30.0
# A segment reaches the STT with up to a second of the line's quiet before the caller spoke and
# the VAD's 0.2 s after. The decoder normalises on the whole segment's cepstral mean, so that
# quiet pulls the mean away from the speech: trimming it to 50 ms either side of the first and
# last 10 ms above about -50 dBFS took keyword hits (eSpeak through 8 kHz mu-law, 1 s of silence
# before) from 28 to 38 of 51 (tests/test_offline_speech.py).
_TRIM_RMS = 100.0
_TRIM_MARGIN_MS = 50
# Phone audio has nothing above 4 kHz, where the model (trained on 16 kHz speech) expects the
# fricatives' energy. Folding the 0-4 kHz band's mirror image into 4-8 kHz, at this gain (a
# classic cheap bandwidth extension), gave one more hit of 51 than the white noise floor it
# replaces, and no more false keywords.
_FOLD_GAIN = 0.3


def _words(phrase: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)*", phrase.lower())


class _Recogniser:
    """One decoder for one phrase set, behind a lock: a pocketsphinx Decoder is not thread-safe.

    One decoder, not a pool: pocketsphinx holds the GIL while decoding (two threads on two
    decoders took as long as one thread doing both), so more decoders would add ~7 MB each and
    no throughput. Concurrent calls on one agent queue on the lock, ~50 ms per utterance.
    """

    def __init__(self, phrases: Sequence[str]) -> None:
        import pocketsphinx
        from pocketsphinx.lm import ArpaBoLM

        model_dir = Path(pocketsphinx.get_model_path())
        hmm = model_dir / "en-us" / "en-us"
        pronunciations = _pronunciations(model_dir / "en-us" / "cmudict-en-us.dict", _corpus_words(phrases))
        corpus = _corpus(phrases, known=set(pronunciations))
        # Blank lines give "<s> </s>", so an utterance may decode to no word at all.
        lm = ArpaBoLM(text="\n".join(corpus) + "\n\n", add_start=True)
        lm.compute()
        with tempfile.TemporaryDirectory(prefix="voicecli-sphinx-") as tmp:
            folder = Path(tmp)
            with open(folder / "lm.arpa", "w") as arpa:
                lm.write(arpa)
            (folder / "words.dict").write_text(
                "".join(line for word in sorted(lm.grams_1) for line in pronunciations.get(word, ()))
            )
            # feat.params overrides the keyword arguments, so the change goes into a copy of it.
            params = (hmm / "feat.params").read_text()
            (folder / "feat.params").write_text(re.sub(r"^-remove_noise .*$", "-remove_noise no", params, flags=re.M))
            self._decoder = pocketsphinx.Decoder(
                hmm=str(hmm),
                lm=str(folder / "lm.arpa"),
                dict=str(folder / "words.dict"),
                featparams=str(folder / "feat.params"),
                # Wider Gaussian selection and no second flat-lexicon pass: more hits, and faster.
                topn=8,
                fwdflat=False,
                loglevel="FATAL",
            )
        self._initial_cmn = self._decoder.get_cmn()
        self._lock = threading.Lock()

    def decode(self, pcm16: bytes) -> str:
        with self._lock:
            # The decoder keeps a running cepstral mean between utterances; start each one from
            # the same value so that no earlier call's audio can change this call's words.
            self._decoder.set_cmn(self._initial_cmn)
            self._decoder.start_utt()
            # One whole-utterance call normalises on this utterance's own cepstral mean; fed in
            # pieces (a running mean from a fixed start) it lost half the keyword hits.
            self._decoder.process_raw(pcm16, no_search=False, full_utt=True)
            self._decoder.end_utt()
            hypothesis = self._decoder.hyp()
        return hypothesis.hypstr if hypothesis is not None else ""


def _corpus_words(phrases: Iterable[str]) -> set[str]:
    return {word for text in (*phrases, *CARRIERS, *GENERIC_WORDS) for word in _words(text)}


def _pronunciations(dictionary: Path, wanted: set[str]) -> dict[str, list[str]]:
    # Scanning the 135k-word dictionary (~30 ms) keeps the decoder from loading all of it.
    found: dict[str, list[str]] = {}
    with open(dictionary, encoding="utf-8") as lines:
        for line in lines:
            word = line.split(" ", 1)[0].split("(", 1)[0]
            if word in wanted:
                found.setdefault(word, []).append(line if line.endswith("\n") else line + "\n")
    return found


def _corpus(phrases: Sequence[str], known: set[str]) -> list[str]:
    sentences: list[str] = []
    for phrase in phrases:
        words = _words(phrase)
        unknown = [word for word in words if word not in known]
        if unknown:
            logger.debug(f"PocketSphinx has no pronunciation for {unknown} in {phrase!r}; dropped")
        words = [word for word in words if word in known]
        if not words:
            continue
        text = " ".join(words)
        sentences.append(text)
        if len(words) <= _CARRIED_WORDS:
            sentences.extend(carrier.format(text) for carrier in CARRIERS)
    sentences.extend(GENERIC_WORDS)
    return sentences


# One decoder per distinct phrase set (in practice one per agent), kept for the process's life.
_recognisers: dict[tuple[str, ...], _Recogniser] = {}
_recognisers_lock = threading.Lock()


def _phrase_key(phrases: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(" ".join(_words(phrase)) for phrase in phrases))


def _recogniser(phrases: Sequence[str]) -> _Recogniser:
    """The shared decoder for this phrase set, built on first use (~50 ms, about 9 MB)."""
    key = _phrase_key(phrases)
    # Built under the lock so two calls of a new agent do not both build one.
    with _recognisers_lock:
        found = _recognisers.get(key)
        if found is None:
            found = _recognisers[key] = _Recogniser(key)
        return found


def trim_silence(pcm16: bytes, sample_rate: int) -> bytes:
    """The segment from 50 ms before its first loud 10 ms to 50 ms after its last."""
    frame = sample_rate // 100
    samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float64)
    count = len(samples) // frame
    if count == 0:
        return pcm16
    energy = np.sqrt((samples[: count * frame].reshape(count, frame) ** 2).mean(axis=1))
    loud = np.nonzero(energy > _TRIM_RMS)[0]
    if len(loud) == 0:
        return pcm16
    margin = _TRIM_MARGIN_MS // 10
    first, last = max(0, loud[0] - margin), min(count, loud[-1] + 1 + margin)
    return pcm16[first * frame * 2 : last * frame * 2]


def widen(pcm8k: bytes) -> bytes:
    """8 kHz audio at the model's 16 kHz, with the mirror image of 0-4 kHz folded into 4-8 kHz."""
    narrow = np.frombuffer(pcm8k, dtype="<i2").astype(np.float64)
    upsampled = np.frombuffer(resample(pcm8k, 8000, MODEL_RATE), dtype="<i2").astype(np.float64)
    stuffed = np.zeros(2 * len(narrow))
    stuffed[::2] = 2 * narrow  # zero-stuffing: the 0-4 kHz spectrum, mirrored above 4 kHz
    spectrum = np.fft.rfft(stuffed)
    spectrum[np.fft.rfftfreq(len(stuffed), 1 / MODEL_RATE) < 4000] = 0
    high = np.fft.irfft(spectrum, len(stuffed))
    n = min(len(upsampled), len(high))
    wide = upsampled[:n] + _FOLD_GAIN * high[:n]
    return np.clip(np.round(wide), -32768, 32767).astype("<i2").tobytes()


def transcribe(pcm16: bytes, phrases: Sequence[str], sample_rate: int = MODEL_RATE) -> str:
    """Recognise 16-bit mono PCM with a model built from `phrases`; "" when nothing was heard."""
    if rms(pcm16) < _SILENCE_RMS:
        return ""
    # Phone audio arrives at 8 kHz (voicecli/call/pipeline.py); anything else goes down to 8 kHz
    # first, so that every segment reaches the model through the same band.
    if sample_rate != 8000:
        pcm16 = resample(pcm16, sample_rate, 8000)
    pcm16 = trim_silence(pcm16, 8000)
    return _recogniser(phrases).decode(widen(pcm16))


class PocketSphinxSTTService(SegmentedSTTService):
    """Pipecat segmented STT with PocketSphinx, offline; recognises the agent's phrases best."""

    def __init__(self, *, phrases: list[str], language: str = "en-US", **kwargs: Any) -> None:
        if language.lower() not in ("en", "en-us"):
            raise ValueError(f"PocketSphinx has only an English (en-US) model, not {language!r}")
        # How long the user aggregator may wait for a transcript after the caller stops. A
        # decode takes 50-100 ms here; pipecat's own 1 s default, stated so that pipecat does
        # not warn about it at the start of every call.
        kwargs.setdefault("ttfs_p99_latency", 1.0)
        super().__init__(settings=STTSettings(model=None, language=Language.EN_US), **kwargs)
        self._phrases = list(phrases)

    def can_generate_metrics(self) -> bool:
        """PocketSphinx reports processing metrics."""
        return True

    @property
    def wants_wav_segments(self) -> bool:
        """Segments arrive as raw 16-bit PCM, not WAV: PocketSphinx reads samples."""
        return False

    async def start(self, frame: StartFrame) -> None:
        """Start, and build the decoder now (in a thread) so the first utterance does not wait."""
        await super().start(frame)
        await asyncio.to_thread(_recogniser, self._phrases)

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        """Transcribe one segment off the event loop; yield a TranscriptionFrame if words were heard."""
        await self.start_processing_metrics()
        text = await asyncio.to_thread(transcribe, audio, self._phrases, self.sample_rate)
        await self.stop_processing_metrics()
        if text:
            logger.debug(f"{self}: heard [{text}]")
            yield TranscriptionFrame(text, self._user_id, time_now_iso8601(), Language.EN_US)
