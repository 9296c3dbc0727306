"""The running server's state, shared by its routes (stored in the app under STATE), and
`build_state`: the one start-up factory `serve`, the workers, the tests and the bench use."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web
from loguru import logger

from voicecli.providers import PROVIDERS, load_provider
from voicecli.runtime import API_TOKEN_FILE, SECRET_FILE, new_instance_id, write_private
from voicecli.server.cluster import Membership
from voicecli.server.lifecycle import CallOwner, Timeouts
from voicecli.server.limits import SlotLimiter
from voicecli.server.store_watch import StoreWatch
from voicecli.server.webhooks import WebhookSender, webhook_secret
from voicecli.store import CallStore, Event, Holder, store_for

if TYPE_CHECKING:
    from pathlib import Path

    import aiohttp

    from voicecli.agents import Agent
    from voicecli.providers.base import Provider
    from voicecli.settings import Settings

# The event `change_settings` publishes: every process reloads the store's settings layer.
SETTINGS_CHANGED = "settings"


@dataclass
class ServerState:
    """Settings in force, served agents, the shared store, slots, and the owner of every call."""

    settings: Settings
    agents: dict[str, Agent]
    store: CallStore
    timeouts: Timeouts = field(default_factory=Timeouts)
    # The `serve` run this process belongs to, and this process's own name in the store
    # (what call records carry in `instance`): the instance id, plus /wN for a worker.
    instance: str = field(default_factory=new_instance_id)
    holder: str = ""
    recover: bool = True  # start-up recovery: ended calls of servers that are gone
    # Resolved when the app starts (open_shared): VOICECLI_SECRET / VOICECLI_API_TOKEN, else the store's.
    secret: bytes = b""
    api_token: str = ""
    http: aiohttp.ClientSession | None = None
    webhooks: WebhookSender | None = None
    _providers: dict[str, Provider] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.holder = self.holder or self.instance
        self.limiter = SlotLimiter(lambda: self.store, self.holder, lambda name: self.provider(name).max_concurrent)
        self.calls = CallOwner(self, self.timeouts)
        self.store_watch = StoreWatch(self.store)
        # Settings changes read, merge and write one at a time: none is lost to another.
        self.settings_lock = asyncio.Lock()
        self.membership = Membership(
            self.store,
            Holder(self.holder, self.instance, socket.gethostname(), os.getpid()),
            on_event=self._on_event,
            on_lapse=self._lease_lapsed,
            on_rejoin=self._lease_back,
        )

    # --- start and stop (the app's cleanup context) ------------------------------------------
    async def start(self) -> None:
        """Open the store, take the shared secrets, join the cluster, load the live settings."""
        self.secret, self.api_token = await open_shared(self.settings, self.store)
        self.webhooks = WebhookSender(self, await webhook_secret(self.settings, self.store))
        await self.membership.start(recover=self.recover)
        if self.recover:  # the calls just marked interrupted may have left recordings open
            from voicecli.server.recordings import repair_recordings

            await repair_recordings(self.store)
        self.webhooks.start()
        self.store_watch.start()
        # At start-up a bad stored value stops the server with its message; later, it is logged.
        self.apply_settings(self.settings.with_store(await self.store.stored_settings()))

    async def stop(self) -> None:
        self.calls.cancel_timers()
        await self.store_watch.stop()
        if self.webhooks is not None:
            await self.webhooks.stop()
        await self.membership.stop()
        await self.store.close()

    async def reload_settings(self) -> None:
        """Apply the store's settings layer (what `config set` and the settings API changed)."""
        from voicecli.errors import SettingsError

        stored = await self.store.stored_settings()
        try:
            self.apply_settings(self.settings.with_store(stored))
        except SettingsError as exc:
            logger.error(f"settings in the store not applied: {exc}")

    async def _on_event(self, event: Event) -> None:
        if event.kind == SETTINGS_CHANGED:
            await self.reload_settings()
        else:
            await self.calls.on_event(event)

    async def _lease_lapsed(self) -> None:
        self.limiter.suspended = True
        await self.calls.lease_lapsed()

    def _lease_back(self) -> None:
        self.limiter.suspended = False

    # --- what the routes use -------------------------------------------------------------------
    def require_http(self) -> aiohttp.ClientSession:
        assert self.http is not None, "the HTTP client opens with the app"
        return self.http

    def has_provider(self, name: str) -> bool:
        return name in PROVIDERS

    def provider(self, name: str) -> Provider:
        if name not in self._providers:
            self._providers[name] = load_provider(name, self.settings)
        return self._providers[name]

    def apply_settings(self, settings: Settings) -> None:
        """Switch to new settings at once; providers are rebuilt on next use."""
        self.settings = settings
        self._providers.clear()

    def base_url(self, request: web.Request) -> str:
        """PUBLIC_BASE_URL, or this server's own address as the request reached it."""
        return self.settings.public_base_url or f"{request.scheme}://{request.host}"

    def public_url(self, request: web.Request) -> str:
        """The URL the provider requested: PUBLIC_BASE_URL + path when set (behind a tunnel)."""
        base = self.settings.public_base_url
        return f"{base}{request.path_qs}" if base else str(request.url)


def build_state(
    settings: Settings,
    agents: dict[str, Agent],
    *,
    timeouts: Timeouts | None = None,
    instance: str | None = None,
    holder: str | None = None,
    recover: bool = True,
) -> ServerState:
    """The server state for these settings: the store they name, nothing opened yet
    (the app opens it on start). `holder` names a worker; by default the instance itself."""
    return ServerState(
        settings=settings,
        agents=agents,
        store=store_for(settings),
        timeouts=timeouts or Timeouts(),
        instance=instance or new_instance_id(),
        holder=holder or "",
        recover=recover,
    )


def _file_value(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


async def open_shared(settings: Settings, store: CallStore) -> tuple[bytes, str]:
    """Open the store and return the stream-token secret and API token every instance shares.

    VOICECLI_SECRET and VOICECLI_API_TOKEN win where set. Otherwise the store's values, which
    the first server of a project seeds from `.voicecli/secret` and `api_token` (so tokens an
    older release handed out stay valid); the token is written to `api_token` for the CLI.
    """
    await store.open()
    state_dir = settings.state_dir
    secret = settings.env.get("VOICECLI_SECRET") or await store.shared_secret(
        "stream_secret", _file_value(state_dir / SECRET_FILE) or secrets.token_urlsafe(32)
    )
    token = settings.env.get("VOICECLI_API_TOKEN")
    if not token:
        on_file = _file_value(state_dir / API_TOKEN_FILE)
        token = await store.shared_secret("api_token", on_file or secrets.token_urlsafe(32))
        if token != on_file:
            await asyncio.to_thread(write_private, state_dir / API_TOKEN_FILE, token + "\n")
    return secret.encode(), token


STATE = web.AppKey("state", ServerState)
