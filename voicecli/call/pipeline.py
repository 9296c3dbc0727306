"""One call's pipecat pipeline: transport in, STT, user turn, LLM, TTS, transport out.

Turn-taking: Silero VAD hears the caller start and stop; the agent's `[turn]` table says what
ends the turn: Smart Turn v3 (the strategy pipecat's telephony examples use) with a short
fallback, or a plain pause. Both models are shared across calls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.audio.turn.smart_turn.base_smart_turn import SmartTurnParams
from pipecat.audio.vad.vad_analyzer import VAD_STOP_SECS
from pipecat.frames.frames import Frame, InputAudioRawFrame, OutputAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.dtmf_aggregator import DTMFAggregator
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_transport import TransportParams
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy, TurnAnalyzerUserTurnStopStrategy
from pipecat.turns.user_stop.base_user_turn_stop_strategy import BaseUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies

from voicecli.agents import Agent, TurnConfig
from voicecli.call.models import SharedSileroVAD, SharedSmartTurn
from voicecli.call.tools import ToolRunner, offered_functions
from voicecli.call.transport import CallLine, WebsocketTransport
from voicecli.call.voicemail import RECOGNIZER_PHRASES, VoicemailParts
from voicecli.services import SERVICES, create_service

# Telephony audio is 8 kHz and the pipeline hears and speaks at 8 kHz, as pipecat's telephony
# examples do: Silero runs at 8 kHz, Smart Turn and PocketSphinx resample each segment once.
# At 16 kHz the serializer's streaming VHQ resampler ran on every 20 ms frame, held audio back
# (handing ~80 ms at a time to the pipeline, +40 ms median) and, after a 200 ms stall, cleared
# its buffer and lost audio (bench/README.md).
AUDIO_IN_RATE = 8000
AUDIO_OUT_RATE = 8000


class AudioEnd(FrameProcessor):
    """Ends one kind of audio frame's trip through the pipeline, after its last reader.

    pipecat passes every audio frame on to the end of the pipeline: the caller's audio
    through the LLM, the TTS, the output transport and the assistant aggregator, the agent's
    through the assistant aggregator, none of which read it. Each hop is a queue, a task
    switch and an observer notification, 25 times a second per call. This runs in the
    previous processor's task (direct mode), so it adds no hop of its own.
    """

    def __init__(self, kind: type[Frame]) -> None:
        super().__init__(enable_direct_mode=True)
        self._kind = kind

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if not isinstance(frame, self._kind):
            await self.push_frame(frame, direction)


def turn_stop_strategy(turn: TurnConfig) -> BaseUserTurnStopStrategy:
    """The user-turn stop strategy for an agent's `[turn]` table.

    Both of the table's waits count from the caller's last sound; pipecat's count from the
    VAD's stop, which Silero reports VAD_STOP_SECS (0.2 s) after it, so that is taken off.
    """
    if turn.strategy == "silence":
        return SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=max(0.0, turn.silence_s - VAD_STOP_SECS))
    # Smart Turn's stop_secs is the fallback when the model says "not finished": pipecat's
    # default is 3 s, and the model rates some voices (eSpeak's among them) "not finished"
    # often enough that callers waited 3.2 s for a reply (issue 13).
    params = SmartTurnParams(stop_secs=max(0.0, turn.max_wait_s - VAD_STOP_SECS))
    return TurnAnalyzerUserTurnStopStrategy(turn_analyzer=SharedSmartTurn(params=params))


TranscriptSink = Callable[[str, str], Awaitable[None]]


def build_task(
    agent: Agent,
    line: CallLine,
    env: Mapping[str, str],
    on_transcript: TranscriptSink,
    tools: ToolRunner | None = None,
    end_call: Callable[[str], Awaitable[None]] | None = None,
    voicemail: VoicemailParts | None = None,
) -> PipelineWorker:
    """The pipeline task for one call, with the transcript written as the call goes.

    `tools` and `end_call` are offered to a function-calling LLM; the script LLM's rules
    call the tools themselves. `voicemail`: a dialled call that listens for an answering
    machine (voicemail.py).
    """
    params = TransportParams(
        audio_in_enabled=True,
        audio_out_enabled=True,
        audio_in_sample_rate=AUDIO_IN_RATE,
        audio_out_sample_rate=AUDIO_OUT_RATE,
    )
    transport = WebsocketTransport(line, params)
    phrases = agent.phrases()
    if voicemail is not None and voicemail.detector is not None:
        phrases += RECOGNIZER_PHRASES  # the offline recognizer must be able to hear a greeting
    stt = create_service("stt", agent.stt, env, phrases)
    llm = create_service("llm", agent.llm, env)
    functions: list[Any] = []
    if hasattr(llm, "attach_tools"):
        if tools is not None:
            llm.attach_tools(tools)
    elif hasattr(llm, "register_function"):
        functions = offered_functions(tools, end_call)
    tts = create_service("tts", agent.tts, env)

    messages: list[Any] = [{"role": "system", "content": agent.system_prompt}] if agent.system_prompt else []
    context = LLMContext(messages, tools=ToolsSchema(standard_tools=functions)) if functions else LLMContext(messages)
    strategies = UserTurnStrategies(stop=[turn_stop_strategy(agent.turn)])
    aggregators = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(vad_analyzer=SharedSileroVAD(), user_turn_strategies=strategies),
    )

    processors: list[Any] = [transport.input(), stt]
    if voicemail is not None:
        processors.append(voicemail.after_stt)
    if not SERVICES["llm"][agent.llm.provider].reads_dtmf:
        # Cloud LLMs hear key presses as text ("DTMF: 1"); the script reads them directly.
        processors.append(DTMFAggregator())
    processors += [
        aggregators.user(),
        AudioEnd(InputAudioRawFrame),
        llm,
        tts,
        *([voicemail.gate] if voicemail is not None else []),
        transport.output(),
        AudioEnd(OutputAudioRawFrame),
        aggregators.assistant(),
    ]

    task = PipelineWorker(
        Pipeline(processors),
        params=PipelineParams(audio_in_sample_rate=AUDIO_IN_RATE, audio_out_sample_rate=AUDIO_OUT_RATE),
        idle_timeout_secs=agent.idle_timeout_s,
        # The session ends an idle call politely (goodbye, hang-up) instead of cancelling it.
        cancel_on_idle_timeout=False,
        enable_rtvi=False,
        # Turn tracking is an observer told about every frame at every processor; voicecli
        # keeps its own transcript from the aggregators' events.
        enable_turn_tracking=False,
    )

    @aggregators.user().event_handler("on_user_turn_stopped")
    async def _caller_said(aggregator: Any, strategy: Any, message: Any) -> None:
        if message.content:
            await on_transcript("caller", message.content)

    @aggregators.assistant().event_handler("on_assistant_turn_stopped")
    async def _agent_said(aggregator: Any, message: Any) -> None:
        if message.content:
            await on_transcript("agent", message.content)

    return task
