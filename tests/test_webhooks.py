"""Post-call webhooks, delivered at least once: a receiver that is down, failing, refusing;
a server killed with an event pending; two instances on one PostgreSQL database."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.processes import CLEAN_ENV, run_voicecli, serving, until
from tests.test_shutdown import _wait_for_server
from tests.wire import in_store
from voicecli.emulator.simulator import Press, simulate_call

SECRET = "whsec-test-secret-0123"
FAST = {"VOICECLI_WEBHOOK_SECRET": SECRET, "WEBHOOK_BACKOFF_MAX_S": "0.3"}


def verify(secret: str, header: str, body: bytes, tolerance_s: float = 300) -> bool:
    """The receiver's check, as README gives it."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) < tolerance_s


class Receiver:
    """A webhook receiver on 127.0.0.1: down until started; answers `answers` in turn, then 200."""

    def __init__(self, answers: list[int] | None = None):
        with socket.socket() as probe:  # a free port, nothing listening on it yet
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self.answers = list(answers or [])
        self.got: list[tuple[int, dict[str, str], bytes]] = []  # (status given, headers, body)
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.answers.pop(0) if self.answers else 200
        self.got.append((status, dict(request.headers), body))
        return web.Response(status=status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    def delivered(self) -> dict[str, dict[str, Any]]:
        """Each delivery id answered 200, with its event as JSON."""
        return {h["X-Voicecli-Delivery"]: json.loads(b) for status, h, b in self.got if status == 200}


async def test_events_survive_a_receiver_that_is_down_then_failing(start_server) -> None:
    receiver = Receiver(answers=[500, 500])
    server = await start_server(WEBHOOK_URL=receiver.url, **FAST)
    result = await simulate_call(
        server.state.settings, server.url, "demo", "twilio", [Press("0")], api_token=server.token, linger_s=0.2
    )
    assert result.ended_by == "agent"  # the call never waited for the receiver
    store = server.state.store

    async def both_tried() -> bool:
        found = await store.deliveries()
        return len(found) == 2 and all(d.tries >= 1 and d.status == "pending" for d in found)

    await until(both_tried)  # down: connection refused, retried
    await receiver.start()
    try:
        await until(lambda: len(receiver.delivered()) == 2)
    finally:
        await receiver.stop()
    assert [status for status, _, _ in receiver.got[:2]] == [500, 500]
    for _, headers, body in receiver.got:
        assert verify(SECRET, headers["X-Voicecli-Signature"], body)
        assert headers["Content-Type"] == "application/json"
    events = {e["event"]: e for e in receiver.delivered().values()}
    started, ended = events["call.started"], events["call.ended"]
    assert started["call"]["id"] == ended["call"]["id"] == result.record["id"]
    assert started["call"]["status"] == "in-progress" and "transcript" not in started["call"]
    assert ended["call"]["status"] == "completed" and ended["call"]["duration_s"] > 0
    assert ended["call"]["transcript"][-1]["text"] == "Thanks for calling. Goodbye!"
    assert ended["call"]["provider_call_id"] == result.call.provider_call_id
    assert {d.status for d in await store.deliveries()} == {"delivered"}
    # The same delivery id on every try of one event: a receiver can drop duplicates.
    tried = [h["X-Voicecli-Delivery"] for _, h, _ in receiver.got]
    assert len(set(tried)) == 2 and len(tried) == 4


async def test_a_refused_event_fails_at_once_and_can_be_retried(project: Path, start_server) -> None:
    receiver = Receiver(answers=[400, 400])
    await receiver.start()
    try:
        server = await start_server(WEBHOOK_URL=receiver.url, **FAST)
        await simulate_call(server.state.settings, server.url, "demo", "exotel", [Press("0")], linger_s=0.2)
        store = server.state.store

        async def both_failed() -> list:
            found = await store.deliveries()
            return found if len(found) == 2 and all(d.status == "failed" for d in found) else []

        failed = await until(both_failed)
        assert all(d.tries == 1 and "HTTP 400" in (d.last_error or "") for d in failed)
        code, out, err = await run_voicecli(project, "webhooks", "--json", env=CLEAN_ENV)
        assert code == 0, err
        assert {d["status"] for d in json.loads(out)} == {"failed"}  # read from the store by the CLI

        code, out, err = await run_voicecli(project, "webhooks", "retry", failed[0].id, env=CLEAN_ENV)
        assert code == 0 and "queued again" in out, err
        await until(lambda: failed[0].id in receiver.delivered())
        code, out, err = await run_voicecli(project, "webhooks", "retry", "whd_nosuch", env=CLEAN_ENV)
        assert code == 1 and "no failed delivery whd_nosuch" in err and "Traceback" not in err
    finally:
        await receiver.stop()


async def test_an_event_pending_when_the_server_is_killed_arrives_after_a_restart(project: Path) -> None:
    receiver = Receiver()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "VOICECLI_"))}}
    env.update(FAST, WEBHOOK_URL=receiver.url)
    with serving(project, env) as proc:
        url = await _wait_for_server(project, proc)
        settings_env = {"VOICECLI_WEBHOOK_SECRET": SECRET}
        from tests.conftest import make_settings

        await simulate_call(make_settings(project, **settings_env), url, "demo", "vobiz", [Press("0")], linger_s=0.2)

        async def pending() -> bool:
            found = await _deliveries(project)
            return len(found) == 2 and all(d.status == "pending" and d.tries >= 1 for d in found)

        await until(pending)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    await receiver.start()
    try:
        with serving(project, env) as proc:
            await _wait_for_server(project, proc)
            await until(lambda: len(receiver.delivered()) == 2)
    finally:
        await receiver.stop()
    assert {e["event"] for e in receiver.delivered().values()} == {"call.started", "call.ended"}


