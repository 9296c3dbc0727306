"""`voicecli call`: dial a number through the running server and, with --wait, follow the call."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def call(
    number: Annotated[str, typer.Argument(help="Number to call, in E.164 form (+15551234567).")],
    agent: Annotated[str | None, typer.Option("--agent", "-a", help="Agent (default: the server's only one).")] = None,
    provider: Annotated[str | None, typer.Option("--provider", "-p", help="Provider for this call.")] = None,
    from_number: Annotated[str | None, typer.Option("--from", help="Caller ID (default: the provider's).")] = None,
    voicemail: Annotated[
        str | None,
        typer.Option(
            "--voicemail",
            help="When a machine answers: hangup, message (leave the agent's voicemail_message) or off "
            "(default: the agent's [outbound] voicemail).",
        ),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the call to its end; print the transcript.")] = False,
    server: Annotated[str | None, typer.Option("--server", help="Server URL (default: the running one).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Settings file.")] = None,
) -> None:
    """Place an outbound call with an agent."""
    from voicecli.client import DIAL_TIMEOUT_S, choose_agent, connect, follow_call
    from voicecli.settings import load_settings
    from voicecli.ui.console import stdout
    from voicecli.ui.render import call_detail

    client = connect(load_settings(config_path=config), server)
    agent = choose_agent(client.get("/api/status")["agents"], agent)
    if voicemail is not None and voicemail not in ("hangup", "message", "off"):
        raise typer.BadParameter("must be hangup, message or off", param_hint="--voicemail")
    body = {
        "phone_number": number,
        "agent_name": agent,
        "provider": provider,
        "from_number": from_number,
        "voicemail": voicemail,
    }
    dial = {k: v for k, v in body.items() if v}
    record = client.request("POST", "/api/calls/outbound", body=dial, timeout=DIAL_TIMEOUT_S)
    console = stdout()
    console.print(f"dialling {record['to']} from {record['from']} through {record['provider']}: call {record['id']}")
    if not wait:
        console.print(f"follow it with: voicecli calls show {record['id']}")
        return
    try:
        final = follow_call(client, record["id"])
    except KeyboardInterrupt:
        console.print("stopped waiting; the call goes on")
        raise typer.Exit(130) from None
    console.print(call_detail(final))
    if final["status"] != "completed":
        raise typer.Exit(1)
