"""The root Typer app; commands live in voicecli/commands/, one module per group."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from voicecli import __version__
from voicecli.commands import call, calls, config, doctor, serve, simulate, webhooks
from voicecli.errors import VoicecliError


class _Group(TyperGroup):
    """Turns VoicecliError into one red line and exit status 1, for every command."""

    def invoke(self, ctx: Any) -> Any:  # typer's own (vendored click) Context
        try:
            return super().invoke(ctx)
        except VoicecliError as exc:
            from voicecli.ui.console import error

            error(str(exc))
            raise typer.Exit(1) from None


app = typer.Typer(
    name="voicecli",
    cls=_Group,
    help="Put voice agents on real phone numbers (Twilio, Exotel, Vobiz, Plivo).",
    no_args_is_help=True,
    add_completion=False,
    # A traceback must never print local variables: they can hold tokens.
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"voicecli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Put voice agents on real phone numbers (Twilio, Exotel, Vobiz, Plivo)."""


app.command("serve")(serve.serve)
app.command("call")(call.call)
app.command("simulate")(simulate.simulate)
app.command("doctor")(doctor.doctor)
app.add_typer(calls.app, name="calls")
app.add_typer(config.app, name="config")
app.add_typer(webhooks.app, name="webhooks")


def main() -> None:
    app()
