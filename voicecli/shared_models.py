"""Silero VAD and Smart Turn v3 with one ONNX session per process, shared by every call.

pipecat builds fresh InferenceSessions for each call: about 45 MB and 100 ms of blocking
event-loop time for Smart Turn alone (../shared/baseline.md). The sessions hold no
per-call state (Silero's recurrent state lives in the Python wrapper, kept per call),
and onnxruntime allows concurrent `run` calls on one session, so calls can share them.
"""

from __future__ import annotations

import functools
from typing import Any

from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams


@functools.cache
def _smart_turn_session() -> Any:
    return LocalSmartTurnAnalyzerV3()._session


@functools.cache
def _silero_session() -> Any:
    return SileroVADAnalyzer()._model.session


class SharedSmartTurn(LocalSmartTurnAnalyzerV3):
    """Smart Turn v3 over the process-wide session."""

    def __init__(self, **kwargs: Any):
        # Run the base classes' __init__ but not this class's parent, which loads the model.
        super(LocalSmartTurnAnalyzerV3, self).__init__(**kwargs)
        self._log_data = False
        self._session = _smart_turn_session()


class _SharedSileroModel(SileroOnnxModel):
    """Silero's wrapper (per-call recurrent state) over the process-wide session."""

    def __init__(self, session: Any):
        self.session = session
        self.reset_states()
        self.sample_rates = [8000, 16000]


class SharedSileroVAD(SileroVADAnalyzer):
    """Silero VAD over the process-wide session."""

    def __init__(self, *, params: VADParams | None = None):
        VADAnalyzer.__init__(self, sample_rate=None, params=params)
        self._model = _SharedSileroModel(_silero_session())
        self._windows_since_reset = 0
        self._low_confidence_windows = 0


def warm_up() -> None:
    """Load both models now, at server start, instead of during the first call."""
    _smart_turn_session()
    _silero_session()
