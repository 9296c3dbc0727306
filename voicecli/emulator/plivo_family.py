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

from voicecli.emulator.base import AgentAudio, CallerSide, SimCall
from voicecli.providers.base import WebhookRejected

if TYPE_CHECKING:
    import aiohttp

    from voicecli.providers.plivo_family import PlivoFamilySettings


class PlivoFamilyCaller(CallerSide):
    """A Plivo-compatible provider's end: signed answer webhook, `start` without `connected`,
    no `stop`, just a close."""

    config: PlivoFamilySettings

    frame_ms = 20
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

    def read(self, message: Mapping[str, Any]) -> AgentAudio:
        from voicecli.call.audio import ulaw_decode

        event = str(message.get("event"))
        if event == "playAudio":
            payload = message.get("media", {}).get("payload", "")
            return AgentAudio(ulaw_decode(base64.b64decode(payload)), "media", message)
        return AgentAudio(b"", event, message)
