"""The speech and language service registry: TOML names to pipecat services, imported lazily.

An agent's `[stt]`, `[llm]` and `[tts]` tables name a `provider` from these tables. Each
entry owns its options' schema (each option's parser, which are required) and says which
keys (environment variables) the service needs, so agents are validated at start-up
without importing any service. Nothing here imports `voicecli.agents`: agents use services.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, Literal

from voicecli.services.options import Option, OptionError, as_given, text
from voicecli.services.script_rules import parse_rules

Kind = Literal["stt", "llm", "tts"]


@dataclass(frozen=True)
class ServiceConfig:
    """One `[stt]`, `[llm]` or `[tts]` table: the provider name and its parsed options."""

    provider: str
    options: Mapping[str, Any]


def _options(*names: str) -> dict[str, Option]:
    """Options the service itself checks when it is built."""
    return dict.fromkeys(names, as_given)


@dataclass(frozen=True)
class ServiceSpec:
    """One service: its factory ("module:function"), its options' parsers, the keys it needs."""

    factory: str
    options: Mapping[str, Option]
    keys: tuple[str, ...] = ()
    # With this option set (an OpenAI-compatible server), the keys become optional.
    keys_optional_with: str | None = None
    offline: bool = False
    # An LLM that reads InputDTMFFrame itself; others hear key presses as "DTMF: 1" text.
    reads_dtmf: bool = False
    # Parsed even when absent (the parser says what is missing).
    required: frozenset[str] = field(default_factory=frozenset)

    def parse(self, table: Mapping[str, Any]) -> dict[str, Any]:
        """The table's options, parsed; OptionError(problem, key + where) for the first bad one."""
        for key in table:
            if key not in self.options:
                raise OptionError(f"unknown key (valid: {', '.join(sorted(self.options))})", key)
        parsed = {}
        for key, parse in self.options.items():
            if key in table or key in self.required:
                try:
                    parsed[key] = parse(table.get(key))
                except OptionError as exc:
                    raise OptionError(exc.problem, key + exc.where) from None
        return parsed

    def missing_keys(self, options: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
        if self.keys_optional_with and options.get(self.keys_optional_with):
            return []
        return [key for key in self.keys if not env.get(key)]


_OPENAI = ("model", "base_url")

SERVICES: dict[Kind, dict[str, ServiceSpec]] = {
    "stt": {
        "pocketsphinx": ServiceSpec("voicecli.services.factories:pocketsphinx_stt", _options("language"), offline=True),
        "deepgram": ServiceSpec(
            "voicecli.services.factories:deepgram_stt",
            _options("model", "language"),
            ("DEEPGRAM_API_KEY",),
        ),
        "openai": ServiceSpec(
            "voicecli.services.factories:openai_stt",
            _options(*_OPENAI, "language"),
            ("OPENAI_API_KEY",),
            "base_url",
        ),
    },
    "llm": {
        "script": ServiceSpec(
            "voicecli.services.factories:script_llm",
            {"rules": parse_rules, "fallback": text},
            required=frozenset({"rules", "fallback"}),
            offline=True,
            reads_dtmf=True,
        ),
        "openai": ServiceSpec(
            "voicecli.services.factories:openai_llm",
            _options(*_OPENAI, "temperature"),
            ("OPENAI_API_KEY",),
            "base_url",
        ),
    },
    "tts": {
        "espeak": ServiceSpec("voicecli.services.factories:espeak_tts", _options("voice", "rate_wpm"), offline=True),
        "openai": ServiceSpec(
            "voicecli.services.factories:openai_tts",
            _options(*_OPENAI, "voice"),
            ("OPENAI_API_KEY",),
            "base_url",
        ),
        "cartesia": ServiceSpec(
            "voicecli.services.factories:cartesia_tts",
            _options("model", "voice", "language"),
            ("CARTESIA_API_KEY",),
        ),
        "elevenlabs": ServiceSpec(
            "voicecli.services.factories:elevenlabs_tts",
            _options("model", "voice", "language"),
            ("ELEVENLABS_API_KEY",),
        ),
    },
}


def create_service(kind: Kind, config: ServiceConfig, env: Mapping[str, str], phrases: Sequence[str] = ()) -> Any:
    """Build the pipecat service a `[stt]`, `[llm]` or `[tts]` table names.

    `phrases`: what callers are expected to say (the agent's keywords), for offline recognisers.
    """
    spec = SERVICES[kind][config.provider]
    module_name, _, attr = spec.factory.partition(":")
    return getattr(import_module(module_name), attr)(config.options, env, phrases)
