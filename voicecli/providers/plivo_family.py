"""What Plivo and Vobiz share: Plivo's XML `<Stream>`, its stream messages, its REST call API
and its HMAC-SHA256 callback signatures. Vobiz is a Plivo-compatible service; the two differ
in host, REST auth, the signature headers and what is signed, and whether the dial's request
id is the call's id.

Wire details: ../shared/protocols.md sections C and F4.
Traps handled here: no `connected` and no inbound `stop` (a closed socket ends the call),
`start` carries no caller data (it rides in the stream URL's query), and hang-up is ours
(pipecat's Plivo serializer would call Plivo's host with Basic auth, wrong for Vobiz).
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from voicecli.errors import ProviderError
from voicecli.providers.base import (
    ChecksAccount,
    DetectsMachines,
    DialRequest,
    FetchesTransfer,
    HangsUp,
    InboundCall,
    MachineVerdict,
    Provider,
    ProviderSettings,
    SendsStop,
    StatusUpdate,
    StreamCall,
    StreamStart,
    TokenInStreamUrl,
    TransferRequest,
    WebhookRejected,
    authenticated_read,
    form_params,
    post_for_json,
    row,
    text_field,
)
from voicecli.settings_schema import as_str

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web

# Plivo-style call states in hangup callbacks, mapped to ours (protocols.md C2).
HANGUP_STATUS = {
    "completed": "completed",
    "busy": "busy",
    "no-answer": "no-answer",
    "failed": "failed",
    "cancel": "canceled",
    "canceled": "canceled",
    "timeout": "no-answer",
}


def hmac_b64(token: str, message: str) -> str:
    import base64
    import hashlib
    import hmac

    return base64.b64encode(hmac.new(token.encode(), message.encode(), hashlib.sha256).digest()).decode()


def base_url(url: str) -> str:
    """The URL without its query: what Vobiz signs, and where Plivo's signed string starts."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def plivo_v3_string(url: str, params: Mapping[str, Any]) -> str:
    """What Plivo's V3 signs for a POST: base URL, sorted query, then sorted params (C5)."""
    parts = urlsplit(url)
    query = "&".join(f"{k}={v}" for k, v in sorted(parse_qsl(parts.query, keep_blank_values=True)))
    signed = base_url(url)
    if query or params:
        signed += "?" + query
    if query and params:
        signed += "."
    return signed + "".join(f"{k}{v}" for k, v in sorted(params.items()))


@dataclass(frozen=True)
class PlivoFamilySettings(ProviderSettings):
    auth_id: str | None = row(None, as_str, "{label} auth ID", credential=True)
    auth_token: str | None = row(None, as_str, "{label} auth token", secret=True, credential=True)
    # Each member declares its own default host.
    api_base: str = row("", as_str, "{label} REST base URL", file_only=True)


# The detection time asked for on a dial (Vobiz takes 2000-10000 ms, default 5000; F3).
MACHINE_DETECTION_MS = 5000


