"""Twilio: TwiML `<Connect><Stream>`, Media Streams (mu-law 8 kHz), REST hang-up.

Wire details: ../shared/protocols.md section A; Twilio's docs:
https://www.twilio.com/docs/voice/media-streams/websocket-messages
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from voicecli.errors import ProviderError
from voicecli.providers.base import (
    ChecksAccount,
    DetectsMachines,
    DialRequest,
    HangsUp,
    InboundCall,
    MachineVerdict,
    PointsNumbers,
    Provider,
    ProviderSettings,
    SignsUpgrades,
    StatusUpdate,
    StreamCall,
    StreamStart,
    TransferRequest,
    Transfers,
    WebhookRejected,
    form_params,
    row,
    text_field,
)
from voicecli.settings_schema import as_http_url, as_str

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web

STREAM_TOKEN_PARAM = "stream_token"
# Finding and updating the number is two requests; `serve --update-webhook` waits this long.
POINT_TIMEOUT_S = 15.0
# Twilio's call states, as our record's statuses (queued and initiated are both "queued").
STATUSES = {
    "queued": "queued",
    "initiated": "queued",
    "ringing": "ringing",
    "in-progress": "in-progress",
    "answered": "in-progress",
    "completed": "completed",
    "busy": "busy",
    "no-answer": "no-answer",
    "canceled": "canceled",
    "failed": "failed",
}


# Twilio's AnsweredBy values (protocols.md F3): who answered, and whether a machine's
# greeting has ended (DetectMessageEnd waits for the beep, or the silence after it).
ANSWERED_BY: dict[str, tuple[Literal["human", "machine", "unknown"], bool]] = {
    "human": ("human", False),
    "machine_start": ("machine", False),
    "machine_end_beep": ("machine", True),
    "machine_end_silence": ("machine", True),
    "machine_end_other": ("machine", True),
    "fax": ("machine", True),
    "unknown": ("unknown", False),
}
# MachineDetectionTimeout's default: the longest Twilio takes to decide.
MACHINE_DETECTION_S = 30.0


# The SDK's async client ignores its constructor's timeout (twilio 9.13): every REST call
# here is bounded with asyncio.timeout instead.
REST_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class TwilioSettings(ProviderSettings):
    account_sid: str | None = row(None, as_str, "Twilio account SID (AC...)", credential=True)
    auth_token: str | None = row(None, as_str, "Twilio auth token", secret=True, credential=True)
    api_base: str = row("https://api.twilio.com", as_http_url, "Twilio REST base URL", file_only=True)


@asynccontextmanager
async def _rest(config: TwilioSettings, timeout_s: float = REST_TIMEOUT_S) -> AsyncIterator[Any]:
    """The twilio SDK's async client at TWILIO_API_BASE, closed after use, time-bounded."""
    import asyncio  # here: the settings table imports this module, and CLI commands stay fast

    from twilio.http.async_http_client import AsyncTwilioHttpClient
    from twilio.rest import Client

    # An explicit environment keeps the SDK from reading TWILIO_REGION/TWILIO_EDGE from
    # os.environ, which would rewrite the API host (protocols.md A5).
    client = Client(
        config.account_sid,
        config.auth_token,
        http_client=AsyncTwilioHttpClient(),
        environment={"VOICECLI": "1"},
    )
    client.api.base_url = config.api_base
    try:
        async with asyncio.timeout(timeout_s):
            yield client
    finally:
        await client.http_client.close()


def refusal(exc: Exception) -> str:
    """`HTTP 401: Authenticate` from either twilio SDK error (list pages raise the plain one)."""
    status, message = getattr(exc, "status", None), getattr(exc, "msg", None)
    response = exc.args[1] if status is None and len(exc.args) > 1 else None
    if response is not None:
        status = getattr(response, "status_code", None)
        try:
            message = json.loads(response.text).get("message")
        except (ValueError, AttributeError, TypeError):
            message = None
    return f"HTTP {status}: {message or exc.args[0]}"


