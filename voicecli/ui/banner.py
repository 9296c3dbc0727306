"""The start-up banner: what is served, where providers must point, and what is missing."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from voicecli.providers import PROVIDERS
from voicecli.runtime import API_TOKEN_FILE
from voicecli.server.state import ServerState
from voicecli.server.urls import stream_url, webhook_url
from voicecli.ui.console import stdout


def print_banner(state: ServerState, local_url: str, tunnel: str | None = None, workers: int = 1) -> None:
    """Print the banner (URLs whole, also when the output is a file); `tunnel` is its public URL."""
    console = stdout()
    settings = state.settings
    base = settings.public_base_url or local_url
    processes = f" ({workers} workers)" if workers > 1 else ""
    console.print(Text(f"voicecli serving on {local_url}{processes}", style="bold green"))
    if tunnel:
        console.print(Text(f"ngrok tunnel: {tunnel} -> {local_url} (PUBLIC_BASE_URL for this run)", style="green"))
        if settings.database_url:
            console.print(
                Text(
                    "warning: the tunnel reaches this instance only; the other instances sharing the "
                    "database take calls only at their own public URL (or behind one load balancer)",
                    style="yellow",
                )
            )
    elif settings.public_base_url:
        console.print(f"PUBLIC_BASE_URL: {settings.public_base_url}")
    else:
        console.print(
            Text(
                "PUBLIC_BASE_URL not set: URLs below use this server's own address, which providers "
                "cannot reach. Set PUBLIC_BASE_URL or use --tunnel for real calls.",
                style="yellow",
            )
        )
    agents = Table(title="Agents", title_justify="left")
    for column in ("agent", "stt", "llm", "tts"):
        agents.add_column(column, overflow="fold")
    for agent in state.agents.values():
        agents.add_row(agent.name, agent.stt.provider, agent.llm.provider, agent.tts.provider)
    console.print(agents)

    providers = Table(title=f"Providers (default: {settings.provider})", title_justify="left")
    for column in ("provider", "credentials", "limit"):
        providers.add_column(column, overflow="fold")
    for name in PROVIDERS:
        provider = state.provider(name)
        missing = provider.missing_credentials()
        creds = Text("missing " + ", ".join(missing), style="yellow") if missing else Text("set", style="green")
        providers.add_row(name, creds, str(provider.max_concurrent))
    console.print(providers)
    # Each URL whole on a line of its own, at any terminal width: a user copies it into the
    # provider's console, and a URL folded over lines (or inside a table cell) pastes broken.
    console.print(Text("Webhook and stream URLs, per provider and agent:", style="bold"))
    for name in PROVIDERS:
        for served in state.agents:
            console.print(f"{name}, agent {served}:")
            for url in (webhook_url(base, name, served), stream_url(base, name, served)):
                console.print(Text(url), soft_wrap=True)
    for name in PROVIDERS:
        for note in state.provider(name).security_notes():
            console.print(Text(f"warning: {note}", style="yellow"))
    token_file = settings.state_dir / API_TOKEN_FILE
    where = "VOICECLI_API_TOKEN" if settings.env.get("VOICECLI_API_TOKEN") else str(token_file)
    console.print(f"API token: kept in {where}")
    cli = cli_command()
    console.print(f'Watch calls: {cli} calls --live    Try a call: {cli} simulate --say "pricing"', soft_wrap=True)
    console.print(f"Check the setup: {cli} doctor", soft_wrap=True)


def cli_command() -> str:
    """voicecli as this process was started, so a printed hint runs as is: `voicecli` when
    that is what the shell finds, else the path used (`.venv/bin/voicecli`, the quick start's
    venv never activated) or `python -m voicecli`."""
    import os
    import shlex
    import shutil
    import sys
    from pathlib import Path

    def short(path: str) -> str:
        relative = os.path.relpath(path)
        return shlex.quote(relative if len(relative) < len(path) else path)

    started = Path(sys.argv[0])
    if started.name == "__main__.py":  # python -m voicecli
        return f"{short(sys.executable)} -m voicecli"
    on_path = shutil.which("voicecli")
    if on_path and Path(on_path).resolve() == started.resolve():
        return "voicecli"
    command = short(str(started.resolve()))
    return command if "/" in command else f"./{command}"
