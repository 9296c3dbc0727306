"""One live call's conversation: its pipeline, and how it ended."""

from __future__ import annotations

import asyncio
import gc
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger
from pipecat.frames.frames import EndFrame, TTSSpeakFrame
from pipecat.workers.runner import WorkerRunner

from voicecli.call.models import load_models
from voicecli.call.pipeline import build_task
from voicecli.call.tools import BuiltIn, ToolRunner
from voicecli.call.transport import CallLine
from voicecli.call.voicemail import (
    GREETING_END_SILENCE_S,
    GREETING_LIMIT_S,
    RECOGNIZER_PHRASES,
    Verdict,
    VoicemailPlan,
    voicemail_parts,
)
from voicecli.errors import AgentError, ProviderError
from voicecli.services import create_service

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web

    from voicecli.agents import Agent
    from voicecli.call.recording import CallRecorder
    from voicecli.providers.base import Provider, StreamStart
    from voicecli.store import CallStatus, CallStore

# After a transfer the provider ends the stream itself; past this, the pipeline is ended.
TRANSFER_GRACE_S = 5.0
# How long a polite ending (goodbye, then hang-up) may take before the call is cut.
POLITE_END_LIMIT_S = 15.0


def warm_up(agents: Iterable[Agent], env: Mapping[str, str]) -> None:
    """Load now, at server start, what each served agent's first call would load.

    Building each service once imports its pipecat and SDK modules and loads local engines;
    done during the first call it held the event loop for about a second, and every other
    call's audio with it. The services built here are discarded.
    """
    load_models()
    for agent in agents:
        for kind in ("stt", "llm", "tts"):
            try:
                create_service(kind, getattr(agent, kind), env, agent.phrases())
                if kind == "stt" and agent.outbound.voicemail != "off":
                    # Its dialled calls may listen for a greeting: the recognizer for that too.
                    create_service(kind, agent.stt, env, [*agent.phrases(), *RECOGNIZER_PHRASES])
            except Exception as exc:  # a service's own check of its options: the user's to fix
                service = getattr(agent, kind).provider
                raise AgentError(f"{agent.path}: the {kind} service {service!r} did not start: {exc}") from exc
    # Everything loaded so far lives as long as the server. Frozen, the cyclic collector no
    # longer walks it: a full collection during calls held the event loop for 170 ms and
    # made every call's audio late (bench: p99 +68 ms while calls arrive, -40 ms frozen).
    gc.collect()
    gc.freeze()


@dataclass(frozen=True)
class ToolContext:
    """What a call's HTTP tools need from the server: its client, the signing secret, and
    the call's facts sent with every request (id, provider, agent, direction, from, to)."""

    http: aiohttp.ClientSession
    secret: str
    call: Mapping[str, str | None]
    variables: Mapping[str, str]  # for `${VAR}` in the tools' URLs and headers
    # Hands the live call to (destination name, number) through the provider; None where the
    # provider cannot (Exotel). What was done, or ProviderError.
    transfer: Callable[[str, str], Awaitable[str]] | None = None


