"""`voicecli doctor`: the spec's testing checklist, each item a check with what is wrong and the fix.

The server and tunnel checks run first (the others use what they find), the rest
concurrently; every network call is bounded by NET_TIMEOUT_S, so a dead host cannot stall
doctor. Nothing here imports pipecat.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import aiohttp

from voicecli.errors import ProviderError
from voicecli.providers.base import ChecksAccount, PointsNumbers
from voicecli.runtime import read_api_token, read_server
from voicecli.server.tunnel import DEFAULT_AGENT_API, recorded_agent_api
from voicecli.server.urls import webhook_url
from voicecli.settings import Settings

if TYPE_CHECKING:
    from voicecli.providers.base import Provider

NET_TIMEOUT_S = 3.0
NGROK_DOMAINS = (".ngrok.io", ".ngrok.app", ".ngrok-free.app", ".ngrok.dev", ".ngrok-free.dev")
Status = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True)
class Check:
    """One checklist item: `problem` says what is wrong, `fix` the command or setting that fixes it."""

    name: str
    status: Status
    problem: str = ""
    fix: str = ""


def ok(name: str, note: str = "") -> Check:
    return Check(name, "ok", note)


def fail(name: str, problem: str, fix: str) -> Check:
    return Check(name, "fail", problem, fix)


@dataclass
class Context:
    """What the checks learn from each other: the running server's view wins over local settings."""

    settings: Settings
    agents_dir: Path
    http: aiohttp.ClientSession
    agent_api: str
    server: dict[str, Any] | None = None  # GET /api/status of the running server
    public_url: str | None = None
    tunnel_url: str | None = None


async def _get(ctx: Context, url: str, **kwargs: Any) -> tuple[int, Any]:
    """(status, JSON or text); network errors and timeouts raise, bounded by NET_TIMEOUT_S."""
    async with asyncio.timeout(NET_TIMEOUT_S), ctx.http.get(url, **kwargs) as resp:
        text = await resp.text()
        try:
            return resp.status, await resp.json(content_type=None)
        except ValueError:
            return resp.status, text


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {NET_TIMEOUT_S:g} s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    return f"{type(exc).__name__}: {exc}"


NET_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


# --- the store, server, tunnel, public URL ----------------------------------------------------


async def check_store(ctx: Context) -> Check:
    """The store opens, and its settings layer is what the later checks see."""
    from voicecli.errors import SettingsError, VoicecliError
    from voicecli.runtime import DB_FILE
    from voicecli.settings import opened_store, store_exists

    name = "store"
    settings = ctx.settings
    if not store_exists(settings):
        return ok(name, f"none yet: the first voicecli serve creates {settings.state_dir / DB_FILE}")
    fix = "check database_url (voicecli config get database_url) and that the database accepts this machine"
    try:
        async with asyncio.timeout(NET_TIMEOUT_S), opened_store(settings) as store:
            stored = await store.stored_settings()
            serving = [h for h in await store.holders() if not h.expired]
            where = store.location
    except TimeoutError:
        return fail(name, f"the store did not open within {NET_TIMEOUT_S:g} s", fix)
    except VoicecliError as exc:
        return fail(name, str(exc), fix)
    except Exception as exc:  # the driver's own errors: refused login, unknown database
        return fail(name, f"cannot open the store: {type(exc).__name__}: {exc}", fix)
    try:
        ctx.settings = settings.with_store(stored)
    except SettingsError as exc:
        return fail(name, str(exc), "voicecli config set (or unset) the setting it names")
    instances = {h.instance for h in serving}
    return ok(name, f"{where}: {len(serving)} serving process(es) in {len(instances)} instance(s)")


async def check_server(ctx: Context) -> Check:
    name, fix = "server running", "voicecli serve --agent <name> (add --tunnel for a public URL)"
    info = read_server(ctx.settings.state_dir)
    if info is None:
        return fail(name, f"no voicecli server is recorded in {ctx.settings.state_dir}", fix)
    token = read_api_token(ctx.settings.state_dir, ctx.settings.env.get("VOICECLI_API_TOKEN"))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    config: Any = None
    try:
        status, body = await _get(ctx, f"{info.url}/api/status", headers=headers)
        if status == 200:
            _, config = await _get(ctx, f"{info.url}/api/settings/telephony", headers=headers)
    except NET_ERRORS as exc:
        return fail(name, f"the server recorded at {info.url} (pid {info.pid}) does not answer: {_why(exc)}", fix)
    if status == 401:
        return fail(
            name,
            f"the server at {info.url} refused the API token",
            "use the server's VOICECLI_API_TOKEN here too (or unset it on both)",
        )
    if status != 200 or not isinstance(body, dict):
        return fail(name, f"GET {info.url}/api/status answered HTTP {status}", fix)
    ctx.server = body
    if isinstance(config, dict):  # what the server uses, perhaps a tunnel's URL for this run
        ctx.public_url = config.get("public_base_url") or None
    return ok(name, f"{info.url} serves {', '.join(body.get('agents', []))}")


