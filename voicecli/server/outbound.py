"""POST /api/calls/outbound: check the request, then the call's owner reserves, records and dials."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from voicecli.providers.base import WebhookRejected, json_object
from voicecli.server.lifecycle import CallRefused
from voicecli.server.state import STATE
from voicecli.store import VOICEMAIL_MODES

# [0-9], not \d (which takes any script's digits); fullmatch, not $ (which allows a trailing newline).
E164 = re.compile(r"\+[1-9][0-9]{7,14}")


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


async def place_call(request: web.Request) -> web.Response:
    """POST /api/calls/outbound {"phone_number", "agent_name", "provider"?, "from_number"?, "voicemail"?}."""
    state = request.app[STATE]
    if state.calls.draining:
        return _error(503, "server is shutting down: no new calls")
    try:
        body = await json_object(request)
    except WebhookRejected as exc:
        return _error(exc.status, exc.reason)
    phone, agent = body.get("phone_number"), body.get("agent_name")
    if not isinstance(phone, str) or not E164.fullmatch(phone):
        return _error(422, "phone_number must be in E.164 form, such as +15551234567")
    from_number = body.get("from_number")
    if from_number is not None and (not isinstance(from_number, str) or not E164.fullmatch(from_number)):
        return _error(422, "from_number must be in E.164 form, such as +15551234567")
    provider_name = body.get("provider") or state.settings.provider
    if not isinstance(provider_name, str) or not state.has_provider(provider_name):
        return _error(422, f"unknown provider {provider_name!r}")
    if not isinstance(agent, str) or agent not in state.agents:
        return _error(404, f"agent {agent!r} is not served here (served: {', '.join(sorted(state.agents))})")
    voicemail = body.get("voicemail")
    if voicemail is None:
        voicemail = state.agents[agent].outbound.voicemail  # the agent's `[outbound] voicemail`
    elif voicemail not in VOICEMAIL_MODES:
        return _error(422, f"voicemail must be one of {', '.join(VOICEMAIL_MODES)}")
    try:
        record = await state.calls.dial(provider_name, agent, phone, from_number, state.base_url(request), voicemail)
    except CallRefused as exc:
        extra = {"call": exc.record.to_json()} if exc.record else {}
        return _error(exc.status, exc.reason, **extra)
    return web.json_response(record.to_json(), status=201)


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/calls/outbound", place_call)
