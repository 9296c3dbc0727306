"""Voicemail on dialled calls: hold the agent's speech until someone says who answered.

Who says it (protocols.md F3): Twilio and the Plivo family post a verdict to
`/telephony/{provider}/amd/{call_id}` (the call's owner hands it to the session); for the
others the pipeline listens to the callee's first words, with pipecat's `VoicemailDetector`
asking the agent's LLM, or for the offline `script` LLM a keyword classifier. Until the
verdict, `MachineGate` (after the TTS) holds the greeting; on a machine, nothing the callee
says reaches the conversation (`MachineListener` after the STT, or the detector itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pipecat.classifiers.base_classifier import (
    BaseClassifier,
    ChoiceQuestion,
    ChoiceResult,
    ClassifierImage,
    ClassifierQuestion,
    ClassifierResult,
)
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    StopFrame,
    SystemFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    WorkerFrame,
)
from pipecat.metrics.metrics import LLMTokenUsage
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voicecli.call.audio import rms
from voicecli.providers.base import DetectsMachines, Provider
from voicecli.services import ServiceConfig
from voicecli.store.records import VoicemailMode

# What a voicemail greeting says and a person does not: the keyword classifier's phrases.
VOICEMAIL_PHRASES = ("leave a message", "after the tone", "not available", "voicemail")
# What the offline recognizer is given so that it can hear them: the phrases, and whole
# greetings around them (eSpeak through G.711: 4 of 5 greetings heard, none of 5 persons'
# answers taken for one, against 3 of 5 with the phrases alone).
RECOGNIZER_PHRASES = (
    *VOICEMAIL_PHRASES,
    "please leave a message after the tone",
    "leave a message after the beep",
    "you have reached",
    "i am not available right now",
)
# In the pipeline, the greeting waits this long for the callee's words to be classified
# (a greeting, then the decision's second of silence); then the call goes on as if a person
# answered. The providers that detect machines give their own time (`DetectsMachines`).
IN_PIPELINE_DETECTION_S = 10.0
# The provider's verdict travels as a callback: its trip is added to the provider's time.
CALLBACK_GRACE_S = 2.0
# A machine's greeting has ended once the line has been this quiet (pipecat's own
# voicemail_response_delay); the message is then left. Past GREETING_LIMIT_S it is left anyway.
GREETING_END_SILENCE_S = 2.0
GREETING_LIMIT_S = 30.0
# Louder than this (about -40 dBFS) is the greeting still playing; a phone line's hiss is below.
SPEECH_RMS = 300.0

TTS_FRAMES = (TTSStartedFrame, TTSStoppedFrame, TTSTextFrame, TTSAudioRawFrame)
# What must still flow once the callee is known to be a machine (pipecat's own allowlist),
# key presses aside: the script would answer them.
LIFECYCLE_FRAMES = (SystemFrame, EndFrame, StopFrame, WorkerFrame)

Verdict = Literal["human", "machine", "unknown"]


@dataclass(frozen=True)
class VoicemailPlan:
    """What one dialled call does about voicemail."""

    mode: Literal["hangup", "message"]
    message: str
    by_provider: bool  # the provider posts the verdict; else the pipeline classifies
    wait_s: float  # how long the greeting waits for a verdict


def plan_for(mode: VoicemailMode | None, provider: Provider, message: str) -> VoicemailPlan | None:
    """The plan of a dialled call that asked for `mode` (None when it asked for no detection):
    the provider's verdict where it `DetectsMachines`, else the pipeline's."""
    if mode is None or mode == "off":
        return None
    if isinstance(provider, DetectsMachines):
        return VoicemailPlan(mode, message, True, provider.machine_detection_s + CALLBACK_GRACE_S)
    return VoicemailPlan(mode, message, False, IN_PIPELINE_DETECTION_S)


class MachineGate(FrameProcessor):
    """After the TTS: holds the agent's speech while the verdict is pending.

    A person (or no verdict in time) releases what was held, in order; a machine drops it,
    as it was meant for a person. Everything else passes.
    """

    def __init__(self) -> None:
        super().__init__()
        self._held: list[tuple[Frame, FrameDirection]] = []
        self.pending = True

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if self.pending and isinstance(frame, TTS_FRAMES):
            self._held.append((frame, direction))
        else:
            await self.push_frame(frame, direction)

    async def release(self) -> None:
        """A person: play what was held."""
        if not self.pending:
            return
        self.pending = False
        held, self._held = self._held, []
        for frame, direction in held:
            await self.push_frame(frame, direction)

    def drop(self) -> None:
        """A machine: forget what was held."""
        self.pending = False
        self._held.clear()


class MachineListener(FrameProcessor):
    """After the STT, for a provider's verdict: once the callee is a machine, nothing it says
    reaches the conversation; and it tells how long the line has been quiet (the greeting's end)."""

    def __init__(self) -> None:
        super().__init__()
        self.machine = False
        self.last_sound = time.monotonic()
        self._sound = asyncio.Event()  # set by each loud frame

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame) and rms(frame.audio) > SPEECH_RMS:
            self.last_sound = time.monotonic()
            self._sound.set()
        if self.machine and direction == FrameDirection.DOWNSTREAM:
            if isinstance(frame, InputDTMFFrame) or not isinstance(frame, LIFECYCLE_FRAMES):
                return
        await self.push_frame(frame, direction)

    def quiet_s(self) -> float:
        return time.monotonic() - self.last_sound

    async def wait_quiet(self, quiet_s: float, limit_s: float) -> None:
        """Return once the line has been quiet for `quiet_s`, or after `limit_s` at most."""
        give_up = time.monotonic() + limit_s
        while (left := min(quiet_s - self.quiet_s(), give_up - time.monotonic())) > 0:
            self._sound.clear()
            with contextlib.suppress(TimeoutError):  # quiet all along: checked again above
                await asyncio.wait_for(self._sound.wait(), left)


