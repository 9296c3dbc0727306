"""Outbound calls: the exact REST request each provider gets, then the whole call over the stream.

One fake "phone network" app on 127.0.0.1 plays the three providers' REST APIs (reached
through TWILIO_API_BASE, EXOTEL_API_BASE and VOBIZ_API_BASE). When a dial arrives it can
pick the call up: the emulator answers through whatever the server handed the provider
(inline TwiML, Exotel's StreamUrl, Vobiz's answer_url), as the real network would.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import TWILIO_SID, TWILIO_TOKEN, VOBIZ_ID, VOBIZ_TOKEN
from tests.processes import run_voicecli
from voicecli.emulator.simulator import Press, SimResult, Step, answer_dialled_call
from voicecli.runtime import ServerInfo, record_server

EXOTEL_SID, EXOTEL_KEY, EXOTEL_TOKEN = "voicecli1", "exotel-key-1", "exotel-token-secret-9"
OUR_NUMBERS = {"twilio": "+15550001111", "exotel": "+918047100000", "vobiz": "+918071500000"}
CUSTOMER = "+15551234567"


@dataclass
class PhoneNetwork:
    """The fake REST APIs: every request kept; dials answered by the emulator when asked."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    refuse_with: int | None = None  # answer dials with this HTTP status instead
    answer_steps: list[Step] | None = None  # pick dialled calls up and run these steps
    server: Any = None  # the voicecli server under test (for the emulator)
    answered: list[asyncio.Task[SimResult]] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "TWILIO_ACCOUNT_SID": TWILIO_SID,
            "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            "TWILIO_PHONE_NUMBER": OUR_NUMBERS["twilio"],
            "TWILIO_API_BASE": self.url,
            "EXOTEL_ACCOUNT_SID": EXOTEL_SID,
            "EXOTEL_API_KEY": EXOTEL_KEY,
            "EXOTEL_API_TOKEN": EXOTEL_TOKEN,
            "EXOTEL_PHONE_NUMBER": OUR_NUMBERS["exotel"],
            "EXOTEL_API_BASE": self.url + "/exotel",
            "VOBIZ_AUTH_ID": VOBIZ_ID,
            "VOBIZ_AUTH_TOKEN": VOBIZ_TOKEN,
            "VOBIZ_PHONE_NUMBER": OUR_NUMBERS["vobiz"],
            "VOBIZ_API_BASE": self.url + "/vobiz/api/v1",
            **extra,
        }

    def dials(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["kind"] == "dial"]

    def hangups(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["kind"] == "hangup"]

    async def results(self) -> list[SimResult]:
        return list(await asyncio.gather(*self.answered))


