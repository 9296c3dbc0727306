"""`voicecli webhooks`: post-call webhook deliveries, read from the store (no server needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from voicecli.store.outbox import Delivery

app = typer.Typer(help="Post-call webhook deliveries: what was sent, what failed, what is next.")

Config = Annotated[Path | None, typer.Option("--config", help="Settings file.")]


def _with_store(config: Path | None, work: Any, nothing: Any) -> Any:
    """`work(store)` on the store the settings name: no server needed."""
    from voicecli.settings import load_settings, read_store

    return read_store(load_settings(config_path=config), work, nothing)


@app.callback(invoke_without_command=True)
def webhooks(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many deliveries.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    config: Config = None,
) -> None:
    """List recent deliveries, newest first: event, call, status, tries, last error, next try."""
    if ctx.invoked_subcommand is not None:
        return
    found: list[Delivery] = _with_store(config, lambda store: store.deliveries(limit), [])
    if as_json:
        typer.echo(json.dumps([d.to_json() for d in found], indent=2))
        return
    from voicecli.ui.console import stdout

    stdout().print(_table(found))


def _table(found: list[Delivery]) -> Any:
    import time

    from rich.table import Table

    table = Table()
    for column in ("delivery", "event", "call", "status", "tries", "last error", "next try"):
        table.add_column(column, overflow="fold", no_wrap=column in ("delivery", "call"))
    now = time.time()
    for d in found:
        next_try = "-"
        if d.status == "pending":
            next_try = "now" if d.next_try_at <= now else f"in {d.next_try_at - now:.0f} s"
        table.add_row(d.id, d.event, d.call_id, d.status, str(d.tries), d.last_error or "", next_try)
    if not found:
        table.caption = "no deliveries yet: set webhook_url (voicecli config set webhook_url URL)"
    return table


@app.command("retry")
def retry(delivery_id: str, config: Config = None) -> None:
    """Queue a failed delivery again (its retry window starts over)."""
    from voicecli.errors import VoicecliError

    if not _with_store(config, lambda store: store.retry_delivery(delivery_id), False):
        raise VoicecliError(f"no failed delivery {delivery_id} (voicecli webhooks lists them)")
    typer.echo(f"{delivery_id} queued again: a running server sends it within a second")
