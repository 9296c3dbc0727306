"""The public side of `serve`: an ngrok tunnel (through pyngrok), and pointing numbers at it.

How pyngrok drives the agent: ../shared/protocols.md section D. The tunnel is recorded in
`.voicecli/tunnel.json` (its URL and the agent's local API) so `voicecli doctor` checks the
agent this server started.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicecli.errors import ProviderError, VoicecliError
from voicecli.state import write_private

if TYPE_CHECKING:
    from voicecli.settings import Settings

TUNNEL_FILE = "tunnel.json"
TWILIO_TIMEOUT_S = 15.0
# Where an ngrok agent started by hand (`ngrok http 8000`) serves its local API.
DEFAULT_AGENT_API = "http://127.0.0.1:4040"
TOKEN_HELP = (
    "set NGROK_AUTHTOKEN in .env (copy it from https://dashboard.ngrok.com/get-started/your-authtoken) "
    "or run: ngrok config add-authtoken <token>"
)


def webhook_url(public_base_url: str, provider: str, agent: str) -> str:
    return f"{public_base_url}/telephony/{provider}/inbound/{agent}"


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
    elif host == "::":
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


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

# Where each provider's console takes the URL; Twilio's is also set through its API.
WHERE_TO_PASTE: dict[str, str] = {
    "twilio": 'Twilio console > Phone Numbers > {number} > Voice configuration > "A call comes in": Webhook, HTTP POST',
    "exotel": "Exotel App Bazaar > the flow of {number} > Voicebot applet > URL (dynamic mode); "
    "add a Hangup applet after it",
    "vobiz": "Vobiz console > Applications > the application of {number} > Answer URL (POST); Hangup URL: {status_url}",
}


def paste_instructions(settings: Settings, provider: str, agent: str) -> str:
    """The exact URL to paste into the provider's console, and where."""
    base = settings.public_base_url
    number = settings.get(f"{provider}_phone_number") or "your number"
    where = WHERE_TO_PASTE.get(provider, "{number}'s inbound call URL in the provider's console")
    where = where.format(number=number, status_url=f"{base}/telephony/{provider}/status")
    return f"{provider}: paste {webhook_url(base, provider, agent)}\n  where: {where}"


def twilio_client(settings: Settings) -> Any:
    """The twilio SDK's async client at TWILIO_API_BASE, built as providers/twilio.py builds it.

    Not imported from there: that module pulls in numpy, and `doctor` stays light. The SDK's
    async client ignores its constructor's timeout (twilio 9.13), so callers bound each
    request with asyncio.timeout.
    """
    from twilio.http.async_http_client import AsyncTwilioHttpClient
    from twilio.rest import Client

    # An explicit environment keeps the SDK from reading TWILIO_REGION/TWILIO_EDGE from
    # os.environ, which would rewrite the API host (protocols.md A5).
    client = Client(
        settings.twilio_account_sid,
        settings.twilio_auth_token,
        http_client=AsyncTwilioHttpClient(),
        environment={"VOICECLI": "1"},
    )
    client.api.base_url = settings.twilio_api_base
    return client


def twilio_refusal(exc: Exception) -> str:
    """`HTTP 401: Authenticate` from either twilio SDK error (list pages raise the plain one)."""
    status, message = getattr(exc, "status", None), getattr(exc, "msg", None)
    response = exc.args[1] if status is None and len(exc.args) > 1 else None
    if response is not None:
        status = getattr(response, "status_code", None)
        try:
            message = json.loads(response.text).get("message")
        except (ValueError, AttributeError, TypeError):
            message = None
    return f"HTTP {status}: {message or exc.args[0]}"


async def twilio_number(settings: Settings, client: Any) -> Any:
    """The Twilio account's IncomingPhoneNumber for TWILIO_PHONE_NUMBER."""
    numbers = await client.incoming_phone_numbers.list_async(phone_number=settings.twilio_phone_number, limit=1)
    if not numbers:
        raise ProviderError(
            f"{settings.twilio_phone_number} is not a number of Twilio account {settings.twilio_account_sid}: "
            "check TWILIO_PHONE_NUMBER"
        )
    return numbers[0]


async def point_twilio_number(settings: Settings, agent: str) -> str:
    """Set the Twilio number's voice URL to this server's webhook; say what changed."""
    from twilio.base.exceptions import TwilioException

    url = webhook_url(settings.public_base_url, "twilio", agent)
    phone = settings.twilio_phone_number
    client = twilio_client(settings)
    try:
        async with asyncio.timeout(TWILIO_TIMEOUT_S):
            number = await twilio_number(settings, client)
            before = number.voice_url or "(none)"
            if number.voice_url == url and (number.voice_method or "POST").upper() == "POST":
                return f"Twilio number {phone} already sends calls to {url}"
            await client.incoming_phone_numbers(number.sid).update_async(voice_url=url, voice_method="POST")
    except TwilioException as exc:
        raise ProviderError(f"Twilio refused to update {phone}: {twilio_refusal(exc)}") from None
    except ProviderError:
        raise
    except TimeoutError:
        raise ProviderError(f"Twilio did not answer within {TWILIO_TIMEOUT_S:g} s; {phone} was not updated") from None
    except Exception as exc:  # timeouts, refused connections, malformed answers
        raise ProviderError(f"Twilio could not be reached to update {phone}: {type(exc).__name__}: {exc}") from None
    finally:
        await client.http_client.close()
    return f"Twilio number {phone}: voice URL changed from {before} to {url} (POST)"


async def _update_twilio(settings: Settings, agent: str) -> str | None:
    if not (settings.twilio_account_sid and settings.twilio_auth_token and settings.twilio_phone_number):
        return None  # not enough to find the number: the user pastes the URL instead
    return await point_twilio_number(settings, agent)


# Providers whose number voicecli can point through their API; the others get paste instructions.
UPDATERS: dict[str, Callable[[Settings, str], Awaitable[str | None]]] = {"twilio": _update_twilio}


async def announce_webhooks(settings: Settings, agent: str) -> list[str]:
    """`--update-webhook`: point numbers through the provider's API, or say what to paste where."""
    from voicecli.providers import PROVIDERS

    lines = []
    for provider in PROVIDERS:
        updater = UPDATERS.get(provider)
        done = await updater(settings, agent) if updater else None
        lines.append(done or paste_instructions(settings, provider, agent))
    return lines