class TwilioProvider(Provider, ChecksAccount, DetectsMachines, HangsUp, PointsNumbers, SignsUpgrades, Transfers):
    """Twilio Programmable Voice with bidirectional Media Streams."""

    name = "twilio"
    label = "Twilio"
    config_type = TwilioSettings
    config: TwilioSettings
    credentials_from = "console.twilio.com > Account Info"
    machine_detection_s = MACHINE_DETECTION_S
    console_hint = (
        'Twilio console > Phone Numbers > {number} > Voice configuration > "A call comes in": Webhook, HTTP POST'
    )

    def security_notes(self) -> list[str]:
        if not self.config.auth_token:
            return ["TWILIO_AUTH_TOKEN not set: Twilio webhook signatures are NOT checked"]
        return []

    def _validator(self) -> Any:
        from twilio.request_validator import RequestValidator

        return RequestValidator(self.config.auth_token)

    async def _signed_params(self, request: web.Request, public_url: str) -> Mapping[str, Any]:
        params = await form_params(request)
        if self.config.auth_token:
            signature = request.headers.get("X-Twilio-Signature", "")
            # GET webhooks carry their fields in the URL, which is what is signed.
            signed = params if request.method == "POST" else {}
            if not signature or not self._validator().validate(public_url, signed, signature):
                raise WebhookRejected(403, "invalid or missing X-Twilio-Signature")
        return params

    async def read_webhook(self, request: web.Request, public_url: str) -> InboundCall:
        params = await self._signed_params(request, public_url)
        call_sid = params.get("CallSid")
        if not isinstance(call_sid, str) or not call_sid:
            raise WebhookRejected(400, "missing CallSid: not a Twilio voice webhook")
        return InboundCall(call_sid, text_field(params, "From"), text_field(params, "To"))

    def answer(self, request: web.Request, call: StreamCall, stream_url: str) -> web.StreamResponse:
        from aiohttp import web

        return web.Response(text=self.twiml(call, stream_url), content_type="text/xml")

    def twiml(self, call: StreamCall, stream_url: str) -> str:
        """`<Connect><Stream>` with the spec's parameters; Twilio drops query strings."""
        from twilio.twiml.voice_response import Connect, VoiceResponse

        response, connect = VoiceResponse(), Connect()
        stream = connect.stream(url=stream_url)
        parameters = {
            "agent_name": call.agent,
            "direction": call.direction,
            "from_number": call.from_number or "",
            "to_number": call.to_number or "",
            "twilio_call_sid": call.provider_call_id or "",
        }
        if call.direction == "outbound":
            parameters["call_id"] = call.call_id
        parameters[STREAM_TOKEN_PARAM] = call.token
        for name, value in parameters.items():
            stream.parameter(name=name, value=value)
        response.append(connect)
        return str(response)

    def check_upgrade(self, request: web.Request, public_url: str) -> bool:
        # Twilio signs the upgrade too (error 31930); check it when present, never require it.
        signature = request.headers.get("X-Twilio-Signature")
        if signature is None or not self.config.auth_token:
            return False
        parts = urlsplit(public_url)
        candidates = {public_url}
        for scheme in ("https", "wss", "http", "ws"):
            candidates.add(urlunsplit((scheme, *parts[1:])))
        validator = self._validator()
        if not any(validator.validate(url, {}, signature) for url in candidates):
            raise WebhookRejected(403, "invalid X-Twilio-Signature on the stream upgrade")
        return True

    async def open_stream(
        self, request: web.Request, messages: AsyncIterator[tuple[str, dict[str, Any]]]
    ) -> StreamStart:
        from pipecat.serializers.twilio import TwilioFrameSerializer

        async for _, message in messages:
            if message["event"] != "start":
                continue  # `connected` comes first; nothing else matters before `start`
            start = message.get("start")
            if not isinstance(start, dict):
                raise WebhookRejected(400, "start message without a start object")
            stream_sid, call_sid = start.get("streamSid"), start.get("callSid")
            if not isinstance(stream_sid, str) or not isinstance(call_sid, str):
                raise WebhookRejected(400, "start message without streamSid and callSid")
            params = start.get("customParameters")
            params = params if isinstance(params, dict) else {}
            serializer = TwilioFrameSerializer(
                stream_sid, call_sid, params=TwilioFrameSerializer.InputParams(auto_hang_up=False)
            )
            direction = params.get("direction")
            return StreamStart(
                serializer=serializer,
                stream_id=stream_sid,
                provider_call_id=call_sid,
                token=params.get(STREAM_TOKEN_PARAM),
                from_number=_str(params.get("from_number")),
                to_number=_str(params.get("to_number")),
                direction=direction if direction in ("inbound", "outbound") else None,
            )
        raise WebhookRejected(400, "stream closed before its start message")

    async def read_status(self, request: web.Request, public_url: str) -> StatusUpdate | None:
        params = await self._signed_params(request, public_url)
        status = STATUSES.get(str(params.get("CallStatus", "")))
        if status is None:
            raise WebhookRejected(400, "missing or unknown CallStatus")
        return StatusUpdate(text_field(params, "CallSid"), status, f"Twilio: {params.get('CallStatus')}")

    async def read_machine_verdict(self, request: web.Request, public_url: str) -> MachineVerdict:
        params = await self._signed_params(request, public_url)
        answered_by = str(params.get("AnsweredBy", ""))
        if answered_by not in ANSWERED_BY:
            raise WebhookRejected(400, "missing or unknown AnsweredBy")
        verdict, ended = ANSWERED_BY[answered_by]
        return MachineVerdict(text_field(params, "CallSid"), verdict, f"Twilio: {answered_by}", greeting_ended=ended)

    async def dial(self, http: aiohttp.ClientSession, request: DialRequest) -> str:
        from twilio.base.exceptions import TwilioException

        machine: dict[str, str] = {}
        if request.machine_url:
            # Asynchronous AMD: the call is answered (and streamed) at once, the verdict is
            # posted when Twilio has it; DetectMessageEnd waits for a machine's beep (F3).
            machine = dict(
                machine_detection="DetectMessageEnd",
                async_amd="true",
                async_amd_status_callback=request.machine_url,
                async_amd_status_callback_method="POST",
            )
        try:
            async with _rest(self.config) as client:
                call = await client.calls.create_async(
                    to=request.to_number,
                    from_=request.from_number,
                    twiml=self.twiml(request.call, request.stream_url),
                    status_callback=request.status_url,
                    status_callback_event=["initiated", "ringing", "answered", "completed"],
                    status_callback_method="POST",
                    **machine,
                )
        except TwilioException as exc:
            raise ProviderError(f"Twilio refused the call: {refusal(exc)}") from None
        except Exception as exc:  # timeouts, refused connections, malformed answers
            raise ProviderError(f"Twilio could not be reached: {type(exc).__name__}: {exc}") from None
        if not isinstance(getattr(call, "sid", None), str) or not call.sid:
            raise ProviderError("Twilio's answer had no call sid")
        return call.sid

    async def hang_up(self, http: aiohttp.ClientSession, provider_call_id: str | None) -> str:
        missing = self.missing_credentials()
        if missing:
            return f"not hung up through Twilio's API: {', '.join(missing)} not set"
        if not provider_call_id:
            return "not hung up through Twilio's API: no call sid"
        from twilio.base.exceptions import TwilioRestException

        try:
            async with _rest(self.config) as client:
                await client.calls(provider_call_id).update_async(status="completed")
        except TwilioRestException as exc:
            if exc.status == 404:
                return "call had already ended at Twilio"
            return f"Twilio refused the hang-up: {refusal(exc)}"
        except Exception as exc:  # network failures and timeouts: the call still ends on our side
            return f"Twilio hang-up failed: {type(exc).__name__}: {exc}"
        return "hung up through Twilio's REST API"

    async def transfer(self, http: aiohttp.ClientSession, request: TransferRequest) -> str:
        """The live call's TwiML replaced: the announcement, then a <Dial> (the stream ends)."""
        from xml.etree import ElementTree

        from twilio.base.exceptions import TwilioRestException

        from voicecli.errors import ProviderError

        missing = self.missing_credentials()
        if missing:
            raise ProviderError(f"cannot transfer through Twilio's API: {', '.join(missing)} not set")
        if not request.provider_call_id:
            raise ProviderError("cannot transfer through Twilio's API: no call sid")
        response = ElementTree.Element("Response")
        if request.announce:
            ElementTree.SubElement(response, "Say").text = request.announce
        dial = ElementTree.SubElement(response, "Dial", {"callerId": request.caller_id} if request.caller_id else {})
        dial.text = request.number
        try:
            async with _rest(self.config) as client:
                await client.calls(request.provider_call_id).update_async(
                    twiml=ElementTree.tostring(response, encoding="unicode")
                )
        except TwilioRestException as exc:
            raise ProviderError(f"Twilio refused the transfer: {refusal(exc)}") from None
        except Exception as exc:  # network failures and timeouts
            raise ProviderError(f"Twilio transfer failed: {type(exc).__name__}: {exc}") from None
        return "transferred through Twilio's REST API"

    # --- the account and the number ---------------------------------------------------
    async def check_account(self, http: aiohttp.ClientSession) -> str | None:
        from twilio.base.exceptions import TwilioException

        try:
            async with _rest(self.config) as client:
                await client.api.v2010.accounts(self.config.account_sid).fetch_async()
        except TwilioException as exc:
            return f"Twilio refused them: {refusal(exc)}"
        return None

    async def _number(self, client: Any) -> Any:
        """The account's IncomingPhoneNumber for TWILIO_PHONE_NUMBER."""
        phone = self.config.phone_number
        numbers = await client.incoming_phone_numbers.list_async(phone_number=phone, limit=1)
        if not numbers:
            raise ProviderError(
                f"{phone} is not a number of Twilio account {self.config.account_sid}: check TWILIO_PHONE_NUMBER"
            )
        return numbers[0]

    def _number_known(self) -> bool:
        return not self.missing_credentials() and bool(self.config.phone_number)

    async def number_webhook(self) -> str | None:
        if not self._number_known():
            return None
        from twilio.base.exceptions import TwilioException

        try:
            async with _rest(self.config) as client:
                number = await self._number(client)
        except TwilioException as exc:
            raise ProviderError(f"Twilio refused the number lookup: {refusal(exc)}") from None
        return str(number.voice_url or "")

    async def point_number(self, webhook_url: str) -> str | None:
        if not self._number_known():
            return None  # not enough to find the number: the user pastes the URL instead
        from twilio.base.exceptions import TwilioException

        phone = self.config.phone_number
        try:
            async with _rest(self.config, POINT_TIMEOUT_S) as client:
                number = await self._number(client)
                before = number.voice_url or "(none)"
                if number.voice_url == webhook_url and (number.voice_method or "POST").upper() == "POST":
                    return f"Twilio number {phone} already sends calls to {webhook_url}"
                await client.incoming_phone_numbers(number.sid).update_async(voice_url=webhook_url, voice_method="POST")
        except TwilioException as exc:
            raise ProviderError(f"Twilio refused to update {phone}: {refusal(exc)}") from None
        except ProviderError:
            raise
        except TimeoutError:
            raise ProviderError(
                f"Twilio did not answer within {POINT_TIMEOUT_S:g} s; {phone} was not updated"
            ) from None
        except Exception as exc:  # refused connections, malformed answers
            raise ProviderError(f"Twilio could not be reached to update {phone}: {type(exc).__name__}: {exc}") from None
        return f"Twilio number {phone}: voice URL changed from {before} to {webhook_url} (POST)"


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


provider = TwilioProvider
