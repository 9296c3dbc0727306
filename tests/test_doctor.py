"""`voicecli doctor`: passes on a healthy setup, and fails with a precise reason for each broken item.

Everything is on loopback: the real server, fake Twilio/Exotel/Vobiz APIs, and a fake ngrok
agent API whose "public" URL is the server's own address (as a tunnel would forward to it).
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from typer.testing import CliRunner

from tests.conftest import TWILIO_NUMBER, TWILIO_SID, TWILIO_TOKEN, twilio_voice_url
from tests.processes import run_voicecli
from voicecli.cli import app
from voicecli.providers import PROVIDERS, load_api, load_provider, provider_class
from voicecli.runtime import ServerInfo, forget_server, record_server
from voicecli.settings import load_settings, setting

KEYS = {"DEEPGRAM_API_KEY": "dg-test", "OPENAI_API_KEY": "sk-test", "CARTESIA_API_KEY": "ca-test"}
runner = CliRunner()


@dataclass
class FakeNgrok:
    """The ngrok agent's local API (GET /api/tunnels), with the tunnels the test gives it."""

    url: str = ""
    tunnels: list[str] = field(default_factory=list)


@pytest.fixture
async def fake_ngrok() -> AsyncIterator[FakeNgrok]:
    fake = FakeNgrok()

    async def tunnels(request: web.Request) -> web.Response:
        items = [{"name": f"t{i}", "public_url": url, "proto": "https"} for i, url in enumerate(fake.tunnels)]
        return web.json_response({"tunnels": items, "uri": "/api/tunnels"})

    api = web.Application()
    api.router.add_get("/api/tunnels", tunnels)
    server = TestServer(api, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")
    yield fake
    await server.close()


@dataclass
class Setup:
    project: Path
    server: Any
    ngrok: FakeNgrok
    env: dict[str, str]

    def write_env(self, **changes: str | None) -> None:
        """The project's .env, which `doctor` reads like every command."""
        env = {**self.env, **changes}
        self.env = {k: v for k, v in env.items() if v is not None}
        (self.project / ".env").write_text("".join(f"{k}={v}\n" for k, v in self.env.items()))

    async def doctor(self) -> tuple[int, dict[str, tuple[str, str, str]], str]:
        """Exit code, {check: (result, what is wrong, fix)} and the raw output."""
        args = ["doctor", "--ngrok-api", self.ngrok.url]
        result = await asyncio.to_thread(runner.invoke, app, args)
        rows = {}
        for line in result.output.splitlines():
            cells = [c.strip() for c in line.split("\u2502")[1:-1]]
            if len(cells) == 4 and cells[1] in ("ok", "warn", "fail", "skip"):
                rows[cells[0]] = (cells[1], cells[2], cells[3])
        return result.exit_code, rows, result.output


@pytest.fixture
async def healthy(project: Path, start_server, fake_twilio, fake_ngrok) -> AsyncIterator[Setup]:
    """Everything on the checklist fixed: server, tunnel, public URL, Twilio and its number, agents."""
    env = {
        "TWILIO_ACCOUNT_SID": TWILIO_SID,
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "TWILIO_API_BASE": fake_twilio.url,
        "TWILIO_PHONE_NUMBER": TWILIO_NUMBER,
        **KEYS,
    }
    server = await start_server(**env)
    # What `serve` records and what the tunnel forwards to: here the server's own address.
    record_server(server.state.settings.state_dir, ServerInfo(server.url, os.getpid(), ["demo"]))
    fake_ngrok.tunnels = [server.url]
    async with aiohttp.ClientSession(headers=server.headers) as http:
        async with http.put(f"{server.url}/api/settings/telephony", json={"public_base_url": server.url}) as resp:
            assert resp.status == 200
    setup = Setup(project, server, fake_ngrok, {})
    setup.write_env(**env)
    twilio = load_provider("twilio", load_settings(project))
    assert await twilio.point_number(f"{server.url}/telephony/twilio/inbound/demo")
    yield setup
    forget_server(server.state.settings.state_dir, os.getpid())


async def test_a_healthy_setup_passes(healthy: Setup, fake_twilio) -> None:
    code, rows, out = await healthy.doctor()
    assert code == 0, out
    url = healthy.server.url
    status, detail, _ = rows["store"]
    assert status == "ok" and "calls.db" in detail and "1 serving process(es) in 1 instance(s)" in detail
    assert rows["server running"][0] == "ok"
    assert rows["tunnel active"] == ("ok", url, "")
    assert rows["PUBLIC_BASE_URL"][0] == "warn"  # loopback is http; a real tunnel is https
    assert rows["reachable through PUBLIC_BASE_URL"][0] == "ok"
    assert rows["twilio credentials"][0] == "ok"
    assert rows["twilio number webhook"] == ("ok", f"{TWILIO_NUMBER} -> {url}/telephony/twilio/inbound/demo", "")
    assert rows["exotel credentials"][0] == rows["vobiz credentials"][0] == "skip"
    assert rows["agent demo"][0] == rows["agent sales"][0] == "ok"
    assert fake_twilio.find("GET", f"/Accounts/{TWILIO_SID}.json")  # the credential check really asked
    assert TWILIO_TOKEN not in out


async def test_an_unreachable_store_fails_with_its_address_and_never_the_password(healthy: Setup) -> None:
    healthy.write_env(VOICECLI_DATABASE_URL="postgresql://voicecli:hunter2-secret@127.0.0.1:9/voicecli")
    code, rows, out = await healthy.doctor()
    assert code == 1 and "Traceback" not in out and "hunter2-secret" not in out
    status, problem, fix = rows["store"]
    assert status == "fail" and "cannot open the store" in problem and "database_url" in fix


async def test_no_server_running(healthy: Setup) -> None:
    forget_server(healthy.server.state.settings.state_dir, os.getpid())
    code, rows, _ = await healthy.doctor()
    assert code == 1
    status, problem, fix = rows["server running"]
    assert status == "fail" and "no voicecli server is recorded" in problem and "voicecli serve" in fix


async def test_server_recorded_but_not_answering(healthy: Setup) -> None:
    record_server(healthy.server.state.settings.state_dir, ServerInfo("http://127.0.0.1:9", os.getpid(), ["demo"]))
    code, rows, _ = await healthy.doctor()
    assert code == 1
    status, problem, _ = rows["server running"]
    assert status == "fail" and "http://127.0.0.1:9" in problem and "does not answer" in problem


async def test_wrong_api_token(healthy: Setup) -> None:
    healthy.write_env(VOICECLI_API_TOKEN="not-the-servers-token")
    code, rows, _ = await healthy.doctor()
    assert code == 1 and rows["server running"][0] == "fail"
    assert "refused the API token" in rows["server running"][1] and "VOICECLI_API_TOKEN" in rows["server running"][2]


async def test_no_tunnel_open(healthy: Setup) -> None:
    healthy.ngrok.tunnels = []
    code, rows, _ = await healthy.doctor()
    assert code == 1
    status, problem, fix = rows["tunnel active"]
    assert status == "fail" and "has no tunnel open" in problem and fix == "voicecli serve --agent <name> --tunnel"


async def test_no_ngrok_agent_and_no_public_url(healthy: Setup) -> None:
    healthy.ngrok.url = "http://127.0.0.1:9"
    # The server forgets its public URL (through the settings API, as a user would).
    async with aiohttp.ClientSession(headers=healthy.server.headers) as http:
        async with http.put(f"{healthy.server.url}/api/settings/telephony", json={"public_base_url": None}):
            pass
    code, rows, _ = await healthy.doctor()
    assert code == 1
    assert (
        rows["tunnel active"][0] == "fail"
        and "no ngrok agent answers at http://127.0.0.1:9" in rows["tunnel active"][1]
    )
    assert rows["PUBLIC_BASE_URL"][:2] == ("fail", "PUBLIC_BASE_URL is not set: providers cannot reach the server")


async def test_public_url_is_not_the_tunnels(healthy: Setup) -> None:
    healthy.ngrok.tunnels = ["https://new-tunnel.ngrok-free.app"]
    code, rows, _ = await healthy.doctor()
    assert code == 1
    status, problem, fix = rows["PUBLIC_BASE_URL"]
    assert status == "fail"
    assert problem == f"PUBLIC_BASE_URL is {healthy.server.url} but the tunnel is https://new-tunnel.ngrok-free.app"
    assert "PUBLIC_BASE_URL=https://new-tunnel.ngrok-free.app" in fix


async def test_public_url_that_does_not_reach_the_server(healthy: Setup) -> None:
    # A host that accepts connections and never answers: doctor must not hang on it.
    gave_up = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answer; returns when the client hangs up
        writer.close()
        gave_up.set()

    dead = await asyncio.start_server(silent, "127.0.0.1", 0)
    dead_url = f"http://127.0.0.1:{dead.sockets[0].getsockname()[1]}"
    healthy.ngrok.tunnels = [dead_url]
    async with aiohttp.ClientSession(headers=healthy.server.headers) as http:
        async with http.put(f"{healthy.server.url}/api/settings/telephony", json={"public_base_url": dead_url}):
            pass
    started = time.monotonic()
    code, rows, _ = await healthy.doctor()
    assert time.monotonic() - started < 10
    await asyncio.wait_for(gave_up.wait(), 5)
    dead.close()
    await dead.wait_closed()
    assert code == 1
    status, problem, _ = rows["reachable through PUBLIC_BASE_URL"]
    assert status == "fail" and problem == f"GET {dead_url}/healthz: no answer within 3 s"


async def test_twilio_refuses_the_credentials(healthy: Setup) -> None:
    healthy.write_env(TWILIO_AUTH_TOKEN="wrong-token-wrong-token")
    code, rows, out = await healthy.doctor()
    assert code == 1
    status, problem, fix = rows["twilio credentials"]
    assert status == "fail" and "Twilio refused them: HTTP 401" in problem and "TWILIO_AUTH_TOKEN" in fix
    assert "wrong-token-wrong-token" not in out


async def test_twilio_credentials_missing(healthy: Setup) -> None:
    healthy.write_env(TWILIO_AUTH_TOKEN=None)
    code, rows, _ = await healthy.doctor()
    assert code == 1
    assert rows["twilio credentials"][:2] == ("fail", "TWILIO_AUTH_TOKEN not set")


async def test_the_twilio_number_points_elsewhere(healthy: Setup, fake_twilio) -> None:
    basic = base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
    async with aiohttp.ClientSession(headers={"Authorization": f"Basic {basic}"}) as http:
        numbers = f"{fake_twilio.url}/2010-04-01/Accounts/{TWILIO_SID}/IncomingPhoneNumbers"
        async with http.get(f"{numbers}.json") as resp:
            [number] = (await resp.json())["incoming_phone_numbers"]
        async with http.post(f"{numbers}/{number['sid']}.json", data={"VoiceUrl": "https://old.example.com/voice"}):
            pass
    assert twilio_voice_url(fake_twilio) == "https://old.example.com/voice"
    code, rows, _ = await healthy.doctor()
    assert code == 1
    status, problem, fix = rows["twilio number webhook"]
    assert status == "fail"
    assert problem == f"{TWILIO_NUMBER} sends calls to https://old.example.com/voice, not this server"
    assert "voicecli serve --agent demo --tunnel --update-webhook" in fix
    assert f"{healthy.server.url}/telephony/twilio/inbound/demo" in fix


async def test_an_invalid_agent(healthy: Setup) -> None:
    (healthy.project / "agents" / "broken.toml").write_text(
        'name = "broken"\ngreeting = "hi"\n[stt]\nprovider = "nope"\n'
    )
    code, rows, _ = await healthy.doctor()
    assert code == 1
    status, problem, fix = rows["agent broken"]
    assert status == "fail" and "stt.provider" in problem and "'nope' is not one of" in problem
    assert fix.startswith("fix ") and fix.endswith("broken.toml")


async def test_an_agent_without_its_keys(healthy: Setup) -> None:
    healthy.write_env(OPENAI_API_KEY=None)
    code, rows, _ = await healthy.doctor()
    assert code == 1
    assert rows["agent sales"][:2] == ("fail", "keys not set: OPENAI_API_KEY")
    assert rows["agent demo"][0] == "ok"


# Every provider but the default one, which the healthy setup's own checks cover.
OTHER_PROVIDERS = [name for name in PROVIDERS if name != setting("provider").default]


@pytest.mark.parametrize("provider", OTHER_PROVIDERS)
async def test_other_providers_credentials_are_checked_when_configured(healthy: Setup, provider: str) -> None:
    async with load_api(provider) as api:
        healthy.write_env(**{k: v for k, v in api.env().items() if not k.endswith("_PHONE_NUMBER")})
        code, rows, _ = await healthy.doctor()
        assert code == 0 and rows[f"{provider} credentials"] == ("ok", f"accepted by {provider}'s API", "")
        assert api.of_kind("account")  # the check asked the provider's API
        secret = next(s.env_name for s in provider_class(provider).config_type.rows(provider, "") if s.secret)
        healthy.write_env(**{secret: "wrong-secret-value"})
        code, rows, out = await healthy.doctor()
    assert code == 1
    status, problem, fix = rows[f"{provider} credentials"]
    assert status == "fail" and "answered HTTP 401" in problem and secret in fix
    assert "wrong-secret-value" not in out


async def test_doctor_imports_no_pipecat_and_no_numpy(healthy: Setup) -> None:
    code, out, err = await run_voicecli(
        healthy.project, "doctor", "--ngrok-api", healthy.ngrok.url, python_flags=("-X", "importtime")
    )
    assert code == 0, out
    imported = [line.rsplit("|", 1)[-1].strip() for line in err.splitlines() if line.startswith("import time:")]
    assert "twilio.rest" in imported  # the Twilio checks ran
    assert not [m for m in imported if m.startswith(("pipecat", "numpy", "torch", "onnxruntime"))]
