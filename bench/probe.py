"""Media-path probe, installed identically in both benchmark servers (opt-in, bench only).

The emulated callers add `"bench_t": <send time>` to every media message (time.monotonic,
which is one clock for every process on Linux). The probe wraps two pipecat methods that
both servers go through:

- `TwilioFrameSerializer.deserialize`: the server hands the message to the serializer
  ("handoff"); the audio frame it returns is stamped with the send and handoff times;
- `STTService.process_frame`: the first processor after the input transport, i.e. the
  pipeline receiving the audio.

It also times every cyclic garbage collection (`gc.callbacks`): the longest one in the run,
arrivals included, is time the event loop did nothing else.

Per frame it keeps (send time, handoff time, receipt time) in flat arrays (8 bytes each), so
"wire to pipeline" includes the time a message waited for a busy event loop, and "handoff to
pipeline" is the transport's own queueing. Messages counted per send-time window give drops.
"""

from __future__ import annotations

import gc
import time
from array import array
from collections import deque
from typing import Any

_sent = array("d")
_handoff = array("d")
_reached = array("d")
_deserialized = array("d")  # send times of media messages the serializer read
_installed = False
MARK = '"bench_t": '


def _bench_t(data: Any) -> float | None:
    if not isinstance(data, str):
        return None
    i = data.rfind(MARK)
    if i < 0:
        return None
    try:
        return float(data[i + len(MARK) : data.index("}", i)])
    except ValueError:
        return None


def install() -> None:
    """Wrap the serializer and the STT base class (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    from pipecat.frames.frames import InputAudioRawFrame
    from pipecat.serializers.twilio import TwilioFrameSerializer
    from pipecat.services.stt_service import STTService

    deserialize = TwilioFrameSerializer.deserialize
    process_frame = STTService.process_frame
    now = time.monotonic

    async def probed_deserialize(self: Any, data: Any) -> Any:
        handoff = now()
        frame = await deserialize(self, data)
        sent = _bench_t(data)
        if sent is None:
            return frame
        # Every media message is queued on its serializer. A frame that reaches the STT
        # carries the audio of every queued message sent up to its own: a streaming resampler
        # (8 -> 16 kHz) may hold audio back and return it with a later frame, and a transport
        # may merge frames into the latest one.
        queue = self.__dict__.setdefault("_bench_queue", deque())
        queue.append((sent, handoff))
        _deserialized.append(sent)
        if isinstance(frame, InputAudioRawFrame):
            frame._bench = (queue, sent)
        return frame

    async def probed_process_frame(self: Any, frame: Any, direction: Any) -> Any:
        stamp = getattr(frame, "_bench", None)
        if stamp is not None:
            queue, last = stamp
            reached = now()
            while queue and queue[0][0] <= last:
                sent, handoff = queue.popleft()
                _sent.append(sent)
                _handoff.append(handoff)
                _reached.append(reached)
        return await process_frame(self, frame, direction)

    TwilioFrameSerializer.deserialize = probed_deserialize
    STTService.process_frame = probed_process_frame
    gc.callbacks.append(_time_collection)


_gc_started = 0.0
_gc_pause_ms = array("d")  # every cyclic garbage collection in the run, never reset


def _time_collection(phase: str, info: dict[str, Any]) -> None:
    # A collection runs on whichever thread allocates, and holds the GIL throughout:
    # on the event loop's thread it is time no call's audio moves.
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
    else:
        _gc_pause_ms.append((time.perf_counter() - _gc_started) * 1000)


_turn_stops = array("d")


def install_turns() -> None:
    """Record when the user aggregator decides the caller's turn is over (the turn detector's verdict)."""
    from pipecat.processors.aggregators.llm_response_universal import LLMUserAggregator

    stopped = LLMUserAggregator._on_user_turn_stopped

    async def probed(self: Any, *args: Any, **kwargs: Any) -> Any:
        _turn_stops.append(time.monotonic())
        return await stopped(self, *args, **kwargs)

    LLMUserAggregator._on_user_turn_stopped = probed

    from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3

    predict = LocalSmartTurnAnalyzerV3._predict_endpoint

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.thread_time()
        try:
            return predict(self, *args, **kwargs)
        finally:
            _smart_turn_cpu.append(time.thread_time() - t0)

    LocalSmartTurnAnalyzerV3._predict_endpoint = counted


_smart_turn_cpu = array("d")


def turn_stops() -> dict[str, Any]:
    """When turns ended, and the CPU time of each Smart Turn inference."""
    return {"stops": list(_turn_stops), "smart_turn_cpu_s": list(_smart_turn_cpu)}


def reset() -> None:
    for arr in (_sent, _handoff, _reached, _deserialized):
        del arr[:]


def snapshot(since: float, until: float) -> dict[str, Any]:
    """Frames sent in [since, until): how many were deserialized, reached, and their latencies (ms)."""
    wire, handoff = [], []
    for s, h, r in zip(_sent, _handoff, _reached, strict=True):
        if since <= s < until:
            wire.append(round((r - s) * 1000, 3))
            handoff.append(round((r - h) * 1000, 3))
    deserialized = sum(1 for s in _deserialized if since <= s < until)
    return {
        "reached": len(wire),
        "deserialized": deserialized,
        "wire_ms": wire,
        "handoff_ms": handoff,
        "gc_max_ms": max(_gc_pause_ms, default=0.0),
    }
