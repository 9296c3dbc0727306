"""Outbound calls, for every registered provider: the dial its REST API gets, the whole call
over the stream, and the provider's status callback after it.

Each provider's REST API is its emulator's (voicecli/emulator/), on 127.0.0.1 and reached
through {PROVIDER}_API_BASE: it checks credentials, body and caller ID as the provider does.
When a dial arrives it can pick the call up: the emulator answers through whatever the
server handed the provider (inline TwiML, Exotel's StreamUrl, an answer_url), as the real
network would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from tests.processes import run_voicecli
from voicecli.emulator.api import ProviderApi
from voicecli.emulator.simulator import Press, SimResult, Step, answer_dialled_call
from voicecli.providers import PROVIDERS, load_api, provider_class
from voicecli.providers.base import HangsUp
from voicecli.runtime import ServerInfo, record_server

CUSTOMER = "+15551234567"


@dataclass
class PhoneNetwork:
    """Every registered provider's fake REST API: every request kept; dials answered by the
    emulator when asked."""

    apis: dict[str, ProviderApi] = field(default_factory=dict)
    answer_steps: list[Step] | None = None  # pick dialled calls up and run these steps
    server: Any = None  # the voicecli server under test (for the emulator)
    answered: list[asyncio.Task[SimResult]] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for api in self.apis.values():
            env.update(api.env())
        return {**env, **extra}

    def refuse_with(self, status: int) -> None:
        for api in self.apis.values():
            api.refuse_with = status

    def dials(self) -> list[dict[str, Any]]:
        return sorted((r for api in self.apis.values() for r in api.of_kind("dial")), key=lambda r: r["at"])

    def secrets(self) -> list[str]:
        """Every secret credential the APIs hold (they must never be shown)."""
        out = []
        for name, api in self.apis.items():
            secret = {s.name for s in provider_class(name).config_type.rows(name, "") if s.secret}
            out += [value for key, value in api.credentials.items() if f"{name}_{key}" in secret]
        return out

    def pick_up(self, provider: str, dial: Any, provider_call_id: str) -> None:
        if self.answer_steps is None:
            return
        server = self.server
        task = answer_dialled_call(
            server.state.settings, server.url, provider, dial, provider_call_id, self.answer_steps, linger_s=0.2
        )
        self.answered.append(asyncio.create_task(task))

    async def results(self) -> list[SimResult]:
        return list(await asyncio.gather(*self.answered))


@pytest.fixture
async def network() -> AsyncIterator[PhoneNetwork]:
    net = PhoneNetwork()
    async with AsyncExitStack() as stack:
        for name in PROVIDERS:
            api = await stack.enter_async_context(load_api(name))
            api.on_dial = lambda dial, call_id, name=name: net.pick_up(name, dial, call_id)
            net.apis[name] = api
        yield net
        for task in net.answered:
            task.cancel()
        await asyncio.gather(*net.answered, return_exceptions=True)


async def _dial(http: aiohttp.ClientSession, server: Any, **body: Any) -> tuple[int, dict[str, Any]]:
    body = {"phone_number": CUSTOMER, "agent_name": "demo", **body}
    async with http.post(server.url + "/api/calls/outbound", json=body, headers=server.headers) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_an_outbound_call_runs_from_dial_to_hang_up(start_server, network, provider) -> None:
    server = await start_server(**network.env())
    network.server, network.answer_steps = server, [Press("1"), Press("0")]
    api = network.apis[provider]
    async with aiohttp.ClientSession() as http:
        status, record = await _dial(http, server, provider=provider)
    assert status == 201, record  # the fake API accepted credentials, body and caller ID
    assert (record["status"], record["direction"], record["provider"]) == ("queued", "outbound", provider)
    assert (record["to"], record["from"]) == (CUSTOMER, api.phone_number)
    [dial] = network.dials()
    assert dial["provider"] == provider
    assert record["provider_call_id"]  # stored from the provider's answer, before the call is picked up

    [result] = await network.results()  # picked up through what the dial handed the provider
    assert result.ended_by == "agent" and result.heard_seconds > 3
    assert result.status_callback == 200  # the dial's status URL reached the server, verified
    [call] = await server.state.store.list()  # one record from dial to hang-up
    assert call.id == record["id"] and call.status == "completed" and call.direction == "outbound"
    said = [t.text for t in await server.state.store.transcript(call.id)]
    assert "You pressed one. Our plans start at twenty dollars a month." in said
    assert said[-1] == "Thanks for calling. Goodbye!"
    hangups = api.of_kind("hangup")
    if issubclass(provider_class(provider), HangsUp):
        [hangup] = hangups
        assert result.call.provider_call_id in hangup["path"] and "hung up through" in (call.end_reason or "")
    else:  # no hang-up API: closing the stream ends the call
        assert hangups == []
    assert server.state.limiter.in_use(provider) == 0


@pytest.mark.parametrize(
    "number",
    [
        "+1555",
        "15551234567",
        "+015551234567",
        " +15551234567",
        "+1 555 123 4567",
        "+1555123456789012",
        5551234567,
        "+15551234567\n",  # a trailing newline
        "+\u0661\u0665\u0665\u0665\u0661\u0662\u0663\u0664\u0665\u0666\u0667",  # Arabic-Indic digits
    ],
)
async def test_a_number_not_in_e164_is_422_and_dials_nothing(start_server, network, number) -> None:
    server = await start_server(**network.env())
    async with aiohttp.ClientSession() as http:
        status, body = await _dial(http, server, phone_number=number)
    assert status == 422 and "E.164" in body["error"]
    assert network.dials() == [] and await server.state.store.list() == []


async def test_checks_come_before_dialling(start_server, network) -> None:
    server = await start_server(**{k: v for k, v in network.env().items() if not k.startswith("EXOTEL_API_TOKEN")})
    async with aiohttp.ClientSession() as http:
        status, body = await _dial(http, server, agent_name="nobody")
        assert status == 404 and "demo" in body["error"]
        status, body = await _dial(http, server, provider="exotel")
        assert status == 400 and "EXOTEL_API_TOKEN" in body["error"]
        status, body = await _dial(http, server, provider="skype")
        assert status == 422
    assert network.dials() == [] and await server.state.store.list() == []


async def test_dials_in_flight_count_against_the_limit(start_server, network) -> None:
    server = await start_server(**network.env(VOBIZ_MAX_CONCURRENT="1"))  # nobody picks up
    async with aiohttp.ClientSession() as http:
        first, _ = await _dial(http, server, provider="vobiz")
        second, body = await _dial(http, server, provider="vobiz")
        assert (first, second) == (201, 429)
        assert "limit of 1" in body["error"]
        # Twilio has its own limit.
        assert (await _dial(http, server, provider="twilio"))[0] == 201
    assert len(network.dials()) == 2


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_a_provider_refusal_is_502_with_its_reason_and_a_failed_record(start_server, network, provider) -> None:
    server = await start_server(**network.env())
    network.refuse_with(400)
    async with aiohttp.ClientSession() as http:
        status, body = await _dial(http, server, provider=provider)
    assert status == 502
    reason = network.apis[provider].dial_refusal  # in the provider's own error shape
    assert reason in body["error"]
    [call] = await server.state.store.list()
    assert call.status == "failed" and reason in call.end_reason
    assert server.state.limiter.in_use(provider) == 0


async def test_an_unreachable_provider_is_502_too(start_server, network) -> None:
    server = await start_server(**network.env(VOBIZ_API_BASE="http://127.0.0.1:9/api/v1"))
    async with aiohttp.ClientSession() as http:
        status, body = await _dial(http, server, provider="vobiz")
    assert status == 502 and "could not be reached" in body["error"]
    assert server.state.limiter.in_use("vobiz") == 0


async def test_an_unanswered_call_is_closed_by_its_status_callback(start_server, network) -> None:
    from twilio.request_validator import RequestValidator

    server = await start_server(**network.env())
    async with aiohttp.ClientSession() as http:
        status, record = await _dial(http, server, provider="twilio")
        assert status == 201 and server.state.limiter.in_use("twilio") == 1  # the dial holds a slot
        url = f"{server.url}/telephony/twilio/status/{record['id']}"
        twilio = network.apis["twilio"].credentials
        form = {"CallSid": record["provider_call_id"], "CallStatus": "no-answer", "AccountSid": twilio["account_sid"]}
        async with http.post(url, data=form) as resp:
            assert resp.status == 403  # callbacks are signed like every Twilio webhook
        signature = RequestValidator(twilio["auth_token"]).compute_signature(url, form)
        async with http.post(url, data=form, headers={"X-Twilio-Signature": signature}) as resp:
            assert resp.status == 200
    [call] = await server.state.store.list()
    assert call.status == "no-answer" and call.ended_at
    assert server.state.limiter.in_use("twilio") == 0


async def test_voicecli_call_wait_prints_the_outcome_and_transcript(project, start_server, network) -> None:
    server = await start_server(**network.env())
    network.server, network.answer_steps = server, [Press("1"), Press("0")]
    args = ("call", CUSTOMER, "--provider", "vobiz", "--wait", "--server", server.url)
    code, out, err = await run_voicecli(project, *args)
    assert code == 0, err
    assert f"dialling {CUSTOMER} from {network.apis['vobiz'].phone_number} through vobiz" in out
    assert "completed" in out and "Our plans start at twenty dollars a month." in out
    assert "Thanks for calling. Goodbye!" in out
    assert not [s for s in network.secrets() if s in out + err]


async def test_voicecli_call_refuses_clearly(project, start_server, network) -> None:
    server = await start_server(**network.env())
    code, out, err = await run_voicecli(project, "call", "5551234567", "--server", server.url)
    assert code == 1 and "E.164" in err and "Traceback" not in err
    code, out, err = await run_voicecli(project, "call", CUSTOMER, "--agent", "nobody", "--server", server.url)
    assert code == 1 and "demo" in err
    code, out, err = await run_voicecli(project, "call", CUSTOMER, "--server", "http://127.0.0.1:9")
    assert code == 1 and "voicecli serve" in err and "Traceback" not in err
    assert network.dials() == []


async def test_config_set_provider_switches_the_running_servers_next_call(project, start_server, network) -> None:
    server = await start_server(**network.env())
    record_server(server.state.settings.state_dir, ServerInfo(server.url, 1, ["demo"]))
    code, out, err = await run_voicecli(project, "config", "set", "provider", "vobiz")
    assert code == 0, err
    assert "the running server uses it now" in out
    assert (await server.state.store.stored_settings())["provider"] == "vobiz"  # kept over restarts
    async with aiohttp.ClientSession() as http:
        status, record = await _dial(http, server)  # no provider in the request
        assert status == 201 and record["provider"] == "vobiz"
        status, record = await _dial(http, server, provider="exotel")  # one call's override
        assert status == 201 and record["provider"] == "exotel"
    assert [d["provider"] for d in network.dials()] == ["vobiz", "exotel"]


async def test_the_settings_api_masks_secrets_validates_and_persists(project, start_server, network) -> None:
    server = await start_server(**network.env())
    async with aiohttp.ClientSession() as http:
        url = server.url + "/api/settings/telephony"
        async with http.get(url) as resp:
            assert resp.status == 401
        async with http.get(url, headers=server.headers) as resp:
            text = await resp.text()
        assert network.secrets() and not [s for s in network.secrets() if s in text]
        assert json.loads(text)["twilio_account_sid"] == network.apis["twilio"].credentials["account_sid"]
        for bad in ({"provider": "skype"}, {"no_such_field": 1}, {"twilio_max_concurrent": -3}):
            async with http.put(url, json=bad, headers=server.headers) as resp:
                assert resp.status == 422, bad
                assert next(iter(bad)) in (await resp.json())["error"]
        async with http.put(url, json={"twilio_max_concurrent": 3}, headers=server.headers) as resp:
            assert resp.status == 200 and (await resp.json())["twilio_max_concurrent"] == 3
    assert server.state.provider("twilio").max_concurrent == 3  # applied without a restart
    assert (await server.state.store.stored_settings())["twilio_max_concurrent"] == 3  # survives a restart
    assert not (project / "voicecli.toml").exists()  # the API writes the store, never the file


async def test_exotels_status_callback_answers_the_stream_and_closes_failed_dials(start_server, network) -> None:
    server = await start_server(**network.env(EXOTEL_MAX_CONCURRENT="1"))
    async with aiohttp.ClientSession() as http:
        _, record = await _dial(http, server, provider="exotel")
        url = f"{server.url}/telephony/exotel/status/{record['id']}"
        answered = {"CallSid": record["provider_call_id"], "Status": "in-progress", "EventType": "answered"}
        async with http.post(url, data=answered) as resp:
            assert resp.status == 200
            exoml = await resp.text()
        assert "<Connect><Stream" in exoml and "/ws/exotel/demo" in exoml
        busy = {"CallSid": record["provider_call_id"], "Status": "busy", "EventType": "terminal"}
        async with http.post(url, data=busy) as resp:
            assert resp.status == 200
        assert server.state.limiter.in_use("exotel") == 0
        assert (await _dial(http, server, provider="exotel"))[0] == 201  # the slot came back
    statuses = sorted(c.status for c in await server.state.store.list())
    assert statuses == ["busy", "queued"]


async def test_vobiz_hangup_callback_finds_the_record_by_call_uuid(start_server, network) -> None:
    from tests.wire import WireCall

    server = await start_server()  # no Vobiz token: callbacks unsigned
    wire = WireCall(server.state.settings, server.url, "vobiz")
    async with aiohttp.ClientSession() as http:
        await wire.ring(http)
        form = {
            "CallUUID": wire.call.provider_call_id,
            "Event": "Hangup",
            "CallStatus": "no-answer",
            "HangupCause": "NO_ANSWER",
        }
        async with http.post(server.url + "/telephony/vobiz/status", data=form) as resp:
            assert resp.status == 200
        async with http.post(server.url + "/telephony/vobiz/status", data={**form, "CallUUID": "nope"}) as resp:
            assert resp.status == 404
    [call] = await server.state.store.list()
    assert call.status == "no-answer" and "NO_ANSWER" in call.end_reason
