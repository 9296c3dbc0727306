"""Exotel: the Voicebot applet's stream (PCM16 8 kHz), its dynamic-URL and ExoML answers.

Wire details: ../shared/protocols.md section B; Exotel's docs:
https://developer.exotel.com/docs/agentstream/websocket-protocol
Exotel signs nothing: streams are authorized by the token the webhook put in their URL,
or in static mode by EXOTEL_STREAM_SECRET given as ?secret=... in the pasted URL.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from voicecli.errors import ProviderError
from voicecli.providers.base import (
    ChecksAccount,
    DialRequest,
    InboundCall,
    Provider,
    ProviderSettings,
    StatusUpdate,
    StreamCall,
    StreamOnAnswered,
    StreamStart,
    TokenInStreamUrl,
    WebhookRejected,
    authenticated_read,
    form_params,
    json_object,
    post_for_json,
    row,
    text_field,
)
from voicecli.settings_schema import as_http_url, as_phone, as_str

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web

TOKEN_PARAM = "token"
SECRET_PARAM = "secret"
# Exotel's StatusCallback states (protocols.md B5), as our record's statuses.
STATUSES = {
    "completed": "completed",
    "failed": "failed",
    "busy": "busy",
    "no-answer": "no-answer",
    "in-progress": "in-progress",
    "answered": "in-progress",
    "ringing": "ringing",
}


@dataclass(frozen=True)
class ExotelSettings(ProviderSettings):
    account_sid: str | None = row(None, as_str, "Exotel account SID", credential=True)
    api_key: str | None = row(None, as_str, "Exotel API key", secret=True, credential=True)
    api_token: str | None = row(None, as_str, "Exotel API token", secret=True, credential=True)
    api_base: str = row("https://api.exotel.com", as_http_url, "Exotel REST base URL (no /v1)", file_only=True)
    stream_secret: str | None = row(None, as_str, "secret for static Exotel stream URLs", secret=True)
    phone_number: str | None = row(None, as_phone, "default Exotel virtual number")


def _prefers_json(request: web.Request) -> bool:
    """GET, or an Accept header that ranks application/json above XML (dynamic-URL mode)."""
    if request.method == "GET":
        return True
    best: dict[str, float] = {}
    for part in request.headers.get("Accept", "").split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        best[media.lower()] = max(q, best.get(media.lower(), 0.0))
    json_q = best.get("application/json", 0.0)
    xml_q = max(best.get("application/xml", 0.0), best.get("text/xml", 0.0))
    return json_q > 0 and json_q > xml_q


def _with_query(url: str, params: Mapping[str, str]) -> str:
    return f"{url}?{urlencode(params)}" if params else url


class ExotelProvider(Provider, ChecksAccount, TokenInStreamUrl, StreamOnAnswered):
    """Exotel Voicebot applet (bidirectional stream)."""

    name = "exotel"
    label = "Exotel"
    config_type = ExotelSettings
    config: ExotelSettings
    credentials_from = "Exotel dashboard > API"
    console_hint = (
        "Exotel App Bazaar > the flow of {number} > Voicebot applet > URL (dynamic mode); add a Hangup applet after it"
    )

    def security_notes(self) -> list[str]:
        if not self.config.stream_secret:
            return [
                "EXOTEL_STREAM_SECRET not set: a static Exotel stream URL is accepted from anyone "
                "who finds it (Exotel signs nothing); set it and add ?secret=... to the pasted URL"
            ]
        return []

    def _check_secret(self, request: web.Request) -> None:
        """With EXOTEL_STREAM_SECRET set, Exotel's requests must carry it as ?secret=... (B6):
        Exotel signs nothing, so the secret in the URLs it was given is the only proof."""
        import hmac

        configured = self.config.stream_secret
        if configured and not hmac.compare_digest(request.query.get(SECRET_PARAM, "").encode(), configured.encode()):
            raise WebhookRejected(403, "missing or wrong ?secret= (EXOTEL_STREAM_SECRET)")

    def with_secret(self, url: str) -> str:
        """`url` with ?secret=... when EXOTEL_STREAM_SECRET is set: what Exotel must be given."""
        configured = self.config.stream_secret
        return _with_query(url, {SECRET_PARAM: configured}) if configured else url

    def paste_instructions(self, public_base_url: str, agent: str) -> str:
        text = super().paste_instructions(public_base_url, agent)
        if not self.config.stream_secret:
            return text
        # The secret itself is never printed: the user has it in their settings.
        return text.replace("\n", "?secret=<EXOTEL_STREAM_SECRET>\n", 1)

    async def read_webhook(self, request: web.Request, public_url: str) -> InboundCall:
        self._check_secret(request)
        params: Mapping[str, Any] = request.query if request.method == "GET" else await _body(request)
        # Exotel's applet fetch is documented loosely (protocols.md B3): a missing CallSid is
        # taken from the stream's start message instead of refusing the call.
        return InboundCall(
            text_field(params, "CallSid"),
            text_field(params, "CallFrom") or text_field(params, "From"),
            text_field(params, "CallTo") or text_field(params, "To"),
        )

    def answer(self, request: web.Request, call: StreamCall, stream_url: str) -> web.StreamResponse:
        from xml.etree import ElementTree

        from aiohttp import web

        url = _with_query(stream_url, {TOKEN_PARAM: call.token})
        if _prefers_json(request):
            return web.json_response({"url": url})
        response = ElementTree.Element("Response")
        connect = ElementTree.SubElement(response, "Connect")
        ElementTree.SubElement(connect, "Stream", url=url)
        body = '<?xml version="1.0" encoding="UTF-8"?>' + ElementTree.tostring(response, encoding="unicode")
        return web.Response(text=body, content_type="application/xml")

    async def open_stream(
        self, request: web.Request, messages: AsyncIterator[tuple[str, dict[str, Any]]]
    ) -> StreamStart:
        async for _, message in messages:
            if message["event"] != "start":
                continue  # `connected` comes first
            start = message.get("start")
            if not isinstance(start, dict):
                raise WebhookRejected(400, "start message without a start object")
            stream_sid = start.get("stream_sid") or message.get("stream_sid")
            call_sid = start.get("call_sid")
            if not isinstance(stream_sid, str) or not isinstance(call_sid, str):
                raise WebhookRejected(400, "start message without stream_sid and call_sid")
            custom = start.get("custom_parameters")
            custom = custom if isinstance(custom, dict) else {}
            token = request.query.get(TOKEN_PARAM) or custom.get(TOKEN_PARAM)
            secret = request.query.get(SECRET_PARAM) or custom.get(SECRET_PARAM)
            from voicecli.providers.exotel_chunks import ExotelChunkingSerializer

            return StreamStart(
                serializer=ExotelChunkingSerializer(stream_sid, call_sid),
                stream_id=stream_sid,
                provider_call_id=call_sid,
                token=token if isinstance(token, str) else None,
                from_number=text_field(start, "from"),
                to_number=text_field(start, "to"),
                accepted_without_token=self._static_url_allowed(secret),
            )
        raise WebhookRejected(400, "stream closed before its start message")

    def _static_url_allowed(self, secret: Any) -> bool:
        """Static mode (a stream with no token): the pasted URL carries ?secret=...; with no
        secret configured, anyone may open one (the banner warns)."""
        import hmac

        configured = self.config.stream_secret
        if not configured:
            return True
        given = secret if isinstance(secret, str) else ""
        return hmac.compare_digest(given.encode(), configured.encode())

    def _auth(self) -> dict[str, str]:
        return {"Authorization": _basic_auth(self.config.api_key or "", self.config.api_token or "")}

    async def check_account(self, http: aiohttp.ClientSession) -> str | None:
        url = f"{self.config.api_base}/v1/Accounts/{self.config.account_sid}"
        return await authenticated_read(http, url, self._auth())

    async def dial(self, http: aiohttp.ClientSession, request: DialRequest) -> str:
        """Calls/connect.json in Connect-Voice-AI mode: the stream URL goes in StreamUrl (B4)."""
        config = self.config
        url = f"{config.api_base}/v1/Accounts/{config.account_sid}/Calls/connect.json"
        form = [
            ("From", request.to_number),  # Exotel dials `From` first: the customer
            ("CallerId", request.from_number),
            ("StreamUrl", _with_query(request.stream_url, {TOKEN_PARAM: request.call.token})),
            ("StreamType", "bidirectional"),
            ("StatusCallback", self.with_secret(request.status_url)),
            ("StatusCallbackEvents[0]", "terminal"),
            ("StatusCallbackEvents[1]", "answered"),
            ("CustomField", request.call.call_id),
        ]
        data = await post_for_json(http, url, self.label, _exotel_error, data=form, headers=self._auth())
        call = data.get("Call") or data.get("call") if isinstance(data, dict) else None
        sid = (call.get("Sid") or call.get("sid")) if isinstance(call, dict) else None
        if not isinstance(sid, str) or not sid:
            raise ProviderError("Exotel's answer had no Call Sid")
        return sid

    async def read_status(self, request: web.Request, public_url: str) -> StatusUpdate | None:
        self._check_secret(request)
        params = await _body(request)
        raw = str(params.get("Status") or params.get("CallStatus") or "").lower()
        answered = str(params.get("EventType", "")).lower() == "answered"
        status = "in-progress" if answered else STATUSES.get(raw)
        if status is None:
            raise WebhookRejected(400, "missing or unknown Status")
        # `in-progress` (answered) asks for the stream document in our answer (StreamOnAnswered).
        return StatusUpdate(text_field(params, "CallSid"), status, f"Exotel: {raw or 'answered'}")


def _exotel_error(text: str) -> str:
    try:
        data = json.loads(text)
        message = data.get("RestException", {}).get("Message") if isinstance(data, dict) else None
        return str(message or text[:200])
    except ValueError:
        return text[:200]


async def _body(request: web.Request) -> Mapping[str, Any]:
    """Exotel posts JSON, urlencoded or multipart alike (protocols.md B5)."""
    return await json_object(request) if request.content_type == "application/json" else await form_params(request)


provider = ExotelProvider


def _basic_auth(login: str, password: str) -> str:
    # Built by hand: aiohttp 3.14 deprecates BasicAuth and older versions lack encode_basic_auth.
    import base64

    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode("ascii")
