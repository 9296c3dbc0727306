"""`voicecli calls`: recent calls and one call's transcript, from the running server or the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from voicecli.settings import Settings

app = typer.Typer(help="Recent calls: from the running server, else from the store.", no_args_is_help=False)

Server = Annotated[str | None, typer.Option("--server", help="Server URL (default: the one `serve` recorded).")]
Config = Annotated[Path | None, typer.Option("--config", help="Settings file.")]


def _read(server: str | None, config: Path | None, from_server: Any, from_store: Any) -> Any:
    """Ask the running server; with none answering (and no --server named), read the store
    itself: the records are a local database, or the cluster's PostgreSQL."""
    from voicecli.client import connect
    from voicecli.errors import ServerNotRunningError
    from voicecli.settings import load_settings, read_store, store_exists

    settings = load_settings(config_path=config)
    try:
        return from_server(connect(settings, server))
    except ServerNotRunningError:
        if server is not None or not store_exists(settings):
            raise
    return read_store(settings, from_store, None)


@app.callback(invoke_without_command=True)
def calls(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="Only calls with this status.")] = None,
    provider: Annotated[str | None, typer.Option(help="Only this provider's calls.")] = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent's calls.")] = None,
    answered_by: Annotated[
        str | None, typer.Option("--answered-by", help="Only dialled calls answered by: human, machine or unknown.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many calls.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    live: Annotated[
        bool, typer.Option("--live", help="Watch calls in progress (Ctrl-C to stop); one table when piped.")
    ] = False,
    server: Server = None,
    config: Config = None,
) -> None:
    """List recent calls, newest first; --live watches the calls in progress."""
    if ctx.invoked_subcommand is not None:
        return
    if live:
        from voicecli.settings import load_settings

        if as_json:
            raise typer.BadParameter("--live draws a table; for JSON use `voicecli calls --json`")
        _watch(load_settings(config_path=config), server, {"status": status, "provider": provider, "agent": agent})
        return
    from voicecli.store import views

    rows = _read(
        server,
        config,
        lambda client: client.get(
            "/api/calls", status=status, provider=provider, agent=agent, answered_by=answered_by, limit=limit
        ),
        lambda store: views.call_rows(
            store, limit=limit, status=status, provider=provider, agent=agent, answered_by=answered_by
        ),
    )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from datetime import UTC, datetime

    from voicecli.ui.console import stdout
    from voicecli.ui.render import calls_table

    console = stdout()
    console.print(calls_table(rows, now=datetime.now(UTC), width=console.width))


@app.command("show")
def show(
    call_id: Annotated[str, typer.Argument(help="The call's id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    server: Server = None,
    config: Config = None,
) -> None:
    """One call's record and transcript."""
    from voicecli.store import views

    call = _read(
        server,
        config,
        lambda client: client.get(f"/api/calls/{call_id}"),
        lambda store: views.call_detail(store, call_id),
    )
    if call is None:
        from voicecli.errors import VoicecliError

        raise VoicecliError(f"no call {call_id}")
    if as_json:
        typer.echo(json.dumps(call, indent=2))
        return
    from voicecli.ui.console import stdout
    from voicecli.ui.render import call_detail

    stdout().print(call_detail(call))


@app.command("recording")
def recording(
    call_id: Annotated[str, typer.Argument(help="The call's id.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where to save the WAV (default: CALL_ID.wav here).")
    ] = None,
    server: Server = None,
    config: Config = None,
) -> None:
    """Save a call's recording: a two-channel WAV, the caller left, the agent right."""
    from voicecli.client import save_stream
    from voicecli.store import views

    dest = out or Path(f"{call_id}.wav")

    async def from_store(store: Any) -> int:
        import asyncio

        path = await views.recording_file(store, call_id)

        def copy() -> int:
            with path.open("rb") as source:
                return save_stream(source, dest)

        return await asyncio.to_thread(copy)

    size = _read(server, config, lambda client: client.download(f"/api/calls/{call_id}/recording", dest), from_store)
    if size is None:
        from voicecli.errors import VoicecliError

        raise VoicecliError(f"no call {call_id}")
    typer.echo(f"saved the recording of call {call_id} to {dest} ({size} bytes)")


POLL_S = 0.5  # the issue asks for at least two refreshes a second


def _watch(settings: Settings, server: str | None, filters: dict[str, str | None]) -> None:
    """Poll the server and redraw; off a terminal print one table and return."""
    import sys
    import time
    from datetime import UTC, datetime

    from rich.live import Live

    from voicecli.client import LiveFeed
    from voicecli.errors import ServerNotRunningError, VoicecliError
    from voicecli.ui.console import stdout
    from voicecli.ui.render import live_view

    feed = LiveFeed(settings, server, filters)
    calls: list[dict[str, Any]] = []
    status: dict[str, Any] | None = None
    if not sys.stdout.isatty():
        calls, status = feed.poll()  # a script wants an answer or an error, not a retry loop
        stdout().print(live_view(calls, status, datetime.now(UTC)))
        return
    problem: str | None = None

    def screen() -> Any:
        # Rendered at every refresh, so durations tick between polls.
        return live_view(calls, status, datetime.now(UTC), problem, width=stdout().width)

    try:
        with Live(get_renderable=screen, console=stdout(), refresh_per_second=4):
            while True:
                try:
                    calls, status = feed.poll()
                    problem = None
                except ServerNotRunningError:
                    # The last rows stay on screen; the next poll reconnects by itself.
                    problem = "server unreachable: retrying (start it with voicecli serve)"
                except VoicecliError as exc:
                    problem = f"{exc} (retrying)"
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how you leave the live table: not an error