class CallSession:
    """Runs one call's pipeline over its media WebSocket; says how the call ended.

    It never ends the call itself: the call's owner (lifecycle.py) hangs up, releases the
    slot and closes the record from what `outcome()` reports.
    """

    def __init__(
        self,
        *,
        call_id: str,
        agent: Agent,
        provider: Provider,
        start: StreamStart,
        ws: web.WebSocketResponse,
        messages: AsyncIterator[tuple[str, dict[str, Any]]],
        store: CallStore,
        env: dict[str, str],
        tools: ToolContext | None = None,
        recorder: CallRecorder | None = None,
        voicemail: VoicemailPlan | None = None,
    ):
        self.call_id = call_id
        self.agent = agent
        self.provider = provider
        self.start = start
        self.ws = ws
        self.store = store
        self.log = logger.bind(call_id=call_id)
        self.end_reason: str | None = None
        self.error: str | None = None
        self.caller_gone = False
        self.forced = False
        # What the provider said became of the call, when its callback ended it.
        self.provider_status: CallStatus | None = None
        self.line = CallLine(
            ws,
            messages,
            start.serializer,
            provider.is_stop,
            self._caller_gone,
            self.log,
            on_key=self._key_pressed,
            recorder=recorder,
        )
        self.transferred_to: str | None = None  # the destination's name, once handed over
        self._transfer = tools.transfer if tools is not None else None
        runner = None
        if tools is not None:
            built_in: dict[str, BuiltIn] = {}
            if agent.transfer.destinations and self._transfer is not None:
                built_in["transfer_call"] = self._transfer_call
            if agent.dtmf_tool or agent.llm.provider == "script":
                built_in["send_dtmf"] = self._send_dtmf
            runner = ToolRunner(
                agent.tools,
                http=tools.http,
                secret=tools.secret,
                env=tools.variables,
                call=tools.call,
                transcript=self._transcript,
                built_in=built_in,
            )
        end_call = self.end if agent.end_call_tool else None
        # A dialled call that listens for an answering machine: who answered, once known.
        self.voicemail = voicemail_parts(voicemail, agent.llm, env) if voicemail else None
        self.answered_by: Verdict | None = None
        self.task = build_task(agent, self.line, env, self._transcript, runner, end_call, self.voicemail)
        self._timers: list[asyncio.TimerHandle] = []
        self._pending: set[asyncio.Task[Any]] = set()
        detector = self.voicemail.detector if self.voicemail else None
        if detector is not None:

            @detector.event_handler("on_conversation_detected")
            async def _person(processor: Any) -> None:
                await self.machine_verdict("human", detail="a person's words")

            @detector.event_handler("on_voicemail_detected")
            async def _machine(processor: Any) -> None:
                # Fired once the greeting has been quiet for a while: it has ended.
                await self.machine_verdict("machine", greeting_ended=True, detail="a voicemail greeting's words")

        @self.task.event_handler("on_idle_timeout")
        async def _idle(task: Any) -> None:
            await self.end("caller silent too long (idle timeout)")

    async def run(self, end_after_greeting: str | None = None, answered_by: Verdict | None = None) -> None:
        """Run the pipeline to its end; a pipeline failure is kept in `error`, never raised.

        `answered_by`: a provider's verdict that came before the stream.
        """
        loop = asyncio.get_running_loop()
        self._timers.append(
            loop.call_later(self.agent.max_duration_s, self._spawn, self.end, "maximum call duration reached")
        )
        if self.voicemail is not None:
            wait_s = self.voicemail.plan.wait_s
            self._timers.append(
                loop.call_later(wait_s, self._spawn, self._no_verdict, f"no verdict within {wait_s:g}s")
            )
        try:
            runner = WorkerRunner(handle_sigint=False)
            await runner.add_workers(self.task)
            if self.agent.greeting:
                await self.task.queue_frame(TTSSpeakFrame(self.agent.greeting))
            if end_after_greeting:
                await self.end(end_after_greeting)
            if answered_by is not None:
                self._spawn_verdict(answered_by, "the provider's verdict, before the stream")
            await runner.run()
        except asyncio.CancelledError:
            self.forced = True
            raise
        except Exception as exc:  # a pipeline failure ends this call, never the server
            self.error = f"pipeline error: {type(exc).__name__}: {exc}"
            self.log.exception("pipeline failed")
        finally:
            for timer in self._timers:
                timer.cancel()
            for task in self._pending:
                task.cancel()

    def outcome(self) -> tuple[CallStatus, str]:
        """The record's final status and reason, from how the call ended."""
        if self.transferred_to is not None:  # whatever came after: the provider has the call
            return "transferred", self.end_reason or f"transferred to {self.transferred_to}"
        if self.forced:
            return "interrupted", self.end_reason or "server stopped during the call"
        if self.error:
            return "failed", self.error
        return self.provider_status or "completed", self.end_reason or "agent ended the call"

    def _spawn_verdict(self, answered_by: Verdict, detail: str) -> None:
        task = asyncio.ensure_future(self.machine_verdict(answered_by, detail=detail))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _no_verdict(self, detail: str) -> None:
        await self.machine_verdict("unknown", detail=detail)

    async def machine_verdict(self, answered_by: Verdict, *, greeting_ended: bool = False, detail: str = "") -> None:
        """Who answered this dialled call: the provider's verdict, the pipeline's, or none in
        time. A person (or none) gets the held greeting; a machine is hung up on, or left the
        agent's message once its greeting has ended. The first verdict stands, except that a
        machine still counts after the wait ran out."""
        parts = self.voicemail
        if parts is None:
            return
        if self.answered_by is not None and not (self.answered_by == "unknown" and answered_by == "machine"):
            return
        self.answered_by = answered_by
        self.log.info(f"answered by {answered_by} ({detail})")
        await self.store.update(self.call_id, answered_by=answered_by)
        if self.end_reason is not None or self.caller_gone:
            return
        if answered_by != "machine":
            await parts.gate.release()
            return
        parts.gate.drop()
        if parts.listener is not None:
            parts.listener.machine = True
        if parts.plan.mode == "hangup":
            self.end_reason = "answering machine: hung up (voicemail = hangup)"
            self.log.info(f"ending call: {self.end_reason}")
            await self.task.cancel(reason=self.end_reason)
            return
        task = asyncio.ensure_future(self._leave_message(greeting_ended))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _leave_message(self, greeting_ended: bool) -> None:
        """Wait for the machine's greeting to end (the line quiet), say the message, hang up."""
        parts = self.voicemail
        assert parts is not None
        if not greeting_ended and parts.listener is not None:
            await parts.listener.wait_quiet(GREETING_END_SILENCE_S, GREETING_LIMIT_S)
        if self.end_reason is not None or self.caller_gone:
            return
        self.end_reason = "answering machine: left the voicemail message"
        self.log.info(f"ending call: {self.end_reason}")
        # Pushed from past the STT: on a machine nothing from upstream reaches the TTS.
        await parts.after_stt.push_frame(TTSSpeakFrame(parts.plan.message))
        await self.task.queue_frame(EndFrame())
        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_later(POLITE_END_LIMIT_S, self._spawn, self.cut, self.end_reason))

    def _spawn(self, method: Any, reason: str) -> None:
        task = asyncio.ensure_future(method(reason))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _transcript(self, role: str, text: str) -> None:
        latency = self.line.take_reply_latency() if role == "agent" else None
        self.log.info(f"{role}: {text}" + (f" ({latency} ms)" if latency is not None else ""))
        await self.store.add_transcript(self.call_id, role, text, latency_ms=latency)  # type: ignore[arg-type]

    # --- built-in tools -----------------------------------------------------------------
    async def _transfer_call(self, arguments: Mapping[str, Any]) -> dict[str, str]:
        """Hand the caller to a named destination; the provider ends our stream as it dials."""
        name = str(arguments.get("destination", ""))
        number = self.agent.transfer.destinations.get(name)
        if number is None:
            known = ", ".join(sorted(self.agent.transfer.destinations))
            return {"error": f"no destination named {name!r}: choose one of {known}"}
        if self.transferred_to is not None or self.end_reason is not None:
            return {"error": "the call is already ending"}
        assert self._transfer is not None
        try:
            done = await self._transfer(name, number)
        except ProviderError as exc:
            return {"error": str(exc)}
        self.transferred_to, self.end_reason = name, f"transferred to {name} ({done})"
        self.log.info(self.end_reason)
        # Should the provider keep the stream open, the pipeline still ends.
        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_later(TRANSFER_GRACE_S, self._spawn, self._stop_after_transfer, name))
        return {"transferred": name}

    async def _stop_after_transfer(self, name: str) -> None:
        await self.task.cancel(reason=f"transferred to {name}")

    async def _send_dtmf(self, arguments: Mapping[str, Any]) -> dict[str, str]:
        """Play key presses to the far end as in-band DTMF tones (into a phone menu)."""
        from pipecat.frames.frames import OutputAudioRawFrame

        from voicecli.call.dtmf_tones import tones
        from voicecli.call.pipeline import AUDIO_OUT_RATE

        digits = str(arguments.get("digits", ""))
        if not re.fullmatch(r"[0-9*#]{1,32}", digits):
            return {"error": "digits must be 1 to 32 of 0-9, * and #"}
        await self.task.queue_frame(OutputAudioRawFrame(tones(digits, AUDIO_OUT_RATE), AUDIO_OUT_RATE, 1))
        return {"sent": digits}

    async def _key_pressed(self, digit: str) -> None:
        # In the transcript as the caller's, in order with what was said.
        await self._transcript("caller", f"[pressed {digit}]")

    async def _caller_gone(self, reason: str) -> None:
        self.caller_gone = True
        if self.end_reason is None:
            self.end_reason = reason
        await self.task.cancel(reason=reason)

    async def provider_ended(self, status: CallStatus, reason: str) -> None:
        """The provider's callback says the call is over (the caller hung up, or it failed)."""
        self.provider_status = status
        await self._caller_gone(reason)

    async def end(self, reason: str) -> None:
        """End the call politely: say goodbye, let it play; the owner then hangs up."""
        if self.end_reason is not None or self.caller_gone:
            return
        self.end_reason = reason
        self.log.info(f"ending call: {reason}")
        if self.voicemail is not None and self.voicemail.gate.pending:
            await self.voicemail.gate.release()  # no verdict yet: whoever answered hears the goodbye
        await self.task.queue_frames([TTSSpeakFrame(self.agent.goodbye), EndFrame()])
        self._timers.append(asyncio.get_running_loop().call_later(POLITE_END_LIMIT_S, self._spawn, self.cut, reason))

    async def cut(self, reason: str) -> None:
        """End the call now, without a goodbye (second Ctrl-C, or a goodbye that hung)."""
        if self.end_reason is None:
            self.end_reason = reason
        self.forced = True
        await self.task.cancel(reason=reason)
