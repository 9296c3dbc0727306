"""Factories that turn an agent's service tables into pipecat services (imported lazily)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Words PocketSphinx may hear besides the script's keywords, so that ordinary speech is
# not forced onto a keyword (see ../shared/pipecat-notes.md, "Offline speech").
FILLER_PHRASES = (
    "hello",
    "yes",
    "no",
    "thank you",
    "what is your",
    "can you tell me about",
    "i would like to know",
    "i want to talk to someone",
)


def pocketsphinx_stt(options: Mapping[str, Any], env: Mapping[str, str], phrases: Sequence[str]) -> Any:
    from voicecli.services.pocketsphinx_stt import PocketSphinxSTTService

    return PocketSphinxSTTService(phrases=[*phrases, *FILLER_PHRASES], language=options.get("language", "en-US"))


def script_llm(options: Mapping[str, Any], env: Mapping[str, str], phrases: Sequence[str]) -> Any:
    from voicecli.services.script_llm import ScriptLLMService

    return ScriptLLMService(options["rules"], options["fallback"])


def espeak_tts(options: Mapping[str, Any], env: Mapping[str, str], phrases: Sequence[str]) -> Any:
    from voicecli.services.espeak_tts import EspeakTTSService

    return EspeakTTSService(voice=options.get("voice", "en-us"), rate_wpm=options.get("rate_wpm"))


def _openai_key(options: Mapping[str, Any], env: Mapping[str, str]) -> str:
    # OpenAI-compatible servers (Ollama, vLLM) often need no key, but the client wants one.
    return env.get("OPENAI_API_KEY") or ("not-needed" if options.get("base_url") else "")


def deepgram_stt(options: Mapping[str, Any], env: Mapping[str, str], phrases: Sequence[str]) -> Any:
    from pipecat.services.deepgram.stt import DeepgramSTTService

    settings = DeepgramSTTService.Settings(model=options.get("model", "nova-3"), language=options.get("language", "en"))
    return DeepgramSTTService(api_key=env["DEEPGRAM_API_KEY"], settings=settings)


def openai_stt(options: Mapping[str, Any], env: Mapping[str, str], phrases: Sequence[str]) -> Any:
    from pipecat.services.openai.stt import OpenAISTTService

    from voicecli.services.openai_http import shared_http_client

    settings = OpenAISTTService.Settings(model=options.get("model", "gpt-4o-transcribe"))
    return OpenAISTTService(
        api_key=_openai_key(options, env),
        base_url=options.get("base_url"),
        settings=settings,
        http_client=shared_http_client(),
    )


def openai_llm(options: Mapping[str, Any], env: Mapping[str, str], phrases: Sequence[str]) -> Any:
    from voicecli.services.openai_http import SharedClientOpenAILLMService

    settings = SharedClientOpenAILLMService.Settings(model=options.get("model", "gpt-4.1-mini"))
    if "temperature" in options:
        settings.temperature = float(options["temperature"])
    return SharedClientOpenAILLMService(
        api_key=_openai_key(options, env), base_url=options.get("base_url"), settings=settings
    )


def openai_tts(options: Mapping[str, Any], env: Mapping[str, str], phrases: Sequence[str]) -> Any:
    from pipecat.services.openai.tts import OpenAITTSService

    from voicecli.services.openai_http import shared_http_client

    settings = OpenAITTSService.Settings(
        model=options.get("model", "gpt-4o-mini-tts"), voice=options.get("voice", "alloy")
    )
    # OpenAI sends 24 kHz PCM; without the rate the service would label it with the
    # pipeline's 8 kHz and every reply would play three times too slow.
    return OpenAITTSService(
        api_key=_openai_key(options, env),
        base_url=options.get("base_url"),
        settings=settings,
        sample_rate=24000,
        http_client=shared_http_client(),
    )


def cartesia_tts(options: Mapping[str, Any], env: Mapping[str, str], phrases: Sequence[str]) -> Any:
    from pipecat.services.cartesia.tts import CartesiaTTSService

    settings = CartesiaTTSService.Settings(
        model=options.get("model", "sonic-2"), voice=options.get("voice"), language=options.get("language")
    )
    return CartesiaTTSService(api_key=env["CARTESIA_API_KEY"], settings=settings)


def elevenlabs_tts(options: Mapping[str, Any], env: Mapping[str, str], phrases: Sequence[str]) -> Any:
    from pipecat.services.elevenlabs.tts import ElevenLabsTTSService

    settings = ElevenLabsTTSService.Settings(
        model=options.get("model", "eleven_flash_v2_5"),
        voice=options.get("voice"),
        language=options.get("language"),
    )
    return ElevenLabsTTSService(api_key=env["ELEVENLABS_API_KEY"], settings=settings)
