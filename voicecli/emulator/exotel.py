"""Exotel's side of a call: the Voicebot applet's URL fetch, then 100 ms PCM16 frames."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from voicecli.emulator.base import AgentAudio, CallerSide, SimCall
from voicecli.providers.base import WebhookRejected
from voicecli.providers.exotel import SECRET_PARAM, ExotelProvider, ExotelSettings

if TYPE_CHECKING:
    import aiohttp


class ExotelCaller(CallerSide):
    """Exotel's end: the applet fetches the dynamic URL, then streams 100 ms PCM frames."""

    provider = ExotelProvider
    config: ExotelSettings
    frame_ms = 100

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

    def read(self, message: Mapping[str, Any]) -> AgentAudio:
        event = str(message.get("event"))
        if event == "media":
            return AgentAudio(base64.b64decode(message.get("media", {}).get("payload", "")), "media", message)
        return AgentAudio(b"", event, message)


caller = ExotelCaller
