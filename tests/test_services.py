"""Cloud services built from an agent file: OpenAI's share one HTTP client and speak at 24 kHz."""

from __future__ import annotations

from pathlib import Path

from voicecli.agents import load_agents
from voicecli.services import create_service
from voicecli.services.openai_http import shared_http_client

AGENT = """
greeting = "Hi"
system_prompt = "Be brief."
[stt]
provider = "openai"
base_url = "http://127.0.0.1:9/v1"
[llm]
provider = "openai"
base_url = "http://127.0.0.1:9/v1"
[tts]
provider = "openai"
base_url = "http://127.0.0.1:9/v1"
"""


async def test_openai_services_share_one_http_client_per_loop(tmp_path: Path) -> None:
    (tmp_path / "local.toml").write_text(AGENT)
    [agent] = load_agents(tmp_path).values()
    built = {kind: create_service(kind, getattr(agent, kind), {}, agent.phrases()) for kind in ("stt", "llm", "tts")}
    shared = shared_http_client()
    # Building a client per service costs an SSL context each, on the event loop (bench/README.md).
    assert all(service._client._client is shared for service in built.values())
    assert str(built["llm"]._client.base_url) == "http://127.0.0.1:9/v1/"
    assert built["tts"]._init_sample_rate == 24000  # OpenAI's PCM rate, not the pipeline's 8 kHz


def test_off_a_loop_the_sdk_builds_its_own_client() -> None:
    assert shared_http_client() is None


def test_every_pipecat_extra_voicecli_asks_for_exists() -> None:
    # pip warns at every install about an extra the package does not provide.
    import tomllib
    from importlib.metadata import metadata

    from tests.conftest import REPO

    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = next(d for d in dependencies if d.startswith("pipecat-ai["))
    extras = set(wanted[wanted.index("[") + 1 : wanted.index("]")].split(","))
    assert extras and extras <= set(metadata("pipecat-ai").get_all("Provides-Extra") or [])
