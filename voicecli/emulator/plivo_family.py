"""The Plivo-compatible family's side of a call (Plivo, Vobiz): signed answer callbacks,
Plivo's XML `<Stream>`, then its stream messages (protocols.md C4)."""

from __future__ import annotations

import base64
import uuid
from abc import abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit
from xml.etree import ElementTree

from voicecli.emulator.api import ProviderApi
from voicecli.emulator.base import AgentAudio, CallerSide, SimCall, mulaw_audio, on_server
from voicecli.providers.base import WebhookRejected

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web

    from voicecli.providers.plivo_family import PlivoFamilySettings


class PlivoFamilyCaller(CallerSide):
    """A Plivo-compatible provider's end: signed answer webhook, `start` without `connected`,
    no `stop`, just a close."""

    config: PlivoFamilySettings

    frame_ms = 20
    stop_event = "stop"  # the server's stop ends the stream; the provider then runs the next XML
    account_id: ClassVar[str] = "1234"  # start.accountId: the provider's internal number, not the auth id

    @abstractmethod
    def sign(self, token: str, url: str, form: Mapping[str, str]) -> dict[str, str]:
        """The signature headers this provider puts on a callback to `url`."""

    def new_call(self, from_number: str, to_number: str) -> SimCall:
        return SimCall(
            provider_call_id=str(uuid.uuid4()),
            stream_id=str(uuid.uuid4()),
            from_number=from_number,
            to_number=to_number,
            account_id=self.account_id,
        )

    async def ring(
        self, http: aiohttp.ClientSession, server_url: str, agent: str, call: SimCall
    ) -> tuple[str, dict[str, str]]:
        path = f"/telephony/{self.provider.name}/inbound/{agent}"
        form = {
            "CallUUID": call.provider_call_id,
            "From": call.from_number,
            "To": call.to_number,
            "Direction": "inbound",
            "CallStatus": "ringing",
            "Event": "StartApp",
        }
        signed_url = (self.settings.public_base_url or server_url) + path  # what the provider was given
        return await self._fetch_stream(http, server_url + path, form, signed_url)

    async def pick_up(
        self, http: aiohttp.ClientSession, server_url: str, dial: Mapping[str, Any], call: SimCall
    ) -> tuple[str, dict[str, str]]:
        form = {
            "CallUUID": call.provider_call_id,
            "From": str(dial["from"]),
            "To": str(dial["to"]),
            "Direction": "outbound",
            "CallStatus": "in-progress",
            "Event": "StartApp",
            **self.dial_fields(call),
        }
        answer_url = str(dial["answer_url"])
        return await self._fetch_stream(http, server_url + urlsplit(answer_url).path, form, answer_url)

    async def _fetch_stream(
        self, http: aiohttp.ClientSession, url: str, form: Mapping[str, str], signed_url: str
    ) -> tuple[str, dict[str, str]]:
        """POST a callback to `url` as the provider does, signed for `signed_url`; read its <Stream>."""
        token = self.config.auth_token
        headers = self.sign(token, signed_url, form) if token else {}
        async with http.post(url, data=form, headers=headers) as resp:
            body = await resp.text()
            if resp.status != 200:
                raise WebhookRejected(resp.status, body.strip())
        stream = ElementTree.fromstring(body).find("Stream")
        if stream is None or not (stream.text or "").strip():
            raise WebhookRejected(502, f"the {self.provider.label} XML has no <Stream> URL")
        return (stream.text or "").strip(), {}

    async def call_ended(
        self, http: aiohttp.ClientSession, server_url: str, dial: Mapping[str, Any], call: SimCall
    ) -> int:
        hangup_url = str(dial["hangup_url"])
        form = {
            "CallUUID": call.provider_call_id,
            "From": str(dial["from"]),
            "To": str(dial["to"]),
            "Direction": "outbound",
            "CallStatus": "completed",
            "Event": "Hangup",
            "HangupCause": "NORMAL_CLEARING",
            "Duration": "7",
            **self.dial_fields(call),
        }
        token = self.config.auth_token
        headers = self.sign(token, hangup_url, form) if token else {}
        async with http.post(on_server(hangup_url, server_url), data=form, headers=headers) as resp:
            return resp.status

    def dial_fields(self, call: SimCall) -> dict[str, str]:
        """Fields a dialled call's callbacks add (Plivo's RequestUUID); none by default."""
        return {}

    def opening(self, call: SimCall, parameters: Mapping[str, str]) -> list[dict[str, Any]]:
        return [
            {
                "event": "start",
                "sequenceNumber": 1,
                "start": {
                    "callId": call.provider_call_id,
                    "streamId": call.stream_id,
                    "accountId": call.account_id,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
                },
                "extra_headers": "",
            }
        ]

    def media(self, call: SimCall, pcm16_8k: bytes, seq: int) -> dict[str, Any]:
        from voicecli.call.audio import ulaw_encode  # numpy: only the emulator needs it

        return {
            "event": "media",
            "sequenceNumber": seq,
            "streamId": call.stream_id,
            "media": {
                "track": "inbound",
                "timestamp": str(1_700_000_000_000 + (seq - 1) * self.frame_ms),
                "chunk": seq - 1,
                "payload": base64.b64encode(ulaw_encode(pcm16_8k)).decode(),
            },
            "extra_headers": "",
        }

    def dtmf(self, call: SimCall, digit: str, seq: int) -> dict[str, Any]:
        return {
            "event": "dtmf",
            "sequenceNumber": seq,
            "streamId": call.stream_id,
            "dtmf": {"track": "inbound", "digit": digit, "timestamp": "1700000000000"},
        }

    def hang_up(self, call: SimCall, seq: int) -> dict[str, Any] | None:
        return None  # no inbound stop (C4): the socket just closes

    def violations(self, message: Mapping[str, Any]) -> list[str]:
        # protocols.md C4: playAudio's format must match the stream's (mu-law 8 kHz here).
        media = message.get("media", {}) if message.get("event") == "playAudio" else None
        if media is not None and (media.get("contentType"), media.get("sampleRate")) != ("audio/x-mulaw", 8000):
            return [f"playAudio as {media.get('contentType')} at {media.get('sampleRate')}: the stream is mu-law 8 kHz"]
        return []

    def read(self, message: Mapping[str, Any]) -> AgentAudio:
        return mulaw_audio(message, "playAudio")


