"""The provider contract: what every telephony provider implements on the server side.

Every provider reads and verifies its inbound webhook, answers it with the document that
points the provider at our media stream, opens the stream from its first messages
(returning pipecat's serializer and the call's metadata), reads its status callbacks and
dials out. What only some providers do is a named capability (`HangsUp`, `PointsNumbers`,
...): a class the provider also derives from, which callers test with `isinstance`.
A provider declares its own settings as a `ProviderSettings` dataclass (`config_type`) and
reads them through `self.config`, typed.

The provider's own side of a call (the emulator `voicecli simulate` and the tests use)
lives in `voicecli.emulator`.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from voicecli.server.urls import status_url, webhook_url
from voicecli.settings_schema import Setting, as_limit, as_phone

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
    # The id the dial API returned, where a provider's call id differs from it (Plivo's
    # RequestUUID): a dialled call's callbacks are matched by either.
    dial_id: str | None = None


@dataclass(frozen=True)
class StatusUpdate:
    """A provider's status callback: which call, and what became of it."""

    provider_call_id: str | None
    status: str
    reason: str
    nonces: tuple[str, ...] = ()  # as InboundCall.nonces
    dial_id: str | None = None  # as InboundCall.dial_id


@dataclass(frozen=True)
class DialRequest:
    """An outbound call to place: our record, and the URLs the provider must use."""

    to_number: str
    from_number: str
    stream_url: str  # the agent's media WebSocket (ws:// or wss://), without the token
    status_url: str  # https://host/telephony/{provider}/status/{call_id}
    answer_url: str  # https://host/telephony/{provider}/answer/{call_id}
    call: StreamCall
    # Where the provider posts its answering-machine verdict (https://host/telephony/{provider}/amd/{call_id}),
    # for a provider that `DetectsMachines` on a call that asked for detection; None: do not ask.
    machine_url: str | None = None


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
    # The provider's own check accepted a stream that carries no token (Exotel's static
    # stream URL with its secret): the call begins at the stream.
    accepted_without_token: bool = False