@pytest.fixture
async def network() -> AsyncIterator[PhoneNetwork]:
    net = PhoneNetwork()

    async def keep(request: web.Request, kind: str, provider: str) -> dict[str, Any]:
        if request.content_type == "application/json":
            fields = await request.json()
        else:
            fields = dict(await request.post())
        entry = {
            "kind": kind,
            "provider": provider,
            "method": request.method,
            "path": request.path,
            "headers": dict(request.headers),
            "content_type": request.content_type,
            "fields": fields,
        }
        net.requests.append(entry)
        return entry

    def pick_up(provider: str, entry: dict[str, Any], provider_call_id: str) -> None:
        if net.answer_steps is None:
            return
        server = net.server
        net.answered.append(
            asyncio.create_task(
                answer_dialled_call(
                    server.state.settings,
                    server.url,
                    provider,
                    entry["fields"],
                    provider_call_id,
                    net.answer_steps,
                    linger_s=0.2,
                )
            )
        )

    async def twilio_create(request: web.Request) -> web.Response:
        entry = await keep(request, "dial", "twilio")
        if net.refuse_with:
            body = {"code": 21211, "message": "The 'To' number is not a valid phone number.", "status": 400}
            return web.json_response(body, status=net.refuse_with)
        sid = "CA" + "d" * 32
        pick_up("twilio", entry, sid)
        return web.json_response({"sid": sid, "status": "queued", "to": entry["fields"]["To"]}, status=201)

    async def twilio_update(request: web.Request) -> web.Response:
        await keep(request, "hangup", "twilio")
        return web.json_response({"sid": request.match_info["sid"], "status": "completed"})

    async def exotel_connect(request: web.Request) -> web.Response:
        entry = await keep(request, "dial", "exotel")
        if net.refuse_with:
            body = {"RestException": {"Status": net.refuse_with, "Message": "Authentication is required"}}
            return web.json_response(body, status=net.refuse_with)
        sid = "e" * 32
        pick_up("exotel", entry, sid)
        return web.json_response({"Call": {"Sid": sid, "Status": "in-progress"}})

    async def vobiz_create(request: web.Request) -> web.Response:
        entry = await keep(request, "dial", "vobiz")
        if net.refuse_with:
            return web.json_response({"error": "insufficient balance"}, status=net.refuse_with)
        uuid = "b1a2c3d4-0000-4000-8000-00000000000a"
        pick_up("vobiz", entry, uuid)
        return web.json_response({"api_id": "x", "message": "call fired", "request_uuid": uuid}, status=201)

    async def vobiz_delete(request: web.Request) -> web.Response:
        await keep(request, "hangup", "vobiz")
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{account}/Calls.json", twilio_create)
    app.router.add_post("/2010-04-01/Accounts/{account}/Calls/{sid}.json", twilio_update)
    app.router.add_post("/exotel/v1/Accounts/{sid}/Calls/connect.json", exotel_connect)
    app.router.add_post("/vobiz/api/v1/Account/{auth_id}/Call/", vobiz_create)
    app.router.add_delete("/vobiz/api/v1/Account/{auth_id}/Call/{uuid}/", vobiz_delete)
    fake = TestServer(app, host="127.0.0.1")
    await fake.start_server()
    net.url = str(fake.make_url("")).rstrip("/")
    yield net
    for task in net.answered:
        task.cancel()
    await asyncio.gather(*net.answered, return_exceptions=True)
    await fake.close()


async def _dial(http: aiohttp.ClientSession, server: Any, **body: Any) -> tuple[int, dict[str, Any]]:
    body = {"phone_number": CUSTOMER, "agent_name": "demo", **body}
    async with http.post(server.url + "/api/calls/outbound", json=body, headers=server.headers) as resp:
        return resp.status, await resp.json()


def _check_twilio_dial(dial: dict[str, Any], server: Any, call_id: str) -> None:
    assert dial["path"] == f"/2010-04-01/Accounts/{TWILIO_SID}/Calls.json"
    assert (
        dial["headers"]["Authorization"]
        == "Basic " + base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
    )
    fields = dial["fields"]
    assert (fields["To"], fields["From"]) == (CUSTOMER, OUR_NUMBERS["twilio"])
    assert fields["StatusCallback"] == f"{server.url}/telephony/twilio/status/{call_id}"
    twiml = fields["Twiml"]
    assert f'<Stream url="ws://{server.url.split("://")[1]}/ws/twilio/demo">' in twiml
    assert '<Parameter name="direction" value="outbound"' in twiml
    assert f'<Parameter name="call_id" value="{call_id}"' in twiml


def _check_exotel_dial(dial: dict[str, Any], server: Any, call_id: str) -> None:
    assert dial["path"] == f"/exotel/v1/Accounts/{EXOTEL_SID}/Calls/connect.json"
    assert dial["content_type"] == "application/x-www-form-urlencoded"
    expected = "Basic " + base64.b64encode(f"{EXOTEL_KEY}:{EXOTEL_TOKEN}".encode()).decode()
    assert dial["headers"]["Authorization"] == expected
    fields = dial["fields"]
    assert (fields["From"], fields["CallerId"]) == (CUSTOMER, OUR_NUMBERS["exotel"])
    assert fields["StatusCallback"] == f"{server.url}/telephony/exotel/status/{call_id}"
    assert fields["StreamType"] == "bidirectional"
    assert fields["StreamUrl"].startswith(f"ws://{server.url.split('://')[1]}/ws/exotel/demo?")


