"""`voicecli config`: read and change settings in voicecli.toml (secrets masked)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Read and change settings (voicecli.toml).", no_args_is_help=True)

Config = Annotated[Path | None, typer.Option("--config", help="Settings file (default ./voicecli.toml).")]


def _load(config: Path | None):  # noqa: ANN202
    from voicecli.settings import load_settings

    return load_settings(config_path=config)


def _shown(name: str, value: object) -> str:
    from voicecli.settings import is_secret, mask

    if value is None:
        return ""
    return str(mask(value) if is_secret(name) else value)


@app.command("set")
def set_(key: str, value: str, config: Config = None) -> None:
    """Set KEY to VALUE in voicecli.toml (it overrides the environment's default)."""
    from voicecli.client import running_client
    from voicecli.config_file import update_config_file
    from voicecli.settings import validate_value

    settings = _load(config)
    shown = _shown(key, validate_value(key, value))
    server = running_client(settings)
    if server is not None:
        # The running server applies it at once and writes voicecli.toml itself.
        server.request("PUT", "/api/settings/telephony", body={key: value})
        typer.echo(f"{key} = {shown}  (saved in {settings.config_path}; the running server uses it now)")
        return
    update_config_file(settings.config_path, {key: value})
    typer.echo(f"{key} = {shown}  (saved in {settings.config_path})")


@app.command("unset")
def unset(key: str, config: Config = None) -> None:
    """Remove KEY from voicecli.toml (the environment or the default applies again)."""
    from voicecli.client import running_client
    from voicecli.config_file import update_config_file
    from voicecli.settings import setting

    setting(key)
    settings = _load(config)
    server = running_client(settings)
    if server is not None:
        server.request("PUT", "/api/settings/telephony", body={key: None})
    else:
        update_config_file(settings.config_path, {key: None})
    after = _load(config)
    typer.echo(f"{key} unset; now {_shown(key, after.get(key)) or '(not set)'} from {after.sources[key]}")


@app.command("get")
def get(key: str, config: Config = None) -> None:
    """Print the value of KEY in force (secrets masked)."""
    from voicecli.settings import setting

    setting(key)
    typer.echo(_shown(key, _load(config).get(key)))


@app.command("list")
def list_(config: Config = None) -> None:
    """Every setting, its value in force (secrets masked) and where it comes from."""
    from rich.table import Table

    from voicecli.console import stdout
    from voicecli.settings import SETTINGS

    settings = _load(config)
    table = Table()
    for column in ("setting", "value", "from"):
        table.add_column(column, overflow="fold")
    for spec in SETTINGS:
        table.add_row(spec.name, _shown(spec.name, settings.get(spec.name)), settings.sources[spec.name])
    stdout().print(table)
