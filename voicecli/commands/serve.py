"""`voicecli serve`: answer calls for the agents in agents/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def serve(
    agent: Annotated[
        list[str] | None, typer.Option("--agent", "-a", help="Agent to serve (repeatable); default: all.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0 picks a free one).")] = 8000,
    public_base_url: Annotated[
        str | None, typer.Option(help="Public https URL of this server (PUBLIC_BASE_URL).")
    ] = None,
    provider: Annotated[str | None, typer.Option(help="Default telephony provider (TELEPHONY_PROVIDER).")] = None,
    drain_timeout: Annotated[float, typer.Option(help="Seconds active calls may finish after Ctrl-C.")] = 10.0,
    agents_dir: Annotated[Path, typer.Option(help="Folder of agent TOML files.")] = Path("agents"),
    config: Annotated[
        Path | None, typer.Option(help="Settings file (default ./voicecli.toml, or VOICECLI_CONFIG).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    tunnel: Annotated[
        bool, typer.Option("--tunnel", help="Open an ngrok tunnel and use its URL as PUBLIC_BASE_URL for this run.")
    ] = False,
    update_webhook: Annotated[
        bool,
        typer.Option(
            "--update-webhook",
            help="Point the Twilio number's voice URL at this server; print what to paste for the others.",
        ),
    ] = False,
    workers: Annotated[
        str | None,
        typer.Option(help="Serving processes on one port: a number, or auto (one per core) (VOICECLI_WORKERS)."),
    ] = None,
    database: Annotated[
        str | None,
        typer.Option(
            "--database",
            help="PostgreSQL URL shared by several instances (VOICECLI_DATABASE_URL); default SQLite in .voicecli/.",
        ),
    ] = None,
) -> None:
    """Serve agents on an aiohttp server: webhooks, media streams and the management API."""
    import asyncio

    from voicecli.agents import load_agents, require_keys
    from voicecli.errors import VoicecliError
    from voicecli.settings import load_settings
    from voicecli.ui import logs

    logs.configure(log_level)
    flags = {"public_base_url": public_base_url, "provider": provider, "workers": workers, "database_url": database}
    settings = load_settings(config_path=config, flags=flags)
    agents = load_agents(agents_dir, agent)
    require_keys(agents, settings.variables)
    if tunnel and public_base_url:
        raise VoicecliError("--tunnel sets the public URL itself: drop --public-base-url")
    if tunnel:
        from voicecli.server.tunnel import auth_token

        auth_token(settings)  # no token: say so now, before a second of start-up
    if update_webhook and not (tunnel or settings.public_base_url):
        raise VoicecliError("--update-webhook needs a public URL: add --tunnel or set PUBLIC_BASE_URL")
    if update_webhook and len(agents) != 1:
        raise VoicecliError(
            f"--update-webhook points a number at one agent: pick one with --agent ({', '.join(agents)})"
        )

    from urllib.parse import urlsplit

    from voicecli.server.state import build_state
    from voicecli.server.tunnel import Tunnel, announce_webhooks, open_tunnel
    from voicecli.server.workers import WorkerPlan, supervise, worker_count
    from voicecli.ui.banner import print_banner
    from voicecli.ui.console import stdout

    state = build_state(settings, agents)
    count = worker_count(settings.workers)
    opened: list[Tunnel] = []

    async def started(url: str) -> None:
        if tunnel:
            opened.append(await asyncio.to_thread(open_tunnel, state.settings, host, urlsplit(url).port or port))
            # For this run only: like a flag, never written to voicecli.toml. The ngrok agent
            # reaches us from loopback and names the real client in X-Forwarded-For.
            trusted = ",".join(filter(None, (state.settings.trusted_proxies, "127.0.0.1/32", "::1/128")))
            changes = {"public_base_url": opened[0].public_url, "trusted_proxies": trusted}
            state.apply_settings(state.settings.with_flags(changes))
        print_banner(state, url, tunnel=opened[0].public_url if opened else None, workers=count)
        if update_webhook:
            for line in await announce_webhooks(state.settings, next(iter(agents))):
                stdout().print(line, soft_wrap=True)

    try:
        if count > 1:
            # The supervisor serves nothing itself: pipecat is the workers' to import.
            where = WorkerPlan(
                count, host, port, drain_timeout, log_level, agents_dir, list(agents), settings.config_path
            )
            asyncio.run(supervise(state, where, started))
        else:
            # Only now the server and pipecat (a second of imports): a bad setup fails fast and quietly.
            from voicecli.call.session import warm_up
            from voicecli.server.app import event_loop_factory
            from voicecli.server.app import serve as run_server

            warm_up(agents.values(), settings.env)
            with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                runner.run(run_server(state, host, port, drain_timeout, started))
    finally:
        # After the server has stopped: calls draining after Ctrl-C still need the tunnel.
        for each in opened:
            each.close()