async def _tunnel_urls(ctx: Context) -> list[str]:
    """Public URLs of the agent's tunnels; pyngrok's v3 endpoints may only be listed under /api/endpoints."""
    urls: list[str] = []
    for path, key in (("/api/tunnels", "tunnels"), ("/api/endpoints", "endpoints")):
        status, body = await _get(ctx, f"{ctx.agent_api}{path}")
        items = body.get(key, []) if status == 200 and isinstance(body, dict) else []
        urls += [str(i.get("public_url") or i.get("url")) for i in items if isinstance(i, dict)]
        urls = [u.rstrip("/") for u in urls if u.startswith(("https://", "http://"))]
        if urls:
            break
    return urls


async def check_tunnel(ctx: Context) -> Check:
    name = "tunnel active"
    fix = "voicecli serve --agent <name> --tunnel"
    try:
        urls = await _tunnel_urls(ctx)
    except NET_ERRORS as exc:
        host = urlsplit(ctx.public_url or "").hostname or ""
        if ctx.public_url and not host.endswith(NGROK_DOMAINS):  # its own domain needs no tunnel
            return Check(name, "skip", f"no ngrok agent at {ctx.agent_api}; PUBLIC_BASE_URL is used as is")
        return fail(name, f"no ngrok agent answers at {ctx.agent_api} ({_why(exc)})", fix)
    if not urls:
        return fail(name, f"the ngrok agent at {ctx.agent_api} has no tunnel open", fix)
    # The tunnel that is PUBLIC_BASE_URL if there is one; else the first https one.
    ctx.tunnel_url = (
        next((u for u in urls if u == ctx.public_url), None)
        or sorted(urls, key=lambda u: not u.startswith("https://"))[0]
    )
    return ok(name, ctx.tunnel_url)


def check_public_url(ctx: Context) -> Check:
    name = "PUBLIC_BASE_URL"
    if not ctx.public_url:
        fix = f"PUBLIC_BASE_URL={ctx.tunnel_url} in .env" if ctx.tunnel_url else "voicecli serve --tunnel"
        return fail(name, "PUBLIC_BASE_URL is not set: providers cannot reach the server", fix)
    if ctx.tunnel_url and ctx.public_url != ctx.tunnel_url:
        return fail(
            name,
            f"PUBLIC_BASE_URL is {ctx.public_url} but the tunnel is {ctx.tunnel_url}",
            f"PUBLIC_BASE_URL={ctx.tunnel_url} (or restart with voicecli serve --tunnel, which sets it)",
        )
    if not ctx.public_url.startswith("https://"):
        return Check(name, "warn", f"{ctx.public_url} is not https: providers want https and wss", "use an https URL")
    return ok(name, ctx.public_url)


async def check_public_reachable(ctx: Context) -> Check:
    name = "reachable through PUBLIC_BASE_URL"
    if not ctx.public_url:
        return Check(name, "skip", "no PUBLIC_BASE_URL to try")
    url = f"{ctx.public_url}/healthz"
    fix = "make the tunnel or proxy forward to this server's port, then run doctor again"
    try:
        status, body = await _get(ctx, url)
    except NET_ERRORS as exc:
        return fail(name, f"GET {url}: {_why(exc)}", fix)
    if status != 200 or not isinstance(body, dict) or body.get("ok") is not True:
        return fail(name, f"GET {url} answered HTTP {status}, not voicecli's health check", fix)
    return ok(name, f"GET {url}: ok")


# --- providers ----------------------------------------------------------------------------------


def _configured(ctx: Context, provider: Provider) -> bool:
    """Checked when any of its credentials is set, or when it is the default provider."""
    default = ((ctx.server or {}).get("default_provider") or ctx.settings.provider) == provider.name
    return default or any(ctx.settings.get(s) for s in provider.credential_settings)


