"""One owner for every call's life: admission, slot, token, record, session and ending.

Webhooks, dials, status callbacks, media streams, ring timeouts and drain all go through
`CallOwner`. A stream is admitted in steps (README, "Admission"):

1. At the upgrade: 503 when the provider's held calls have reached its limit (nothing is
   taken), 429 when the client already has too many upgrades waiting to prove themselves.
2. Proof: a valid stream token (bound to call, provider and agent; in the stream URL for
   Exotel and Vobiz, in `start` for Twilio) or Twilio's signature on the upgrade. Only then
   is a slot taken, in the same step as the check; a stream that loses the race for the
   last slot is closed with 1013 and its record says so. All within `start_s` of the upgrade.
3. The token's single use: the record is claimed (ringing -> in-progress) in the store.
4. `_owned` runs the session and, whatever raises where, ends the call exactly once:
   goodbye played, provider stop message and REST hang-up (each bounded, the hang-up sent
   even when the stop message fails), socket closed, slot released, record finished.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from aiohttp import WSCloseCode, web
from loguru import logger

from voicecli.errors import ProviderError
from voicecli.providers.base import (
    DetectsMachines,
    DialRequest,
    HangsUp,
    InboundCall,
    MachineVerdict,
    SendsStop,
    SignsUpgrades,
    StatusUpdate,
    StreamCall,
    StreamMessages,
    StreamOnAnswered,
    TokenInStreamUrl,
    WebhookRejected,
)
from voicecli.server import urls
from voicecli.server.limits import Slot, UnprovenCap
from voicecli.server.tokens import TokenScope, make_token, verify_token
from voicecli.store import TERMINAL_STATUSES, CallRecord, Event, SlotCount, StoreUnavailable, VoicemailMode, new_call_id
from voicecli.store.records import parse_iso

if TYPE_CHECKING:
    from voicecli.call.recording import CallRecorder
    from voicecli.call.session import CallSession
    from voicecli.call.voicemail import VoicemailPlan
    from voicecli.providers.base import Provider, StreamStart
    from voicecli.server.state import ServerState

# Provider messages are small (a 20 ms media frame is ~300 bytes); larger ones are junk
# and skipped. Past the hard limit aiohttp closes the socket to protect memory.
SOFT_MESSAGE_LIMIT = 256 * 1024
HARD_MESSAGE_LIMIT = 4 * 1024 * 1024
# Vobiz's nonces carry no time: each is refused a second time for this long.
NONCE_KEEP_S = 30 * 24 * 3600
# The event a status callback sends to the process carrying the call it ends.
PROVIDER_ENDED = "provider-ended"
# The event a machine detection callback sends to the process carrying the call.
MACHINE_VERDICT = "machine-verdict"


@dataclass(frozen=True)
class Timeouts:
    """How long each step of a call's life may take (seconds)."""

    start_s: float = 5.0  # upgrade -> proof and `start`: an idle socket must not linger
    stream_wait_s: float = 120.0  # webhook -> stream, else the record ends `no-stream`
    ring_s: float = 90.0  # dial -> stream, else `no-answer` and the reservation goes back
    stop_message_s: float = 2.0  # the provider's stop message on a socket that may be stuck
    hang_up_s: float = 10.0  # the provider's REST hang-up
    close_s: float = 2.0  # our WebSocket close handshake
    cut_s: float = 2.0  # second Ctrl-C -> every call ended and recorded


class CallRefused(Exception):
    """A webhook, dial or callback refused with this HTTP status (and the record, if one was made)."""

    def __init__(self, status: int, reason: str, record: CallRecord | None = None):
        super().__init__(reason)
        self.status, self.reason, self.record = status, reason, record


