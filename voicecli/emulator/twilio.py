"""Twilio's side of a call: a signed voice webhook, TwiML, Media Streams messages."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

from voicecli.emulator.base import AgentAudio, CallerSide, SimCall
from voicecli.providers.base import WebhookRejected
from voicecli.providers.twilio import TwilioProvider, TwilioSettings

if TYPE_CHECKING:
    import aiohttp


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
        from voicecli.call.audio import ulaw_decode

        event = str(message.get("event"))
        if event == "media":
            payload = message.get("media", {}).get("payload", "")
            return AgentAudio(ulaw_decode(base64.b64decode(payload)), "media", message)
        return AgentAudio(b"", event, message)


caller = TwilioCaller
