"""Vobiz: Plivo-compatible XML `<Stream>`, mu-law 8 kHz, metadata in the stream URL's query.

Wire details: ../shared/protocols.md section C; Vobiz's docs: https://docs.vobiz.ai/xml/stream
Traps handled here: no `connected` and no inbound `stop` (a closed socket ends the call),
`start` carries no caller data (it rides in the query), REST auth is X-Auth-ID/X-Auth-Token
headers on Vobiz's host (pipecat's Plivo serializer would call Plivo with Basic auth).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from xml.etree import ElementTree

from voicecli.errors import ProviderError
from voicecli.providers.base import (
    AgentAudio,
    CallerSide,
    DialRequest,
    InboundCall,
    Provider,
    SimCall,
    StatusUpdate,
    StreamCall,
    StreamStart,
    WebhookRejected,
    authenticated_read,
    form_params,
    text_field,
)

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web

# Vobiz call states in callbacks, mapped to ours (protocols.md C2).
HANGUP_STATUS = {
    "completed": "completed",
    "busy": "busy",
    "no-answer": "no-answer",
    "failed": "failed",
    "cancel": "canceled",
    "canceled": "canceled",
    "timeout": "no-answer",
}


def _hmac_b64(token: str, message: str) -> str:
    return base64.b64encode(hmac.new(token.encode(), message.encode(), hashlib.sha256).digest()).decode()


def _base_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _plivo_v3_string(url: str, params: Mapping[str, Any]) -> str:
    """What Plivo's V3 signs for a POST: base URL, sorted query, then sorted params (C5)."""
    parts = urlsplit(url)
    query = "&".join(f"{k}={v}" for k, v in sorted(parse_qsl(parts.query, keep_blank_values=True)))
    signed = _base_url(url)
    if query or params:
        signed += "?" + query
    if query and params:
        signed += "."
    return signed + "".join(f"{k}{v}" for k, v in sorted(params.items()))


def signatures(token: str, url: str, nonce: str, params: Mapping[str, Any]) -> dict[str, set[str]]:
    """The V2 and V3 signatures Vobiz may send for this callback (documented and Plivo forms)."""
    base = _base_url(url)
    return {
        "v2": {_hmac_b64(token, base + nonce)},
        "v3": {
            _hmac_b64(token, f"{base}.{nonce}"),
            _hmac_b64(token, f"{_plivo_v3_string(url, params)}.{nonce}"),
        },
    }


