"""Stopping the server never leaves a call in progress: Ctrl-C drains, a kill is repaired at restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from contextlib import AbstractContextManager
from pathlib import Path

import aiohttp

from tests.conftest import make_settings
from tests.processes import ctrl_c_twice, serving
from tests.wire import WireCall, agent_audio, in_store


def _serve(project: Path, *extra: str) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """`voicecli serve` with no provider or voicecli settings from this process's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "VOICECLI_"))}
    return serving(project, env, *extra)


def _servers(project: Path) -> dict[int, str]:
    """pid -> URL of every server .voicecli/server.json lists."""
    try:
        data = json.loads((project / ".voicecli" / "server.json").read_text())
    except (OSError, ValueError):
        return {}
    return {entry["pid"]: entry["url"] for entry in data["servers"]}


async def _wait_for_server(project: Path, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, (project / "serve.log").read_text()[-3000:]
        if proc.pid in (servers := _servers(project)):
            return servers[proc.pid]
        await asyncio.sleep(0.1)
    raise AssertionError("server did not start")


async def _records(project: Path) -> list:
    return await in_store(project, lambda store: store.list())


async def _until_ended(project: Path, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while (await _records(project))[0].ended_at is None:  # another process writes it
        assert time.monotonic() < deadline, "the call did not end"
        await asyncio.sleep(0.1)


async def _call_in_progress(project: Path, url: str, http: aiohttp.ClientSession) -> tuple[WireCall, object]:
    wire = WireCall(make_settings(project), url)
    await wire.ring(http)
    ws = await wire.connect(http)
    await wire.start(ws)
    heard, _ = await agent_audio(ws, wire.caller, 1.0)
    assert heard > 0
    return wire, ws


async def test_ctrl_c_mid_call_says_goodbye_and_closes_the_record(project: Path) -> None:
    with _serve(project, "--drain-timeout", "1") as proc:
        url = await _wait_for_server(project, proc)
        async with aiohttp.ClientSession() as http:
            wire, ws = await _call_in_progress(project, url, http)
            proc.send_signal(signal.SIGINT)
            # Drain for 1 s, then the goodbye, then the server closes the stream.
            heard, closed = await agent_audio(ws, wire.caller, 20.0)
            assert closed and heard > 0
        assert await asyncio.to_thread(proc.wait, 30) == 0
    [record] = await _records(project)
    assert record.status == "completed"
    assert "server shutting down" in record.end_reason
    assert not (project / ".voicecli" / "server.json").exists()


async def test_second_ctrl_c_stops_within_two_seconds_and_still_closes_the_record(project: Path) -> None:
    with _serve(project, "--drain-timeout", "30") as proc:
        url = await _wait_for_server(project, proc)
        async with aiohttp.ClientSession() as http:
            # Held and never read: the server's close handshake gets no answer.
            _, ws = await _call_in_progress(project, url, http)
            # Two seconds to cut, and a little for the interpreter to exit.
            assert await ctrl_c_twice(proc) < 3.5
    [record] = await _records(project)
    assert record.status == "interrupted" and record.ended_at


async def test_a_killed_server_marks_its_calls_interrupted_at_the_next_start(project: Path) -> None:
    with _serve(project) as proc:
        url = await _wait_for_server(project, proc)
        async with aiohttp.ClientSession() as http:
            _, ws = await _call_in_progress(project, url, http)
            proc.kill()
            proc.wait(10)
    [record] = await _records(project)
    assert record.status == "in-progress"  # what a kill leaves behind
    with _serve(project) as proc:
        await _wait_for_server(project, proc)
        [record] = await _records(project)
        assert record.status == "interrupted"
        assert record.end_reason and record.ended_at


async def test_a_stream_mid_handshake_at_ctrl_c_is_drained_too(project: Path) -> None:
    with _serve(project, "--drain-timeout", "1") as proc:
        url = await _wait_for_server(project, proc)
        async with aiohttp.ClientSession() as http:
            wire = WireCall(make_settings(project), url)
            await wire.ring(http)
            ws = await wire.connect(http)  # upgraded, `start` not yet sent
            proc.send_signal(signal.SIGINT)
            await asyncio.sleep(0.3)
            await wire.start(ws)  # vouched for before the drain: admitted, then ended politely
            heard, closed = await agent_audio(ws, wire.caller, 20.0)
            assert heard > 0 and closed
        assert await asyncio.to_thread(proc.wait, 10) == 0
    [record] = await _records(project)
    assert record.status == "completed" and "server shutting down" in (record.end_reason or "")


async def test_a_second_serve_neither_disturbs_nor_hides_the_first(project: Path) -> None:
    from tests.processes import run_voicecli

    with _serve(project) as first:
        url = await _wait_for_server(project, first)
        async with aiohttp.ClientSession() as http:
            _, ws = await _call_in_progress(project, url, http)
            port = url.rsplit(":", 1)[1]
            # On the same port: it cannot bind, and must leave everything as it was.
            with _serve(project, "--port", port) as clash:
                assert await asyncio.to_thread(clash.wait, 60) != 0
            # On a port of its own: both run, and the first one's call is still live.
            with _serve(project) as second:
                await _wait_for_server(project, second)
                assert set(_servers(project)) == {first.pid, second.pid}
                [record] = await _records(project)
                assert record.status == "in-progress"
                second.send_signal(signal.SIGINT)
                assert await asyncio.to_thread(second.wait, 30) == 0
            assert set(_servers(project)) == {first.pid}
            code, out, err = await run_voicecli(project, "calls", "--json")
            assert code == 0, err
            assert json.loads(out)[0]["status"] == "in-progress"
            await ws.close()  # the caller hangs up: the call ends normally
            await _until_ended(project)
    [record] = await _records(project)
    assert record.status == "completed"