class Budget:
    """A token bucket: `rate` a second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst, self.level = rate, burst, burst
        self.at = time.monotonic()

    def take(self, amount: float = 1.0) -> bool:
        now = time.monotonic()
        self.level = min(self.burst, self.level + (now - self.at) * self.rate)
        self.at = now
        if self.level < amount:
            return False
        self.level -= amount
        return True


# What one stream may send. Providers send 10 to 50 messages a second of up to ~2.5 KB each
# (Twilio's 20 ms, Exotel's 100 ms frames): four times that, with a few seconds' burst.
STREAM_MESSAGES_PER_S = 200.0
STREAM_BYTES_PER_S = 128 * 1024.0
# Past the budget messages are dropped (the parsing is what a flood would cost every other
# call); this many dropped and the stream is closed: no provider sends like that.
MAX_DROPPED = 500


class StreamMessages:
    """Reads JSON objects from a media WebSocket, skipping (and counting) anything else.

    The provider's first messages are read through this before the pipeline starts, and
    the transport keeps using it, so junk and floods are handled the same way everywhere.
    """

    def __init__(self, ws: web.WebSocketResponse, max_size: int, transport: Any = None):
        self.ws = ws
        self.max_size = max_size
        self.transport = transport  # the socket under `ws`: no longer read once the stream is refused
        self.skipped = 0
        self.last_skip_reason = ""
        self.dropped = 0  # over the budget
        self.refused: str | None = None  # why the stream was ended from this side, if it was
        self._messages = Budget(STREAM_MESSAGES_PER_S, 4 * STREAM_MESSAGES_PER_S)
        self._bytes = Budget(STREAM_BYTES_PER_S, 4 * STREAM_BYTES_PER_S)

    def skip(self, reason: str) -> None:
        self.skipped += 1
        self.last_skip_reason = reason

    def __aiter__(self) -> StreamMessages:
        return self

    async def __anext__(self) -> tuple[str, dict[str, Any]]:
        """The next (raw text, parsed object) well-formed JSON object message."""
        from aiohttp import WSMsgType

        while self.refused is None:
            msg = await self.ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                break
            if msg.type == WSMsgType.ERROR:
                self.skip(f"websocket error: {self.ws.exception()}")
                break
            size = len(msg.data) if isinstance(msg.data, str | bytes) else 0
            if not (self._messages.take() and self._bytes.take(size)):
                self.dropped += 1
                self.skip("over the stream's message budget")
                if self.dropped >= MAX_DROPPED:
                    self.refused = f"the stream sent far more than any provider does ({self.dropped} messages dropped)"
                    # What it has sent meanwhile is never parsed: the close handshake would
                    # otherwise read (and burn a core on) up to its timeout's worth of junk.
                    pause = getattr(self.transport, "pause_reading", None)  # uvloop's is no ReadTransport
                    if pause is not None:
                        pause()
                continue
            if msg.type == WSMsgType.BINARY:
                self.skip("binary frame")
                continue
            if msg.type != WSMsgType.TEXT:
                continue
            text: str = msg.data
            if len(text) > self.max_size:
                self.skip(f"oversized message ({len(text)} bytes)")
                continue
            try:
                obj = json.loads(text)
            except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth
                self.skip("message is not JSON")
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("event"), str):
                self.skip("message is not a JSON object with an 'event'")
                continue
            return text, obj
        raise StopAsyncIteration


# --- a provider's own settings ---------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """How one field of a ProviderSettings is declared as a setting."""

    parse: Callable[[Any], Any]  # the value's parser (settings_schema)
    help: str  # "{label}" becomes the provider's label
    secret: bool = False
    file_only: bool = False
    # Needed to dial out, hang up through the API and check signatures (`doctor` checks them).
    credential: bool = False


def row(
    default: Any,
    parse: Callable[[Any], Any],
    help: str,
    *,
    secret: bool = False,
    file_only: bool = False,
    credential: bool = False,
) -> Any:
    """A ProviderSettings field declared as the setting `{provider}_{field}`."""
    return field(default=default, metadata={"row": Row(parse, help, secret, file_only, credential)})


@dataclass(frozen=True)
class ProviderSettings:
    """A provider's settings, typed. Subclasses add their fields with `row`; each field is
    the setting `{provider}_{field}` (variable `{PROVIDER}_{FIELD}`) in voicecli.toml, the
    environment, the store and the settings API."""

    phone_number: str | None = row(None, as_phone, "default {label} caller ID")
    max_concurrent: int = row(10, as_limit, "concurrent {label} calls")

    @classmethod
    def _fields(cls) -> list[Field[Any]]:
        shared = {f.name for f in fields(ProviderSettings)}
        declared = fields(cls)  # type: ignore[arg-type]
        # The provider's own fields first (credentials read best first), then the shared ones.
        return [f for f in declared if f.name not in shared] + [f for f in declared if f.name in shared]

    @classmethod
    def rows(cls, provider: str, label: str) -> tuple[Setting, ...]:
        """The settings this provider declares, for the settings table."""
        out = []
        for f in cls._fields():
            spec: Row = f.metadata["row"]
            default = None if f.default is MISSING else f.default
            help_text = spec.help.format(label=label)
            out.append(
                Setting(f"{provider}_{f.name}", default, spec.parse, help_text, spec.secret, file_only=spec.file_only)
            )
        return tuple(out)

    @classmethod
    def credentials(cls, provider: str) -> tuple[str, ...]:
        """The names of the settings marked as credentials."""
        return tuple(f"{provider}_{f.name}" for f in cls._fields() if f.metadata["row"].credential)

    @classmethod
    def read(cls, settings: Settings, provider: str) -> Self:
        """This provider's values from the merged settings."""
        return cls(**{f.name: settings.get(f"{provider}_{f.name}") for f in cls._fields()})


