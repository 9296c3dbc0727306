"""`voicecli doctor`: walk the setup checklist and say what to fix."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def doctor(
    agents_dir: Annotated[Path, typer.Option(help="Folder of agent TOML files.")] = Path("agents"),
    ngrok_api: Annotated[
        str | None,
        typer.Option(help="The ngrok agent's local API (default: the one `serve --tunnel` started, else :4040)."),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Settings file.")] = None,
) -> None:
    """Check the server, tunnel, public URL, provider credentials, webhook and agents; exit 1 on a failure."""
    import asyncio

    from voicecli.doctor import failed, run_checks
    from voicecli.settings import load_settings
    from voicecli.ui.console import stdout
    from voicecli.ui.render import checks_table

    settings = load_settings(config_path=config)
    checks = asyncio.run(run_checks(settings, agents_dir, ngrok_api))
    stdout().print(checks_table(checks))
    if failed(checks):
        raise typer.Exit(1)
