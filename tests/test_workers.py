"""`voicecli serve --workers 2`: one port, two worker processes, one set of limits and records.

Real supervisors on loopback, driven the way Twilio drives a server: a webhook, then a
media stream. Which worker gets a connection is the kernel's choice, as in production.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import aiohttp
from aiohttp import WSCloseCode

from tests.conftest import make_settings
from tests.processes import ctrl_c_twice, serving, until
from tests.test_tunnel import PUBLIC, ngrok_env, wait_for_output
from tests.wire import WireCall, agent_audio
from voicecli.runtime import pid_alive, read_api_token
from voicecli.server.workers import SPREAD_BY_KERNEL
from voicecli.store import CallRecord, CallStore, store_for


def brief_demo(project: Path) -> None:
    """The demo agent with a one-word greeting and goodbye: it speaks in real time, and a
    test that waits for a call's end need not wait through the shipped sentences."""
    path = project / "agents" / "demo.toml"
    text = path.read_text()
    for key in ("greeting", "goodbye"):
        [line] = [line for line in text.splitlines() if line.startswith(f"{key} = ")]
        text = text.replace(line, f'{key} = "{"Hello" if key == "greeting" else "Goodbye"}!"')
    path.write_text(text)


@dataclass
class Served:
    """A running `voicecli serve` as its server.json entry shows it."""

    proc: subprocess.Popen[bytes]
    url: str
    instance: str
    env: dict[str, str]
    project: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {read_api_token(self.project / '.voicecli', None)}"}

    def wire(self, provider: str = "twilio") -> WireCall:
        return WireCall(make_settings(self.project, **self.env), self.url, provider)


def _entry(project: Path, pid: int) -> dict | None:
    try:
        data = json.loads((project / ".voicecli" / "server.json").read_text())
    except (OSError, ValueError):
        return None
    return next((entry for entry in data["servers"] if entry["pid"] == pid), None)


