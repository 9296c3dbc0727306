"""Outbound calls: check, reserve a slot, record, dial, and tie the answered stream to the record."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from loguru import logger

from voicecli import urls
from voicecli.errors import ProviderError
from voicecli.providers.base import DialRequest, WebhookRejected
from voicecli.server_state import STATE, ServerState
from voicecli.store import TERMINAL_STATUSES, new_call_id
from voicecli.telephony import public_url, refusal, stream_call, stream_url

E164 = re.compile(r"^\+[1-9]\d{7,14}$")
# A dialled call whose stream has not arrived by then gives its slot back.
RING_TIMEOUT_S = 90.0


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


async def place_call(request: web.Request) -> web.Response:
    """POST /api/calls/outbound {"phone_number", "agent_name", "provider"?, "from_number"?}."""
    state = request.app[STATE]
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the body must be JSON")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    phone, agent = body.get("phone_number"), body.get("agent_name")
    if not isinstance(phone, str) or not E164.match(phone):
        return _error(422, "phone_number must be in E.164 form, such as +15551234567")
    from_number = body.get("from_number")
    if from_number is not None and (not isinstance(from_number, str) or not E164.match(from_number)):
        return _error(422, "from_number must be in E.164 form, such as +15551234567")
    provider_name = body.get("provider") or state.settings.provider
    if not isinstance(provider_name, str) or not state.has_provider(provider_name):
        return _error(422, f"unknown provider {provider_name!r}")
    if not isinstance(agent, str) or agent not in state.agents:
        return _error(404, f"agent {agent!r} is not served here (served: {', '.join(sorted(state.agents))})")
    provider = state.provider(provider_name)
    missing = provider.dial_missing(from_number)
    if missing:
        return _error(400, f"{provider_name} cannot dial out: set {', '.join(missing)}")
    call_id = new_call_id()
    slot = state.limiter.try_acquire(provider_name, call_id=call_id)
    if slot is None:
        limit = provider.max_concurrent
        return _error(429, f"{provider_name} is at its limit of {limit} concurrent calls (active and dialling)")

    caller_id = provider.caller_id(from_number)
    record = await state.store.create(
        call_id=call_id,
        provider=provider_name,
        agent=agent,
        direction="outbound",
        from_number=caller_id,
        to_number=phone,
        status="queued",
    )
    log = logger.bind(call_id=call_id)
    base = state.base_url(request)
    dial = DialRequest(
        to_number=phone,
        from_number=caller_id,
        stream_url=urls.stream_url(base, provider_name, agent),
        status_url=urls.status_url(base, provider_name, call_id),
        answer_url=urls.answer_url(base, provider_name, call_id),
        call=stream_call(state, record),
    )
    try:
        provider_call_id = await provider.dial(state.require_http(), dial)
    except ProviderError as exc:
        slot.release()
        failed = await state.store.finish(call_id, "failed", str(exc))
        log.warning(f"dial failed: {exc}")
        return _error(502, str(exc), call=failed.to_json() if failed else None)
    record = await state.store.update(call_id, provider_call_id=provider_call_id) or record
    log.info(f"dialling {phone} through {provider_name} for agent {agent} ({provider_call_id})")
    state.later(RING_TIMEOUT_S, _ring_timeout, state, call_id)
    return web.json_response(record.to_json(), status=201)


async def _ring_timeout(state: ServerState, call_id: str) -> None:
    slot = state.limiter.claim(call_id)
    if slot is None:
        return  # its stream arrived, or a status callback already ended it
    slot.release()
    record = await state.store.get(call_id)
    if record and record.status not in TERMINAL_STATUSES:
        await state.store.finish(call_id, "no-answer", f"no media stream within {RING_TIMEOUT_S:g}s")


async def answer_dialled(request: web.Request) -> web.StreamResponse:
    """POST /telephony/{provider}/answer/{call_id}: the stream document for a call we dialled."""
    state = request.app[STATE]
    provider_name = request.match_info["provider"]
    if not state.has_provider(provider_name):
        raise web.HTTPNotFound(text=f"unknown provider '{provider_name}'\n")
    provider = state.provider(provider_name)
    try:
        inbound = await provider.read_webhook(request, public_url(state, request))
    except WebhookRejected as exc:
        return refusal(exc)
    record = await state.store.get(request.match_info["call_id"])
    if record is None or record.provider != provider_name:
        raise web.HTTPNotFound(text="no such call\n")
    if inbound.provider_call_id and not record.provider_call_id:
        record = await state.store.update(record.id, provider_call_id=inbound.provider_call_id) or record
    return provider.answer(request, stream_call(state, record), stream_url(state, request, provider_name, record.agent))


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/calls/outbound", place_call)
    app.router.add_post("/telephony/{provider}/answer/{call_id}", answer_dialled)
