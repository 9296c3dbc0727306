"""`voicecli simulate`: play a provider's side of a call against a running server."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from voicecli.settings import Settings
    from voicecli.store import CallStore


def simulate(
    agent: Annotated[
        str | None, typer.Option("--agent", "-a", help="Agent to call (default: the server's only agent).")
    ] = None,
    provider: Annotated[
        str | None, typer.Option("--provider", "-p", help="Provider to emulate (default: settings).")
    ] = None,
    say: Annotated[
        list[str] | None, typer.Option("--say", help="Say this (offline TTS); repeatable, in order.")
    ] = None,
    wav: Annotated[
        list[Path] | None, typer.Option("--wav", help="Play this WAV file; repeatable, after --say.")
    ] = None,
    dtmf: Annotated[list[str] | None, typer.Option("--dtmf", help="Press this key; repeatable, after speech.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write what the caller heard to this WAV.")] = None,
    from_number: Annotated[str, typer.Option("--from", help="Caller's number.")] = "+15551230000",
    to_number: Annotated[str, typer.Option("--to", help="Number called.")] = "+15559870000",
    reply_timeout: Annotated[float, typer.Option(help="Seconds to wait for each agent reply.")] = 20.0,
    server: Annotated[
        str | None, typer.Option("--server", help="Server URL (default: the one `serve` recorded).")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Settings file.")] = None,
) -> None:
    """Call an agent the way a provider would: webhook, media stream, speech, keys; print the transcript."""
    import asyncio

    from voicecli.call.audio import write_wav
    from voicecli.client import choose_agent, connect
    from voicecli.emulator.simulator import RATE, build_steps, simulate_call
    from voicecli.settings import load_settings, load_store_layer, validate_value
    from voicecli.ui.console import stdout
    from voicecli.ui.render import call_detail

    # The store's layer too: a provider chosen with `config set` is the default here as well.
    settings = asyncio.run(load_store_layer(load_settings(config_path=config)))
    client = connect(settings, server)
    provider = validate_value("provider", provider) if provider else settings.provider
    agent = choose_agent(client.get("/api/status")["agents"], agent)
    steps = build_steps(say or [], wav or [], dtmf or [])
    console = stdout()
    console.print(f"calling agent {agent} through emulated {provider} at {client.base_url} ...")
    result = asyncio.run(
        simulate_call(
            settings,
            client.base_url,
            agent,
            provider,
            steps,
            from_number=from_number,
            to_number=to_number,
            reply_timeout=reply_timeout,
            api_token=client.token,
        )
    )
    if out:
        write_wav(out, bytes(result.heard), RATE)
        console.print(f"wrote {result.heard_seconds:.1f}s of what the caller heard to {out}")
    ended = "the agent hung up" if result.ended_by == "agent" else "the caller (this emulator) hung up"
    console.print(f"call ended: {ended}; {result.sent_messages} messages sent")
    record = result.record or (
        _stored_record(settings, provider, result.call.provider_call_id) if result.record_error else None
    )
    if record:
        console.print(call_detail(record))
    elif result.record_error:
        console.print(f"the call's record could not be read: the server stopped ({result.record_error})")


def _stored_record(settings: Settings, provider: str, provider_call_id: str) -> dict[str, Any] | None:
    """The call's record from the store, when the server stopped before it could be asked."""
    from voicecli.settings import read_store
    from voicecli.store import views

    async def read(store: CallStore) -> dict[str, Any] | None:
        record = await store.find_by_provider_call_id(provider, provider_call_id)
        return await views.call_detail(store, record.id) if record else None

    return read_store(settings, read, None)