@contextmanager
def running(project: Path, *extra: str, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """`voicecli serve` with only `env` for provider and voicecli settings; stopped politely after."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "VOICECLI_"))}
    with serving(project, {**base, **env}, "--drain-timeout", "1", *extra) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    pass  # killed by `serving`; its workers notice and stop by themselves


async def started(project: Path, proc: subprocess.Popen[bytes], env: dict[str, str]) -> Served:
    """Once the server is listed in server.json (a supervisor: once every worker serves)."""
    deadline = time.monotonic() + 60
    while (entry := _entry(project, proc.pid)) is None:
        assert proc.poll() is None, (project / "serve.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "server did not start"
        await asyncio.sleep(0.1)
    return Served(proc, entry["url"], entry["instance"], env, project)


@asynccontextmanager
async def opened_store(project: Path, **env: str) -> AsyncIterator[CallStore]:
    store = store_for(make_settings(project, **env))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


_addresses = itertools.count(2)


def _client() -> aiohttp.ClientSession:
    # A new connection for every request from an address of its own in 127/8.
    n = next(_addresses) % 60_000 + 2
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True, local_addr=(f"127.0.{n >> 8}.{n & 255}", 0))
    )


class Callers:
    """Calls from many addresses, as from a provider's many machines (a server caps the
    streams of one address that have not yet started); `http` for the API."""

    async def __aenter__(self) -> Callers:
        self.http = _client()
        self._clients = [self.http]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self._clients:
            await client.close()

    async def call(self, wire: WireCall) -> aiohttp.ClientWebSocketResponse | None:
        self._clients.append(client := _client())
        return await admitted(client, wire)


async def admitted(http: aiohttp.ClientSession, wire: WireCall) -> aiohttp.ClientWebSocketResponse | None:
    """Ring, open the stream and start it: the socket if the call was admitted, else None."""
    await wire.ring(http)
    try:
        ws = await wire.connect(http)
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 503
        return None
    await wire.start(ws)
    msg = await ws.receive(timeout=30)
    if msg.type == aiohttp.WSMsgType.TEXT:
        return ws  # the agent's greeting
    assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == WSCloseCode.TRY_AGAIN_LATER, msg
    return None


async def active(http: aiohttp.ClientSession, served: Served, provider: str = "twilio") -> dict:
    async with http.get(served.url + "/api/status", headers=served.headers) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["providers"][provider]


def carriers(records: list[CallRecord]) -> set[str]:
    return {record.instance or "" for record in records}


async def test_thirty_streams_at_limit_ten_admit_ten_over_both_workers(project: Path) -> None:
    env = {"TWILIO_MAX_CONCURRENT": "10"}
    with running(project, "--workers", "2", **env) as proc:
        served = await started(project, proc, env)
        async with Callers() as callers:
            calls = await asyncio.gather(*(callers.call(served.wire()) for _ in range(30)))
            live = [ws for ws in calls if ws is not None]
            assert len(live) == 10
            assert (await active(callers.http, served))["active"] == 10  # cluster-wide, whichever worker answers
            for ws in live:
                await ws.close()
        async with opened_store(project) as store:
            records = await store.list(limit=100)
            assert len(records) == 30
            # Every record names the worker that carried it, and the kernel spread the streams
            # over both workers' sockets (one shared socket gave one worker 27 of 30 here).
            assert carriers(records) == {f"{served.instance}/w1", f"{served.instance}/w2"}
            if SPREAD_BY_KERNEL:  # by hash: fewer than 5 of 30 on one worker is a 1-in-3000 draw
                per_worker = Counter(record.instance for record in records)
                assert min(per_worker.values()) >= 5, per_worker


async def test_a_killed_worker_is_replaced_and_its_calls_and_slots_come_back(project: Path) -> None:
    env = {"TWILIO_MAX_CONCURRENT": "4"}
    with running(project, "--workers", "2", **env) as proc:
        served = await started(project, proc, env)
        async with Callers() as callers, opened_store(project) as store:
            calls = await asyncio.gather(*(callers.call(served.wire()) for _ in range(4)))
            assert all(calls)
            [victim] = [h for h in await store.holders() if h.id == (await store.list())[0].instance]
            os.kill(victim.pid, signal.SIGKILL)
            killed_at = time.monotonic()

            async def its_calls_ended() -> bool:
                return all(r.status == "interrupted" for r in await store.list() if r.instance == victim.id)

            await until(its_calls_ended, 10, "the killed worker's calls interrupted")
            [reason] = {r.end_reason for r in await store.list() if r.instance == victim.id}
            assert "stopped unexpectedly" in (reason or "")
            lost = sum(r.instance == victim.id for r in await store.list())
            # Its slots are free again: exactly as many new calls as it carried fit under the limit.
            again = await asyncio.gather(*(callers.call(served.wire()) for _ in range(lost + 1)))
            assert sum(ws is not None for ws in again) == lost

            async def replaced() -> bool:
                return f"{served.instance}/w3" in {h.id for h in await store.holders()}

            await until(replaced, 10 - (time.monotonic() - killed_at), "a new worker serving")
            for ws in [*calls, *again]:
                if ws is not None:
                    await ws.close()
        assert proc.poll() is None  # the supervisor carried on


async def on_both_workers(
    served: Served, callers: Callers, store: CallStore
) -> tuple[list[WireCall], list[aiohttp.ClientWebSocketResponse]]:
    """Calls until both workers carry one (the kernel picks; a few are enough)."""
    wires, sockets = [], []
    while len(carriers(await store.list(active_only=True))) < 2:
        assert len(wires) < 10, "every call went to one worker"
        wire = served.wire()
        ws = await callers.call(wire)
        assert ws is not None
        wires.append(wire)
        sockets.append(ws)
    return wires, sockets


async def test_ctrl_c_drains_both_workers_and_the_supervisor_exits_0(project: Path) -> None:
    brief_demo(project)
    with running(project, "--workers", "2") as proc:
        served = await started(project, proc, {})
        async with Callers() as callers, opened_store(project) as store:
            wires, sockets = await on_both_workers(served, callers, store)
            proc.send_signal(signal.SIGINT)
            # Each worker drains for 1 s, then the agent says goodbye and closes the stream.
            ends = await asyncio.gather(
                *(agent_audio(ws, w.caller, 20.0) for w, ws in zip(wires, sockets, strict=True))
            )
            assert all(heard > 0 and closed for heard, closed in ends)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    async with opened_store(project) as store:
        records = await store.list()
    assert {r.status for r in records} == {"completed"} and len(records) == len(wires)
    assert all("server shutting down" in (r.end_reason or "") for r in records)
    assert not (project / ".voicecli" / "server.json").exists()


async def test_a_second_ctrl_c_cuts_both_workers_at_once(project: Path) -> None:
    with running(project, "--workers", "2", "--drain-timeout", "30") as proc:
        served = await started(project, proc, {})
        async with Callers() as callers, opened_store(project) as store:
            # Held and never read: the workers' close handshakes get no answer.
            wires, _ = await on_both_workers(served, callers, store)
            assert await ctrl_c_twice(proc) < 4  # each worker's 2 s cut, and the processes' exits
            records = await store.list()
    assert len(records) == len(wires) and all(r.status == "interrupted" and r.ended_at for r in records)


async def test_workers_whose_supervisor_is_killed_stop_by_themselves(project: Path) -> None:
    with running(project, "--workers", "2") as proc:
        served = await started(project, proc, {})
        async with opened_store(project) as store:
            pids = [h.pid for h in await store.holders() if h.instance == served.instance]
            assert len(pids) == 2
            proc.kill()
            proc.wait(10)

            async def gone() -> bool:
                return not any(map(pid_alive, pids))

            await until(gone, 10, "the workers stopped")
            assert not await store.holders()  # they left the store cleanly


async def test_every_worker_answers_with_the_tunnel_s_url(project: Path) -> None:
    env = ngrok_env(project)
    with serving(project, env, "--workers", "2", "--tunnel") as proc:
        out = await wait_for_output(project, proc, "workers serving")
        assert out.count("voicecli serving on") == 1 and f"ngrok tunnel: {PUBLIC}" in out  # one banner
        served = await started(project, proc, {})
        async with Callers() as callers, opened_store(project) as store:

            async def webhook(n: int) -> str | None:
                form = {"CallSid": f"CA{n:032d}", "From": "+15551230000", "To": "+15559870000"}
                async with callers.http.post(f"{served.url}/telephony/twilio/inbound/demo", data=form) as resp:
                    assert resp.status == 200
                    stream = ElementTree.fromstring(await resp.text()).find("./Connect/Stream")
                return None if stream is None else stream.get("url")

            # Webhooks until both workers have answered some (the kernel picks, in bursts).
            urls: list[str | None] = []
            while len(carriers(await store.list(limit=1000))) < 2:
                assert len(urls) < 300, "every webhook went to one worker"
                urls += await asyncio.gather(*(webhook(len(urls) + n) for n in range(10)))
            assert set(urls) == {"wss://abc123.ngrok-free.app/ws/twilio/demo"}
        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 30) == 0


async def test_a_bad_workers_value_is_the_settings_error(project: Path) -> None:
    from tests.processes import run_voicecli

    code, _, err = await run_voicecli(project, "serve", "--workers", "0", env={**os.environ})
    assert code == 1 and "bad value for workers: must be a whole number from 1 to 256, or auto" in err
    code, _, err = await run_voicecli(project, "serve", env={**os.environ, "VOICECLI_WORKERS": "many"})
    assert code == 1 and "bad value for workers (from $VOICECLI_WORKERS)" in err