async def check_credentials(ctx: Context, provider: Provider) -> Check:
    name = f"{provider.name} credentials"
    if not _configured(ctx, provider):
        return Check(name, "skip", "not configured")
    missing = provider.missing_credentials()
    where = provider.credentials_from
    if missing:
        return fail(name, f"{', '.join(missing)} not set", f"set {', '.join(missing)} in .env (from {where})")
    if not isinstance(provider, ChecksAccount):
        return ok(name, "set (this provider's API has no account check)")
    try:
        async with asyncio.timeout(NET_TIMEOUT_S):
            refused = await provider.check_account(ctx.http)
    except NET_ERRORS as exc:
        return fail(
            name,
            f"{provider.name}'s API did not answer: {_why(exc)}",
            f"check the network and {provider.name}'s API base",
        )
    if refused:
        names = ", ".join(s.upper() for s in provider.credential_settings)
        return fail(name, refused, f"check {names} (from {where})")
    return ok(name, f"accepted by {provider.name}'s API")


async def check_number(ctx: Context, provider: Provider) -> Check | None:
    """Whether the number sends its calls to this server, where the provider's API tells."""
    name = f"{provider.name} number webhook"
    if not isinstance(provider, PointsNumbers):
        return None  # this provider cannot tell where its number points
    phone = provider.config.phone_number
    try:
        async with asyncio.timeout(NET_TIMEOUT_S):
            current = await provider.number_webhook()
    except ProviderError as exc:  # refused, or the number is not in the account
        return fail(name, str(exc), f"check the {provider.name} settings and {provider.phone_setting.upper()}")
    except NET_ERRORS as exc:
        return fail(name, f"{provider.name}'s API did not answer: {_why(exc)}", "check the network and the API base")
    if current is None:
        return None  # this provider cannot tell, or its number is not set: nothing to check
    if not ctx.public_url:
        return fail(name, "no PUBLIC_BASE_URL to compare the number's webhook with", "voicecli serve --tunnel")
    agents = (ctx.server or {}).get("agents") or sorted(p.stem for p in ctx.agents_dir.glob("*.toml"))
    if current in {webhook_url(ctx.public_url, provider.name, agent) for agent in agents}:
        return ok(name, f"{phone} -> {current}")
    agent = agents[0] if agents else "<agent>"
    return fail(
        name,
        f"{phone} sends calls to {current or '(nothing)'}, not this server",
        f"voicecli serve --agent {agent} --tunnel --update-webhook (or paste "
        f"{webhook_url(ctx.public_url, provider.name, agent)} in the {provider.name} console)",
    )


# --- agents ---------------------------------------------------------------------------------


def check_agents(ctx: Context) -> list[Check]:
    from voicecli.agents import list_agent_files, load_agent
    from voicecli.errors import AgentError

    files = list_agent_files(ctx.agents_dir)
    if not files:
        return [fail("agents", f"no agent files in {ctx.agents_dir}/", f"add one, e.g. {ctx.agents_dir}/demo.toml")]
    checks = []
    for path in files:
        try:
            agent = load_agent(path)
        except AgentError as exc:
            checks.append(fail(f"agent {path.stem}", str(exc), f"fix {path}"))
            continue
        name, missing = f"agent {agent.name}", agent.missing_keys(ctx.settings.variables)
        if missing:
            checks.append(fail(name, f"keys not set: {', '.join(missing)}", "set them in .env or the environment"))
        else:
            services = f"{agent.stt.provider}, {agent.llm.provider}, {agent.tts.provider}"
            checks.append(ok(name, f"valid, keys set ({services})"))
    return checks


async def run_checks(settings: Settings, agents_dir: Path, agent_api: str | None = None) -> list[Check]:
    """Every check, in checklist order."""
    from voicecli.providers import PROVIDERS, load_provider

    api = (agent_api or recorded_agent_api(settings.state_dir) or DEFAULT_AGENT_API).rstrip("/")
    timeout = aiohttp.ClientTimeout(total=NET_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        ctx = Context(settings, agents_dir, http, api, public_url=settings.public_base_url)
        # The store first (its settings layer), then the server: its PUBLIC_BASE_URL (perhaps a
        # tunnel's, for this run) is the one in force.
        store = await check_store(ctx)
        providers = [load_provider(name, ctx.settings) for name in PROVIDERS]
        server = await check_server(ctx)
        tunnel = await check_tunnel(ctx)
        rest = await asyncio.gather(
            check_public_reachable(ctx),
            *(check_credentials(ctx, provider) for provider in providers),
            *(check_number(ctx, provider) for provider in providers),
        )
    return [store, server, tunnel, check_public_url(ctx), *filter(None, rest), *check_agents(ctx)]


def failed(checks: list[Check]) -> bool:
    return any(check.status == "fail" for check in checks)