class Provider(ABC):
    """One telephony provider behind voicecli's contract."""

    name: ClassVar[str]
    label: ClassVar[str]  # how messages name it: "Twilio"
    config_type: ClassVar[type[ProviderSettings]]
    # Where a user finds the credentials, for `doctor`'s fixes.
    credentials_from: ClassVar[str] = "the provider's console"
    # Where the provider's console takes the inbound URL ({number} and {status_url} filled in).
    console_hint: ClassVar[str] = "{number}'s inbound call URL in the provider's console"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.config = self.config_type.read(settings, self.name)

    @property
    def max_concurrent(self) -> int:
        return self.config.max_concurrent

    @property
    def phone_setting(self) -> str:
        return f"{self.name}_phone_number"

    @property
    def credential_settings(self) -> tuple[str, ...]:
        return self.config_type.credentials(self.name)

    def missing_credentials(self) -> list[str]:
        """Environment variable names of credential settings that are not set."""
        return [name.upper() for name in self.credential_settings if not self.settings.get(name)]

    def security_notes(self) -> list[str]:
        """Warnings for the start-up banner about checks that are off."""
        return []

    def dial_missing(self, from_number: str | None) -> list[str]:
        """Variables to set before this provider can dial out (credentials, caller ID)."""
        missing = self.missing_credentials()
        if not from_number and not self.config.phone_number:
            missing.append(self.phone_setting.upper())
        return missing

    def caller_id(self, from_number: str | None) -> str:
        return from_number or str(self.config.phone_number)

    def paste_instructions(self, public_base_url: str, agent: str) -> str:
        """The exact inbound URL to paste into the provider's console, and where."""
        number = self.config.phone_number or "your number"
        where = self.console_hint.format(number=number, status_url=status_url(public_base_url, self.name))
        return f"{self.name}: paste {webhook_url(public_base_url, self.name, agent)}\n  where: {where}"

    # --- calls -------------------------------------------------------------------------
    @abstractmethod
    async def read_webhook(self, request: web.Request, public_url: str) -> InboundCall:
        """Verify and parse an inbound call webhook (or a dialled call's answer callback);
        raise WebhookRejected when it is bad."""

    @abstractmethod
    def answer(self, request: web.Request, call: StreamCall, stream_url: str) -> web.StreamResponse:
        """The document that connects the call to `stream_url` (a ws:// or wss:// URL)."""

    @abstractmethod
    async def open_stream(
        self, request: web.Request, messages: AsyncIterator[tuple[str, dict[str, Any]]]
    ) -> StreamStart:
        """Read the stream's first messages and build its serializer; raise WebhookRejected."""

    def is_stop(self, message: Mapping[str, Any]) -> bool:
        """Whether an inbound message says the caller's side has ended the stream."""
        return message.get("event") == "stop"

    @abstractmethod
    async def read_status(self, request: web.Request, public_url: str) -> StatusUpdate | None:
        """Verify and parse a status callback; None when it changes nothing."""

    @abstractmethod
    async def dial(self, http: aiohttp.ClientSession, request: DialRequest) -> str:
        """Place an outbound call; return the provider's id for it or raise ProviderError."""


# --- capabilities: what only some providers do --------------------------------------------
class Capability:
    """A named thing only some providers do; `capabilities()` lists a provider's."""

    capability: ClassVar[str]


class ChecksAccount(Capability, ABC):
    capability = "account check"

    @abstractmethod
    async def check_account(self, http: aiohttp.ClientSession) -> str | None:
        """A cheap authenticated read: None when the credentials are accepted, else the refusal.

        Network errors and timeouts raise; the caller bounds the time.
        """


class HangsUp(Capability, ABC):
    """Ends a call through the provider's API (others end it by closing the stream)."""

    capability = "hang-up"

    @abstractmethod
    async def hang_up(self, http: aiohttp.ClientSession, provider_call_id: str | None) -> str:
        """End the call on the provider's side; returns what was done, for the record."""


class SendsStop(Capability, ABC):
    """Wants a message on the stream before the server closes it (the Plivo family's `stop`)."""

    capability = "stop message"

    @abstractmethod
    async def end_stream(self, ws: web.WebSocketResponse, start: StreamStart) -> None:
        """Send it (the socket may be closed already)."""


class PointsNumbers(Capability, ABC):
    """Points the number at the server through the API (`serve --update-webhook`)."""

    capability = "number pointing"

    @abstractmethod
    async def point_number(self, webhook_url: str) -> str | None:
        """Point the number at `webhook_url` and say what changed; None when the number or
        the credentials are not set (the user pastes the URL)."""

    @abstractmethod
    async def number_webhook(self) -> str | None:
        """Where the number sends its calls now; None where it cannot tell.

        Raises ProviderError when the provider refuses the lookup.
        """


class SignsUpgrades(Capability, ABC):
    """Signs the media WebSocket's upgrade request (Twilio)."""

    capability = "signed stream upgrade"

    @abstractmethod
    def check_upgrade(self, request: web.Request, public_url: str) -> bool:
        """Refuse a forged upgrade (raise WebhookRejected) before it is accepted. True when
        a valid signature proves the provider sent it: the stream may take its slot at once."""


class TokenInStreamUrl(Capability):
    """Keeps the stream token in the stream URL's query, so it is checked at the upgrade."""

    capability = "token in stream URL"
    token_param: ClassVar[str] = "token"

    def upgrade_token(self, request: web.Request) -> str | None:
        return request.query.get(self.token_param)


@dataclass(frozen=True)
class TransferRequest:
    """A live call handed to a person: one of the agent's `[transfer] destinations`."""

    call_id: str
    provider_call_id: str | None
    destination: str  # its name in the agent file (the model names it; never a number it heard)
    number: str
    caller_id: str | None  # the call's own number: the one called (inbound) or shown (outbound)
    announce: str | None  # said to the caller by the provider, before it dials
    document_url: str  # where a provider that fetches the new document (the Plivo family) gets it


