"""The management API under /api: call records now, settings and dialling as they land.

Every /api route needs `Authorization: Bearer <token>`: a tunnel puts this server on the
internet, and the API must not be open to whoever finds the URL.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from voicecli.server.recordings import recording_elsewhere
from voicecli.server.state import STATE
from voicecli.store.views import call_detail, call_rows, no_recording

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse /api requests without the server's bearer token (constant-time compare)."""
    if request.path.startswith("/api/") or request.path == "/api":
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        expected = request.app[STATE].api_token
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
            return web.json_response(
                {"error": "missing or wrong API token: send Authorization: Bearer <token>"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
    return await handler(request)


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "50")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 1000:
        raise web.HTTPUnprocessableEntity(
            text='{"error": "limit must be a whole number from 1 to 1000"}', content_type="application/json"
        )
    return int(raw)


async def list_calls(request: web.Request) -> web.Response:
    """Recent calls, newest first, with turns so far and the last thing said.

    Filters: status, provider, agent, answered_by, active=1, limit.
    """
    state = request.app[STATE]
    query = request.query
    rows = await call_rows(
        state.store,
        limit=_limit(request),
        status=query.get("status") or None,
        provider=query.get("provider") or None,
        agent=query.get("agent") or None,
        answered_by=query.get("answered_by") or None,
        active_only=query.get("active") in ("1", "true", "yes"),
    )
    return web.json_response(rows)


async def get_call(request: web.Request) -> web.Response:
    """One call with its transcript."""
    state = request.app[STATE]
    call = await call_detail(state.store, request.match_info["call_id"])
    if call is None:
        return web.json_response({"error": f"no call {request.match_info['call_id']}"}, status=404)
    return web.json_response(call)


def _not_found(message: str) -> web.Response:
    return web.json_response({"error": message}, status=404)


async def get_recording(request: web.Request) -> web.StreamResponse:
    """A call's recording as audio/wav; 404 when it has none, or another instance's disk has it."""
    state = request.app[STATE]
    call_id = request.match_info["call_id"]
    record = await state.store.get(call_id)
    if (missing := no_recording(record, call_id)) is not None:
        return _not_found(missing)
    assert record is not None and record.recording_path is not None
    path = Path(record.recording_path)
    here = await asyncio.to_thread(path.is_file)
    # A server restarted on the same disk is a new instance: the file being here is what counts.
    if not here and (elsewhere := recording_elsewhere(record, state.instance)):
        return _not_found(elsewhere)
    if not here:
        return _not_found(f"the recording of call {call_id} is gone from {path}")
    if record.recording_s is None:
        why = (
            "its server stopped mid-call; the next start on that disk repairs the file"
            if record.ended_at
            else "it is still being recorded: ask again once the call has ended"
        )
        return web.json_response({"error": f"call {call_id}'s recording is not finished: {why}"}, status=409)
    return web.FileResponse(path, headers={"Content-Type": "audio/wav"})


async def status(request: web.Request) -> web.Response:
    """What this server serves, and each provider's active calls on every worker and instance
    (dials waiting for their stream included) against its limit."""
    state = request.app[STATE]
    from voicecli.providers import PROVIDERS
    from voicecli.providers.base import capabilities
    from voicecli.store import SlotCount

    counts = await state.limiter.counts()
    providers = {
        name: {
            "active": counts.get(name, SlotCount()).held,
            "dialling": counts.get(name, SlotCount()).reserved,
            "limit": state.provider(name).max_concurrent,
            "capabilities": capabilities(state.provider(name)),
        }
        for name in PROVIDERS
    }
    return web.json_response(
        {
            "agents": sorted(state.agents),
            "default_provider": state.settings.provider,
            "providers": providers,
            "draining": state.calls.draining,
            "instance": state.instance,
        }
    )


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/calls", list_calls)
    app.router.add_get("/api/calls/{call_id}", get_call)
    app.router.add_get("/api/calls/{call_id}/recording", get_recording)
    app.router.add_get("/api/status", status)
