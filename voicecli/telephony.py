"""The provider-facing routes: inbound webhooks and media WebSockets.

Nothing here knows a provider by name: the URL names it, the registry loads it, and the
contract in providers/base.py does the provider-specific work.
"""

from __future__ import annotations

import asyncio

from aiohttp import WSCloseCode, web
from loguru import logger

from voicecli import urls
from voicecli.limits import Pass, Slot
from voicecli.providers.base import StreamCall, StreamMessages, WebhookRejected
from voicecli.server_state import STATE, ServerState
from voicecli.store import TERMINAL_STATUSES, CallRecord
from voicecli.tokens import make_token, verify_token

# A stream must send a valid `start` this soon after the upgrade, or it is closed and its
# slot freed: an idle socket must not hold a place under the concurrency limit.
START_TIMEOUT_S = 5.0
# Provider messages are small (a 20 ms media frame is ~300 bytes); larger ones are junk
# and skipped. Past the hard limit aiohttp closes the socket to protect memory.
SOFT_MESSAGE_LIMIT = 256 * 1024
HARD_MESSAGE_LIMIT = 4 * 1024 * 1024


def _provider_name(request: web.Request) -> str:
    name = request.match_info["provider"]
    if not request.app[STATE].has_provider(name):
        raise web.HTTPNotFound(text=f"unknown provider '{name}'\n")
    return name


def _lookup(request: web.Request) -> tuple[ServerState, str, str]:
    state = request.app[STATE]
    provider_name, agent_name = _provider_name(request), request.match_info["agent_name"]
    if agent_name not in state.agents:
        raise web.HTTPNotFound(text=f"unknown agent '{agent_name}'\n")
    return state, provider_name, agent_name


def public_url(state: ServerState, request: web.Request) -> str:
    """The URL the provider requested: PUBLIC_BASE_URL + path when set (behind a tunnel)."""
    base = state.settings.public_base_url
    return f"{base}{request.path_qs}" if base else str(request.url)


def stream_url(state: ServerState, request: web.Request, provider: str, agent: str) -> str:
    return urls.stream_url(state.base_url(request), provider, agent)


def stream_call(state: ServerState, record: CallRecord) -> StreamCall:
    """What a stream document must carry for `record`, with a fresh stream token."""
    return StreamCall(
        call_id=record.id,
        agent=record.agent,
        direction=record.direction,
        from_number=record.from_number,
        to_number=record.to_number,
        provider_call_id=record.provider_call_id,
        token=make_token(state.secret, record.id),
    )


async def inbound_webhook(request: web.Request) -> web.StreamResponse:
    """A call comes in: create its record and answer with the document that streams it to us."""
    state, provider_name, agent_name = _lookup(request)
    provider = state.provider(provider_name)
    try:
        inbound = await provider.read_webhook(request, public_url(state, request))
    except WebhookRejected as exc:
        logger.warning(f"{provider_name} webhook refused ({exc.status}): {exc.reason}")
        return refusal(exc)
    record = None
    if inbound.provider_call_id:  # a provider retrying its webhook must not make a second record
        record = await state.store.find_by_provider_call_id(provider_name, inbound.provider_call_id)
    if record is None:
        record = await state.store.create(
            provider=provider_name,
            agent=agent_name,
            direction="inbound",
            from_number=inbound.from_number,
            to_number=inbound.to_number,
            provider_call_id=inbound.provider_call_id,
            status="ringing",
        )
    logger.bind(call_id=record.id).info(
        f"inbound {provider_name} call {inbound.from_number} -> {inbound.to_number} for agent {agent_name}"
    )
    return provider.answer(request, stream_call(state, record), stream_url(state, request, provider_name, agent_name))


def refusal(exc: WebhookRejected) -> web.Response:
    return web.Response(status=exc.status, text=exc.reason + "\n")


async def media_stream(request: web.Request) -> web.StreamResponse:
    """The provider opens the call's media WebSocket; run the agent on it."""
    state, provider_name, agent_name = _lookup(request)
    provider = state.provider(provider_name)
    if state.draining:
        raise web.HTTPServiceUnavailable(text="server is shutting down\n")
    try:
        provider.check_upgrade(request, public_url(state, request))
    except WebhookRejected as exc:
        logger.warning(f"{provider_name} stream upgrade refused ({exc.status}): {exc.reason}")
        return refusal(exc)
    admission = state.limiter.admit(provider_name)
    if admission is None:
        limit = provider.max_concurrent
        logger.warning(f"{provider_name} stream refused: {limit} concurrent calls already")
        raise web.HTTPServiceUnavailable(text=f"{provider_name} is at its limit of {limit} concurrent calls\n")
    try:
        return await _run_stream(request, state, provider_name, agent_name, admission)
    finally:
        admission.release()  # idempotent: the session releases its slot first when a call ran


