"""The caller side of the provider contract: the provider's end of a call.

`voicecli simulate` and the tests place emulated calls through these, speaking each
provider's real webhooks and stream messages to the real server.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import aiohttp

    from voicecli.providers.base import Provider, ProviderSettings
    from voicecli.settings import Settings


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

    # The server side it talks to: its settings (credentials to sign with) are the caller's.
    provider: ClassVar[type[Provider]]
    frame_ms: ClassVar[int] = 20
    # The field that names the stream in the messages the server sends.
    stream_id_field: ClassVar[str] = "streamId"
    # The message the server must send before it ends a stream, where the provider wants one.
    stop_event: ClassVar[str | None] = None

    def __init__(self, settings: Settings):
        self.settings = settings
        self.config: ProviderSettings = self.provider.config_type.read(settings, self.provider.name)

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
    async def call_ended(
        self, http: aiohttp.ClientSession, server_url: str, dial: Mapping[str, Any], call: SimCall
    ) -> int:
        """Post the provider's final status callback for a call the server dialled, to the
        URL the dial gave, as the provider does after the call; return the HTTP status."""

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

    def stream_id_of(self, message: Mapping[str, Any]) -> Any:
        return message.get(self.stream_id_field)

    def violations(self, message: Mapping[str, Any]) -> list[str]:
        """What in one message the server sent breaks the provider's rules (none by default)."""
        return []


def on_server(url: str, server_url: str) -> str:
    """`url` (as the provider was given it: public) sent to the server under test instead."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return server_url.rstrip("/") + urlunsplit(("", "", parts.path, parts.query, ""))


def mulaw_audio(message: Mapping[str, Any], audio_event: str) -> AgentAudio:
    """A server message of a mu-law provider: its decoded audio when it is `audio_event`."""
    import base64

    from voicecli.call.audio import ulaw_decode  # numpy: only the emulator needs it

    event = str(message.get("event"))
    if event == audio_event:
        payload = message.get("media", {}).get("payload", "")
        return AgentAudio(ulaw_decode(base64.b64decode(payload)), "media", message)
    return AgentAudio(b"", event, message)