async def _deliveries(project: Path) -> list:
    return await in_store(project, lambda store: store.deliveries())


async def test_two_instances_send_each_event_once(start_server, database_url: str) -> None:
    receiver = Receiver()
    await receiver.start()
    try:
        env = {"VOICECLI_DATABASE_URL": database_url, "WEBHOOK_URL": receiver.url, **FAST}
        a = await start_server(**env)
        await start_server(**env)  # the second instance polls the same outbox
        calls = [simulate_call(a.state.settings, a.url, "demo", "twilio", [Press("0")], linger_s=0.2) for _ in range(3)]
        await asyncio.gather(*calls)
        await until(lambda: len(receiver.delivered()) == 6)
        await asyncio.sleep(1.5)  # anything sent twice would have arrived by now
    finally:
        await receiver.stop()
    ids = [h["X-Voicecli-Delivery"] for _, h, _ in receiver.got]
    assert len(ids) == len(set(ids)) == 6
    events = sorted(e["event"] for e in receiver.delivered().values())
    assert events == ["call.ended"] * 3 + ["call.started"] * 3


async def test_an_agents_own_webhook_url_wins_over_the_setting(project: Path, start_server) -> None:
    demo = (project / "agents" / "demo.toml").read_text()
    own = "https://crm.example.com/voicecli"
    (project / "agents" / "sales.toml").write_text(
        demo.replace('name = "demo"', 'name = "sales"') + f'\n[webhook]\nurl = "{own}"\n'
    )
    server = await start_server(agents=["demo", "sales"], WEBHOOK_URL="https://hooks.example.com/all", **FAST)
    for agent in ("demo", "sales"):
        await simulate_call(server.state.settings, server.url, agent, "twilio", [Press("0")], linger_s=0.2)
    urls = {d.call_id: d.url for d in await server.state.store.deliveries()}
    by_agent = {r.agent: urls[r.id] for r in await server.state.store.list()}
    assert by_agent == {"demo": "https://hooks.example.com/all", "sales": own}
