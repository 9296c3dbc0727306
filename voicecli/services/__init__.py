"""The speech and language service registry: TOML names to pipecat services, imported lazily.

An agent's `[stt]`, `[llm]` and `[tts]` tables name a `provider` from these tables. Each
entry says which options the table may hold and which keys (environment variables) the
service needs, so agents are validated at start-up without importing any service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from voicecli.agents import Agent

Kind = Literal["stt", "llm", "tts"]


@dataclass(frozen=True)
class ServiceSpec:
    """One service: its factory ("module:function"), options, and the keys it needs."""

    factory: str
    options: frozenset[str]
    keys: tuple[str, ...] = ()
    # With this option set (an OpenAI-compatible server), the keys become optional.
    keys_optional_with: str | None = None
    offline: bool = False
    # An LLM that reads InputDTMFFrame itself; others hear key presses as "DTMF: 1" text.
    reads_dtmf: bool = False

    def missing_keys(self, options: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
        if self.keys_optional_with and options.get(self.keys_optional_with):
            return []
        return [key for key in self.keys if not env.get(key)]


_OPENAI = frozenset({"model", "base_url"})

SERVICES: dict[Kind, dict[str, ServiceSpec]] = {
    "stt": {
        "pocketsphinx": ServiceSpec(
            "voicecli.services.factories:pocketsphinx_stt", frozenset({"language"}), offline=True
        ),
        "deepgram": ServiceSpec(
            "voicecli.services.factories:deepgram_stt",
            frozenset({"model", "language"}),
            ("DEEPGRAM_API_KEY",),
        ),
        "openai": ServiceSpec(
            "voicecli.services.factories:openai_stt",
            _OPENAI | {"language"},
            ("OPENAI_API_KEY",),
            "base_url",
        ),
    },
    "llm": {
        "script": ServiceSpec(
            "voicecli.services.factories:script_llm",
            frozenset({"fallback", "rules"}),
            offline=True,
            reads_dtmf=True,
        ),
        "openai": ServiceSpec(
            "voicecli.services.factories:openai_llm",
            _OPENAI | {"temperature"},
            ("OPENAI_API_KEY",),
            "base_url",
        ),
    },
    "tts": {
        "espeak": ServiceSpec("voicecli.services.factories:espeak_tts", frozenset({"voice", "rate_wpm"}), offline=True),
        "openai": ServiceSpec(
            "voicecli.services.factories:openai_tts",
            _OPENAI | {"voice"},
            ("OPENAI_API_KEY",),
            "base_url",
        ),
        "cartesia": ServiceSpec(
            "voicecli.services.factories:cartesia_tts",
            frozenset({"model", "voice", "language"}),
            ("CARTESIA_API_KEY",),
        ),
        "elevenlabs": ServiceSpec(
            "voicecli.services.factories:elevenlabs_tts",
            frozenset({"model", "voice", "language"}),
            ("ELEVENLABS_API_KEY",),
        ),
    },
}


def create_service(kind: Kind, agent: Agent, env: Mapping[str, str]) -> Any:
    """Build the pipecat service an agent names for `kind` (stt, llm or tts)."""
    config = getattr(agent, kind)
    spec = SERVICES[kind][config.provider]
    module_name, _, attr = spec.factory.partition(":")
    return getattr(import_module(module_name), attr)(config.options, env, agent)
