"""Silero VAD and Smart Turn v3 with one ONNX session per process, shared by every call.

pipecat builds fresh InferenceSessions for each call: about 45 MB and 100 ms of blocking
event-loop time for Smart Turn alone (../shared/baseline.md). The sessions hold no
per-call state (Silero's recurrent state lives in the Python wrapper, kept per call),
and onnxruntime allows concurrent `run` calls on one session, so calls can share them.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState


@functools.cache
def _smart_turn_session() -> Any:
    return LocalSmartTurnAnalyzerV3()._session


@functools.cache
def _silero_session() -> Any:
    return SileroVADAnalyzer()._model.session


class SharedSmartTurn(LocalSmartTurnAnalyzerV3):
    """Smart Turn v3 over the process-wide session, run at low CPU priority."""

    def __init__(self, **kwargs: Any):
        # Run the base classes' __init__ but not this class's parent, which loads the model.
        super(LocalSmartTurnAnalyzerV3, self).__init__(**kwargs)
        self._log_data = False
        self._session = _smart_turn_session()

    def _predict_endpoint(self, audio_array: Any) -> Any:
        # One run is 100-130 ms of CPU (bench/README.md). It runs in a worker thread; at
        # normal priority it takes half the core from the event loop for that long and every
        # call's outgoing audio runs late. At the lowest priority it uses the loop's idle time.
        _lower_this_thread()
        return super()._predict_endpoint(audio_array)


def _lower_this_thread() -> None:
    """Give the calling thread the lowest CPU priority (Linux: per-thread nice); once per thread."""
    if getattr(_thread_state, "lowered", False):
        return
    _thread_state.lowered = True
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not allowed: run at normal priority
        pass


_thread_state = threading.local()


class _SharedSileroModel(SileroOnnxModel):
    """Silero's wrapper (per-call recurrent state) over the process-wide session."""

    def __init__(self, session: Any):
        self.session = session
        self.reset_states()
        self.sample_rates = [8000, 16000]


class SharedSileroVAD(SileroVADAnalyzer):
    """Silero VAD over the process-wide session, run inline on the event loop."""

    def __init__(self, *, params: VADParams | None = None):
        VADAnalyzer.__init__(self, sample_rate=None, params=params)
        self._model = _SharedSileroModel(_silero_session())
        self._windows_since_reset = 0
        self._low_confidence_windows = 0
        self._window_volume = 0.0
        self._model_fresh = True

    async def analyze_audio(self, buffer: bytes) -> VADState:
        # pipecat hands every audio frame to a per-call thread. One Silero window (32 ms of
        # audio) takes a fraction of a millisecond, less than the hand-off itself, and on a
        # busy core the event loop then waits on that thread for the GIL (bench/README.md).
        return self._run_analyzer(buffer)

    def voice_confidence(self, buffer: bytes) -> float:
        # pipecat's analyzer counts a window as speech only if the model's confidence and the
        # smoothed volume both clear their thresholds, asking for the confidence first. The
        # volume is measured here instead, so the model runs only on windows loud enough for
        # its answer to matter: callers are quiet for most of a call (they listen), and Silero
        # is the largest per-frame cost on the event loop (bench/README.md).
        self._window_volume = super()._get_smoothed_volume(buffer)
        if self._window_volume < self._params.min_volume:
            if not self._model_fresh:
                # Start the next loud stretch from a clean state, as Silero's own periodic
                # reset does during quiet (its state drifts over long silence at 8 kHz).
                self._model.reset_states()
                self._windows_since_reset = 0
                self._model_fresh = True
            return 0.0
        self._model_fresh = False
        return super().voice_confidence(buffer)

    def _get_smoothed_volume(self, audio: bytes) -> float:
        # Measured for this same window by voice_confidence, which pipecat calls just before.
        return self._window_volume


def load_models() -> None:
    """Load both models now, at server start, instead of during the first call."""
    _smart_turn_session()
    _silero_session()
