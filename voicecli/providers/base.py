"""The provider contract: what every telephony provider implements, server side and caller side.

Server side (`Provider`): read and verify the inbound webhook, answer it with the document
that points the provider at our media stream, open the stream from its first messages
(returning pipecat's serializer and the call's metadata), hang up, and dial out.
Caller side (`CallerSide`): the same protocol from the provider's end, which
`voicecli simulate` and the tests use to place emulated calls.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from voicecli.server.urls import status_url, webhook_url

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web
    from pipecat.serializers.base_serializer import FrameSerializer

    from voicecli.settings import Settings

Direction = Literal["inbound", "outbound"]


class WebhookRejected(Exception):
    """A webhook or stream request that must be refused with this HTTP status and reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class InboundCall:
    """What an inbound webhook told us about a call."""

    provider_call_id: str | None
    from_number: str | None
    to_number: str | None
    # The signature's one-time values, where the provider's signature has them (Vobiz): a
    # request that repeats one is a replay and is refused.
    nonces: tuple[str, ...] = ()


@dataclass(frozen=True)
class StatusUpdate:
    """A provider's status callback: which call, and what became of it."""

    provider_call_id: str | None
    status: str
    reason: str
    # The provider expects the stream document in the answer (Exotel's answered callback).
    answer_with_stream: bool = False
    nonces: tuple[str, ...] = ()  # as InboundCall.nonces


@dataclass(frozen=True)
class DialRequest:
    """An outbound call to place: our record, and the URLs the provider must use."""

    to_number: str
    from_number: str
    stream_url: str  # the agent's media WebSocket (ws:// or wss://), without the token
    status_url: str  # https://host/telephony/{provider}/status/{call_id}
    answer_url: str  # https://host/telephony/{provider}/answer/{call_id}
    call: StreamCall


@dataclass(frozen=True)
class StreamCall:
    """The call a stream document points at: everything the provider must hand back."""

    call_id: str
    agent: str
    direction: Direction
    from_number: str | None
    to_number: str | None
    provider_call_id: str | None
    token: str


