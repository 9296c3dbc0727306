"""Exotel's side of a call: the Voicebot applet's URL fetch, then 100 ms PCM16 frames."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

from voicecli.emulator.api import ProviderApi, basic_auth
from voicecli.emulator.base import AgentAudio, CallerSide, SimCall, on_server
from voicecli.providers.base import WebhookRejected
from voicecli.providers.exotel import SECRET_PARAM, ExotelProvider, ExotelSettings

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web


class ExotelCaller(CallerSide):
    """Exotel's end: the applet fetches the dynamic URL, then streams 100 ms PCM frames."""

    provider = ExotelProvider
    config: ExotelSettings
    frame_ms = 100
    stream_id_field = "stream_sid"

    def new_call(self, from_number: str, to_number: str) -> SimCall:
        return SimCall(
            provider_call_id=secrets.token_hex(16),
            stream_id="MZ" + secrets.token_hex(16),
            from_number=from_number,
            to_number=to_number,
            account_id=self.config.account_sid or "voicecli1",
        )

    async def ring(
        self, http: aiohttp.ClientSession, server_url: str, agent: str, call: SimCall
    ) -> tuple[str, dict[str, str]]:
        query = {"CallSid": call.provider_call_id, "CallFrom": call.from_number, "CallTo": call.to_number}
        if self.config.stream_secret:  # as App Bazaar was given the URL (README)
            query[SECRET_PARAM] = self.config.stream_secret
        async with http.get(f"{server_url}/telephony/exotel/inbound/{agent}", params=query) as resp:
            body = await resp.text()
            if resp.status != 200:
                raise WebhookRejected(resp.status, body.strip())
        url = json.loads(body)["url"]
        # Exotel hands the URL's query back as custom_parameters (at most 3 pairs).
        custom = dict(parse_qsl(urlsplit(url).query)[:3])
        return url, custom

    async def pick_up(
        self, http: aiohttp.ClientSession, server_url: str, dial: Mapping[str, Any], call: SimCall
    ) -> tuple[str, dict[str, str]]:
        url = str(dial["StreamUrl"])
        return url, dict(parse_qsl(urlsplit(url).query)[:3])

    async def call_ended(
        self, http: aiohttp.ClientSession, server_url: str, dial: Mapping[str, Any], call: SimCall
    ) -> int:
        # The documented JSON body of a terminal StatusCallback (protocols.md B5).
        body = {
            "CallSid": call.provider_call_id,
            "Status": "completed",
            "EventType": "terminal",
            "Direction": "outbound-api",
            "CustomField": str(dial.get("CustomField", "")),
            "Legs": [{"OnCallDuration": 7, "Status": "completed"}],
        }
        async with http.post(on_server(str(dial["StatusCallback"]), server_url), json=body) as resp:
            return resp.status

    def opening(self, call: SimCall, parameters: Mapping[str, str]) -> list[dict[str, Any]]:
        return [
            {"event": "connected"},
            {
                "event": "start",
                "sequence_number": "1",
                "stream_sid": call.stream_id,
                "start": {
                    "stream_sid": call.stream_id,
                    "call_sid": call.provider_call_id,
                    "account_sid": call.account_id,
                    "from": call.from_number,
                    "to": call.to_number,
                    "custom_parameters": dict(parameters),
                    "media_format": {"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "16"},
                },
            },
        ]

    def media(self, call: SimCall, pcm16_8k: bytes, seq: int) -> dict[str, Any]:
        chunk = seq - 1
        return {
            "event": "media",
            "sequence_number": str(seq),
            "stream_sid": call.stream_id,
            "media": {
                "chunk": str(chunk),
                "timestamp": str((chunk - 1) * self.frame_ms),
                "payload": base64.b64encode(pcm16_8k).decode(),
            },
        }

    def dtmf(self, call: SimCall, digit: str, seq: int) -> dict[str, Any]:
        return {
            "event": "dtmf",
            "sequence_number": str(seq),
            "stream_sid": call.stream_id,
            "dtmf": {"digit": digit, "duration": "100"},
        }

    def hang_up(self, call: SimCall, seq: int) -> dict[str, Any] | None:
        return {
            "event": "stop",
            "sequence_number": str(seq),
            "stream_sid": call.stream_id,
            "stop": {
                "call_sid": call.provider_call_id,
                "account_sid": call.account_id,
                "reason": "callended",
            },
        }

    def violations(self, message: Mapping[str, Any]) -> list[str]:
        # protocols.md B2: outbound media in multiples of 320 bytes, 3,200 bytes to 100 KB.
        if message.get("event") != "media":
            return []
        size = len(base64.b64decode(message.get("media", {}).get("payload", "")))
        if size % 320 or not 3200 <= size <= 100_000:
            return [f"a media chunk of {size} bytes: Exotel takes multiples of 320 from 3,200 to 100,000"]
        return []

    def read(self, message: Mapping[str, Any]) -> AgentAudio:
        event = str(message.get("event"))
        if event == "media":
            return AgentAudio(base64.b64decode(message.get("media", {}).get("payload", "")), "media", message)
        return AgentAudio(b"", event, message)


class ExotelApi(ProviderApi):
    """Exotel's v1 API as voicecli uses it: Calls/connect.json and the account read."""

    provider = ExotelProvider
    credentials: ClassVar[Mapping[str, str]] = {
        "account_sid": "voicecli1",
        "api_key": "exotel-test-api-key",
        "api_token": "exotel-test-api-token-9012",
    }
    phone_number = "+918047100000"
    dial_refusal = "Authentication is required"

    def routes(self) -> list[web.RouteDef]:
        from aiohttp import web

        return [
            web.post("/v1/Accounts/{sid}/Calls/connect.json", self.connect),
            web.get("/v1/Accounts/{sid}", self.read_account),
        ]

    def refusal(self, status: int, message: str) -> web.Response:
        from aiohttp import web

        return web.json_response({"RestException": {"Status": status, "Message": message}}, status=status)

    auth_refusal = "Authentication is required"

    def authorized(self, request: web.Request) -> bool:
        c = self.credentials
        expected = basic_auth(c["api_key"], c["api_token"])
        return request.headers.get("Authorization") == expected and request.match_info["sid"] == c["account_sid"]

    async def connect(self, request: web.Request) -> web.Response:
        from aiohttp import web

        entry, refused = await self.admit(request, "dial")
        if refused:
            return refused
        fields = entry["fields"]
        if request.content_type != "application/x-www-form-urlencoded" or not isinstance(fields, dict):
            return self.refusal(400, "the body must be a form")
        if not fields.get("From") or not fields.get("CallerId") or not (fields.get("StreamUrl") or fields.get("Url")):
            return self.refusal(400, "From, CallerId and StreamUrl (or Url) are required")
        if fields["CallerId"] != self.phone_number:  # Exotel dials `From` (the customer) from an ExoPhone
            return self.refusal(400, f"CallerId {fields['CallerId']} is not an ExoPhone of this account")
        if self.refuse_with:
            return self.refusal(self.refuse_with, self.dial_refusal)
        sid = secrets.token_hex(16)
        self.dialled(entry, sid)
        return web.json_response({"Call": {"Sid": sid, "Status": "in-progress", "From": fields["From"]}})

    async def read_account(self, request: web.Request) -> web.Response:
        from aiohttp import web

        _, refused = await self.admit(request, "account")
        if refused:
            return refused
        return web.json_response({"Account": {"Sid": self.credentials["account_sid"], "Status": "active"}})


api = ExotelApi


caller = ExotelCaller