@dataclass
class LiveCall:
    """An admitted call: what its owner must give back when it ends."""

    call_id: str
    provider: Provider
    provider_call_id: str | None  # the signed webhook's, else the stream's: where hang-up goes
    slot: Slot
    ws: web.WebSocketResponse
    record: CallRecord | None = None  # as admitted: who called whom, for the agent's tools
    base_url: str = ""  # this server as the provider reached it (a transfer's document URL)
    session: CallSession | None = None
    error: str | None = None  # the session could not be built or run
    recorder: CallRecorder | None = None  # open from before the session runs until the record closes


@dataclass(eq=False)
class Handshake:
    """A stream upgrade not yet admitted as a call (drain waits for these too)."""

    provider: str
    ws: web.WebSocketResponse | None = None


def client_address(request: web.Request, trusted: str | None) -> str:
    """The peer's address, or the client X-Forwarded-For names when the peer is a trusted proxy.

    Read from the right: each trusted hop appended the address it saw, and the first
    untrusted one is the client (anything left of it could be forged).
    """
    peer = request.remote or "unknown"
    networks = [ipaddress.ip_network(n) for n in trusted.split(",")] if trusted else []

    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in networks)

    if not is_trusted(peer):
        return peer
    hops = [h.strip() for h in ",".join(request.headers.getall("X-Forwarded-For", [])).split(",") if h.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop):
            return hop
    return peer


