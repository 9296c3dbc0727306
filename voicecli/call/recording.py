"""One call's recording: a two-channel WAV written as the call goes (README, "Recordings").

Left channel: the caller, each frame where it arrived. Right: the agent as the caller heard
it, each frame where it began to play (the transport's playout clock: audio is sent ahead
at twice real time), audio cleared on barge-in taken out again. Both are placed on one
clock, seconds since the recording opened, with silence wherever nothing was heard, so the
two stay aligned however each side's frames are paced. Samples wait in memory only until
nothing can change them (COMMIT_LAG_S behind now), then go to disk every FLUSH_S from a
worker thread: the event loop never waits on the disk, and no call is held in memory.

A disk error ends the recording (kept in `error`), never the call. A killed server leaves
the header's sizes at zero; `repair` sets them from the file's length at the next start.
Numpy only, no pipecat: the server's start-up repair imports this.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

RATE = 8000
CHANNELS = 2
FRAME_BYTES = 2 * CHANNELS  # one 16-bit sample per channel
HEADER_BYTES = 44
# How far behind now the file is written: a caller frame arriving this late still lands
# where it belongs, and agent audio sent ahead can still be cleared by a barge-in.
COMMIT_LAG_S = 0.25
FLUSH_S = 0.25
# A caller frame arriving within this of where the last one ended follows it directly:
# network jitter must not chop the caller's speech with slivers of silence, nor shift it.
JITTER_S = 0.06
_PCM = np.dtype("<i2")


def wav_header(data_bytes: int) -> bytes:
    """The 44-byte header of a 16-bit PCM WAV at RATE with CHANNELS, holding `data_bytes`."""
    data_bytes = min(data_bytes, 0xFFFFFFFF - 36)
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        CHANNELS,
        RATE,
        RATE * FRAME_BYTES,
        FRAME_BYTES,
        16,
        b"data",
        data_bytes,
    )


def _write_all(fd: int, data: bytes) -> None:
    # A file size limit or a filling disk first shortens a write, then fails the next one.
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Track:
    """One channel's samples not yet on disk: `buf` holds samples from position `base` on."""

    def __init__(self) -> None:
        self.base = 0
        self.buf = bytearray()

    @property
    def end(self) -> int:
        return self.base + len(self.buf) // 2

    def put(self, at: int, pcm: bytes) -> None:
        if at < self.base:  # the part already written is past changing
            pcm = pcm[(self.base - at) * 2 :]
            at = self.base
        offset = (at - self.base) * 2
        if offset > len(self.buf):
            self.buf.extend(bytes(offset - len(self.buf)))
        self.buf[offset : offset + len(pcm)] = pcm

    def drop(self, at: int, count: int) -> None:
        """Take `count` samples out at `at` (not before `base`): what follows moves earlier."""
        start = (max(at, self.base) - self.base) * 2
        del self.buf[start : start + count * 2]

    def cut(self, at: int) -> None:
        del self.buf[max(0, at - self.base) * 2 :]

    def take(self, upto: int) -> bytes:
        """Samples from `base` to `upto`, silence where there are none."""
        count = upto - self.base
        if count <= 0:
            return b""
        out = bytes(self.buf[: count * 2])
        del self.buf[: count * 2]
        self.base = upto
        return out + bytes(count * 2 - len(out))


