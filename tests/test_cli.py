"""The real `voicecli` executable in a child process: simulate, start-up errors, import cost."""

from __future__ import annotations

import os
import wave

import aiohttp
import pytest

from tests.conftest import REPO
from tests.processes import CLEAN_ENV, run_voicecli
from voicecli import __version__
from voicecli.providers import PROVIDERS
from voicecli.runtime import ServerInfo, record_server

# The child runs the voicecli these tests import (this checkout), whatever is installed.
CHECKOUT_ENV = {**CLEAN_ENV, "PYTHONPATH": str(REPO)}


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_simulate_calls_the_agent_and_writes_what_the_caller_heard(project, start_server, provider) -> None:
    server = await start_server()
    code, out, err = await run_voicecli(
        project,
        "simulate",
        "--provider",
        provider,
        "--say",
        "What is your pricing?",
        "--dtmf",
        "0",
        "--out",
        "call.wav",
        "--server",
        server.url,
    )
    assert code == 0, err
    assert "the agent hung up" in out
    assert "Our plans start at twenty dollars a month." in out and "Thanks for calling. Goodbye!" in out
    with wave.open(str(project / "call.wav")) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (8000, 1, 2)
        assert wav.getnframes() > 8000 * 5  # greeting, answer and goodbye
    [record] = await server.state.store.list()
    assert record.status == "completed" and record.id in out  # printed whole, though COLUMNS=60
    assert record.provider == provider


async def test_calls_off_a_terminal_prints_ids_and_numbers_whole(project, start_server) -> None:
    server = await start_server()
    record = await server.state.store.create(
        provider="vobiz", agent="demo", direction="inbound", from_number="+919812345678", to_number="+918071234567"
    )
    code, out, err = await run_voicecli(project, "calls", "--server", server.url)
    assert code == 0, err
    for whole in (record.id, "+919812345678", "+918071234567"):
        assert whole in out


async def test_serve_without_an_agents_keys_names_them_in_one_red_line(project) -> None:
    code, out, err = await run_voicecli(project, "serve", "--agent", "sales", "--port", "0")
    assert code == 1 and "Traceback" not in err
    assert "DEEPGRAM_API_KEY" in err and "OPENAI_API_KEY" in err and "CARTESIA_API_KEY" in err
    assert len(err.strip().splitlines()) == 1


async def test_a_broken_agent_file_is_named_at_start_up(project) -> None:
    (project / "agents" / "broken.toml").write_text('greeting = "hi"\n[stt\nprovider = "x"\n')
    code, out, err = await run_voicecli(project, "serve", "--agent", "broken", "--port", "0")
    assert code == 1 and "broken.toml" in err and "Traceback" not in err


async def test_a_service_that_refuses_its_options_stops_serve_before_any_call(project) -> None:
    demo = project / "agents" / "demo.toml"
    demo.write_text(demo.read_text().replace('voice = "en-us"', 'voice = "xx-nowhere"'))
    assert "xx-nowhere" in demo.read_text()
    code, out, err = await run_voicecli(project, "serve", "--agent", "demo", "--port", "0")
    assert code == 1 and "Traceback" not in err
    assert "demo.toml" in err and "tts" in err and "xx-nowhere" in err


async def test_calls_without_a_server_says_how_to_start_one(project) -> None:
    code, out, err = await run_voicecli(project, "calls")
    assert code == 1 and "voicecli serve" in err and "Traceback" not in err


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["config", "list"], ["calls", "--json"], ["webhooks"]])
async def test_commands_that_run_no_calls_import_no_pipecat(project, args) -> None:
    code, out, err = await run_voicecli(project, *args, python_flags=("-X", "importtime"), env=CHECKOUT_ENV)
    imported = [line.rsplit("|", 1)[-1].strip() for line in err.splitlines() if line.startswith("import time:")]
    assert imported, "importtime printed nothing"
    assert not [m for m in imported if m.startswith(("pipecat", "torch", "onnxruntime", "numpy"))]
    if args == ["--version"]:
        assert out.strip() == f"voicecli {__version__}"


async def test_config_set_without_a_server_writes_the_store_another_process_reads(project) -> None:
    code, out, err = await run_voicecli(project, "config", "set", "provider", "vobiz", env=CHECKOUT_ENV)
    assert code == 0, err
    assert "saved in the store" in out and str(project / ".voicecli" / "calls.db") in out
    env = {**CHECKOUT_ENV, "TELEPHONY_PROVIDER": "exotel"}
    code, out, err = await run_voicecli(project, "config", "list", python_flags=("-X", "importtime"), env=env)
    assert code == 0, err
    [row] = [line.split() for line in out.splitlines() if line.split()[:2] == ["│", "provider"]]
    assert row[3] == "vobiz" and row[5] == "store"  # the store beats the environment
    assert "voicecli.store" in err and "pipecat" not in err  # reading the store stays light


async def test_config_set_with_a_server_running_changes_it_live_and_it_survives_a_restart(
    project, start_server
) -> None:
    server = await start_server()
    record_server(server.state.settings.state_dir, ServerInfo(server.url, os.getpid(), ["demo"]))
    code, out, err = await run_voicecli(project, "config", "set", "twilio_max_concurrent", "3", env=CHECKOUT_ENV)
    assert code == 0, err
    assert out.strip() == "twilio_max_concurrent = 3  (saved in the store; the running server uses it now)"
    assert server.state.provider("twilio").max_concurrent == 3
    async with aiohttp.ClientSession(headers=server.headers) as http:
        async with http.get(server.url + "/api/settings/telephony") as resp:
            assert (await resp.json())["twilio_max_concurrent"] == 3
        # File-only: the server refuses it, so config set writes voicecli.toml and says when it applies.
        code, out, err = await run_voicecli(
            project, "config", "set", "twilio_api_base", "http://127.0.0.1:9", env=CHECKOUT_ENV
        )
        assert code == 0, err
        assert "voicecli.toml; a restart of voicecli serve applies it" in out
        assert server.state.settings.get("twilio_api_base") == "https://api.twilio.com"

        again = await start_server()  # a restart: a new server on the same project
        async with http.get(again.url + "/api/settings/telephony", headers=again.headers) as resp:
            assert (await resp.json())["twilio_max_concurrent"] == 3

    code, out, err = await run_voicecli(project, "config", "set", "provider", "skype", env=CHECKOUT_ENV)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "bad value for provider" in err
