"""The running server's state, shared by its routes (stored in the app under STATE)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from voicecli.lifecycle import CallOwner, Timeouts
from voicecli.limits import SlotLimiter
from voicecli.providers import PROVIDERS, load_provider
from voicecli.state import new_instance_id

if TYPE_CHECKING:
    import aiohttp

    from voicecli.agents import Agent
    from voicecli.providers.base import Provider
    from voicecli.settings import Settings
    from voicecli.store import CallStore


@dataclass
class ServerState:
    """Settings in force, served agents, the call store, slots, and the owner of every call."""

    settings: Settings
    agents: dict[str, Agent]
    store: CallStore
    secret: bytes
    api_token: str
    timeouts: Timeouts = field(default_factory=Timeouts)
    # This process's name in call records and server.json.
    instance: str = field(default_factory=new_instance_id)
    http: aiohttp.ClientSession | None = None
    _providers: dict[str, Provider] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.limiter = SlotLimiter(lambda name: self.provider(name).max_concurrent)
        self.calls = CallOwner(self, self.timeouts)
        # Settings changes read, merge and write one at a time: none is lost to another.
        self.settings_lock = asyncio.Lock()

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


STATE = web.AppKey("state", ServerState)
