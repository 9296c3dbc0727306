"""Two `voicecli serve` instances on one PostgreSQL database: one cluster, as on two machines.

Each instance has a project folder of its own, so nothing is shared but the database:
limits, dial reservations, settings changes and a killed instance's calls are cluster-wide.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import aiohttp

from tests import test_outbound
from tests.conftest import copy_shipped_agents, make_settings
from tests.processes import until
from tests.test_outbound import CUSTOMER, PhoneNetwork
from tests.test_workers import Callers, Served, active, brief_demo, opened_store, running, started

network = test_outbound.network  # the fake providers' REST APIs, as the outbound tests use them


def _second_project(project: Path) -> Path:
    """Another machine's project folder: its own agents, state and secrets files."""
    other = project / "machine-b"
    copy_shipped_agents(other / "agents")
    return other


async def _both(projects: tuple[Path, Path], procs: tuple, env: dict[str, str]) -> tuple[Served, Served]:
    a, b = await asyncio.gather(*(started(folder, proc, env) for folder, proc in zip(projects, procs, strict=True)))
    return a, b


async def test_the_limit_holds_over_both_instances(project: Path, database_url: str) -> None:
    env = {"VOICECLI_DATABASE_URL": database_url, "TWILIO_MAX_CONCURRENT": "10"}
    other = _second_project(project)
    # B is pointed at the database by the flag, A by the environment: the same cluster.
    with (
        running(project, **env) as proc_a,
        running(other, "--database", database_url, TWILIO_MAX_CONCURRENT="10") as proc_b,
    ):
        a, b = await _both((project, other), (proc_a, proc_b), env)
        async with Callers() as callers:
            calls = await asyncio.gather(*(callers.call((a, b)[i % 2].wire()) for i in range(12)))
            live = [ws for ws in calls if ws is not None]
            assert len(live) == 10
            assert (await active(callers.http, b))["active"] == 10
            for ws in live:
                await ws.close()


async def test_a_dial_on_one_instance_is_answered_on_the_other(
    project: Path, database_url: str, network: PhoneNetwork
) -> None:
    # Limit 1: the dial's reservation on A is the only slot, so B admits the stream only
    # by claiming that reservation.
    env = network.env(VOICECLI_DATABASE_URL=database_url, TWILIO_MAX_CONCURRENT="1")
    other = _second_project(project)
    brief_demo(other)
    with running(project, **env) as proc_a, running(other, **env) as proc_b:
        a, b = await _both((project, other), (proc_a, proc_b), env)
        network.server = SimpleNamespace(state=SimpleNamespace(settings=make_settings(other, **env)), url=b.url)
        network.answer_steps = []  # the greeting, then the customer hangs up
        async with Callers() as callers:
            body = {"phone_number": CUSTOMER, "agent_name": "demo", "provider": "twilio"}
            async with callers.http.post(a.url + "/api/calls/outbound", json=body, headers=a.headers) as resp:
                assert resp.status == 201, await resp.text()
                dialled = await resp.json()
        [result] = await network.results()
        assert result.ended_by == "caller" and result.heard_seconds > 0.2
        async with opened_store(project, **env) as store:
            [record] = await store.list()
        assert record.id == dialled["id"] and record.status == "completed"
        assert record.instance == b.instance


async def test_a_settings_change_on_one_instance_is_enforced_by_the_other(project: Path, database_url: str) -> None:
    env = {"VOICECLI_DATABASE_URL": database_url}
    other = _second_project(project)
    with running(project, **env) as proc_a, running(other, **env) as proc_b:
        a, b = await _both((project, other), (proc_a, proc_b), env)
        async with Callers() as callers:
            change = {"twilio_max_concurrent": 1}
            async with callers.http.put(a.url + "/api/settings/telephony", json=change, headers=a.headers) as resp:
                assert resp.status == 200, await resp.text()

            async def b_knows() -> bool:
                return (await active(callers.http, b))["limit"] == 1

            await until(b_knows, 2, "B's limit follows A's change")
            calls = await asyncio.gather(*(callers.call(b.wire()) for _ in range(2)))
            assert sum(ws is not None for ws in calls) == 1
            for ws in calls:
                if ws is not None:
                    await ws.close()


async def test_a_killed_instance_s_calls_are_ended_and_its_slots_taken_by_the_other(
    project: Path, database_url: str
) -> None:
    env = {"VOICECLI_DATABASE_URL": database_url, "TWILIO_MAX_CONCURRENT": "2"}
    other = _second_project(project)
    with running(project, **env) as proc_a, running(other, **env) as proc_b:
        a, b = await _both((project, other), (proc_a, proc_b), env)
        async with Callers() as callers, opened_store(project, **env) as store:
            on_a = await asyncio.gather(*(callers.call(a.wire()) for _ in range(2)))
            assert all(on_a)
            assert await callers.call(b.wire()) is None  # the limit is the cluster's
            os.kill(proc_a.pid, signal.SIGKILL)

            async def a_calls_ended() -> bool:
                return all(r.status == "interrupted" for r in await store.list() if r.instance == a.instance)

            await until(a_calls_ended, 30, "the killed instance's calls interrupted")
            again = await asyncio.gather(*(callers.call(b.wire()) for _ in range(3)))
            assert sum(ws is not None for ws in again) == 2
            for ws in again:
                if ws is not None:
                    await ws.close()
            for ws in on_a:
                if isinstance(ws, aiohttp.ClientWebSocketResponse):
                    await ws.close()


async def test_a_tunnel_with_a_shared_database_says_it_reaches_this_instance_only(
    project: Path, database_url: str
) -> None:
    from tests.test_tunnel import ngrok_env, wait_for_output

    env = ngrok_env(project, VOICECLI_DATABASE_URL=database_url)
    with running(project, "--tunnel", **env) as proc:
        out = await wait_for_output(project, proc, "Check the setup")
    assert "the tunnel reaches this instance only" in " ".join(out.split())
