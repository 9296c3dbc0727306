"""Bad input the internet sends once a tunnel is open: each gets a 4xx or is skipped, never a
500, a crashed server, a deaf call or a forged log line; and what a new user hits."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from tests.processes import CLEAN_ENV, run_voicecli, serving, until
from tests.test_shutdown import _wait_for_server
from tests.wire import WireCall, agent_audio, in_store, only_call_when_ended
from voicecli.emulator.simulator import Press, simulate_call
from voicecli.providers import PROVIDERS, load_api

DEEP = "[" * 200_000 + "]" * 200_000  # JSON nested past any parser's depth


async def test_a_stream_token_with_a_unicode_digit_is_refused_not_a_500(start_server) -> None:
    server = await start_server()
    ws_url = server.url.replace("http", "ws") + "/ws/vobiz/demo?token=call_x.%C2%B2%C2%B3.c2ln"
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(ws_url)
    assert info.value.status == 403


async def test_api_limits_with_odd_digits_are_422(start_server) -> None:
    server = await start_server()
    async with aiohttp.ClientSession(headers=server.headers) as http:
        for limit in ("²", "%D9%A3", "-1", "1e3"):
            async with http.get(f"{server.url}/api/calls?limit={limit}") as resp:
                assert resp.status == 422, limit


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_undecodable_webhook_bodies_are_400(start_server, provider: str) -> None:
    server = await start_server()
    bodies = [
        ("application/x-www-form-urlencoded; charset=bogus", b"CallSid=CA1&From=%2B1555"),
        ("application/x-www-form-urlencoded; charset=utf-8", b"CallSid=\xff\xfe"),
        ("application/json", DEEP.encode()),
    ]
    async with aiohttp.ClientSession() as http:
        for path in (f"/telephony/{provider}/inbound/demo", f"/telephony/{provider}/status"):
            for content_type, body in bodies:
                async with http.post(server.url + path, data=body, headers={"Content-Type": content_type}) as resp:
                    assert 400 <= resp.status < 500, (path, content_type, resp.status, await resp.text())
        async with http.get(server.url + "/healthz") as resp:
            assert resp.status == 200  # and the server is fine


async def test_the_management_api_refuses_deep_json_with_400(start_server) -> None:
    server = await start_server()
    async with aiohttp.ClientSession(headers=server.headers) as http:
        for path, method in (("/api/calls/outbound", "POST"), ("/api/settings/telephony", "PUT")):
            async with http.request(
                method, server.url + path, data=DEEP, headers={"Content-Type": "application/json"}
            ) as resp:
                assert resp.status == 400 and "JSON object" in (await resp.json())["error"]


async def test_a_message_nested_past_the_parsers_depth_leaves_the_call_hearing(start_server) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as http:
        wire = WireCall(server.state.settings, server.url, "twilio")
        ws = await wire.open(http)
        await ws.send_str("[" * 100_000)
        await wire.press(ws, "0")  # still heard: the agent says goodbye and hangs up
        _, closed = await agent_audio(ws, wire.caller, 15.0)
        assert closed
    record = await only_call_when_ended(server.state.store)
    assert record.status == "completed" and record.end_reason.startswith("agent ended the call")


async def test_a_newline_in_a_callers_number_cannot_forge_a_log_line(project: Path) -> None:
    with serving(project, CLEAN_ENV) as proc:
        url = await _wait_for_server(project, proc)
        forged = "00:00:00.000 INFO    forged: all calls dropped"
        async with aiohttp.ClientSession() as http:
            params = {"CallSid": "exo1", "CallFrom": f"+15551234\n{forged}", "CallTo": "+15559870000"}
            async with http.get(f"{url}/telephony/exotel/inbound/demo", params=params) as resp:
                assert resp.status == 200
    log = (project / "serve.log").read_text()
    assert "forged" in log  # written, escaped, on the webhook's own line
    assert not [line for line in log.splitlines() if line.startswith(forged)]


async def test_an_empty_variable_in_env_means_not_set(project: Path) -> None:
    (project / ".env").write_text("PUBLIC_BASE_URL=\nTWILIO_MAX_CONCURRENT=\n")
    code, out, err = await run_voicecli(project, "config", "get", "twilio_max_concurrent", env=CLEAN_ENV)
    assert code == 0 and out.strip() == "10", err


async def test_calls_reads_the_store_when_no_server_answers(project: Path, start_server) -> None:
    server = await start_server()  # in-process: not listed in server.json, as if stopped
    result = await simulate_call(server.state.settings, server.url, "demo", "twilio", [Press("0")], linger_s=0.2)
    code, out, err = await run_voicecli(project, "calls", "--json", env=CLEAN_ENV)
    assert code == 0, err
    [row] = json.loads(out)
    assert row["provider_call_id"] == result.call.provider_call_id and row["turns"] >= 2
    code, out, err = await run_voicecli(project, "calls", "show", row["id"], "--json", env=CLEAN_ENV)
    assert code == 0 and json.loads(out)["transcript"][-1]["text"] == "Thanks for calling. Goodbye!", err
    code, out, err = await run_voicecli(project, "calls", "show", "call_nosuch", env=CLEAN_ENV)
    assert code == 1 and "no call call_nosuch" in err and "Traceback" not in err


def test_urls_of_ipv6_hosts_are_bracketed() -> None:
    from voicecli.server.tunnel import _local_addr
    from voicecli.server.urls import http_url

    assert http_url("::", 8000) == "http://[::]:8000"  # was http://:::8000
    assert http_url("[::1]", 8000) == http_url("::1", 8000) == "http://[::1]:8000"
    assert http_url("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert _local_addr("::", 8000) == "http://[::1]:8000" and _local_addr("0.0.0.0", 1) == "http://127.0.0.1:1"


async def test_voicecli_call_waits_out_a_slow_provider_api(project: Path, start_server) -> None:
    async with load_api("twilio") as api:
        server = await start_server(**api.env())
        api.stall_s = 7.0  # past the CLI's old 5 s, inside the server's 10 s for the provider
        args = ("call", "+15551234567", "--provider", "twilio", "--server", server.url)
        code, out, err = await run_voicecli(project, *args, env=CLEAN_ENV)
    assert code == 0, err
    assert "dialling +15551234567" in out and "no voicecli server answers" not in err
    assert len(api.of_kind("dial")) == 1  # one dial: a user has nothing to retry


async def test_simulate_keeps_the_wav_and_transcript_when_the_server_stops_as_the_call_ends(project: Path) -> None:
    import asyncio
    import signal
    import wave

    with serving(project, CLEAN_ENV) as proc:
        url = await _wait_for_server(project, proc)
        args = ("simulate", "--say", "What is your pricing?", "--dtmf", "0", "--out", "call.wav", "--server", url)
        simulated = asyncio.create_task(run_voicecli(project, *args, env=CLEAN_ENV))

        async def in_progress() -> bool:
            return any(r.status == "in-progress" for r in await in_store(project, lambda store: store.list()))

        await until(in_progress)
        proc.send_signal(signal.SIGINT)  # drain: the call may finish, then the server is gone
        code, out, err = await simulated
        assert await asyncio.to_thread(proc.wait, 30) == 0
    assert code == 0, err
    # The transcript, from the server or the store: the reply, and the goodbye the drain gave.
    assert "Our plans start at twenty dollars a month." in out and "Goodbye!" in out
    with wave.open(str(project / "call.wav")) as wav:
        assert wav.getnframes() > 8000 * 5


async def test_the_banners_hints_run_as_printed(project: Path) -> None:
    import asyncio
    import re

    with serving(project, CLEAN_ENV) as proc:
        await _wait_for_server(project, proc)

        def banner() -> str | None:  # listed in server.json on binding; the banner comes just after
            log = (project / "serve.log").read_text()
            return log if "Check the setup:" in log else None

        printed = await until(banner, 20, "the banner")
        hint = re.search(r"Watch calls: (.+ calls --live)", printed)
        assert hint and re.search(rf"Try a call: {re.escape(hint.group(1)[: -len(' calls --live')])} simulate", printed)
        # As a user pastes it, in the project folder, with no venv activated.
        shell = await asyncio.create_subprocess_shell(
            hint.group(1), cwd=project, env=CLEAN_ENV, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(shell.communicate(), 120)
    assert shell.returncode == 0, err.decode()
    assert "twilio" in out.decode()  # off a terminal, one table: each provider's calls against its limit


async def test_a_stream_that_floods_is_cut_and_another_call_goes_on(start_server) -> None:
    import asyncio

    server = await start_server()
    async with aiohttp.ClientSession() as http:
        flood = WireCall(server.state.settings, server.url, "twilio")
        ws = await flood.open(http)
        other = asyncio.create_task(
            simulate_call(server.state.settings, server.url, "demo", "vobiz", [Press("0")], linger_s=0.2)
        )
        silence = json.dumps(flood.caller.media(flood.call, b"\x00" * 320, 5))
        for _ in range(5_000):  # as fast as the socket takes them: 100 times a provider's rate
            if ws.closed:
                break
            await ws.send_str(silence)
        _, closed = await agent_audio(ws, flood.caller, 10.0)
        assert closed  # the flooding stream was ended
        result = await other
    assert result.ended_by == "agent"  # the other call went on to its goodbye
    records = {r.provider: r for r in await server.state.store.list()}
    assert "far more than any provider does" in (records["twilio"].end_reason or "")
    assert records["vobiz"].status == "completed"
    assert server.state.limiter.in_use("twilio") == 0


async def test_slow_and_silent_connections_are_closed_and_serve_raises_its_file_limit(project: Path) -> None:
    import asyncio
    import time

    from voicecli.server.app import HEADER_TIMEOUT_S

    with serving(project, CLEAN_ENV) as proc:
        url = await _wait_for_server(project, proc)
        host, port = url.removeprefix("http://").rsplit(":", 1)

        async def answered_within(first_bytes: bytes) -> tuple[float, bytes]:
            """Seconds until the server answers (its status line) or closes, and what it said."""
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(first_bytes)
            began = time.monotonic()
            answer = await asyncio.wait_for(reader.readline(), HEADER_TIMEOUT_S + 10)
            writer.close()
            return time.monotonic() - began, answer

        silent, partial, slow_body = await asyncio.gather(
            answered_within(b""),  # connects and says nothing: closed
            answered_within(b"POST /telephony/twilio/inbound/demo HTTP/1.1\r\nHost: x\r\n"),  # headers never end
            answered_within(
                b"POST /telephony/twilio/inbound/demo HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 500\r\n\r\nCallSid=CA1"
            ),
        )
        for waited, _ in (silent, partial, slow_body):
            assert waited < HEADER_TIMEOUT_S + 5
        assert silent[1] == partial[1] == b""  # closed without a word
        assert slow_body[1].startswith(b"HTTP/1.1 408")  # the body never came
        limits = await asyncio.to_thread(Path(f"/proc/{proc.pid}/limits").read_text)
        [soft, hard] = next(line for line in limits.splitlines() if line.startswith("Max open files")).split()[3:5]
        assert soft == hard  # serve raised its soft limit to the hard one


async def test_a_flood_of_idle_connections_leaves_descriptors_for_the_live_call(project: Path) -> None:
    import asyncio
    import resource

    from tests.conftest import make_settings

    def low_file_limit() -> None:  # the common soft 1,024, lowered further so the test is quick
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    flood: list[asyncio.StreamWriter] = []
    with serving(project, CLEAN_ENV, before_exec=low_file_limit) as proc:
        url = await _wait_for_server(project, proc)
        host, port = url.removeprefix("http://").rsplit(":", 1)
        async with aiohttp.ClientSession() as http:
            live = WireCall(make_settings(project), url, "twilio")
            ws = await live.open(http)
            readers: list[asyncio.StreamReader] = []
            try:
                for _ in range(300):  # more than the server may hold: it must not run out
                    reader, writer = await asyncio.open_connection(host, int(port))
                    readers.append(reader)
                    flood.append(writer)

                async def answer(reader: asyncio.StreamReader) -> bytes:
                    try:
                        return await asyncio.wait_for(reader.read(64), 1.0)
                    except TimeoutError:
                        return b""  # held open: under the cap

                answers = await asyncio.gather(*(answer(reader) for reader in readers))
                turned_away = sum(a.startswith(b"HTTP/1.1 503") for a in answers)
                assert 50 <= turned_away < 300, turned_away
                await live.press(ws, "0")  # the agent still speaks (eSpeak opens its files) and hangs up
                audio, closed = await agent_audio(ws, live.caller, 15.0)
                assert closed and audio > 0
            finally:
                for writer in flood:
                    writer.close()

            async def healthy() -> bool:
                try:
                    async with http.get(url + "/healthz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await until(healthy, 10, "/healthz after the flood")
        assert proc.poll() is None


def test_a_logged_traceback_never_shows_the_values_of_locals(capfd) -> None:
    import sys

    from loguru import logger

    from voicecli.ui.logs import configure

    def hang_up(auth_token: str) -> None:
        raise RuntimeError("the provider refused")

    secret = "-".join(["tw", "secret", str(4321 * 2)])  # made at run time: no source line shows it
    configure("INFO")  # as serve does
    try:
        try:
            hang_up(secret)
        except RuntimeError:
            logger.exception("hang-up failed")
        err = capfd.readouterr().err
    finally:
        logger.remove()
        logger.add(sys.stderr)
    assert "hang-up failed" in err and "RuntimeError: the provider refused" in err
    assert secret not in err