class PlivoFamilyApi(ProviderApi):
    """A Plivo-compatible REST API (JSON bodies): Call create and delete, the account read."""

    dial_refusal = "insufficient balance"

    @abstractmethod
    def credentials_given(self, request: web.Request) -> bool:
        """Whether the request carries the auth ID and token the way this API wants them."""

    @abstractmethod
    def sign(self, url: str, form: Mapping[str, str]) -> dict[str, str]:
        """The signature headers the provider puts on a callback to `url`."""

    # Fields a dial carries to ask for asynchronous machine detection (protocols.md F3).
    machine_fields = (
        "machine_detection",
        "machine_detection_time",
        "machine_detection_url",
        "machine_detection_method",
    )

    async def post_machine_verdict(
        self, http: aiohttp.ClientSession, server_url: str, dial: Mapping[str, Any], call_uuid: str, machine: bool
    ) -> int:
        """Post the asynchronous machine detection callback (`Machine=true|false`) for a dialled
        call to the dial's `machine_detection_url`, signed; the HTTP status the server answered."""
        url = str(dial["machine_detection_url"])
        form = {
            "CallUUID": call_uuid,
            "From": str(dial["from"]),
            "To": str(dial["to"]),
            "Direction": "outbound",
            "CallStatus": "in-progress",
            "Event": "MachineDetection",
            "Machine": "true" if machine else "false",
        }
        async with http.post(on_server(url, server_url), data=form, headers=self.sign(url, form)) as resp:
            return resp.status

    def routes(self) -> list[web.RouteDef]:
        from aiohttp import web

        account = self.path + "/Account/{auth_id}"
        return [
            web.post(account + "/Call/", self.create_call),
            web.delete(account + "/Call/{uuid}/", self.delete_call),
            web.post(account + "/Call/{uuid}/", self.transfer_call),
            web.get(account + "/", self.read_account),
        ]

    def refusal(self, status: int, message: str) -> web.Response:
        from aiohttp import web

        return web.json_response({"api_id": str(uuid.uuid4()), "error": message}, status=status)

    def authorized(self, request: web.Request) -> bool:
        return self.credentials_given(request) and request.match_info["auth_id"] == self.credentials["auth_id"]

    def request_uuid(self) -> str:
        """The id a dial is answered with."""
        return str(uuid.uuid4())

    async def create_call(self, request: web.Request) -> web.Response:
        from aiohttp import web

        entry, refused = await self.admit(request, "dial")
        if refused:
            return refused
        fields = entry["fields"]
        if request.content_type != "application/json" or not isinstance(fields, dict):
            return self.refusal(400, "the body must be JSON")
        missing = [name for name in ("from", "to", "answer_url") if not fields.get(name)]
        if missing:
            return self.refusal(400, f"{', '.join(missing)} required")
        if str(fields["from"]).lstrip("+") != self.phone_number.lstrip("+"):
            return self.refusal(400, f"from {fields['from']} is not a number of this account")
        if self.refuse_with:
            return self.refusal(self.refuse_with, self.dial_refusal)
        request_uuid = self.request_uuid()
        self.dialled(entry, request_uuid)
        body = {"api_id": str(uuid.uuid4()), "message": "call fired", "request_uuid": request_uuid}
        return web.json_response(body, status=201)

    async def delete_call(self, request: web.Request) -> web.Response:
        from aiohttp import web

        _, refused = await self.admit(request, "hangup")
        if refused:
            return refused
        if self.refuse_with:
            return self.refusal(self.refuse_with, "call not found")
        return web.Response(status=204)

    async def transfer_call(self, request: web.Request) -> web.Response:
        """A live call's A leg sent to fetch new XML from `aleg_url` (202, as protocols.md F1)."""
        from aiohttp import web

        entry, refused = await self.admit(request, "transfer")
        if refused:
            return refused
        fields = entry["fields"]
        if not isinstance(fields, dict) or fields.get("legs") not in ("aleg", "bleg", "both"):
            return self.refusal(400, "legs must be aleg, bleg or both")
        if fields["legs"] in ("aleg", "both") and not fields.get("aleg_url"):
            return self.refusal(400, "aleg_url required")
        if self.refuse_with:
            return self.refusal(self.refuse_with, "call not found")
        return web.json_response({"api_id": str(uuid.uuid4()), "message": "call transferred"}, status=202)

    async def read_account(self, request: web.Request) -> web.Response:
        from aiohttp import web

        _, refused = await self.admit(request, "account")
        if refused:
            return refused
        return web.json_response({"auth_id": self.credentials["auth_id"], "account_type": "standard"})
