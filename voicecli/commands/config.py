"""`voicecli config`: read and change settings: the store for most, voicecli.toml for file-only ones."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from voicecli.settings import Settings

app = typer.Typer(
    help="Read and change settings (kept in the store, live on every server; file-only ones in voicecli.toml).",
    no_args_is_help=True,
)

Config = Annotated[Path | None, typer.Option("--config", help="Settings file (default ./voicecli.toml).")]
SETTINGS_API = "/api/settings/telephony"


def _base(config: Path | None) -> Settings:
    """Defaults, environment, voicecli.toml: everything but the store."""
    from voicecli.settings import load_settings

    return load_settings(config_path=config)


def _load(config: Path | None) -> Settings:
    """The settings in force, the store's layer included."""
    import asyncio

    from voicecli.settings import load_store_layer

    return asyncio.run(load_store_layer(_base(config)))


def _shown(name: str, value: object) -> str:
    from voicecli.settings import shown

    return "" if value is None else str(shown(name, value))


def _change_store(settings: Settings, changes: Mapping[str, Any]) -> tuple[str, bool]:
    """Write to the store: through the running server (it applies them at once), else directly.

    Where the store is, for the message, and whether a running server took the change.
    """
    import asyncio

    from voicecli.client import running_client
    from voicecli.settings import opened_store

    server = running_client(settings)
    if server is not None:
        server.request("PUT", SETTINGS_API, body=dict(changes))
        return "the store", True

    async def change() -> str:
        async with opened_store(settings) as store:
            await store.change_settings(changes)
            return f"the store ({store.location})"

    return asyncio.run(change()), False


LIVE = "; the running server uses it now"
RESTART = "; a restart of voicecli serve applies it"


@app.command("set")
def set_(key: str, value: str, config: Config = None) -> None:
    """Set KEY to VALUE in the store: every server uses it at once, and after a restart."""
    from voicecli.config_file import update_config_file
    from voicecli.settings import setting

    settings = _base(config)
    if setting(key).file_only:
        # Read once at start-up (where the store is, how many workers): voicecli.toml.
        saved = update_config_file(settings.config_path, {key: value})
        typer.echo(f"{key} = {_shown(key, saved[key])}  (saved in {settings.config_path}{RESTART})")
        return
    stored = settings.check_store_changes({key: value}).stored[key]
    where, live = _change_store(settings, {key: stored})
    typer.echo(f"{key} = {_shown(key, stored)}  (saved in {where}{LIVE if live else ''})")


@app.command("unset")
def unset(key: str, config: Config = None) -> None:
    """Remove KEY from the store and voicecli.toml: the environment or the default applies again."""
    from voicecli.config_file import update_config_file
    from voicecli.settings import read_config_file, setting

    spec = setting(key)
    settings = _base(config)
    removed: list[str] = []
    note = RESTART if spec.file_only else ""
    if not spec.file_only:
        where, live = _change_store(settings, {key: None})
        removed.append(where)
        note = LIVE if live else ""
    if key in read_config_file(settings.config_path):
        update_config_file(settings.config_path, {key: None})
        removed.append(str(settings.config_path))
    after = _load(config)
    what = f"removed from {' and '.join(removed)}{note}" if removed else f"it was not in {settings.config_path}"
    now = _shown(key, after.get(key)) or "(not set)"
    typer.echo(f"{key} unset ({what}); now {now} from {after.sources[key]}")


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

    from voicecli.settings import SETTINGS
    from voicecli.ui.console import stdout

    settings = _load(config)
    table = Table()
    for column in ("setting", "value", "from"):
        table.add_column(column, overflow="fold")
    for spec in SETTINGS:
        table.add_row(spec.name, _shown(spec.name, settings.get(spec.name)), settings.sources[spec.name])
    stdout().print(table)


@app.command("describe")
def describe(key: str, config: Config = None) -> None:
    """What KEY is: its help, variable, default, the value in force and where it comes from."""
    from voicecli.settings import setting

    spec = setting(key)
    settings = _load(config)
    changed_by = (
        f"voicecli config set (into voicecli.toml) or ${spec.env_name}; read at start-up, a restart applies it"
        if spec.file_only
        else "voicecli config set, the settings API (live on every server), voicecli.toml or the environment"
    )
    lines = [
        f"{spec.name}: {spec.help}",
        f"  variable:   {spec.env_name}",
        f"  default:    {_shown(key, spec.default) or '(none)'}",
        f"  value:      {_shown(key, settings.get(key)) or '(not set)'}  (from {settings.sources[key]})",
        f"  secret:     {'yes: shown masked, never printed' if spec.secret else 'no'}",
        f"  changed by: {changed_by}",
    ]
    typer.echo("\n".join(lines))
