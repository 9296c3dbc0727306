"""Caller speech for the turn-latency bench: eSpeak sentences, and a human voice that is not eSpeak.

The human voice is a reading of A Tale of Two Cities shipped in the `moonshine-voice` wheel
(`moonshine_voice/assets/two_cities.wav`, MIT, 48 kHz; bench extra), cut at its pauses into
phrases that fit the callers' 2 s speech window. No ASR model of it is used: only the recording.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

# Issue 13's sentences, for every keyword of the demo's rules.
FORMS = ("I need {} please", "Can you give me {}", "{}")
DEMO_KEYWORDS = ("pricing", "price", "cost", "hours", "open", "support", "help")
RATE = 8000


def espeak_sentences() -> list[str]:
    return [form.format(keyword) for keyword in DEMO_KEYWORDS for form in FORMS]


def human_recording() -> Path:
    """The recording's path, found without importing moonshine_voice (its import wants PortAudio)."""
    spec = importlib.util.find_spec("moonshine_voice")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the human voice sample needs the bench extra: pip install -e '.[bench]'")
    return Path(next(iter(spec.submodule_search_locations))) / "assets" / "two_cities.wav"


def human_phrases(directory: Path, min_s: float = 0.8, max_s: float = 2.0, pause_s: float = 0.3) -> list[Path]:
    """The recording cut at pauses of at least `pause_s` into 8 kHz WAV phrases of min_s..max_s."""
    from voicecli.call.audio import read_wav, resample, write_wav

    pcm, rate = read_wav(human_recording())
    samples = np.frombuffer(resample(pcm, rate, RATE), dtype="<i2")
    frame = RATE // 50  # 20 ms
    count = len(samples) // frame
    energy = np.sqrt((samples[: count * frame].reshape(count, frame).astype(np.float64) ** 2).mean(axis=1))
    loud = energy > max(100.0, 0.1 * np.percentile(energy, 95))
    phrases, start, quiet = [], None, 0
    for k, is_loud in enumerate(loud):
        if is_loud:
            start = k if start is None else start
            quiet = 0
        elif start is not None:
            quiet += 1
            if quiet * 0.02 >= pause_s:
                end = k - quiet + 1
                if min_s <= (end - start) * 0.02 <= max_s:
                    phrases.append(samples[start * frame : end * frame].tobytes())
                start = None
    paths = []
    for n, phrase in enumerate(phrases):
        path = directory / f"human-{n:02d}.wav"
        write_wav(path, phrase, RATE)
        paths.append(path)
    return paths