def _check_vobiz_dial(dial: dict[str, Any], server: Any, call_id: str) -> None:
    assert dial["path"] == f"/vobiz/api/v1/Account/{VOBIZ_ID}/Call/"
    assert dial["content_type"] == "application/json"
    assert (dial["headers"]["X-Auth-ID"], dial["headers"]["X-Auth-Token"]) == (VOBIZ_ID, VOBIZ_TOKEN)
    assert "Authorization" not in dial["headers"]  # header auth, not Basic (protocols.md C1)
    fields = dial["fields"]
    assert (fields["to"], fields["from"]) == (CUSTOMER, OUR_NUMBERS["vobiz"])
    assert fields["answer_url"] == f"{server.url}/telephony/vobiz/answer/{call_id}"
    assert fields["hangup_url"] == f"{server.url}/telephony/vobiz/status/{call_id}"


CHECK_DIAL = {"twilio": _check_twilio_dial, "exotel": _check_exotel_dial, "vobiz": _check_vobiz_dial}


@pytest.mark.parametrize("provider", ["twilio", "exotel", "vobiz"])
async def test_an_outbound_call_runs_from_dial_to_hang_up(start_server, network, provider) -> None:
    server = await start_server(**network.env())
    network.server, network.answer_steps = server, [Press("1"), Press("0")]
    async with aiohttp.ClientSession() as http:
        status, record = await _dial(http, server, provider=provider)
    assert status == 201, record
    assert (record["status"], record["direction"], record["provider"]) == ("queued", "outbound", provider)
    assert (record["to"], record["from"]) == (CUSTOMER, OUR_NUMBERS[provider])
    [dial] = network.dials()
    CHECK_DIAL[provider](dial, server, record["id"])
    assert record["provider_call_id"]  # stored from the provider's answer, before the call is picked up

    [result] = await network.results()
    assert result.ended_by == "agent" and result.heard_seconds > 3
    [call] = await server.state.store.list()  # one record from dial to hang-up
    assert call.id == record["id"] and call.status == "completed" and call.direction == "outbound"
    said = [t.text for t in await server.state.store.transcript(call.id)]
    assert "You pressed one. Our plans start at twenty dollars a month." in said
    assert said[-1] == "Thanks for calling. Goodbye!"
    hangups = network.hangups()
    if provider == "exotel":  # no hang-up API: closing the stream ends the call
        assert hangups == []
    else:
        [hangup] = hangups
        assert record["provider_call_id"] in hangup["path"]
    assert server.state.limiter.in_use(provider) == 0


@pytest.mark.parametrize(
    "number",
    ["+1555", "15551234567", "+015551234567", " +15551234567", "+1 555 123 4567", "+1555123456789012", 5551234567],
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


@pytest.mark.parametrize("provider", ["twilio", "exotel", "vobiz"])
async def test_a_provider_refusal_is_502_with_its_reason_and_a_failed_record(start_server, network, provider) -> None:
    server = await start_server(**network.env())
    network.refuse_with = 401 if provider == "exotel" else 400
    async with aiohttp.ClientSession() as http:
        status, body = await _dial(http, server, provider=provider)
    assert status == 502
    reason = {"twilio": "not a valid phone number", "exotel": "Authentication is required", "vobiz": "insufficient"}
    assert reason[provider] in body["error"]
    [call] = await server.state.store.list()
    assert call.status == "failed" and reason[provider] in call.end_reason
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
        form = {"CallSid": record["provider_call_id"], "CallStatus": "no-answer", "AccountSid": TWILIO_SID}
        async with http.post(url, data=form) as resp:
            assert resp.status == 403  # callbacks are signed like every Twilio webhook
        signature = RequestValidator(TWILIO_TOKEN).compute_signature(url, form)
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
    assert f"dialling {CUSTOMER} from {OUR_NUMBERS['vobiz']} through vobiz" in out
    assert "completed" in out and "Our plans start at twenty dollars a month." in out
    assert "Thanks for calling. Goodbye!" in out
    assert VOBIZ_TOKEN not in out + err


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
        for secret in (TWILIO_TOKEN, VOBIZ_TOKEN, EXOTEL_TOKEN):
            assert secret not in text
        assert json.loads(text)["twilio_account_sid"] == TWILIO_SID
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
