"""Shared fixtures: a project folder, fake provider REST APIs, and the real server on loopback."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from voicecli.agents import load_agents
from voicecli.providers import PROVIDERS
from voicecli.server.app import create_app
from voicecli.server.lifecycle import Timeouts
from voicecli.server.state import ServerState, build_state
from voicecli.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
# Every registered provider's variables ({NAME}_...), cleared from the test environment.
PROVIDER_PREFIXES = tuple(f"{name.upper()}_" for name in PROVIDERS)
TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "twilio-test-auth-token-1234"
pytest_plugins = ["tests.postgres_server"]  # postgres_server and database_url: a real server


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with the shipped agents, as the working directory, with a clean environment."""
    shutil.copytree(REPO / "agents", tmp_path / "agents")
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


@dataclass
class FakeApi:
    """A fake provider REST API on 127.0.0.1: records every request it gets."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200

    def find(self, method: str, path_part: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method and path_part in r["path"]]


@pytest.fixture
async def fake_twilio() -> AsyncIterator[FakeApi]:
    """Twilio's REST API as far as hang-up goes: POST Calls/{sid}.json with Status=completed."""
    api = FakeApi()

    async def update_call(request: web.Request) -> web.Response:
        form = await request.post()
        api.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "auth": request.headers.get("Authorization"),
                "form": dict(form),
            }
        )
        if api.status != 200:
            return web.json_response({"code": 20404, "message": "not found", "status": api.status}, status=api.status)
        sid = request.match_info["call_sid"]
        return web.json_response(
            {"sid": sid, "account_sid": request.match_info["account"], "status": form.get("Status", "")}
        )

    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{account}/Calls/{call_sid}.json", update_call)
    # The account read `voicecli doctor` makes, and the number `--update-webhook` points.
    app.router.add_get("/2010-04-01/Accounts/{account}.json", _twilio_account(api))
    app.router.add_get("/2010-04-01/Accounts/{account}/IncomingPhoneNumbers.json", _twilio_numbers(api))
    app.router.add_post("/2010-04-01/Accounts/{account}/IncomingPhoneNumbers/{sid}.json", _twilio_number_update(api))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    api.url = str(server.make_url("")).rstrip("/")
    yield api
    await server.close()


@pytest.fixture
async def fake_vobiz() -> AsyncIterator[FakeApi]:
    """Vobiz's REST API as far as hang-up goes: DELETE Account/{id}/Call/{uuid}/ -> 204."""
    api = FakeApi()

    async def delete_call(request: web.Request) -> web.Response:
        api.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "auth_id": request.headers.get("X-Auth-ID"),
                "auth_token": request.headers.get("X-Auth-Token"),
                "authorization": request.headers.get("Authorization"),
            }
        )
        return web.Response(status=204 if api.status == 200 else api.status)

    app = web.Application()
    app.router.add_delete("/api/v1/Account/{auth_id}/Call/{call_uuid}/", delete_call)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    api.url = str(server.make_url("/api/v1")).rstrip("/")
    yield api
    await server.close()


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


VOBIZ_ID = "MA_TESTAUTH1"
VOBIZ_TOKEN = "vobiz-test-auth-token-5678"


def vobiz_env(fake: FakeApi, **extra: str) -> dict[str, str]:
    return {"VOBIZ_AUTH_ID": VOBIZ_ID, "VOBIZ_AUTH_TOKEN": VOBIZ_TOKEN, "VOBIZ_API_BASE": fake.url, **extra}


def twilio_env(fake: FakeApi, **extra: str) -> dict[str, str]:
    return {
        "TWILIO_ACCOUNT_SID": TWILIO_SID,
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "TWILIO_API_BASE": fake.url,
        **extra,
    }


# --- Twilio's account and IncomingPhoneNumbers, as far as doctor and --update-webhook go.
# The number's voice URL is the last one POSTed to the fake (recorded in api.requests).

TWILIO_NUMBER = "+15559870000"
TWILIO_NUMBER_SID = "PN" + "0123456789abcdef" * 2
TWILIO_NUMBER_FIRST_URL = "https://demo.twilio.com/welcome/voice/"


def _twilio_authorized(request: web.Request) -> bool:
    import base64

    expected = "Basic " + base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
    return request.headers.get("Authorization") == expected and request.match_info["account"] == TWILIO_SID


def _twilio_refusal() -> web.Response:
    return web.json_response({"code": 20003, "message": "Authenticate", "status": 401}, status=401)


def twilio_voice_url(api: FakeApi) -> str:
    updates = [r["form"]["VoiceUrl"] for r in api.find("POST", "/IncomingPhoneNumbers/") if "VoiceUrl" in r["form"]]
    return updates[-1] if updates else TWILIO_NUMBER_FIRST_URL


def _twilio_number_json(api: FakeApi) -> dict[str, Any]:
    return {
        "sid": TWILIO_NUMBER_SID,
        "account_sid": TWILIO_SID,
        "phone_number": TWILIO_NUMBER,
        "voice_url": twilio_voice_url(api),
        "voice_method": "POST",
    }


def _record(api: FakeApi, request: web.Request, form: dict[str, Any]) -> None:
    api.requests.append(
        {"method": request.method, "path": request.path, "auth": request.headers.get("Authorization"), "form": form}
    )


def _twilio_account(api: FakeApi) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.Response:
        _record(api, request, dict(request.query))
        if not _twilio_authorized(request):
            return _twilio_refusal()
        return web.json_response({"sid": TWILIO_SID, "status": "active", "friendly_name": "test account"})

    return handler


def _twilio_numbers(api: FakeApi) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.Response:
        _record(api, request, dict(request.query))
        if not _twilio_authorized(request):
            return _twilio_refusal()
        wanted = request.query.get("PhoneNumber")
        numbers = [_twilio_number_json(api)] if wanted in (None, TWILIO_NUMBER) else []
        uri = request.path
        return web.json_response(
            {
                "incoming_phone_numbers": numbers,
                "first_page_uri": uri,
                "next_page_uri": None,
                "previous_page_uri": None,
                "page": 0,
                "page_size": 50,
                "start": 0,
                "end": len(numbers) - 1,
                "uri": uri,
            }
        )

    return handler


def _twilio_number_update(api: FakeApi) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.Response:
        form = dict(await request.post())
        if not _twilio_authorized(request) or request.match_info["sid"] != TWILIO_NUMBER_SID:
            _record(api, request, {})
            return _twilio_refusal() if not _twilio_authorized(request) else web.json_response({}, status=404)
        _record(api, request, form)
        return web.json_response(_twilio_number_json(api))

    return handler