class PlivoFamilyProvider(
    Provider, ChecksAccount, DetectsMachines, HangsUp, SendsStop, TokenInStreamUrl, FetchesTransfer
):
    """A Plivo-compatible provider: bidirectional mu-law `<Stream>`, REST dial and hang-up."""

    machine_detection_s = MACHINE_DETECTION_MS / 1000

    config: PlivoFamilySettings
    # The signature headers this provider sends, most trusted first (each with `-Nonce`).
    signature_headers: ClassVar[tuple[str, ...]]

    @abstractmethod
    def auth_headers(self) -> dict[str, str]:
        """How the REST API authenticates us."""

    @abstractmethod
    def expected_signatures(self, header: str, url: str, nonce: str, params: Mapping[str, Any]) -> set[str]:
        """The values `header` may carry for this callback (C5)."""

    def hang_up_urls(self, provider_call_id: str) -> list[str]:
        """Where a DELETE ends this call, tried in order until one is not 404."""
        return [f"{self.account_url}/Call/{provider_call_id}/"]

    @property
    def account_url(self) -> str:
        return f"{self.config.api_base}/Account/{self.config.auth_id}"

    async def check_account(self, http: aiohttp.ClientSession) -> str | None:
        return await authenticated_read(http, f"{self.account_url}/", self.auth_headers())

    def security_notes(self) -> list[str]:
        if not self.config.auth_token:
            return [f"{self.name.upper()}_AUTH_TOKEN not set: {self.label} webhook signatures are NOT checked"]
        return []

    # --- callbacks ---------------------------------------------------------------------
    def _verify(self, request: web.Request, public_url: str, params: Mapping[str, Any]) -> tuple[str, ...]:
        """Check the signature; return the request's nonces (a nonce seen before means a
        replayed request, which the call's owner refuses: Vobiz signs no time or body)."""
        import hmac

        token = self.config.auth_token
        if not token:
            return ()
        nonces = tuple(sorted({n for h in self.signature_headers if (n := request.headers.get(f"{h}-Nonce"))}))
        for header in self.signature_headers:
            given, nonce = request.headers.get(header), request.headers.get(f"{header}-Nonce")
            if given and nonce:
                expected = self.expected_signatures(header, public_url, nonce, params)
                if any(hmac.compare_digest(g.strip(), e) for g in given.split(",") for e in expected):
                    return nonces
        raise WebhookRejected(403, f"invalid or missing {'/'.join(self.signature_headers)}")

    async def _form(self, request: web.Request, public_url: str) -> tuple[Mapping[str, Any], tuple[str, ...]]:
        params = await form_params(request)
        nonces = self._verify(request, public_url, {k: v for k, v in params.items() if isinstance(v, str)})
        return params, nonces

    async def read_webhook(self, request: web.Request, public_url: str) -> InboundCall:
        params, nonces = await self._form(request, public_url)
        call_uuid = params.get("CallUUID")
        if not isinstance(call_uuid, str) or not call_uuid:
            raise WebhookRejected(400, f"missing CallUUID: not a {self.label} answer webhook")
        return InboundCall(
            call_uuid,
            text_field(params, "From"),
            text_field(params, "To"),
            nonces,
            dial_id=text_field(params, "RequestUUID"),
        )

    async def read_status(self, request: web.Request, public_url: str) -> StatusUpdate | None:
        params, nonces = await self._form(request, public_url)
        call_uuid = text_field(params, "CallUUID")
        if not call_uuid:
            raise WebhookRejected(400, "missing CallUUID")
        if params.get("Event") != "Hangup":
            return None
        status = str(params.get("CallStatus", "completed")).lower()
        cause = text_field(params, "HangupCause") or "hung up"
        return StatusUpdate(
            call_uuid,
            HANGUP_STATUS.get(status, "completed"),
            f"{self.label}: {cause}",
            nonces=nonces,
            dial_id=text_field(params, "RequestUUID"),
        )

    async def read_machine_verdict(self, request: web.Request, public_url: str) -> MachineVerdict:
        # Asynchronous machine detection's callback: `Machine=true|false` (F3). It says nothing
        # of the greeting's end: the pipeline listens for the silence after it.
        params, nonces = await self._form(request, public_url)
        machine = str(params.get("Machine", "")).lower()
        if machine not in ("true", "false"):
            raise WebhookRejected(400, "missing Machine=true|false: not a machine detection callback")
        return MachineVerdict(
            text_field(params, "CallUUID"),
            "machine" if machine == "true" else "human",
            f"{self.label}: Machine={machine}",
            nonces=nonces,
            dial_id=text_field(params, "RequestUUID"),
        )

    # --- the stream ----------------------------------------------------------------------
    def answer(self, request: web.Request, call: StreamCall, stream_url: str) -> web.StreamResponse:
        from aiohttp import web

        return web.Response(text=self.stream_xml(call, stream_url), content_type="application/xml")

    def stream_xml(self, call: StreamCall, stream_url: str) -> str:
        """`<Stream>` with the URL as its text and the call's metadata in its query."""
        from xml.etree import ElementTree

        query = {
            "call_id": call.call_id,
            "agent": call.agent,
            "direction": call.direction,
            "from": call.from_number or "",
            "to": call.to_number or "",
            "call_uuid": call.provider_call_id or "",
            self.token_param: call.token,
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
            # Hang-up is ours (stop on the stream, then REST with this provider's auth), so
            # pipecat's, which calls Plivo's host with Basic auth, stays off.
            serializer = PlivoFrameSerializer(
                stream_id, call_id, params=PlivoFrameSerializer.InputParams(auto_hang_up=False)
            )
            query = request.query  # the metadata rides here, not in `start` (C4)
            direction = query.get("direction")
            return StreamStart(
                serializer=serializer,
                stream_id=stream_id,
                provider_call_id=query.get("call_uuid") or call_id,
                token=query.get(self.token_param),
                from_number=query.get("from") or None,
                to_number=query.get("to") or None,
                direction="inbound" if direction == "inbound" else "outbound" if direction == "outbound" else None,
            )
        raise WebhookRejected(400, "stream closed before its start message")

    async def end_stream(self, ws: web.WebSocketResponse, start: StreamStart) -> None:
        if not ws.closed:
            await ws.send_json({"event": "stop", "streamId": start.stream_id})

    # --- REST --------------------------------------------------------------------------
    async def hang_up(self, http: aiohttp.ClientSession, provider_call_id: str | None) -> str:
        missing = self.missing_credentials()
        if missing:
            return f"not hung up through {self.label}'s API: {', '.join(missing)} not set"
        if not provider_call_id:
            return f"not hung up through {self.label}'s API: no call UUID"
        try:
            for url in self.hang_up_urls(provider_call_id):
                async with http.delete(url, headers=self.auth_headers()) as resp:
                    if resp.status in (200, 202, 204):
                        return f"hung up through {self.label}'s REST API"
                    if resp.status != 404:
                        return f"{self.label} refused the hang-up: HTTP {resp.status} {(await resp.text())[:200]}"
            return f"call had already ended at {self.label}"
        except Exception as exc:  # network failures: the call still ends on our side
            return f"{self.label} hang-up failed: {type(exc).__name__}: {exc}"

    async def dial(self, http: aiohttp.ClientSession, request: DialRequest) -> str:
        body: dict[str, Any] = {
            "from": request.from_number,
            "to": request.to_number,
            "answer_url": request.answer_url,
            "answer_method": "POST",
            "hangup_url": request.status_url,
            "hangup_method": "POST",
        }
        if request.machine_url:
            # Asynchronous detection: the verdict is posted to the URL while the call goes on (F3).
            body.update(
                machine_detection="true",
                machine_detection_time=MACHINE_DETECTION_MS,
                machine_detection_url=request.machine_url,
                machine_detection_method="POST",
            )
        url = f"{self.account_url}/Call/"
        data = await post_for_json(http, url, self.label, api_error, json=body, headers=self.auth_headers())
        request_uuid = data.get("request_uuid") if isinstance(data, dict) else None
        if not isinstance(request_uuid, str) or not request_uuid:
            raise ProviderError(f"{self.label}'s answer had no request_uuid")
        return request_uuid

    # --- transfer (protocols.md F1): the A leg fetches new XML from voicecli ------------
    async def transfer(self, http: aiohttp.ClientSession, request: TransferRequest) -> str:
        from voicecli.errors import ProviderError

        missing = self.missing_credentials()
        if missing:
            raise ProviderError(f"cannot transfer through {self.label}'s API: {', '.join(missing)} not set")
        if not request.provider_call_id:
            raise ProviderError(f"cannot transfer through {self.label}'s API: no call UUID")
        body = {"legs": "aleg", "aleg_url": request.document_url, "aleg_method": "POST"}
        url = f"{self.account_url}/Call/{request.provider_call_id}/"
        await post_for_json(http, url, self.label, api_error, "the transfer", json=body, headers=self.auth_headers())
        return f"transferred through {self.label}'s REST API"

    async def read_transfer(self, request: web.Request, public_url: str) -> None:
        await self._form(request, public_url)  # signed by the provider, or WebhookRejected

    def transfer_document(self, request: TransferRequest) -> web.StreamResponse:
        from xml.etree import ElementTree

        from aiohttp import web

        response = ElementTree.Element("Response")
        if request.announce:
            ElementTree.SubElement(response, "Speak").text = request.announce
        dial = ElementTree.SubElement(response, "Dial", {"callerId": request.caller_id} if request.caller_id else {})
        ElementTree.SubElement(dial, "Number").text = request.number
        return web.Response(text=ElementTree.tostring(response, encoding="unicode"), content_type="application/xml")


def api_error(text: str) -> str:
    """The `error` (or `message`) of a Plivo-style JSON error body, else its first 200 characters."""
    try:
        data = json.loads(text)
        return str(data.get("error") or data.get("message") or text[:200]) if isinstance(data, dict) else text[:200]
    except ValueError:
        return text[:200]
