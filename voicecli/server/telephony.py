"""The provider-facing routes: inbound webhooks, media WebSockets and status callbacks.

Nothing here knows a provider by name: the URL names it, the registry loads it, the
contract in providers/base.py reads and answers the provider, and the call's owner
(lifecycle.py) decides what happens to the call.
"""

from __future__ import annotations

from aiohttp import web
from loguru import logger

from voicecli.providers.base import DetectsMachines, FetchesTransfer, StreamCall, WebhookRejected
from voicecli.server import call_actions, urls
from voicecli.server.lifecycle import CallRefused
from voicecli.server.state import STATE, ServerState


def provider_name(request: web.Request) -> str:
    name = request.match_info["provider"]
    if not request.app[STATE].has_provider(name):
        raise web.HTTPNotFound(text=f"unknown provider '{name}'\n")
    return name


def _lookup(request: web.Request) -> tuple[ServerState, str, str]:
    state = request.app[STATE]
    provider, agent_name = provider_name(request), request.match_info["agent_name"]
    if agent_name not in state.agents:
        raise web.HTTPNotFound(text=f"unknown agent '{agent_name}'\n")
    return state, provider, agent_name


def refusal(exc: WebhookRejected | CallRefused) -> web.Response:
    return web.Response(status=exc.status, text=exc.reason + "\n")


def stream_document(request: web.Request, state: ServerState, call: StreamCall) -> web.StreamResponse:
    """The provider's answer that connects `call` to its agent's media stream."""
    name = provider_name(request)
    return state.provider(name).answer(request, call, urls.stream_url(state.base_url(request), name, call.agent))


async def inbound_webhook(request: web.Request) -> web.StreamResponse:
    """A call comes in: the owner records it, and the provider gets the document that streams it to us."""
    state, name, agent_name = _lookup(request)
    provider = state.provider(name)
    try:
        if state.calls.draining:  # before reading the body: nothing is recorded
            raise CallRefused(503, "server is shutting down")
        inbound = await provider.read_webhook(request, state.public_url(request))
        call = await state.calls.ring(name, agent_name, inbound)
    except (WebhookRejected, CallRefused) as exc:
        logger.warning(f"{name} webhook refused ({exc.status}): {exc.reason}")
        return refusal(exc)
    return stream_document(request, state, call)


async def media_stream(request: web.Request) -> web.StreamResponse:
    """The provider opens the call's media WebSocket: the owner admits it and runs the agent."""
    state, name, agent_name = _lookup(request)
    try:
        return await state.calls.stream(request, name, agent_name)
    except WebhookRejected as exc:
        logger.warning(f"{name} stream upgrade refused ({exc.status}): {exc.reason}")
        return refusal(exc)


async def status_callback(request: web.Request) -> web.StreamResponse:
    """A provider reports what became of a call (answered, busy, hung up...)."""
    state = request.app[STATE]
    name = provider_name(request)
    provider = state.provider(name)
    try:
        update = await provider.read_status(request, state.public_url(request))
        if update is None:
            return web.Response(text="ok\n")
        call = await state.calls.status(name, request.match_info.get("call_id"), update)
    except (WebhookRejected, CallRefused) as exc:
        logger.warning(f"{name} status callback refused ({exc.status}): {exc.reason}")
        return refusal(exc)
    return stream_document(request, state, call) if call is not None else web.Response(text="ok\n")


async def answer_dialled(request: web.Request) -> web.StreamResponse:
    """POST /telephony/{provider}/answer/{call_id}: the stream document for a call we dialled."""
    state = request.app[STATE]
    name = provider_name(request)
    provider = state.provider(name)
    try:
        inbound = await provider.read_webhook(request, state.public_url(request))
        call = await state.calls.answer_dialled(name, request.match_info["call_id"], inbound)
    except (WebhookRejected, CallRefused) as exc:
        logger.warning(f"{name} answer webhook refused ({exc.status}): {exc.reason}")
        return refusal(exc)
    return stream_document(request, state, call)


async def transfer_document(request: web.Request) -> web.StreamResponse:
    """POST /telephony/{provider}/transfer/{call_id}?to=NAME: a transferred call's new document,
    for providers that fetch it (the Plivo family); only to a request the provider signed."""
    state = request.app[STATE]
    name = provider_name(request)
    provider = state.provider(name)
    if not isinstance(provider, FetchesTransfer):
        raise web.HTTPNotFound(text=f"{name} does not fetch transfers from voicecli\n")
    try:
        await provider.read_transfer(request, state.public_url(request))
        record = await state.store.get(request.match_info["call_id"])
        transfer = call_actions.transfer_document(state, name, record, request.query.get("to", ""))
        if transfer is None:
            raise CallRefused(404, "no such call, or no such destination for its agent")
    except (WebhookRejected, CallRefused) as exc:
        logger.warning(f"{name} transfer document refused ({exc.status}): {exc.reason}")
        return refusal(exc)
    return provider.transfer_document(transfer)


async def machine_verdict(request: web.Request) -> web.StreamResponse:
    """POST /telephony/{provider}/amd/{call_id}: who answered a call we dialled (a person, a machine)."""
    state = request.app[STATE]
    name = provider_name(request)
    provider = state.provider(name)
    if not isinstance(provider, DetectsMachines):
        raise web.HTTPNotFound(text=f"{name} does not detect machines\n")
    try:
        verdict = await provider.read_machine_verdict(request, state.public_url(request))
        await state.calls.machine_verdict(name, request.match_info["call_id"], verdict)
    except (WebhookRejected, CallRefused) as exc:
        logger.warning(f"{name} machine detection callback refused ({exc.status}): {exc.reason}")
        return refusal(exc)
    return web.Response(text="ok\n")


def setup_routes(app: web.Application) -> None:
    # Twilio may be configured to use GET for its voice webhook; POST is the default.
    app.router.add_post("/telephony/{provider}/inbound/{agent_name}", inbound_webhook)
    app.router.add_get("/telephony/{provider}/inbound/{agent_name}", inbound_webhook)
    app.router.add_get("/ws/{provider}/{agent_name}", media_stream)
    app.router.add_post("/telephony/{provider}/status", status_callback)
    app.router.add_post("/telephony/{provider}/status/{call_id}", status_callback)
    app.router.add_post("/telephony/{provider}/answer/{call_id}", answer_dialled)
    app.router.add_post("/telephony/{provider}/transfer/{call_id}", transfer_document)
    app.router.add_post("/telephony/{provider}/amd/{call_id}", machine_verdict)
