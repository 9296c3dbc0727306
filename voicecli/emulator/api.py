"""A provider's REST API as far as voicecli calls it, served on 127.0.0.1.

Each provider's emulator module defines one (`api`, beside `caller`): it checks what the
real API checks (credentials, where they go, the body's format and fields) and answers in
the provider's own shapes, success and refusal alike, so voicecli's real REST clients (the
twilio SDK, aiohttp) are tested against the provider's rules, through `{PROVIDER}_API_BASE`.
Every request is kept; dials can be picked up by the caller side (`on_dial`).
"""

from __future__ import annotations

import base64
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from aiohttp import web

    from voicecli.providers.base import Provider

# Called with (what the dial sent, the provider call id the API answered with).
OnDial = Callable[[Mapping[str, Any], str], None]


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class ProviderApi(ABC):
    """The fake REST API of one provider; start with `async with`."""

    provider: ClassVar[type[Provider]]
    # Settings fields (as in the provider's ProviderSettings) and the values this API accepts.
    credentials: ClassVar[Mapping[str, str]]
    phone_number: ClassVar[str]  # our number at the provider (the caller ID dials use)
    path: ClassVar[str] = ""  # where the API's base lives on this server

    def __init__(self) -> None:
        self.url = ""  # http://127.0.0.1:PORT once started
        self.requests: list[dict[str, Any]] = []
        self.refuse_with: int | None = None  # answer dials and hang-ups with this status
        self.on_dial: OnDial | None = None
        self.stall_s = 0.0  # answer every request this much later (a provider's API that hangs)
        self._runner: web.AppRunner | None = None

    @property
    def name(self) -> str:
        return self.provider.name

    @property
    def base(self) -> str:
        """What `{PROVIDER}_API_BASE` must be."""
        return self.url + self.path

    def env(self, **extra: str) -> dict[str, str]:
        """The environment that points voicecli at this API with the credentials it accepts."""
        prefix = self.name.upper()
        env = {f"{prefix}_{field.upper()}": value for field, value in self.credentials.items()}
        return {**env, f"{prefix}_PHONE_NUMBER": self.phone_number, f"{prefix}_API_BASE": self.base, **extra}

    @abstractmethod
    def routes(self) -> list[web.RouteDef]:
        """The endpoints voicecli calls."""

    @abstractmethod
    def refusal(self, status: int, message: str) -> web.Response:
        """An error answer in the provider's shape."""

    @abstractmethod
    def authorized(self, request: web.Request) -> bool:
        """Whether the request carries this API's credentials, where the provider wants them."""

    auth_refusal: ClassVar[str] = "authentication failed"  # the 401's message

    # --- what handlers share -------------------------------------------------------------
    async def keep(self, request: web.Request, kind: str) -> dict[str, Any]:
        """Record a request: kind (dial, hangup, account, number, ...), its headers and fields."""
        if self.stall_s:
            import asyncio

            await asyncio.sleep(self.stall_s)
        if request.content_type == "application/json" and request.can_read_body:
            try:
                fields = await request.json()
            except ValueError:
                fields = None
        elif request.method in ("POST", "PUT"):
            fields = dict(await request.post())
        else:
            fields = dict(request.query)
        entry = {
            "kind": kind,
            "at": time.monotonic(),
            "provider": self.name,
            "method": request.method,
            "path": request.path,
            "headers": dict(request.headers),
            "auth": request.headers.get("Authorization"),
            "content_type": request.content_type,
            "fields": fields,
        }
        self.requests.append(entry)
        return entry

    async def admit(self, request: web.Request, kind: str) -> tuple[dict[str, Any], web.Response | None]:
        """Keep the request; the provider's 401 as the second item when its credentials are wrong."""
        entry = await self.keep(request, kind)
        return entry, None if self.authorized(request) else self.refusal(401, self.auth_refusal)

    def dialled(self, entry: Mapping[str, Any], provider_call_id: str) -> None:
        if self.on_dial is not None:
            self.on_dial(entry["fields"], provider_call_id)

    def find(self, method: str, path_part: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method and path_part in r["path"]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["kind"] == kind]

    # --- running -------------------------------------------------------------------------
    async def __aenter__(self) -> ProviderApi:
        from aiohttp import web

        app = web.Application()
        app.add_routes(self.routes())
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
