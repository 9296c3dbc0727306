"""Small audio helpers on 16-bit little-endian mono PCM: G.711 mu-law, resampling, WAV files.

Numpy only (no pipecat, so the CLI stays fast to import; no `audioop`, removed in Python 3.13).
"""

from __future__ import annotations

import os
import wave

import numpy as np

_PCM = np.dtype("<i2")

# G.711 mu-law as in the ITU reference and CPython's audioop (`lin2ulaw(x, 2)`/`ulaw2lin(x, 2)`):
# the 16-bit sample is cut to 14 bits, biased by 33, and coded as sign, 3-bit segment, 4-bit step.
_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159
_ULAW_SEGMENT_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])


def _build_ulaw_tables() -> tuple[np.ndarray, np.ndarray]:
    # Every input is tabulated once (64 KiB), so encoding is one lookup per sample.
    linear = np.arange(-32768, 32768, dtype=np.int32) >> 2
    mask = np.where(linear < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(linear), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    segment = np.searchsorted(_ULAW_SEGMENT_ENDS, magnitude, side="left")
    step = (magnitude >> (segment + 1)) & 0x0F
    # Past the last segment (clipped magnitudes) the reference returns the loudest code, 0x7F ^ mask.
    encoded = np.where(segment < 8, (segment << 4) | step, 0x7F) ^ mask
    # Index by the sample's unsigned 16-bit pattern, as `np.frombuffer(..., "<u2")` gives it.
    encode = np.empty(65536, dtype=np.uint8)
    encode[np.arange(-32768, 32768) & 0xFFFF] = encoded

    code = ~np.arange(256, dtype=np.int32) & 0xFF
    magnitude = (((code & 0x0F) << 3) + _ULAW_BIAS) << ((code & 0x70) >> 4)
    decode = np.where(code & 0x80, _ULAW_BIAS - magnitude, magnitude - _ULAW_BIAS).astype(_PCM)
    return encode, decode


_ULAW_ENCODE, _ULAW_DECODE = _build_ulaw_tables()


def _samples(pcm16: bytes) -> np.ndarray:
    if len(pcm16) % 2:
        raise ValueError(f"16-bit PCM must have an even number of bytes, got {len(pcm16)}")
    return np.frombuffer(pcm16, dtype=_PCM)


def ulaw_encode(pcm16: bytes) -> bytes:
    """Encode 16-bit PCM as G.711 mu-law, one byte per sample."""
    _samples(pcm16)
    return _ULAW_ENCODE[np.frombuffer(pcm16, dtype="<u2")].tobytes()


def ulaw_decode(ulaw: bytes) -> bytes:
    """Decode G.711 mu-law bytes to 16-bit PCM."""
    return _ULAW_DECODE[np.frombuffer(ulaw, dtype=np.uint8)].tobytes()


def resample(pcm16: bytes, from_rate: int, to_rate: int) -> bytes:
    """Resample a whole buffer of 16-bit mono PCM from one sample rate to another."""
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} and {to_rate}")
    samples = _samples(pcm16)
    if from_rate == to_rate or not len(samples):
        return pcm16
    # Imported here: only the call paths that resample pay for soxr's import.
    import soxr

    return soxr.resample(samples, from_rate, to_rate).astype(_PCM).tobytes()


def silence(ms: int, rate: int) -> bytes:
    """`ms` milliseconds of 16-bit silence at `rate` Hz."""
    return bytes(rate * ms // 1000 * 2)


def rms(pcm16: bytes) -> float:
    """Root mean square level of 16-bit PCM, in sample units (0 to 32768)."""
    samples = _samples(pcm16)
    if not len(samples):
        return 0.0
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


def write_wav(path: str | os.PathLike[str], pcm16: bytes, rate: int) -> None:
    """Write 16-bit mono PCM to a WAV file."""
    _samples(pcm16)
    with wave.open(os.fspath(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm16)


def read_wav(path: str | os.PathLike[str]) -> tuple[bytes, int]:
    """Read a 16-bit PCM WAV file as mono (channels averaged) and return it with its sample rate."""
    try:
        with wave.open(os.fspath(path), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as e:
        raise ValueError(f"{os.fspath(path)}: not a PCM WAV file ({e})") from e
    if width != 2:
        raise ValueError(f"{os.fspath(path)}: {8 * width}-bit samples; only 16-bit WAV is supported")
    if channels == 1:
        return frames, rate
    samples = np.frombuffer(frames, dtype=_PCM).reshape(-1, channels)
    return samples.mean(axis=1).round().astype(_PCM).tobytes(), rate
