"""`voicecli calls`: recent calls from the running server, and one call's transcript."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Recent calls from the running server.", no_args_is_help=False)

Server = Annotated[str | None, typer.Option("--server", help="Server URL (default: the one `serve` recorded).")]
Config = Annotated[Path | None, typer.Option("--config", help="Settings file.")]


def _client(server: str | None, config: Path | None):  # noqa: ANN202
    from voicecli.client import connect
    from voicecli.settings import load_settings

    return connect(load_settings(config_path=config), server)


@app.callback(invoke_without_command=True)
def calls(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="Only calls with this status.")] = None,
    provider: Annotated[str | None, typer.Option(help="Only this provider's calls.")] = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent's calls.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many calls.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    server: Server = None,
    config: Config = None,
) -> None:
    """List recent calls, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    rows = _client(server, config).get("/api/calls", status=status, provider=provider, agent=agent, limit=limit)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from voicecli.console import stdout
    from voicecli.render import calls_table

    stdout().print(calls_table(rows))


@app.command("show")
def show(
    call_id: Annotated[str, typer.Argument(help="The call's id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    server: Server = None,
    config: Config = None,
) -> None:
    """One call's record and transcript."""
    call = _client(server, config).get(f"/api/calls/{call_id}")
    if as_json:
        typer.echo(json.dumps(call, indent=2))
        return
    from voicecli.console import stdout
    from voicecli.render import call_detail

    stdout().print(call_detail(call))
