"""What an agent's tools need from the server during a call: its HTTP client, the signing
secret and the call's facts, and the provider's transfer (README, "Tools").

The call's owner (lifecycle.py) builds the `ToolContext` of each call it runs; the Plivo
family's transfer-document route (telephony.py) reads the same destinations.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from loguru import logger

from voicecli.errors import ProviderError
from voicecli.providers.base import TransferRequest, Transfers
from voicecli.server import urls

if TYPE_CHECKING:
    from voicecli.call.session import ToolContext
    from voicecli.server.lifecycle import LiveCall
    from voicecli.server.state import ServerState
    from voicecli.store import CallRecord


def tool_context(state: ServerState, call: LiveCall) -> ToolContext:
    """The context of `call`'s tools; `transfer` only where its provider can transfer."""
    from voicecli.call.session import ToolContext

    record, webhooks = call.record, state.webhooks
    assert record is not None and webhooks is not None, "an admitted call has its record; the app its sender"
    facts: dict[str, str | None] = {"id": record.id, "provider": record.provider, "agent": record.agent}
    facts |= {"direction": record.direction, "from": record.from_number, "to": record.to_number}
    transfer = None
    if isinstance(call.provider, Transfers):

        async def transfer(destination: str, number: str) -> str:
            return await _transfer(state, call, destination, number)

    return ToolContext(state.require_http(), webhooks.secret, facts, state.settings.variables, transfer)


async def _transfer(state: ServerState, call: LiveCall, destination: str, number: str) -> str:
    """Hand the live call to `number` through its provider; what was done, or ProviderError."""
    provider, record = call.provider, call.record
    assert isinstance(provider, Transfers) and record is not None
    document_url = urls.transfer_url(call.base_url, provider.name, call.call_id, destination)
    request = _request(state, record, call.provider_call_id, destination, number, document_url)
    logger.bind(call_id=call.call_id).info(f"transferring to {destination} through {provider.name}")
    limit = state.timeouts.hang_up_s
    try:
        return await asyncio.wait_for(provider.transfer(state.require_http(), request), limit)
    except TimeoutError:
        raise ProviderError(f"{provider.name} did not answer the transfer within {limit:g}s") from None


def transfer_document(
    state: ServerState, provider: str, record: CallRecord | None, destination: str
) -> TransferRequest | None:
    """What a provider fetching a transferred call's new document gets; None unless `record`
    is that provider's call and `destination` one of its agent's."""
    served = state.agents.get(record.agent) if record else None
    if record is None or served is None or record.provider != provider:
        return None
    number = served.transfer.destinations.get(destination)
    if number is None:
        return None
    return _request(state, record, record.provider_call_id, destination, number, "")


def _request(
    state: ServerState,
    record: CallRecord,
    provider_call_id: str | None,
    destination: str,
    number: str,
    document_url: str,
) -> TransferRequest:
    # The caller ID is the call's own number: the one called (inbound), or the one shown (outbound).
    return TransferRequest(
        call_id=record.id,
        provider_call_id=provider_call_id,
        destination=destination,
        number=number,
        caller_id=record.to_number if record.direction == "inbound" else record.from_number,
        announce=state.agents[record.agent].transfer.announce,
        document_url=document_url,
    )