class Transfers(Capability, ABC):
    """Redirects a live call to another number through the provider's API (cold transfer)."""

    capability = "transfer"

    @abstractmethod
    async def transfer(self, http: aiohttp.ClientSession, request: TransferRequest) -> str:
        """Redirect the call; what was done, for the record. ProviderError when refused."""


class FetchesTransfer(Transfers, ABC):
    """Fetches the transferred call's new document from voicecli (`document_url`)."""

    @abstractmethod
    async def read_transfer(self, request: web.Request, public_url: str) -> None:
        """Check that the provider sent this request for the document; WebhookRejected if not."""

    @abstractmethod
    def transfer_document(self, request: TransferRequest) -> web.StreamResponse:
        """The document that says `announce` and dials the destination with the call's caller ID."""


@dataclass(frozen=True)
class MachineVerdict:
    """A provider's answering-machine callback: who answered, and whether the greeting is over."""

    provider_call_id: str | None
    answered_by: Literal["human", "machine", "unknown"]
    detail: str  # the provider's own words, for the log and the record: "Twilio: machine_end_beep"
    greeting_ended: bool = False  # a machine whose greeting (and beep) has already played
    nonces: tuple[str, ...] = ()  # as InboundCall.nonces
    dial_id: str | None = None  # as InboundCall.dial_id


class DetectsMachines(Capability, ABC):
    """Tells a person from an answering machine on a dialled call, itself, and posts its
    verdict to the dial's `machine_url` (protocols.md F3). Others are detected in the pipeline."""

    capability = "machine detection"
    # How long after the answer the verdict may take to come: the greeting waits up to this
    # (a little more, for the callback's trip), then the call goes on as if a person answered.
    machine_detection_s: ClassVar[float]

    @abstractmethod
    async def read_machine_verdict(self, request: web.Request, public_url: str) -> MachineVerdict:
        """Verify and parse the verdict callback; raise WebhookRejected when it is bad."""


class StreamOnAnswered(Capability):
    """Asks for the stream document in the answer to a dialled call's `in-progress` status
    callback (Exotel's answered callback), not from an answer URL."""

    capability = "stream from status callback"


def capabilities(provider: Provider) -> list[str]:
    """The names of what this provider can do beyond the contract, for status and doctor."""
    return [c.capability for c in type(provider).__mro__ if issubclass(c, Capability) and "capability" in vars(c)]


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


async def post_for_json(
    http: aiohttp.ClientSession,
    url: str,
    label: str,
    refusal_of: Callable[[str], str],
    action: str = "the call",
    **request: Any,
) -> Any:
    """POST a dial to a provider's REST API and return its JSON answer; ProviderError, in the
    provider's words (`refusal_of(body)`), when it refuses, cannot be reached or answers badly."""
    import aiohttp

    from voicecli.errors import ProviderError

    try:
        async with http.post(url, **request) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise ProviderError(f"{label} refused {action}: HTTP {resp.status}: {refusal_of(text)}")
            return json.loads(text)
    except ProviderError:
        raise
    except (ValueError, aiohttp.ClientError, TimeoutError) as exc:
        raise ProviderError(f"{label} could not be reached or answered badly: {type(exc).__name__}: {exc}") from None


# What reading a malformed body raises: bad bytes (UnicodeDecodeError is a ValueError), an
# unknown charset (LookupError), bad JSON, or JSON nested past the parser's depth.
MALFORMED_BODY = (ValueError, LookupError, RecursionError)


# A body must arrive within this: a client that sends its body a byte at a time gets 408.
BODY_TIMEOUT_S = 5.0


async def form_params(request: web.Request) -> Mapping[str, Any]:
    """A webhook's fields: the form body of a POST, the query of a GET; 400 when undecodable."""
    import asyncio

    if request.method != "POST":
        return request.query
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            return await request.post()
    except TimeoutError:
        raise WebhookRejected(408, f"request body not received within {BODY_TIMEOUT_S:g} s") from None
    except MALFORMED_BODY:
        raise WebhookRejected(400, "malformed form body") from None


async def json_object(request: web.Request) -> dict[str, Any]:
    """A JSON object body; 400 when it is not one (bad bytes or charset, too deep, not an object)."""
    import asyncio

    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            data = await request.json()
    except TimeoutError:
        raise WebhookRejected(408, f"request body not received within {BODY_TIMEOUT_S:g} s") from None
    except MALFORMED_BODY:
        raise WebhookRejected(400, "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise WebhookRejected(400, "the body must be a JSON object")
    return data
