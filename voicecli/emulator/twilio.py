"""Twilio's side of a call: a signed voice webhook, TwiML, Media Streams messages."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from xml.etree import ElementTree

from voicecli.emulator.api import ProviderApi, basic_auth
from voicecli.emulator.base import AgentAudio, CallerSide, SimCall, mulaw_audio, on_server
from voicecli.providers.base import WebhookRejected
from voicecli.providers.twilio import TwilioProvider, TwilioSettings

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web


def _stream_of(twiml: str) -> tuple[str, dict[str, str]]:
    """The stream URL and parameters of a `<Connect><Stream>` TwiML document."""
    stream = ElementTree.fromstring(twiml).find("./Connect/Stream")
    if stream is None or not stream.get("url"):
        raise WebhookRejected(502, "the TwiML has no <Connect><Stream url>")
    return stream.get("url", ""), {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}


class TwilioCaller(CallerSide):
    """Twilio's end of a call: signed webhook, TwiML, Media Streams messages."""

    provider = TwilioProvider
    config: TwilioSettings
    frame_ms = 20
    stream_id_field = "streamSid"

    def new_call(self, from_number: str, to_number: str) -> SimCall:
        return SimCall(
            provider_call_id="CA" + secrets.token_hex(16),
            stream_id="MZ" + secrets.token_hex(16),
            from_number=from_number,
            to_number=to_number,
            account_id=self.config.account_sid or "AC" + "0" * 32,
        )

    async def ring(
        self, http: aiohttp.ClientSession, server_url: str, agent: str, call: SimCall
    ) -> tuple[str, dict[str, str]]:
        from twilio.request_validator import RequestValidator

        path = f"/telephony/twilio/inbound/{agent}"
        form = {
            "AccountSid": call.account_id,
            "ApiVersion": "2010-04-01",
            "CallSid": call.provider_call_id,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "From": call.from_number,
            "To": call.to_number,
            "Caller": call.from_number,
            "Called": call.to_number,
        }
        headers = {"User-Agent": "TwilioProxy/1.1"}
        token = self.config.auth_token
        if token:
            # Twilio signs the URL it was configured with: the public one.
            signed_url = (self.settings.public_base_url or server_url) + path
            headers["X-Twilio-Signature"] = RequestValidator(token).compute_signature(signed_url, form)
        async with http.post(server_url + path, data=form, headers=headers) as resp:
            body = await resp.text()
            if resp.status != 200:
                raise WebhookRejected(resp.status, body.strip() or resp.reason or "")
        return _stream_of(body)

    async def pick_up(
        self, http: aiohttp.ClientSession, server_url: str, dial: Mapping[str, Any], call: SimCall
    ) -> tuple[str, dict[str, str]]:
        return _stream_of(str(dial["Twiml"]))

    async def call_ended(
        self, http: aiohttp.ClientSession, server_url: str, dial: Mapping[str, Any], call: SimCall
    ) -> int:
        from twilio.request_validator import RequestValidator

        status_url = str(dial["StatusCallback"])
        form = {
            "AccountSid": call.account_id,
            "CallSid": call.provider_call_id,
            "CallStatus": "completed",
            "CallDuration": "7",
            "Direction": "outbound-api",
            "From": str(dial.get("From", "")),
            "To": str(dial.get("To", "")),
        }
        headers = {"User-Agent": "TwilioProxy/1.1"}
        if self.config.auth_token:
            headers["X-Twilio-Signature"] = RequestValidator(self.config.auth_token).compute_signature(status_url, form)
        async with http.post(on_server(status_url, server_url), data=form, headers=headers) as resp:
            return resp.status

    def opening(self, call: SimCall, parameters: Mapping[str, str]) -> list[dict[str, Any]]:
        return [
            {"event": "connected", "protocol": "Call", "version": "1.0.0"},
            {
                "event": "start",
                "sequenceNumber": "1",
                "start": {
                    "accountSid": call.account_id,
                    "streamSid": call.stream_id,
                    "callSid": call.provider_call_id,
                    "tracks": ["inbound"],
                    "customParameters": dict(parameters),
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
                "streamSid": call.stream_id,
            },
        ]

    def media(self, call: SimCall, pcm16_8k: bytes, seq: int) -> dict[str, Any]:
        from voicecli.call.audio import ulaw_encode  # numpy: only the emulator needs it

        chunk = seq - 1  # sequence 1 is `start`
        return {
            "event": "media",
            "sequenceNumber": str(seq),
            "media": {
                "track": "inbound",
                "chunk": str(chunk),
                "timestamp": str((chunk - 1) * self.frame_ms),
                "payload": base64.b64encode(ulaw_encode(pcm16_8k)).decode(),
            },
            "streamSid": call.stream_id,
        }

    def dtmf(self, call: SimCall, digit: str, seq: int) -> dict[str, Any]:
        return {
            "event": "dtmf",
            "sequenceNumber": str(seq),
            "streamSid": call.stream_id,
            "dtmf": {"track": "inbound_track", "digit": digit},
        }

    def hang_up(self, call: SimCall, seq: int) -> dict[str, Any] | None:
        return {
            "event": "stop",
            "sequenceNumber": str(seq),
            "streamSid": call.stream_id,
            "stop": {"accountSid": call.account_id, "callSid": call.provider_call_id},
        }

    def read(self, message: Mapping[str, Any]) -> AgentAudio:
        return mulaw_audio(message, "media")


caller = TwilioCaller


class TwilioApi(ProviderApi):
    """Twilio's REST API (2010-04-01) as voicecli uses it: calls, the account, the number."""

    provider = TwilioProvider
    credentials: ClassVar[Mapping[str, str]] = {
        "account_sid": "AC" + "0123456789abcdef" * 2,
        "auth_token": "twilio-test-auth-token-1234",
    }
    phone_number = "+15559870000"
    number_sid = "PN" + "0123456789abcdef" * 2
    first_voice_url = "https://demo.twilio.com/welcome/voice/"  # where the number points at first
    dial_refusal = "The 'To' number is not a valid phone number."

    def routes(self) -> list[web.RouteDef]:
        from aiohttp import web

        account = "/2010-04-01/Accounts/{account}"
        return [
            web.post(account + "/Calls.json", self.create_call),
            web.post(account + "/Calls/{sid}.json", self.update_call),
            web.get(account + ".json", self.read_account),
            web.get(account + "/IncomingPhoneNumbers.json", self.list_numbers),
            web.post(account + "/IncomingPhoneNumbers/{sid}.json", self.update_number),
        ]

    def refusal(self, status: int, message: str) -> web.Response:
        from aiohttp import web

        code = {400: 21211, 401: 20003, 404: 20404}.get(status, 20500)
        return web.json_response({"code": code, "message": message, "status": status}, status=status)

    auth_refusal = "Authenticate"

    def authorized(self, request: web.Request) -> bool:
        sid, token = self.credentials["account_sid"], self.credentials["auth_token"]
        return request.headers.get("Authorization") == basic_auth(sid, token) and request.match_info["account"] == sid

    async def create_call(self, request: web.Request) -> web.Response:
        from aiohttp import web

        entry, refused = await self.admit(request, "dial")
        if refused:
            return refused
        fields = entry["fields"]
        if not fields.get("To") or not fields.get("From") or not (fields.get("Twiml") or fields.get("Url")):
            return self.refusal(400, "A 'To', a 'From' and a 'Url' or 'Twiml' are required.")
        if fields["From"] != self.phone_number:  # a caller ID the account owns
            return self.refusal(400, f"The 'From' number {fields['From']} is not a number of this account.")
        if self.refuse_with:
            return self.refusal(self.refuse_with, self.dial_refusal)
        sid = "CA" + secrets.token_hex(16)
        self.dialled(entry, sid)
        return web.json_response(
            {"sid": sid, "status": "queued", "to": fields["To"], "from": fields["From"]}, status=201
        )

    # Fields a dial carries to ask for asynchronous answering-machine detection (protocols.md F3).
    machine_fields = ("MachineDetection", "AsyncAmd", "AsyncAmdStatusCallback", "AsyncAmdStatusCallbackMethod")

    async def post_machine_verdict(
        self, http: aiohttp.ClientSession, server_url: str, dial: Mapping[str, Any], call_sid: str, answered_by: str
    ) -> int:
        """Post Twilio's AMD verdict (`AnsweredBy`) for a dialled call to the URL the dial gave,
        signed as Twilio signs it; the HTTP status the server answered."""
        from twilio.request_validator import RequestValidator

        url = str(dial["AsyncAmdStatusCallback"])
        form = {
            "AccountSid": self.credentials["account_sid"],
            "CallSid": call_sid,
            "AnsweredBy": answered_by,
            "MachineDetectionDuration": "2400",
        }
        signature = RequestValidator(self.credentials["auth_token"]).compute_signature(url, form)
        headers = {"User-Agent": "TwilioProxy/1.1", "X-Twilio-Signature": signature}
        async with http.post(on_server(url, server_url), data=form, headers=headers) as resp:
            return resp.status

    async def update_call(self, request: web.Request) -> web.Response:
        from aiohttp import web

        entry, refused = await self.admit(request, "hangup")
        fields = entry["fields"] or {}
        if "Twiml" in fields or "Url" in fields:  # new instructions for the live call: a transfer
            entry["kind"] = "transfer"
        if refused:
            return refused
        if self.refuse_with:
            return self.refusal(self.refuse_with, "The requested resource was not found")
        if entry["kind"] == "hangup" and fields.get("Status") != "completed":
            return self.refusal(400, "Status must be 'completed' or 'canceled', or give Twiml or Url")
        sid = request.match_info["sid"]
        return web.json_response({"sid": sid, "status": entry["fields"].get("Status", "")})

    async def read_account(self, request: web.Request) -> web.Response:
        from aiohttp import web

        _, refused = await self.admit(request, "account")
        if refused:
            return refused
        sid = self.credentials["account_sid"]
        return web.json_response({"sid": sid, "status": "active", "friendly_name": "test account"})

    def voice_url(self) -> str:
        """Where the number sends its calls: the last URL posted to it."""
        posted = [r["fields"]["VoiceUrl"] for r in self.of_kind("number") if "VoiceUrl" in (r["fields"] or {})]
        return posted[-1] if posted else self.first_voice_url

    def _number(self) -> dict[str, Any]:
        return {
            "sid": self.number_sid,
            "account_sid": self.credentials["account_sid"],
            "phone_number": self.phone_number,
            "voice_url": self.voice_url(),
            "voice_method": "POST",
        }

    async def list_numbers(self, request: web.Request) -> web.Response:
        from aiohttp import web

        _, refused = await self.admit(request, "numbers")
        if refused:
            return refused
        wanted = request.query.get("PhoneNumber")
        numbers = [self._number()] if wanted in (None, self.phone_number) else []
        page = {"first_page_uri": request.path, "next_page_uri": None, "previous_page_uri": None, "uri": request.path}
        return web.json_response(
            {"incoming_phone_numbers": numbers, "page": 0, "page_size": 50, "start": 0, "end": len(numbers) - 1, **page}
        )

    async def update_number(self, request: web.Request) -> web.Response:
        from aiohttp import web

        if not self.authorized(request) or request.match_info["sid"] != self.number_sid:
            _, refused = await self.admit(request, "refused")
            return refused or web.json_response({}, status=404)
        await self.keep(request, "number")
        return web.json_response(self._number())


api = TwilioApi
