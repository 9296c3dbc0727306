"""The public side of `serve`: an ngrok tunnel (through pyngrok), and pointing numbers at it.

How pyngrok drives the agent: ../shared/protocols.md section D. The tunnel is recorded in
`.voicecli/tunnel.json` (its URL and the agent's local API) so `voicecli doctor` checks the
agent this server started.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicecli.errors import VoicecliError
from voicecli.runtime import write_private
from voicecli.server.urls import http_url, webhook_url

if TYPE_CHECKING:
    from voicecli.settings import Settings

TUNNEL_FILE = "tunnel.json"
# Where an ngrok agent started by hand (`ngrok http 8000`) serves its local API.
DEFAULT_AGENT_API = "http://127.0.0.1:4040"
TOKEN_HELP = (
    "set NGROK_AUTHTOKEN in .env (copy it from https://dashboard.ngrok.com/get-started/your-authtoken) "
    "or run: ngrok config add-authtoken <token>"
)


@dataclass
class Tunnel:
    """An open ngrok tunnel; close() ends it and the agent process."""

    public_url: str
    api_url: str
    config: Any  # pyngrok's PyngrokConfig
    record: Path

    def close(self) -> None:
        from pyngrok import ngrok
        from pyngrok.exception import PyngrokError

        self.record.unlink(missing_ok=True)
        try:
            ngrok.disconnect(self.public_url, pyngrok_config=self.config)
        except PyngrokError:
            pass  # the agent is killed next either way
        ngrok.kill(pyngrok_config=self.config)


def _config_token(config_path: str) -> str | None:
    """The auth token in ngrok's own config file (v3 `agent.authtoken`, v2 `authtoken`)."""
    import yaml

    try:
        with open(config_path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(data, dict):
        return None
    agent = data.get("agent")
    token = agent.get("authtoken") if isinstance(agent, dict) else None
    return token or data.get("authtoken") or None


def _local_addr(host: str, port: int) -> str:
    # A wildcard bind is reached through loopback; the agent must dial a real address.
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host.strip("[]") == "::":
        host = "::1"
    return http_url(host, port)


def _pyngrok_config(settings: Settings) -> Any:
    from pyngrok import conf

    # start_new_session: Ctrl-C in the terminal must not kill the agent while calls still
    # drain through it; Tunnel.close() ends it after the server has stopped.
    return conf.PyngrokConfig(auth_token=settings.env.get("NGROK_AUTHTOKEN"), start_new_session=True)


def auth_token(settings: Settings) -> str:
    """NGROK_AUTHTOKEN, else the token in ngrok's config file; a VoicecliError when neither is set."""
    from pyngrok import conf

    config = _pyngrok_config(settings)
    token = config.auth_token or _config_token(conf.get_config_path(config))
    if not token:
        raise VoicecliError(f"--tunnel needs an ngrok auth token: {TOKEN_HELP}")
    return token


def open_tunnel(settings: Settings, host: str, port: int) -> Tunnel:
    """Start the ngrok agent and an https tunnel to host:port (blocking: run it in a thread).

    The binary is PYNGROK_NGROK_PATH or pyngrok's default path (pyngrok downloads it there
    when missing); the auth token is NGROK_AUTHTOKEN or the one in ngrok's config file.
    """
    from pyngrok import ngrok
    from pyngrok.exception import PyngrokError, PyngrokNgrokError, PyngrokNgrokInstallError

    config = _pyngrok_config(settings)
    token = auth_token(settings)

    def scrub(text: str) -> str:
        return text.replace(token, "****")  # ngrok's own messages must not leak the token

    try:
        tunnel = ngrok.connect(_local_addr(host, port), "http", name=f"voicecli-{port}", pyngrok_config=config)
        api_url = ngrok.get_ngrok_process(config).api_url
    except PyngrokNgrokInstallError as exc:
        raise VoicecliError(
            f"the ngrok agent is not at {config.ngrok_path} and could not be downloaded ({scrub(str(exc))}); "
            "install ngrok and set PYNGROK_NGROK_PATH to its path"
        ) from None
    except PyngrokNgrokError as exc:
        ngrok.kill(pyngrok_config=config)
        reason = scrub(exc.ngrok_error or str(exc))
        hint = f" (check the auth token: {TOKEN_HELP})" if "auth" in reason.lower() else ""
        raise VoicecliError(f"ngrok could not open a tunnel: {reason}{hint}") from None
    except PyngrokError as exc:
        ngrok.kill(pyngrok_config=config)
        raise VoicecliError(f"ngrok could not open a tunnel: {scrub(str(exc))}") from None
    except OSError as exc:  # not executable, wrong architecture, ...
        raise VoicecliError(
            f"cannot run the ngrok agent at {config.ngrok_path}: {exc.strerror or exc}; "
            "install ngrok and set PYNGROK_NGROK_PATH to its path"
        ) from None
    public_url = str(tunnel.public_url).rstrip("/")
    record = settings.state_dir / TUNNEL_FILE
    write_private(record, json.dumps({"public_url": public_url, "api_url": api_url, "pid": os.getpid()}))
    return Tunnel(public_url, str(api_url), config, record)


def recorded_agent_api(state_dir: Path) -> str | None:
    """The local API of the ngrok agent `serve --tunnel` started, if one is recorded."""
    try:
        return str(json.loads((state_dir / TUNNEL_FILE).read_text(encoding="utf-8"))["api_url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --- Pointing numbers at the server --------------------------------------------------------


async def announce_webhooks(settings: Settings, agent: str) -> list[str]:
    """`--update-webhook`: point numbers through the provider's API, or say what to paste where."""
    from voicecli.providers import PROVIDERS, load_provider
    from voicecli.providers.base import PointsNumbers

    public = settings.public_base_url
    if not public:
        raise VoicecliError("--update-webhook needs a public URL: use --tunnel or set PUBLIC_BASE_URL")
    lines = []
    for name in PROVIDERS:
        provider = load_provider(name, settings)
        done = None
        if isinstance(provider, PointsNumbers):
            done = await provider.point_number(webhook_url(public, name, agent))
        lines.append(done or provider.paste_instructions(public, agent))
    return lines