class CallOwner:
    """Admits, runs and ends every call of one server process."""

    def __init__(self, state: ServerState, timeouts: Timeouts):
        self.state = state
        self.timeouts = timeouts
        self.live: dict[str, LiveCall] = {}
        self.handshakes: set[Handshake] = set()
        self.unproven = UnprovenCap()
        self.draining = False
        self._ending: str | None = None  # drain's polite ending in progress: new calls get it too
        self._cutting = False
        self._settled = asyncio.Event()  # no live call and no handshake
        self._settled.set()
        self._timers: set[asyncio.Task[Any]] = set()
        self._waiting_ids: set[str] = set()  # provider call ids whose webhook is being answered

    # --- tokens and timers -------------------------------------------------------------
    def stream_call(self, record: CallRecord) -> StreamCall:
        """What a stream document must carry for `record`; the same token every time."""
        scope = TokenScope(record.id, record.provider, record.agent)
        token = make_token(self.state.secret, scope, parse_iso(record.started_at).timestamp())
        return StreamCall(
            call_id=record.id,
            agent=record.agent,
            direction=record.direction,
            from_number=record.from_number,
            to_number=record.to_number,
            provider_call_id=record.provider_call_id,
            token=token,
        )

    def _later(self, delay_s: float, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        async def run() -> None:
            await asyncio.sleep(delay_s)
            await fn(*args)

        task = asyncio.create_task(run())
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    def cancel_timers(self) -> None:
        for task in list(self._timers):
            task.cancel()

    async def _end_waiting(self, call_id: str, status: str, reason: str) -> None:
        """A call still waiting for its stream ends (no stream came, or it was never answered)."""
        await self.state.limiter.release_reservation(call_id)
        record = await self.state.store.get(call_id)
        if record and record.status in ("queued", "ringing"):
            await self.state.store.finish(call_id, status, reason)  # type: ignore[arg-type]

    def webhook_url(self, agent: str) -> str | None:
        """Where this call's events go: the agent's `[webhook] url`, else the `webhook_url`
        setting; fixed when the call is recorded (whichever process later ends it)."""
        served = self.state.agents.get(agent)
        return (served.webhook_url if served else None) or self.state.settings.get("webhook_url")

    def _refuse_if_draining(self) -> None:
        if self.draining:
            raise CallRefused(503, "server is shutting down")

    async def _refuse_replays(self, provider: str, nonces: tuple[str, ...]) -> None:
        for nonce in nonces:
            if not await self.state.store.first_use(provider, nonce, NONCE_KEEP_S):
                raise CallRefused(403, "signature nonce already used: a replayed request")

    # --- webhooks, dials, callbacks ----------------------------------------------------
    async def ring(self, provider: str, agent: str, inbound: InboundCall) -> StreamCall:
        """An inbound webhook: record the call ringing and hand out its stream token."""
        self._refuse_if_draining()
        await self._refuse_replays(provider, inbound.nonces)
        store = self.state.store
        known = inbound.provider_call_id
        if known and (known in self._waiting_ids or await store.find_by_provider_call_id(provider, known)):
            raise CallRefused(409, f"{provider} call {known} already has a call record: no second stream token")
        if known:
            self._waiting_ids.add(known)
        try:
            record = await store.create(
                provider=provider,
                agent=agent,
                direction="inbound",
                from_number=inbound.from_number,
                to_number=inbound.to_number,
                provider_call_id=known,
                status="ringing",
                instance=self.state.holder,
                webhook_url=self.webhook_url(agent),
            )
        finally:
            self._waiting_ids.discard(known or "")
        wait = self.timeouts.stream_wait_s
        self._later(wait, self._end_waiting, record.id, "no-stream", f"no media stream within {wait:g}s")
        logger.bind(call_id=record.id).info(
            f"inbound {provider} call {inbound.from_number} -> {inbound.to_number} for agent {agent}"
        )
        return self.stream_call(record)

    async def dial(
        self,
        provider_name: str,
        agent: str,
        phone: str,
        from_number: str | None,
        base: str,
        voicemail: VoicemailMode = "off",
    ) -> CallRecord:
        """An outbound call: reserve a slot, record it, dial; the answered stream claims both.

        `voicemail`: what to do when a machine answers; a provider that `DetectsMachines` is
        asked to tell, the others are listened to in the pipeline.
        """
        self._refuse_if_draining()
        provider = self.state.provider(provider_name)
        missing = provider.dial_missing(from_number)
        if missing:
            raise CallRefused(400, f"{provider_name} cannot dial out: set {', '.join(missing)}")
        call_id = new_call_id()
        slot = await self.state.limiter.take(provider_name, reserve=call_id)
        if slot is None:
            limit = provider.max_concurrent
            raise CallRefused(429, f"{provider_name} is at its limit of {limit} concurrent calls (active and dialling)")
        log = logger.bind(call_id=call_id)
        try:
            record = await self.state.store.create(
                call_id=call_id,
                provider=provider_name,
                agent=agent,
                direction="outbound",
                from_number=provider.caller_id(from_number),
                to_number=phone,
                status="queued",
                instance=self.state.holder,
                webhook_url=self.webhook_url(agent),
                voicemail=voicemail,
            )
            detects = voicemail != "off" and isinstance(provider, DetectsMachines)
            request = DialRequest(
                to_number=phone,
                from_number=record.from_number or "",
                stream_url=urls.stream_url(base, provider_name, agent),
                status_url=urls.status_url(base, provider_name, call_id),
                answer_url=urls.answer_url(base, provider_name, call_id),
                call=self.stream_call(record),
                machine_url=urls.machine_url(base, provider_name, call_id) if detects else None,
            )
            provider_call_id = await provider.dial(self.state.require_http(), request)
        except ProviderError as exc:
            await slot.release()
            failed = await self.state.store.finish(call_id, "failed", str(exc))
            log.warning(f"dial failed: {exc}")
            raise CallRefused(502, str(exc), failed) from None
        except BaseException:
            await asyncio.shield(slot.release())
            await asyncio.shield(self.state.store.finish(call_id, "failed", "dial failed inside voicecli"))
            raise
        record = await self.state.store.update(call_id, provider_call_id=provider_call_id) or record
        log.info(f"dialling {phone} through {provider_name} for agent {agent} ({provider_call_id})")
        ring = self.timeouts.ring_s
        self._later(ring, self._end_waiting, call_id, "no-answer", f"no media stream within {ring:g}s")
        return record

    async def answer_dialled(self, provider: str, call_id: str, inbound: InboundCall) -> StreamCall:
        """The provider fetches the stream document for a call we dialled (Vobiz's answer_url)."""
        await self._refuse_replays(provider, inbound.nonces)
        record = await self.state.store.get(call_id)
        if record is None or record.provider != provider or record.direction != "outbound":
            raise CallRefused(404, "no such call")
        if record.status not in ("queued", "ringing"):
            raise CallRefused(409, f"call {call_id} is {record.status}: no stream document for it")
        # The call's own id replaces the dial's where they differ (Plivo's CallUUID, RequestUUID).
        if inbound.provider_call_id and record.provider_call_id in (None, inbound.dial_id):
            record = await self.state.store.update(record.id, provider_call_id=inbound.provider_call_id) or record
        return self.stream_call(record)

    async def status(self, provider: str, call_id: str | None, update: StatusUpdate) -> StreamCall | None:
        """A provider's status callback, verified by the provider; acts on that provider's calls only."""
        await self._refuse_replays(provider, update.nonces)
        store = self.state.store
        record = await store.get(call_id) if call_id else None
        if record is None and not call_id and update.provider_call_id:
            record = await store.find_by_provider_call_id(provider, update.provider_call_id)
        if record is None or record.provider != provider:
            raise CallRefused(404, f"no {provider} call {call_id or update.provider_call_id}")
        known = (None, update.provider_call_id, update.dial_id)
        if call_id and update.provider_call_id and record.provider_call_id not in known:
            raise CallRefused(404, f"call {call_id} is not {provider} call {update.provider_call_id}")
        logger.bind(call_id=record.id).info(f"{provider} says the call is {update.status}: {update.reason}")
        live = self.live.get(record.id)
        if update.status in TERMINAL_STATUSES:
            if live and live.session:
                await live.session.provider_ended(update.status, update.reason)  # type: ignore[arg-type]
            elif not live and record.status == "in-progress" and record.instance not in (None, self.state.holder):
                # The stream runs on another worker or instance: tell the one carrying it.
                data = {"status": update.status, "reason": update.reason}
                await store.publish(PROVIDER_ENDED, target=record.instance, call_id=record.id, data=data)
            elif not live:
                await self._end_waiting(record.id, update.status, update.reason)
        elif update.status in ("queued", "ringing"):
            # The stream, not a callback, says when a call is in progress.
            await store.update(record.id, status=update.status)  # type: ignore[arg-type]
        if (
            isinstance(self.state.provider(provider), StreamOnAnswered)
            and update.status == "in-progress"
            and record.direction == "outbound"
            and record.status in ("queued", "ringing")
        ):
            return self.stream_call(record)
        return None

    async def machine_verdict(self, provider: str, call_id: str, verdict: MachineVerdict) -> None:
        """A provider's answering-machine verdict on a call we dialled: recorded, and handed to
        the session carrying the call (here, or on the process that carries it)."""
        await self._refuse_replays(provider, verdict.nonces)
        store = self.state.store
        record = await store.get(call_id)
        if record is None or record.provider != provider or record.direction != "outbound":
            raise CallRefused(404, f"no {provider} call {call_id}")
        known = (None, verdict.provider_call_id, verdict.dial_id)
        if verdict.provider_call_id and record.provider_call_id not in known:
            raise CallRefused(404, f"call {call_id} is not {provider} call {verdict.provider_call_id}")
        logger.bind(call_id=call_id).info(f"{provider} says a {verdict.answered_by} answered: {verdict.detail}")
        # Recorded first: a stream not yet running reads it when it starts (_run).
        record = await store.update(call_id, answered_by=verdict.answered_by) or record
        live = self.live.get(call_id)
        if live and live.session:
            await live.session.machine_verdict(
                verdict.answered_by, greeting_ended=verdict.greeting_ended, detail=verdict.detail
            )
        elif not live and record.status == "in-progress" and record.instance not in (None, self.state.holder):
            data: dict[str, Any] = {"answered_by": verdict.answered_by, "detail": verdict.detail}
            data["greeting_ended"] = verdict.greeting_ended
            await store.publish(MACHINE_VERDICT, target=record.instance, call_id=call_id, data=data)

    async def on_event(self, event: Event) -> None:
        """An event another process sent about a call this one carries."""
        live = self.live.get(event.call_id or "")
        if event.kind == MACHINE_VERDICT and live and live.session:
            answered_by = event.data.get("answered_by")
            if answered_by in ("human", "machine", "unknown"):
                await live.session.machine_verdict(
                    answered_by,
                    greeting_ended=bool(event.data.get("greeting_ended")),
                    detail=str(event.data.get("detail", "")),
                )
        if event.kind == PROVIDER_ENDED and live and live.session:
            status, reason = event.data.get("status"), event.data.get("reason")
            if status in TERMINAL_STATUSES and isinstance(reason, str):
                await live.session.provider_ended(status, reason)  # type: ignore[arg-type]

    async def lease_lapsed(self) -> None:
        """This process lost its lease: others may already have given its slots to new calls.
        End every call it carries rather than let a provider run over its limit."""
        if self.live:
            logger.error(f"lost the lease on the store: ending {len(self.live)} call(s) so no limit is exceeded")
        for call in list(self.live.values()):
            if call.session:
                await call.session.cut("this server lost its lease on the store")

    # --- media streams -----------------------------------------------------------------
    async def stream(self, request: web.Request, provider_name: str, agent: str) -> web.StreamResponse:
        """A provider opens a media WebSocket: admit it (README, "Admission"), then run the call."""
        state = self.state
        provider = state.provider(provider_name)
        deadline = time.monotonic() + self.timeouts.start_s
        # A signed upgrade (Twilio's) proves itself; a forged one is 403 here.
        signed = isinstance(provider, SignsUpgrades) and provider.check_upgrade(request, state.public_url(request))
        token = provider.upgrade_token(request) if isinstance(provider, TokenInStreamUrl) else None
        call_id: str | None = None
        slot: Slot | None = None
        client: str | None = None
        # A proved stream's slot take is itself the limit check (one store round trip on the
        # admission path); the limit is read separately only to tell a full house from a lost race.
        if token is not None:
            call_id = verify_token(state.secret, token, provider_name, agent, time.time())
            if call_id is None:
                raise web.HTTPForbidden(text="invalid or expired stream token\n")
            slot = await state.limiter.take(provider_name, claim=call_id)
            if slot is None:
                if not await state.limiter.may_upgrade(provider_name):
                    self._refuse_at_limit(provider)
                await self._lost_race(provider_name, call_id)
                raise web.HTTPServiceUnavailable(text=f"{provider_name} is at its concurrency limit\n")
        elif signed:
            # Twilio sent it: a slot now, unless only a dialled call's reservation is left,
            # which its token (in `start`) will claim.
            slot = await state.limiter.take(provider_name)
            if slot is None and not (await state.limiter.counts()).get(provider_name, SlotCount()).reserved:
                self._refuse_at_limit(provider)
        else:
            if not await state.limiter.may_upgrade(provider_name):  # unproven: nothing taken yet
                self._refuse_at_limit(provider)
            client = client_address(request, state.settings.trusted_proxies)
            if not self.unproven.enter(client):
                logger.warning(f"{provider_name} stream refused: too many unproven upgrades from {client}")
                raise web.HTTPTooManyRequests(text="too many streams from this address waiting to start\n")
        handshake = Handshake(provider_name)
        self._enter(handshake)
        try:
            ws = web.WebSocketResponse(max_msg_size=HARD_MESSAGE_LIMIT, heartbeat=None, timeout=self.timeouts.close_s)
            handshake.ws = ws
            await ws.prepare(request)
            messages = aiter(StreamMessages(ws, SOFT_MESSAGE_LIMIT, request.transport))
            admitted = await self._prove(request, provider, agent, ws, messages, deadline, call_id, slot)
            if admitted is not None:
                slot = None  # the admitted call owns it now
        finally:
            if client is not None:
                self.unproven.leave(client)
            if slot is not None:
                await asyncio.shield(slot.release())
            self._leave(handshake)
        if admitted is not None:
            admitted[0].base_url = state.base_url(request)
            await self._run(admitted, agent, messages)
        return ws

    def _refuse_at_limit(self, provider: Provider) -> NoReturn:
        limit = provider.max_concurrent
        logger.warning(f"{provider.name} stream refused: {limit} concurrent calls already")
        raise web.HTTPServiceUnavailable(text=f"{provider.name} is at its limit of {limit} concurrent calls\n")

    async def _lost_race(self, provider: str, call_id: str) -> None:
        limit = self.state.provider(provider).max_concurrent
        reason = f"stream refused: {provider} was at its limit of {limit} concurrent calls (closed 1013)"
        record = await self.state.store.get(call_id)
        if record and record.status in ("queued", "ringing") and record.provider == provider:
            await self.state.store.finish(call_id, "failed", reason)
        logger.bind(call_id=call_id).warning(reason)

    async def _prove(
        self,
        request: web.Request,
        provider: Provider,
        agent: str,
        ws: web.WebSocketResponse,
        messages: AsyncIterator[tuple[str, dict[str, Any]]],
        deadline: float,
        call_id: str | None,
        slot: Slot | None,
    ) -> tuple[LiveCall, StreamStart] | None:
        """Read `start` by the deadline, check the proof, take the slot, claim the record."""
        name = provider.name

        async def refuse(code: WSCloseCode, reason: str) -> tuple[LiveCall, StreamStart] | None:
            logger.warning(f"{name} stream refused: {reason}")
            await self._close(ws, code, reason)
            return None

        try:
            start = await asyncio.wait_for(provider.open_stream(request, messages), deadline - time.monotonic())
        except TimeoutError:
            return await refuse(
                WSCloseCode.POLICY_VIOLATION, f"no valid start message within {self.timeouts.start_s:g}s"
            )
        except WebhookRejected as exc:
            return await refuse(WSCloseCode.POLICY_VIOLATION, exc.reason)
        if call_id is None and start.token is not None:
            call_id = verify_token(self.state.secret, start.token, name, agent, time.time())
            if call_id is None:
                return await refuse(WSCloseCode.POLICY_VIOLATION, "invalid or expired stream token")
        elif call_id is None and (self.draining or not start.accepted_without_token):
            return await refuse(WSCloseCode.POLICY_VIOLATION, "missing stream token")
        try:
            return await self._admit(provider, agent, ws, start, call_id, slot, refuse)
        except StoreUnavailable as exc:  # the provider may try again: 1013, as at the limit
            return await refuse(WSCloseCode.TRY_AGAIN_LATER, str(exc))

    async def _admit(
        self,
        provider: Provider,
        agent: str,
        ws: web.WebSocketResponse,
        start: StreamStart,
        call_id: str | None,
        slot: Slot | None,
        refuse: Callable[[WSCloseCode, str], Awaitable[tuple[LiveCall, StreamStart] | None]],
    ) -> tuple[LiveCall, StreamStart] | None:
        """Take the slot (unless the upgrade took it), then create or claim the record."""
        name = provider.name
        if slot is None:
            slot = await self.state.limiter.take(name, claim=call_id)
            if slot is None:
                if call_id:
                    await self._lost_race(name, call_id)
                return await refuse(WSCloseCode.TRY_AGAIN_LATER, f"{name} is at its concurrency limit")
        store, instance = self.state.store, self.state.holder
        try:
            if call_id is None:  # Exotel's static stream URL: the call begins here
                record = await store.create(
                    provider=name,
                    agent=agent,
                    direction=start.direction or "inbound",
                    from_number=start.from_number,
                    to_number=start.to_number,
                    provider_call_id=start.provider_call_id,
                    status="in-progress",
                    instance=instance,
                    webhook_url=self.webhook_url(agent),
                )
            else:
                claimed = await store.claim_stream(
                    call_id, provider=name, agent=agent, instance=instance, provider_call_id=start.provider_call_id
                )
                if claimed is None:
                    await slot.release()
                    return await refuse(WSCloseCode.POLICY_VIOLATION, "stream token already used, or its call ended")
                record = claimed
        except BaseException:
            await asyncio.shield(slot.release())
            raise
        if start.provider_call_id and record.provider_call_id not in (None, start.provider_call_id):
            logger.bind(call_id=record.id).warning(
                f"stream names {name} call {start.provider_call_id}, the webhook {record.provider_call_id}: "
                "the webhook's is the one hung up"
            )
        live = LiveCall(record.id, provider, record.provider_call_id or start.provider_call_id, slot, ws, record)
        return live, start

    async def _run(
        self, admitted: tuple[LiveCall, StreamStart], agent: str, messages: AsyncIterator[tuple[str, dict[str, Any]]]
    ) -> None:
        from voicecli.call.session import CallSession  # pipecat: imported by the first call, not at start
        from voicecli.server.call_actions import tool_context

        call, start = admitted
        async with self._owned(call):
            served = self.state.agents[agent]
            if served.record:
                from voicecli.server.recordings import start_recording

                call.recorder = await start_recording(self.state, call.call_id)
            plan = self._voicemail_plan(call, agent)
            # A verdict may have come before the stream (or while it was admitted): read after
            # the claim, and with no wait before the session is in `live`, none is missed.
            stored = await self.state.store.get(call.call_id) if plan is not None and plan.by_provider else None
            call.session = CallSession(
                tools=tool_context(self.state, call),
                call_id=call.call_id,
                agent=self.state.agents[agent],
                provider=call.provider,
                start=start,
                ws=call.ws,
                messages=messages,
                store=self.state.store,
                env=dict(self.state.settings.env),
                recorder=call.recorder,
                voicemail=plan,
            )
            if self._cutting:
                call.session.forced = True
                return
            # A stream vouched for before the drain began is admitted, and ended politely.
            await call.session.run(end_after_greeting=self._ending, answered_by=stored.answered_by if stored else None)

    def _voicemail_plan(self, call: LiveCall, agent: str) -> VoicemailPlan | None:
        """What a dialled call that asked for voicemail detection does; None for the others."""
        from voicecli.call.voicemail import plan_for

        record = call.record
        if record is None or record.direction != "outbound":
            return None
        return plan_for(record.voicemail, call.provider, self.state.agents[agent].outbound.voicemail_message)

    @asynccontextmanager
    async def _owned(self, call: LiveCall) -> AsyncIterator[LiveCall]:
        """The call's one owner: whatever raises inside, the call is ended exactly once."""
        self._enter(call)
        try:
            yield call
        except asyncio.CancelledError:
            if call.session:
                call.session.forced = True
            raise
        except Exception as exc:
            call.error = f"the call could not run: {type(exc).__name__}: {exc}"
            logger.bind(call_id=call.call_id).exception("call failed")
        finally:
            try:
                await asyncio.shield(self._end(call))
            finally:
                self._leave(call)

    async def _end(self, call: LiveCall) -> None:
        session, log = call.session, logger.bind(call_id=call.call_id)
        if call.error or session is None:
            status, reason = "failed", call.error or "the call never started"
        else:
            status, reason = session.outcome()
        caller_gone = session is not None and session.caller_gone
        try:
            # A transferred call is the provider's now: a hang-up would cut the person it dials.
            if not caller_gone and status != "transferred":
                # We end the call while the caller may be on the line: let the last words
                # play, then hang up the way the provider needs.
                forced = session is None or session.forced
                if session is not None and not forced and not call.error:
                    await session.line.wait_playout()
                reason = f"{reason}; {await self._hang_up(call, forced)}"
        finally:
            # Recording, slot and record before the socket closes: whoever sees the close sees
            # them done. The recording first, so the record's end (and its call.ended event) has it.
            try:
                if call.recorder is not None:
                    from voicecli.server.recordings import finish_recording

                    await finish_recording(self.state, call.call_id, call.recorder)
                await call.slot.release()
                await self.state.store.finish(call.call_id, status, reason)  # type: ignore[arg-type]
            finally:
                await self._close(call.ws)
                bad = session.line.bad_messages if session else 0
                log.info(f"call ended: {status} ({reason}); {bad} bad messages skipped")

    async def _hang_up(self, call: LiveCall, forced: bool) -> str:
        """The provider's stop message, then its REST hang-up, whatever became of the first."""
        t = self.timeouts
        session = call.session
        if session is not None and isinstance(call.provider, SendsStop):
            try:
                await asyncio.wait_for(call.provider.end_stream(call.ws, session.start), t.stop_message_s)
            except Exception as exc:  # a stuck or broken socket: the REST hang-up still goes
                logger.bind(call_id=call.call_id).warning(f"stop message not sent: {type(exc).__name__}: {exc}")
        if not isinstance(call.provider, HangsUp):
            return f"ended by closing the stream ({call.provider.label} has no hang-up call for it)"
        limit = t.cut_s if forced else t.hang_up_s
        try:
            return await asyncio.wait_for(
                call.provider.hang_up(self.state.require_http(), call.provider_call_id), limit
            )
        except TimeoutError:
            return f"{call.provider.name} hang-up did not answer within {limit:g}s"

    async def _close(self, ws: web.WebSocketResponse, code: int = WSCloseCode.OK, reason: str = "") -> None:
        try:
            await asyncio.wait_for(ws.close(code=code, message=reason.encode()[:120]), self.timeouts.close_s)
        except (TimeoutError, ConnectionError, RuntimeError):
            pass  # the peer is gone or stuck: the socket is dropped with the request

    # --- who is in flight, and draining ------------------------------------------------
    def _enter(self, item: LiveCall | Handshake) -> None:
        if isinstance(item, LiveCall):
            self.live[item.call_id] = item
        else:
            self.handshakes.add(item)
        self._settled.clear()

    def _leave(self, item: LiveCall | Handshake) -> None:
        if isinstance(item, LiveCall):
            self.live.pop(item.call_id, None)
        else:
            self.handshakes.discard(item)
        if not self.live and not self.handshakes:
            self._settled.set()

    async def drain(self, grace_s: float, force: asyncio.Event) -> None:
        """Refuse new calls, let active ones (and streams mid-handshake) finish for `grace_s`,
        end the rest politely, and cut whatever is left; `force` skips to the cut."""
        self.draining = True
        if not self._settled.is_set():
            logger.info(f"waiting up to {grace_s:g}s for {len(self.live) + len(self.handshakes)} call(s) to finish")
            await self._wait_settled(grace_s, force)
        if self.live and not force.is_set():
            from voicecli.call.session import POLITE_END_LIMIT_S

            self._ending = "server shutting down"
            logger.info(f"ending {len(self.live)} call(s): goodbye, then hang-up")
            for call in list(self.live.values()):
                if call.session:
                    await call.session.end(self._ending)
            await self._wait_settled(POLITE_END_LIMIT_S, force)
        self._cutting = True
        for call in list(self.live.values()):
            if call.session:
                await call.session.cut("server stopped at once")
        for handshake in list(self.handshakes):
            if handshake.ws is not None and handshake.ws.prepared:
                await self._close(handshake.ws)
        await self._wait_settled(self.timeouts.cut_s, asyncio.Event())

    async def _wait_settled(self, within_s: float, force: asyncio.Event) -> None:
        """Return when no call or handshake is left, `force` is set, or `within_s` seconds pass."""
        waits = {asyncio.ensure_future(self._settled.wait()), asyncio.ensure_future(force.wait())}
        await asyncio.wait(waits, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
