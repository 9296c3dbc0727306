"""Shared fixtures: a project folder, fake provider REST APIs, and the real server on loopback."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from voicecli.agents import load_agents
from voicecli.emulator.api import ProviderApi
from voicecli.emulator.twilio import TwilioApi
from voicecli.emulator.vobiz import VobizApi
from voicecli.providers import PROVIDERS
from voicecli.server.app import create_app
from voicecli.server.lifecycle import Timeouts
from voicecli.server.state import ServerState, build_state
from voicecli.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
# Every registered provider's variables ({NAME}_...), cleared from the test environment.
PROVIDER_PREFIXES = tuple(f"{name.upper()}_" for name in PROVIDERS)
TWILIO_SID = TwilioApi.credentials["account_sid"]
TWILIO_TOKEN = TwilioApi.credentials["auth_token"]
pytest_plugins = ["tests.postgres_server"]  # postgres_server and database_url: a real server


# The agents voicecli ships; a user's own files in agents/ are theirs, not the tests'.
SHIPPED_AGENTS = ("demo.toml", "pizza.toml", "sales.toml")


def copy_shipped_agents(folder: Path) -> None:
    folder.mkdir(parents=True)
    for name in SHIPPED_AGENTS:
        shutil.copy(REPO / "agents" / name, folder / name)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with the shipped agents, as the working directory, with a clean environment."""
    copy_shipped_agents(tmp_path / "agents")
    monkeypatch.chdir(tmp_path)
    for name in list(__import__("os").environ):
        if name.startswith((*PROVIDER_PREFIXES, "VOICECLI_", "TELEPHONY_")) or name in (
            "PUBLIC_BASE_URL",
            "OPENAI_API_KEY",
            "DEEPGRAM_API_KEY",
            "CARTESIA_API_KEY",
            "ELEVENLABS_API_KEY",
        ):
            monkeypatch.delenv(name)
    return tmp_path


@pytest.fixture
async def fake_twilio() -> AsyncIterator[TwilioApi]:
    """Twilio's REST API as the emulator serves it: calls, the account, the number."""
    async with TwilioApi() as api:
        yield api


@pytest.fixture
async def fake_vobiz() -> AsyncIterator[VobizApi]:
    """Vobiz's REST API as the emulator serves it: calls (header auth), the account."""
    async with VobizApi() as api:
        yield api


def make_settings(project: Path, **env: str) -> Settings:
    return load_settings(project, environ=env)


@dataclass
class RunningServer:
    """The real voicecli app on a real loopback port."""

    url: str
    state: ServerState
    server: TestServer

    @property
    def token(self) -> str:
        return self.state.api_token

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.state.api_token}"}


StartServer = Callable[..., Any]


@pytest.fixture
async def start_server(project: Path) -> AsyncIterator[StartServer]:
    """Start the real server: `await start_server(agents=["demo"], TWILIO_AUTH_TOKEN=...)`.

    `timeouts` shortens the call lifecycle's waits (a 2-minute stream wait, say) for a test.
    """
    servers: list[TestServer] = []

    async def start(agents: list[str] | None = None, timeouts: Timeouts | None = None, **env: str) -> RunningServer:
        settings = make_settings(project, **env)
        state = build_state(settings, load_agents(project / "agents", agents or ["demo"]), timeouts=timeouts)
        server = TestServer(create_app(state), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return RunningServer(str(server.make_url("")).rstrip("/"), state, server)

    yield start
    for server in servers:
        await server.close()


VOBIZ_ID = VobizApi.credentials["auth_id"]
VOBIZ_TOKEN = VobizApi.credentials["auth_token"]


def vobiz_env(fake: ProviderApi, **extra: str) -> dict[str, str]:
    return {"VOBIZ_AUTH_ID": VOBIZ_ID, "VOBIZ_AUTH_TOKEN": VOBIZ_TOKEN, "VOBIZ_API_BASE": fake.base, **extra}


def twilio_env(fake: ProviderApi, **extra: str) -> dict[str, str]:
    return {
        "TWILIO_ACCOUNT_SID": TWILIO_SID,
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "TWILIO_API_BASE": fake.base,
        **extra,
    }


# Twilio's number, as the fake API holds it (doctor and --update-webhook read and point it).
TWILIO_NUMBER = TwilioApi.phone_number
TWILIO_NUMBER_SID = TwilioApi.number_sid
TWILIO_NUMBER_FIRST_URL = TwilioApi.first_voice_url


def twilio_voice_url(api: TwilioApi) -> str:
    return api.voice_url()
