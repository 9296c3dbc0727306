"""Plivo's side of a call: the Plivo family's, signed with X-Plivo-Signature-V3, and its REST
API with HTTP Basic auth, request ids apart from call ids, numbers and applications."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from voicecli.emulator.api import basic_auth
from voicecli.emulator.plivo_family import PlivoFamilyApi, PlivoFamilyCaller
from voicecli.providers.plivo import V3, PlivoProvider
from voicecli.providers.plivo_family import base_url, hmac_b64, plivo_v3_string

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web

    from voicecli.emulator.base import SimCall


def sign(token: str, url: str, form: Mapping[str, str]) -> dict[str, str]:
    """Plivo's signature headers on a callback to `url` with `form` (protocols.md C5)."""
    nonce = "".join(secrets.choice("0123456789") for _ in range(20))
    return {
        V3: hmac_b64(token, f"{plivo_v3_string(url, form)}.{nonce}"),
        f"{V3}-Nonce": nonce,
        # The legacy V2 rides along, as Plivo sends it; voicecli checks V3.
        "X-Plivo-Signature-V2": hmac_b64(token, base_url(url) + nonce),
        "X-Plivo-Signature-V2-Nonce": nonce,
    }


class PlivoCaller(PlivoFamilyCaller):
    provider = PlivoProvider

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._request_of: dict[str, str] = {}  # a dialled call's CallUUID -> its RequestUUID

    def sign(self, token: str, url: str, form: Mapping[str, str]) -> dict[str, str]:
        return sign(token, url, form)

    async def pick_up(
        self, http: aiohttp.ClientSession, server_url: str, dial: Mapping[str, Any], call: SimCall
    ) -> tuple[str, dict[str, str]]:
        # The dial was answered with a request_uuid; the live call gets a CallUUID of its own.
        request_uuid = call.provider_call_id
        call.provider_call_id = str(uuid.uuid4())
        self._request_of[call.provider_call_id] = request_uuid
        return await super().pick_up(http, server_url, dial, call)

    def dial_fields(self, call: SimCall) -> dict[str, str]:
        request_uuid = self._request_of.get(call.provider_call_id)
        return {"RequestUUID": request_uuid} if request_uuid else {}


class PlivoApi(PlivoFamilyApi):
    """Plivo's v1 API: Basic auth; calls and requests; the number's application."""

    provider = PlivoProvider
    credentials: ClassVar[Mapping[str, str]] = {
        "auth_id": "MAPLIVOTEST0001",
        "auth_token": "plivo-test-auth-token-3456",
    }
    phone_number = "+14155550142"
    path = "/v1"

    def __init__(self) -> None:
        super().__init__()
        self.requested: set[str] = set()  # request uuids handed out by dials
        self.app: dict[str, str] | None = None  # the number's application, once there is one

    def credentials_given(self, request: web.Request) -> bool:
        c = self.credentials
        return request.headers.get("Authorization") == basic_auth(c["auth_id"], c["auth_token"])

    def sign(self, url: str, form: Mapping[str, str]) -> dict[str, str]:
        return sign(self.credentials["auth_token"], url, form)

    def request_uuid(self) -> str:
        request_uuid = str(uuid.uuid4())
        self.requested.add(request_uuid)
        return request_uuid

    def routes(self) -> list[web.RouteDef]:
        from aiohttp import web

        account = self.path + "/Account/{auth_id}"
        return [
            web.delete(account + "/Request/{uuid}/", self.delete_request),
            web.get(account + "/Number/{number}/", self.read_number),
            web.post(account + "/Number/{number}/", self.update_number),
            web.post(account + "/Application/", self.create_application),
            web.get(account + "/Application/{app_id}/", self.read_application),
            web.post(account + "/Application/{app_id}/", self.update_application),
            *super().routes(),
        ]

    async def delete_call(self, request: web.Request) -> web.Response:
        if request.match_info["uuid"] in self.requested:  # a request id is not a call id
            await self.keep(request, "hangup")
            return self.refusal(404, "call not found")
        return await super().delete_call(request)

    async def delete_request(self, request: web.Request) -> web.Response:
        from aiohttp import web

        _, refused = await self.admit(request, "hangup")
        if refused:
            return refused
        if request.match_info["uuid"] not in self.requested:
            return self.refusal(404, "request not found")
        return web.Response(status=204)

    def _ours(self, request: web.Request) -> bool:
        return request.match_info["number"] == self.phone_number.lstrip("+")

    async def read_number(self, request: web.Request) -> web.Response:
        from aiohttp import web

        _, refused = await self.admit(request, "number")
        if refused:
            return refused
        if not self._ours(request):
            return self.refusal(404, "number not found")
        app = f"/v1/Account/{self.credentials['auth_id']}/Application/{self.app['app_id']}/" if self.app else None
        return web.json_response({"number": self.phone_number.lstrip("+"), "application": app, "voice_enabled": True})

    async def update_number(self, request: web.Request) -> web.Response:
        from aiohttp import web

        entry, refused = await self.admit(request, "number")
        if refused:
            return refused
        app_id = (entry["fields"] or {}).get("app_id")
        if not self._ours(request) or self.app is None or app_id != self.app["app_id"]:
            return self.refusal(404, "number or application not found")
        return web.json_response({"api_id": str(uuid.uuid4()), "message": "changed"}, status=202)

    async def create_application(self, request: web.Request) -> web.Response:
        from aiohttp import web

        entry, refused = await self.admit(request, "application")
        if refused:
            return refused
        fields = entry["fields"] or {}
        if not fields.get("app_name") or not fields.get("answer_url"):
            return self.refusal(400, "app_name and answer_url are required")
        self.app = {"app_id": str(secrets.randbelow(10**17)), **{k: str(v) for k, v in fields.items()}}
        body = {"api_id": str(uuid.uuid4()), "app_id": self.app["app_id"], "message": "created"}
        return web.json_response(body, status=201)

    async def read_application(self, request: web.Request) -> web.Response:
        from aiohttp import web

        _, refused = await self.admit(request, "application")
        if refused:
            return refused
        if self.app is None or request.match_info["app_id"] != self.app["app_id"]:
            return self.refusal(404, "application not found")
        return web.json_response(self.app)

    async def update_application(self, request: web.Request) -> web.Response:
        from aiohttp import web

        entry, refused = await self.admit(request, "application")
        if refused:
            return refused
        if self.app is None or request.match_info["app_id"] != self.app["app_id"]:
            return self.refusal(404, "application not found")
        self.app.update({k: str(v) for k, v in (entry["fields"] or {}).items()})
        return web.json_response({"api_id": str(uuid.uuid4()), "message": "changed"}, status=202)


caller = PlivoCaller
api = PlivoApi