# Left out of both sides before matching: the offline recognizer drops and swaps these most
# ("please leave a what after tone" for "please leave a message after the tone").
_ARTICLES = frozenset({"a", "an", "the"})


def _content_words(text: str) -> str:
    return " ".join(w for w in re.findall(r"[a-z0-9']+", text.lower()) if w not in _ARTICLES)


_PHRASE_PATTERNS = tuple(re.compile(rf"\b{re.escape(_content_words(phrase))}\b") for phrase in VOICEMAIL_PHRASES)


def has_voicemail_phrase(text: str) -> bool:
    """Whether a transcript holds one of VOICEMAIL_PHRASES (as whole words, articles aside)."""
    words = _content_words(text)
    return any(pattern.search(words) for pattern in _PHRASE_PATTERNS)


class KeywordVoicemailClassifier(BaseClassifier):
    """The offline `script` LLM's stand-in for an LLM classifier: a voicemail greeting is one
    that says a VOICEMAIL_PHRASES phrase; anything else is a person."""

    async def _ask(
        self,
        state: str | dict[str, Any] | list[Any],
        questions: Mapping[str, ClassifierQuestion],
        images: Sequence[ClassifierImage] = (),
    ) -> tuple[dict[str, ClassifierResult], LLMTokenUsage | None]:
        machine = has_voicemail_phrase(state if isinstance(state, str) else str(state))
        results: dict[str, ClassifierResult] = {}
        for name, question in questions.items():
            options = list(question.options) if isinstance(question, ChoiceQuestion) else []
            choice = "voicemail" if machine else "conversation"
            if choice not in options:
                continue
            probabilities = {option: 1.0 if option == choice else 0.0 for option in options}
            results[name] = ChoiceResult(choice=choice, probabilities=probabilities, confidence=1.0)
        return results, None


@dataclass
class VoicemailParts:
    """The processors one call's pipeline gets for its plan: the gate after the TTS, and after
    the STT either the listener (a provider's verdict) or pipecat's detector (the pipeline's)."""

    plan: VoicemailPlan
    gate: MachineGate
    listener: MachineListener | None = None
    detector: Any = None  # pipecat's VoicemailDetector

    @property
    def after_stt(self) -> FrameProcessor:
        return self.listener if self.listener is not None else self.detector


def voicemail_parts(plan: VoicemailPlan, llm: ServiceConfig, env: Mapping[str, str]) -> VoicemailParts:
    """The gate, and the listener or the detector, for a call that follows `plan`."""
    if plan.by_provider:
        return VoicemailParts(plan, MachineGate(), listener=MachineListener())
    from pipecat.extensions.voicemail.voicemail_detector import VoicemailDetector

    classifier: BaseClassifier
    if llm.provider == "script":
        classifier = KeywordVoicemailClassifier()
    else:
        from pipecat.classifiers.llm.classifier import LLMClassifier

        from voicecli.services import create_service

        # A service of its own: the classifier's requests run beside the conversation's.
        classifier = LLMClassifier(llm=create_service("llm", llm, env))
    detector = VoicemailDetector(classifier=classifier, voicemail_response_delay=GREETING_END_SILENCE_S)
    return VoicemailParts(plan, MachineGate(), detector=detector)