async def _run_stream(
    request: web.Request, state: ServerState, provider_name: str, agent_name: str, admission: Slot | Pass
) -> web.WebSocketResponse:
    provider = state.provider(provider_name)
    ws = web.WebSocketResponse(max_msg_size=HARD_MESSAGE_LIMIT, heartbeat=None)
    await ws.prepare(request)
    reader = StreamMessages(ws, SOFT_MESSAGE_LIMIT)
    messages = aiter(reader)

    async def refuse(code: WSCloseCode, reason: str) -> web.WebSocketResponse:
        # The slot goes back before the close handshake, so a refused stream never holds one.
        admission.release()
        logger.warning(f"{provider_name} stream refused: {reason}")
        await ws.close(code=code, message=reason.encode()[:120])
        return ws

    try:
        start = await asyncio.wait_for(provider.open_stream(request, messages), START_TIMEOUT_S)
    except TimeoutError:
        return await refuse(WSCloseCode.POLICY_VIOLATION, f"no valid start message within {START_TIMEOUT_S:g}s")
    except WebhookRejected as exc:
        return await refuse(WSCloseCode.POLICY_VIOLATION, exc.reason)

    call_id = verify_token(state.secret, start.token)
    if call_id is None and not provider.stream_token_fallback(request, start):
        return await refuse(WSCloseCode.POLICY_VIOLATION, "missing or invalid stream token")
    # A dialled call's stream takes over the slot its dial reserved: never counted twice.
    slot = state.limiter.claim(call_id) if call_id else None
    if slot is not None:
        admission.release()
    elif isinstance(admission, Slot):
        slot = admission
    else:
        return await refuse(WSCloseCode.TRY_AGAIN_LATER, "provider at its concurrency limit and not a dialled call")
    record = await state.store.get(call_id) if call_id else None
    if record is None:
        record = await state.store.create(
            call_id=call_id,
            provider=provider_name,
            agent=agent_name,
            direction=start.direction or "inbound",
            from_number=start.from_number,
            to_number=start.to_number,
            provider_call_id=start.provider_call_id,
            status="in-progress",
        )
    else:
        record = await state.store.update(
            record.id,
            status="in-progress",
            provider_call_id=start.provider_call_id or record.provider_call_id,
        )
    await state.run_call(record.id, agent_name, provider, start, ws, messages, slot)
    return ws


async def status_callback(request: web.Request) -> web.Response:
    """A provider reports what became of a call (answered, busy, hung up...)."""
    state = request.app[STATE]
    provider_name = _provider_name(request)
    provider = state.provider(provider_name)
    try:
        update = await provider.read_status(request, public_url(state, request))
    except WebhookRejected as exc:
        logger.warning(f"{provider_name} status callback refused ({exc.status}): {exc.reason}")
        return refusal(exc)
    if update is None:
        return web.Response(text="ok\n")
    call_id = request.match_info.get("call_id")
    record = await state.store.get(call_id) if call_id else None
    if record is None and update.provider_call_id:
        record = await state.store.find_by_provider_call_id(provider_name, update.provider_call_id)
    if record is None:
        return web.Response(status=404, text=f"no call {update.provider_call_id}\n")
    logger.bind(call_id=record.id).info(f"{provider_name} says the call is {update.status}: {update.reason}")
    # The stream, not a callback, says when a call is in progress; callbacks report ringing
    # and endings, and never move a call that is talking back to ringing.
    moves_back = record.status == "in-progress" and update.status in ("queued", "ringing")
    if update.status != "in-progress" and not moves_back:
        end_reason = update.reason if update.status in TERMINAL_STATUSES else None
        await state.store.update(record.id, status=update.status, end_reason=end_reason)
    if update.status in TERMINAL_STATUSES:
        slot = state.limiter.claim(record.id)  # a dialled call that ended before its stream came
        if slot is not None:
            slot.release()
    if update.answer_with_stream:
        return provider.answer(
            request, stream_call(state, record), stream_url(state, request, provider_name, record.agent)
        )
    return web.Response(text="ok\n")
