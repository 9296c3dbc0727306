"""The running server's state, shared by its routes (stored in the app under STATE)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from loguru import logger

from voicecli.limits import SlotLimiter
from voicecli.providers import PROVIDERS, load_provider

if TYPE_CHECKING:
    import aiohttp

    from voicecli.agents import Agent
    from voicecli.providers.base import Provider
    from voicecli.session import CallSession
    from voicecli.settings import Settings
    from voicecli.store import CallStore


@dataclass
class ServerState:
    """Settings in force, served agents, the call store, slots and live sessions."""

    settings: Settings
    agents: dict[str, Agent]
    store: CallStore
    secret: bytes
    api_token: str
    http: aiohttp.ClientSession | None = None
    draining: bool = False
    sessions: set[CallSession] = field(default_factory=set)
    _providers: dict[str, Provider] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.limiter = SlotLimiter(lambda name: self.provider(name).max_concurrent)
        self._no_sessions = asyncio.Event()
        self._no_sessions.set()
        self._timers: set[asyncio.Task[Any]] = set()

    def require_http(self) -> aiohttp.ClientSession:
        assert self.http is not None, "the HTTP client opens with the app"
        return self.http

    def later(self, delay_s: float, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run `fn(*args)` after `delay_s` (timers die with the server)."""

        async def run() -> None:
            await asyncio.sleep(delay_s)
            await fn(*args)

        task = asyncio.create_task(run())
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    def cancel_timers(self) -> None:
        for task in list(self._timers):
            task.cancel()

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

    async def run_call(
        self,
        call_id: str,
        agent_name: str,
        provider: Provider,
        start: Any,
        ws: web.WebSocketResponse,
        messages: Any,
        slot: Any,
    ) -> None:
        from voicecli.session import CallSession

        session = CallSession(
            call_id=call_id,
            agent=self.agents[agent_name],
            provider=provider,
            start=start,
            ws=ws,
            messages=messages,
            store=self.store,
            http=self.require_http(),
            env=dict(self.settings.env),
            slot=slot,
        )
        self.sessions.add(session)
        self._no_sessions.clear()
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            if not self.sessions:
                self._no_sessions.set()

    async def drain(self, grace_s: float, force: asyncio.Event) -> None:
        """Stop taking calls, let active ones finish for `grace_s`, then end the rest politely."""
        self.draining = True
        if self.sessions:
            logger.info(f"waiting up to {grace_s:g}s for {len(self.sessions)} active call(s) to finish")
            await self._wait_sessions(grace_s, force)
        if self.sessions and not force.is_set():
            logger.info(f"ending {len(self.sessions)} call(s): goodbye, then hang-up")
            for session in list(self.sessions):
                await session.end("server shutting down")
            from voicecli.session import POLITE_END_LIMIT_S

            await self._wait_sessions(POLITE_END_LIMIT_S, force)
        for session in list(self.sessions):
            await session.cut("server stopped at once")
        await self._wait_sessions(5.0, asyncio.Event())

    async def _wait_sessions(self, within_s: float, force: asyncio.Event) -> None:
        """Return when no call is left, `force` is set, or `within_s` seconds pass."""
        waits = {asyncio.ensure_future(self._no_sessions.wait()), asyncio.ensure_future(force.wait())}
        await asyncio.wait(waits, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()


STATE = web.AppKey("state", ServerState)