class VobizProvider(Provider):
    """Vobiz voice with bidirectional mu-law streams."""

    name = "vobiz"
    credential_settings = ("vobiz_auth_id", "vobiz_auth_token")
    phone_setting = "vobiz_phone_number"
    credentials_from = "Vobiz console > API keys"
    console_hint = (
        "Vobiz console > Applications > the application of {number} > Answer URL (POST); Hangup URL: {status_url}"
    )

    def _auth_headers(self) -> dict[str, str]:
        # Vobiz authenticates with these headers, not HTTP Basic (that is Plivo), protocols.md C1.
        return {"X-Auth-ID": self.settings.vobiz_auth_id, "X-Auth-Token": self.settings.vobiz_auth_token}

    async def check_account(self, http: aiohttp.ClientSession) -> str | None:
        url = f"{self.settings.vobiz_api_base}/Account/{self.settings.vobiz_auth_id}/"
        return await authenticated_read(http, url, self._auth_headers())

    def security_notes(self) -> list[str]:
        if not self.settings.vobiz_auth_token:
            return ["VOBIZ_AUTH_TOKEN not set: Vobiz webhook signatures are NOT checked"]
        return []

    def _verify(self, request: web.Request, public_url: str, params: Mapping[str, Any]) -> tuple[str, ...]:
        """Check the signature; the request's nonces (Vobiz signs only URL and nonce: a nonce
        seen before means a replayed request, which the call's owner refuses)."""
        token = self.settings.vobiz_auth_token
        if not token:
            return ()
        headers = ("X-Vobiz-Signature-V3", "X-Vobiz-Signature-V2")
        nonces = tuple(sorted({n for h in headers if (n := request.headers.get(f"{h}-Nonce"))}))
        for version, header in zip(("v3", "v2"), headers, strict=True):
            given, nonce = request.headers.get(header), request.headers.get(f"{header}-Nonce")
            if given and nonce:
                expected = signatures(token, public_url, nonce, params)[version]
                if any(hmac.compare_digest(g.strip(), e) for g in given.split(",") for e in expected):
                    return nonces
        raise WebhookRejected(403, "invalid or missing X-Vobiz-Signature-V3/V2")

    async def _form(self, request: web.Request, public_url: str) -> tuple[Mapping[str, Any], tuple[str, ...]]:
        params = await form_params(request)
        nonces = self._verify(request, public_url, {k: v for k, v in params.items() if isinstance(v, str)})
        return params, nonces

    def upgrade_token(self, request: web.Request) -> str | None:
        return request.query.get("token")  # the stream URL's query carries it (C4)

    async def read_webhook(self, request: web.Request, public_url: str) -> InboundCall:
        params, nonces = await self._form(request, public_url)
        call_uuid = params.get("CallUUID")
        if not isinstance(call_uuid, str) or not call_uuid:
            raise WebhookRejected(400, "missing CallUUID: not a Vobiz answer webhook")
        return InboundCall(call_uuid, text_field(params, "From"), text_field(params, "To"), nonces)

    def answer(self, request: web.Request, call: StreamCall, stream_url: str) -> web.StreamResponse:
        from aiohttp import web

        return web.Response(text=self.stream_xml(call, stream_url), content_type="application/xml")

    def stream_xml(self, call: StreamCall, stream_url: str) -> str:
        """`<Stream>` with the URL as its text and the call's metadata in its query."""
        query = {
            "call_id": call.call_id,
            "agent": call.agent,
            "direction": call.direction,
            "from": call.from_number or "",
            "to": call.to_number or "",
            "call_uuid": call.provider_call_id or "",
            "token": call.token,
        }
        response = ElementTree.Element("Response")
        stream = ElementTree.SubElement(
            response,
            "Stream",
            bidirectional="true",
            keepCallAlive="true",
            contentType="audio/x-mulaw;rate=8000",
        )
        stream.text = f"{stream_url}?{urlencode(query)}"  # ElementTree escapes & as &amp;
        return '<?xml version="1.0" encoding="UTF-8"?>' + ElementTree.tostring(response, encoding="unicode")

    async def open_stream(
        self, request: web.Request, messages: AsyncIterator[tuple[str, dict[str, Any]]]
    ) -> StreamStart:
        from pipecat.serializers.plivo import PlivoFrameSerializer

        async for _, message in messages:
            if message["event"] != "start":
                continue
            start = message.get("start")
            if not isinstance(start, dict):
                raise WebhookRejected(400, "start message without a start object")
            stream_id, call_id = start.get("streamId"), start.get("callId")
            if not isinstance(stream_id, str) or not isinstance(call_id, str):
                raise WebhookRejected(400, "start message without streamId and callId")
            # Hang-up is ours (stop on the stream, then REST with Vobiz's headers), so pipecat's
            # Plivo hang-up, which calls Plivo's host with Basic auth, stays off.
            serializer = PlivoFrameSerializer(
                stream_id, call_id, params=PlivoFrameSerializer.InputParams(auto_hang_up=False)
            )
            query = request.query  # the metadata rides here, not in `start` (C4)
            direction = query.get("direction")
            return StreamStart(
                serializer=serializer,
                stream_id=stream_id,
                provider_call_id=query.get("call_uuid") or call_id,
                token=query.get("token"),
                from_number=query.get("from") or None,
                to_number=query.get("to") or None,
                direction=direction if direction in ("inbound", "outbound") else None,
            )
        raise WebhookRejected(400, "stream closed before its start message")

    async def end_stream(self, ws: web.WebSocketResponse, start: StreamStart) -> None:
        if not ws.closed:
            await ws.send_json({"event": "stop", "streamId": start.stream_id})

    async def hang_up(self, http: aiohttp.ClientSession, provider_call_id: str | None) -> str:
        missing = self.missing_credentials()
        if missing:
            return f"not hung up through Vobiz's API: {', '.join(missing)} not set"
        if not provider_call_id:
            return "not hung up through Vobiz's API: no call UUID"
        url = f"{self.settings.vobiz_api_base}/Account/{self.settings.vobiz_auth_id}/Call/{provider_call_id}/"
        try:
            async with http.delete(url, headers=self._auth_headers()) as resp:
                if resp.status in (200, 202, 204):
                    return "hung up through Vobiz's REST API"
                if resp.status == 404:
                    return "call had already ended at Vobiz"
                return f"Vobiz refused the hang-up: HTTP {resp.status} {(await resp.text())[:200]}"
        except Exception as exc:  # network failures: the call still ends on our side
            return f"Vobiz hang-up failed: {type(exc).__name__}: {exc}"

    async def dial(self, http: aiohttp.ClientSession, request: DialRequest) -> str:
        import aiohttp

        url = f"{self.settings.vobiz_api_base}/Account/{self.settings.vobiz_auth_id}/Call/"
        body = {
            "from": request.from_number,
            "to": request.to_number,
            "answer_url": request.answer_url,
            "answer_method": "POST",
            "hangup_url": request.status_url,
            "hangup_method": "POST",
        }
        try:
            async with http.post(url, json=body, headers=self._auth_headers()) as resp:
                text = await resp.text()
                if resp.status >= 300:
                    raise ProviderError(f"Vobiz refused the call: HTTP {resp.status}: {_vobiz_error(text)}")
                data = json.loads(text)
        except ProviderError:
            raise
        except (ValueError, aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderError(f"Vobiz could not be reached or answered badly: {type(exc).__name__}: {exc}") from None
        # For Vobiz the request uuid is the call's uuid (protocols.md C1).
        call_uuid = data.get("request_uuid") if isinstance(data, dict) else None
        if not isinstance(call_uuid, str) or not call_uuid:
            raise ProviderError("Vobiz's answer had no request_uuid")
        return call_uuid

    async def read_status(self, request: web.Request, public_url: str) -> StatusUpdate | None:
        params, nonces = await self._form(request, public_url)
        call_uuid = text_field(params, "CallUUID")
        if not call_uuid:
            raise WebhookRejected(400, "missing CallUUID")
        if params.get("Event") != "Hangup":
            return None
        status = str(params.get("CallStatus", "completed")).lower()
        cause = text_field(params, "HangupCause") or "hung up"
        return StatusUpdate(call_uuid, HANGUP_STATUS.get(status, "completed"), f"Vobiz: {cause}", nonces=nonces)


def _vobiz_error(text: str) -> str:
    try:
        data = json.loads(text)
        return str(data.get("error") or data.get("message") or text[:200]) if isinstance(data, dict) else text[:200]
    except ValueError:
        return text[:200]


class VobizCaller(CallerSide):
    """Vobiz's end: signed answer webhook, `start` without `connected`, no `stop`, just a close."""

    frame_ms = 20

    def new_call(self, from_number: str, to_number: str) -> SimCall:
        return SimCall(
            provider_call_id=str(uuid.uuid4()),
            stream_id=str(uuid.uuid4()),
            from_number=from_number,
            to_number=to_number,
            account_id="1234",
        )

    async def ring(
        self, http: aiohttp.ClientSession, server_url: str, agent: str, call: SimCall
    ) -> tuple[str, dict[str, str]]:
        path = f"/telephony/vobiz/inbound/{agent}"
        form = {
            "CallUUID": call.provider_call_id,
            "From": call.from_number,
            "To": call.to_number,
            "Direction": "inbound",
            "CallStatus": "ringing",
            "Event": "StartApp",
        }
        signed_url = (self.settings.public_base_url or server_url) + path  # what Vobiz was given
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
        """POST a callback to `url` as Vobiz does, signed for `signed_url`, and read its <Stream>."""
        headers = {}
        token = self.settings.vobiz_auth_token
        if token:
            # Signed per Vobiz's docs: base URL and nonce only (protocols.md C5).
            base = _base_url(signed_url)
            nonce = "".join(secrets.choice("0123456789") for _ in range(20))
            headers = {
                "X-Vobiz-Signature-V3": _hmac_b64(token, f"{base}.{nonce}"),
                "X-Vobiz-Signature-V3-Nonce": nonce,
                "X-Vobiz-Signature-V2": _hmac_b64(token, base + nonce),
                "X-Vobiz-Signature-V2-Nonce": nonce,
            }
        async with http.post(url, data=form, headers=headers) as resp:
            body = await resp.text()
            if resp.status != 200:
                raise WebhookRejected(resp.status, body.strip())
        stream = ElementTree.fromstring(body).find("Stream")
        if stream is None or not (stream.text or "").strip():
            raise WebhookRejected(502, "the Vobiz XML has no <Stream> URL")
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
        return None  # Vobiz sends no stop: the socket just closes

    def read(self, message: Mapping[str, Any]) -> AgentAudio:
        from voicecli.call.audio import ulaw_decode

        event = str(message.get("event"))
        if event == "playAudio":
            payload = message.get("media", {}).get("payload", "")
            return AgentAudio(ulaw_decode(base64.b64decode(payload)), "media", message)
        return AgentAudio(b"", event, message)


provider = VobizProvider
caller = VobizCaller