@dataclass
class StreamStart:
    """What the first messages of a media stream established."""

    serializer: FrameSerializer
    stream_id: str
    provider_call_id: str | None
    token: str | None
    from_number: str | None = None
    to_number: str | None = None
    direction: Direction | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class StreamMessages:
    """Reads JSON objects from a media WebSocket, skipping (and counting) anything else.

    The provider's first messages are read through this before the pipeline starts, and
    the transport keeps using it, so junk is handled the same way everywhere.
    """

    def __init__(self, ws: web.WebSocketResponse, max_size: int):
        self.ws = ws
        self.max_size = max_size
        self.skipped = 0
        self.last_skip_reason = ""

    def skip(self, reason: str) -> None:
        self.skipped += 1
        self.last_skip_reason = reason

    async def __aiter__(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Yield (raw text, parsed object) for each well-formed JSON object message."""
        from aiohttp import WSMsgType

        async for msg in self.ws:
            if msg.type == WSMsgType.TEXT:
                text: str = msg.data
                if len(text) > self.max_size:
                    self.skip(f"oversized message ({len(text)} bytes)")
                    continue
                try:
                    obj = json.loads(text)
                except ValueError:
                    self.skip("message is not JSON")
                    continue
                if not isinstance(obj, dict) or not isinstance(obj.get("event"), str):
                    self.skip("message is not a JSON object with an 'event'")
                    continue
                yield text, obj
            elif msg.type == WSMsgType.BINARY:
                self.skip("binary frame")
            elif msg.type == WSMsgType.ERROR:
                self.skip(f"websocket error: {self.ws.exception()}")
                return


class Provider(ABC):
    """One telephony provider behind voicecli's contract."""

    name: ClassVar[str]
    # Settings whose values dialling out, REST hang-up and signature checks need.
    credential_settings: ClassVar[tuple[str, ...]]
    # The setting that holds the default caller ID for outbound calls.
    phone_setting: ClassVar[str]
    # Inbound audio arrives in messages of about this many milliseconds.
    frame_ms: ClassVar[int] = 20
    # Where a user finds the credentials, for `doctor`'s fixes.
    credentials_from: ClassVar[str] = "the provider's console"
    # Where the provider's console takes the inbound URL ({number} and {status_url} filled in).
    console_hint: ClassVar[str] = "{number}'s inbound call URL in the provider's console"

    def __init__(self, settings: Settings):
        self.settings = settings

    @property
    def max_concurrent(self) -> int:
        return int(self.settings.get(f"{self.name}_max_concurrent"))

    def missing_credentials(self) -> list[str]:
        """Environment variable names of credential settings that are not set."""
        return [name.upper() for name in self.credential_settings if not self.settings.get(name)]

    def security_notes(self) -> list[str]:
        """Warnings for the start-up banner about checks that are off."""
        return []

    def dial_missing(self, from_number: str | None) -> list[str]:
        """Variables to set before this provider can dial out (credentials, caller ID)."""
        missing = self.missing_credentials()
        if not from_number and not self.settings.get(self.phone_setting):
            missing.append(self.phone_setting.upper())
        return missing

    def caller_id(self, from_number: str | None) -> str:
        return from_number or str(self.settings.get(self.phone_setting))

    # --- setting up and checking the account -------------------------------------------
    @abstractmethod
    async def check_account(self, http: aiohttp.ClientSession) -> str | None:
        """A cheap authenticated read: None when the credentials are accepted, else the refusal.

        Network errors and timeouts raise; the caller bounds the time.
        """

    async def point_number(self, webhook_url: str) -> str | None:
        """Point the number at `webhook_url` through the API and say what changed.

        None where the provider has no such API or the number is not set: the user pastes it.
        """
        return None

    async def number_webhook(self) -> str | None:
        """Where the number sends its calls now, read from the API; None where it cannot tell.

        Raises ProviderError when the provider refuses the lookup.
        """
        return None

    def paste_instructions(self, public_base_url: str, agent: str) -> str:
        """The exact inbound URL to paste into the provider's console, and where."""
        number = self.settings.get(self.phone_setting) or "your number"
        where = self.console_hint.format(number=number, status_url=status_url(public_base_url, self.name))
        return f"{self.name}: paste {webhook_url(public_base_url, self.name, agent)}\n  where: {where}"

    @abstractmethod
    async def dial(self, http: aiohttp.ClientSession, request: DialRequest) -> str:
        """Place an outbound call; return the provider's call id or raise ProviderError."""

    # --- inbound webhook -------------------------------------------------------------
    @abstractmethod
    async def read_webhook(self, request: web.Request, public_url: str) -> InboundCall:
        """Verify and parse an inbound call webhook; raise WebhookRejected when it is bad."""

    @abstractmethod
    def answer(self, request: web.Request, call: StreamCall, stream_url: str) -> web.StreamResponse:
        """The document that connects the call to `stream_url` (a ws:// or wss:// URL)."""

    # --- media stream ----------------------------------------------------------------
    def check_upgrade(self, request: web.Request, public_url: str) -> bool:
        """Refuse a bad WebSocket upgrade (raise WebhookRejected) before it is accepted.

        True when the upgrade itself proves the provider sent it (a valid signature): the
        stream may then take its slot at once.
        """
        return False

    def upgrade_token(self, request: web.Request) -> str | None:
        """The stream token, where the provider keeps it in the stream URL (checked at the upgrade)."""
        return None

    @abstractmethod
    async def open_stream(
        self, request: web.Request, messages: AsyncIterator[tuple[str, dict[str, Any]]]
    ) -> StreamStart:
        """Read the stream's first messages and build its serializer; raise WebhookRejected."""

    def stream_token_fallback(self, request: web.Request, start: StreamStart) -> bool:
        """Whether a stream that carries no token at all may still run (a provider's own check)."""
        return False

    def is_stop(self, message: Mapping[str, Any]) -> bool:
        """Whether an inbound message says the caller's side has ended the stream."""
        return message.get("event") == "stop"

    async def end_stream(self, ws: web.WebSocketResponse, start: StreamStart) -> None:  # noqa: B027
        """Anything the provider wants sent on the stream before the server closes it."""

    @abstractmethod
    async def hang_up(self, http: aiohttp.ClientSession, provider_call_id: str | None) -> str:
        """End the call on the provider's side; returns what was done, for the record."""

    async def read_status(self, request: web.Request, public_url: str) -> StatusUpdate | None:
        """Verify and parse a status callback; None when it changes nothing."""
        raise WebhookRejected(404, f"{self.name} sends no status callbacks here")


@dataclass
class AgentAudio:
    """What the emulator got from one outbound message: audio, or a control event."""

    pcm16: bytes = b""
    event: str = "media"
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class SimCall:
    """An emulated call's identity on the provider's side."""

    provider_call_id: str
    stream_id: str
    from_number: str
    to_number: str
    account_id: str = "AC00000000000000000000000000000000"


class CallerSide(ABC):
    """The provider's end of the protocol, played by `voicecli simulate` and the tests."""

    frame_ms: ClassVar[int] = 20

    def __init__(self, settings: Settings):
        self.settings = settings

    @abstractmethod
    def new_call(self, from_number: str, to_number: str) -> SimCall:
        """Invent the provider's identifiers for one call."""

    @abstractmethod
    async def ring(
        self, http: aiohttp.ClientSession, server_url: str, agent: str, call: SimCall
    ) -> tuple[str, dict[str, str]]:
        """Post the inbound webhook as the provider does; return (stream URL, parameters)."""

    @abstractmethod
    async def pick_up(
        self, http: aiohttp.ClientSession, server_url: str, dial: Mapping[str, Any], call: SimCall
    ) -> tuple[str, dict[str, str]]:
        """Answer a call the server dialled, given what it sent the provider's REST API."""

    @abstractmethod
    def opening(self, call: SimCall, parameters: Mapping[str, str]) -> list[dict[str, Any]]:
        """The messages the provider sends first (connected/start)."""

    @abstractmethod
    def media(self, call: SimCall, pcm16_8k: bytes, seq: int) -> dict[str, Any]:
        """One inbound media message carrying 8 kHz 16-bit audio in the provider's encoding."""

    @abstractmethod
    def dtmf(self, call: SimCall, digit: str, seq: int) -> dict[str, Any]:
        """A key press."""

    @abstractmethod
    def hang_up(self, call: SimCall, seq: int) -> dict[str, Any] | None:
        """The message the provider sends when the caller hangs up (None: just close)."""

    @abstractmethod
    def read(self, message: Mapping[str, Any]) -> AgentAudio:
        """Decode one message the server sent."""


def text_field(params: Mapping[str, Any], name: str) -> str | None:
    """A non-empty string field of a webhook or message, else None (junk is never trusted)."""
    value = params.get(name)
    return value if isinstance(value, str) and value else None


async def authenticated_read(http: aiohttp.ClientSession, url: str, headers: Mapping[str, str]) -> str | None:
    """GET `url` with credentials: None on 200, else the provider's refusal (for check_account)."""
    async with http.get(url, headers=dict(headers)) as resp:
        if resp.status == 200:
            return None
        try:
            body = await resp.json(content_type=None)
        except ValueError:
            body = None
    detail = (body.get("message") or body.get("error")) if isinstance(body, dict) else None
    return f"GET {url} answered HTTP {resp.status}" + (f": {detail}" if detail else "")


async def form_params(request: web.Request) -> Mapping[str, Any]:
    """A webhook's fields: the form body of a POST, the query of a GET; 400 when undecodable."""
    try:
        return await request.post() if request.method == "POST" else request.query
    except ValueError:  # undecodable bytes in a form body
        raise WebhookRejected(400, "malformed form body") from None