class CallRecorder:
    """Writes one call's two channels to `path` as the call goes; `close` finishes the file."""

    def __init__(self, path: Path, fd: int, clock: Callable[[], float] = time.monotonic):
        self.path = path
        self.error: str | None = None
        self.frames_written = 0
        self._fd: int | None = fd
        self._clock = clock
        self._t0 = clock()
        self._caller = _Track()
        self._agent = _Track()
        self._caller_gap = 0  # where the silence before the caller's latest run of frames began
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: Path, clock: Callable[[], float] = time.monotonic) -> CallRecorder:
        """Create the file (mode 0600, as transcripts are) and start writing; OSError if the disk refuses."""

        def create() -> int:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _write_all(fd, wav_header(0))
            except BaseException:
                os.close(fd)
                raise
            return fd

        recorder = cls(path, await asyncio.to_thread(create), clock)
        recorder._task = asyncio.create_task(recorder._writing())
        return recorder

    @property
    def seconds(self) -> float:
        return round(self.frames_written / RATE, 3)

    @property
    def recording(self) -> bool:
        return self.error is None and not self._stopping.is_set()

    def _position(self, moment: float) -> int:
        return round((moment - self._t0) * RATE)

    # --- what the transport hands over (cheap: buffers only) ------------------------------
    def caller(self, pcm16: bytes, rate: int) -> None:
        """A caller frame as it arrives: its audio was spoken during the moments just before."""
        if not self.recording:
            return
        pcm16 = _at_rate(pcm16, rate)
        track, now, jitter = self._caller, self._position(self._clock()), round(JITTER_S * RATE)
        # Frames follow each other; a pause in the stream is silence up to this frame's time.
        at = track.end
        if at < now - len(pcm16) // 2 - jitter:
            self._caller_gap = at
            at = now - len(pcm16) // 2
        track.put(at, pcm16)
        # Frames that arrive together (read late: before the pipeline started, or after a
        # stall) were spoken before now: pulled back so the last ends now, into the silence
        # before them first; the caller's channel never runs ahead of the agent's.
        if track.end > now + jitter:
            track.drop(self._caller_gap, track.end - now)

    def agent(self, pcm16: bytes, rate: int, plays_at: float) -> None:
        """An agent frame sent to the caller, who hears it from `plays_at` (monotonic)."""
        if not self.recording:
            return
        at = self._position(plays_at)
        end = self._agent.end
        if abs(at - end) <= 2:  # the next frame of the same utterance: no rounding gap
            at = end
        self._agent.put(at, _at_rate(pcm16, rate))

    def cleared(self, moment: float) -> None:
        """The caller's buffered agent audio was discarded at `moment` (barge-in): they never hear it."""
        self._agent.cut(self._position(moment))

    # --- the disk, off the event loop -------------------------------------------------------
    async def _writing(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), FLUSH_S)
            except TimeoutError:
                pass
            if self._stopping.is_set():
                break
            await self._flush(self._position(self._clock() - COMMIT_LAG_S))
        # The end: whatever the caller has heard by now, then the header's real sizes.
        await self._flush(max(self._position(self._clock()), self._caller.end))
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                await asyncio.to_thread(_finish, fd, self.frames_written * FRAME_BYTES)
            except OSError as exc:
                self._fail(exc)

    async def _flush(self, upto: int) -> None:
        if self.error is not None or self._fd is None:
            return
        left, right = self._caller.take(upto), self._agent.take(upto)
        if not left:
            return
        frames = np.empty((len(left) // 2, CHANNELS), dtype=_PCM)
        frames[:, 0] = np.frombuffer(left, dtype=_PCM)
        frames[:, 1] = np.frombuffer(right, dtype=_PCM)
        try:
            await asyncio.to_thread(_write_all, self._fd, frames.tobytes())
        except OSError as exc:
            self._fail(exc)
            return
        self.frames_written += len(frames)

    def _fail(self, exc: OSError) -> None:
        if self.error is None:
            self.error = f"disk error after {self.seconds:g} s, recording stopped: {exc.strerror or exc}"
        self._caller, self._agent = _Track(), _Track()  # nothing more is kept

    async def close(self) -> tuple[float, str | None]:
        """Write what is left, finish the header, close the file: (seconds on disk, error)."""
        self._stopping.set()
        if self._task is not None:
            [outcome] = await asyncio.gather(self._task, return_exceptions=True)
            if isinstance(outcome, BaseException) and self.error is None:  # a bug: kept, not raised
                self.error = f"recording failed: {type(outcome).__name__}: {outcome}"
        elif self._fd is not None:
            os.close(self._fd)
            self._fd = None
        return self.seconds, self.error


def _at_rate(pcm16: bytes, rate: int) -> bytes:
    if rate == RATE:
        return pcm16
    from voicecli.call.audio import resample

    return resample(pcm16, rate, RATE)


def _finish(fd: int, data_bytes: int) -> None:
    """The header's sizes, now that they are known; the file closed whatever happens."""
    try:
        os.pwrite(fd, wav_header(data_bytes), 0)
    finally:
        os.close(fd)


def repair(path: Path) -> float:
    """Give a recording its header's sizes from the file's length (a killed server never wrote
    them); a partial last frame is cut. Its length in seconds; OSError, or ValueError when the
    file is not a recording's."""
    with path.open("r+b") as file:
        head = file.read(HEADER_BYTES)
        if len(head) == HEADER_BYTES and (head[:4] != b"RIFF" or head[8:16] != b"WAVEfmt " or head[36:40] != b"data"):
            raise ValueError(f"{path} is not a voicecli recording")
        size = os.fstat(file.fileno()).st_size
        data_bytes = max(0, size - HEADER_BYTES) // FRAME_BYTES * FRAME_BYTES
        file.seek(0)
        file.write(wav_header(data_bytes))
        file.truncate(HEADER_BYTES + data_bytes)
    return round(data_bytes / FRAME_BYTES / RATE, 3)
