"""What Plivo does differently: V3 signatures over the params, Basic auth, request ids apart
from call ids, and the number's application that --update-webhook points."""

from __future__ import annotations

import secrets

import aiohttp
import pytest

from tests.test_exotel_vobiz import NONCE, PLIVO_PARAMS
from voicecli.emulator.plivo import PlivoApi
from voicecli.providers import load_provider
from voicecli.providers.plivo import V3
from voicecli.providers.plivo_family import hmac_b64, plivo_v3_string
from voicecli.settings import load_settings

PUBLIC = "https://voice.example.com"
WEBHOOK_URL = f"{PUBLIC}/telephony/plivo/inbound/demo"
FORM = {"CallUUID": "plivo-call-1", "From": "14155550100", "To": "14155550142", "Direction": "inbound"}
TOKEN = PlivoApi.credentials["auth_token"]


def test_the_v3_string_matches_the_vector_in_protocols_md() -> None:
    signed = f"{plivo_v3_string('https://example.com/vobiz/answer?x=1', PLIVO_PARAMS)}.{NONCE}"
    assert hmac_b64("tok", signed) == "5XMeu+Cg02ZgBSVcgBWAkbUFIUAnwnv2vWh2X2qporI="


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({V3: hmac_b64(TOKEN, f"{plivo_v3_string(WEBHOOK_URL, FORM)}.{NONCE}"), f"{V3}-Nonce": NONCE}, 200),
        ({V3: "x," + hmac_b64(TOKEN, f"{plivo_v3_string(WEBHOOK_URL, FORM)}.{NONCE}"), f"{V3}-Nonce": NONCE}, 200),
        # Vobiz's documented form (URL and nonce only) is not Plivo's: Plivo signs the params.
        ({V3: hmac_b64(TOKEN, f"{WEBHOOK_URL}.{NONCE}"), f"{V3}-Nonce": NONCE}, 403),
        ({V3: hmac_b64("other", f"{plivo_v3_string(WEBHOOK_URL, FORM)}.{NONCE}"), f"{V3}-Nonce": NONCE}, 403),
        ({"X-Plivo-Signature-V2": hmac_b64(TOKEN, WEBHOOK_URL + NONCE), "X-Plivo-Signature-V2-Nonce": NONCE}, 403),
        ({}, 403),
    ],
)
async def test_plivo_webhooks_are_verified_with_signature_v3(start_server, headers, status) -> None:
    server = await start_server(PLIVO_AUTH_ID="MA1", PLIVO_AUTH_TOKEN=TOKEN, PUBLIC_BASE_URL=PUBLIC)
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/telephony/plivo/inbound/demo", data=FORM, headers=headers) as resp:
            body = await resp.text()
    assert resp.status == status, body
    if status == 200:
        assert '<Stream bidirectional="true" keepCallAlive="true" contentType="audio/x-mulaw;rate=8000">' in body
        assert "wss://voice.example.com/ws/plivo/demo?" in body
    else:
        assert "X-Plivo-Signature-V3" in body  # what was missing or wrong, by name


async def test_a_dialled_calls_callbacks_are_matched_by_its_request_uuid(start_server) -> None:
    async with PlivoApi() as api:
        server = await start_server(**api.env())
        async with aiohttp.ClientSession() as http:
            body = {"phone_number": "+15551234567", "agent_name": "demo", "provider": "plivo"}
            async with http.post(server.url + "/api/calls/outbound", json=body, headers=server.headers) as resp:
                record = await resp.json()
            assert resp.status == 201, record
            request_uuid = record["provider_call_id"]
            assert request_uuid in api.requested  # the dial's id, not yet a call's
            [dial] = api.of_kind("dial")
            assert dial["auth"].startswith("Basic ") and dial["content_type"] == "application/json"

            url = f"{server.url}/telephony/plivo/status/{record['id']}"
            busy = {"CallUUID": "plivo-call-2", "Event": "Hangup", "CallStatus": "busy", "HangupCause": "USER_BUSY"}
            # Another call's id, with no request id: not this call's callback.
            async with http.post(url, data=busy, headers=_signed(url, busy)) as resp:
                assert resp.status == 404
            busy["RequestUUID"] = request_uuid
            async with http.post(url, data=busy, headers=_signed(url, busy)) as resp:
                assert resp.status == 200
    [call] = await server.state.store.list()
    assert call.status == "busy" and "USER_BUSY" in call.end_reason
    assert server.state.limiter.in_use("plivo") == 0


def _signed(url: str, form: dict[str, str]) -> dict[str, str]:
    nonce = str(secrets.randbelow(10**20)).zfill(20)  # a nonce is refused a second time
    return {V3: hmac_b64(TOKEN, f"{plivo_v3_string(url, form)}.{nonce}"), f"{V3}-Nonce": nonce}


async def test_a_call_not_yet_answered_is_ended_through_its_request(project) -> None:
    async with PlivoApi() as api, aiohttp.ClientSession() as http:
        plivo = load_provider("plivo", load_settings(project, environ=api.env()))
        request_uuid = api.request_uuid()  # a dial no one has answered
        assert await plivo.hang_up(http, request_uuid) == "hung up through Plivo's REST API"
        assert [r["path"].split("/")[-3] for r in api.of_kind("hangup")] == ["Call", "Request"]
        assert await plivo.hang_up(http, "gone-call") == "hung up through Plivo's REST API"  # a live call: Call
        api.refuse_with = 404
        assert await plivo.hang_up(http, "gone-call") == "call had already ended at Plivo"


async def test_update_webhook_points_the_numbers_application(project) -> None:
    url = f"{PUBLIC}/telephony/plivo/inbound/demo"
    async with PlivoApi() as api:
        plivo = load_provider("plivo", load_settings(project, environ=api.env()))
        assert await plivo.number_webhook() == ""  # no application yet: the number answers nowhere
        done = await plivo.point_number(url)
        assert done and "new application voicecli" in done and api.app is not None
        assert (api.app["answer_url"], api.app["hangup_url"]) == (url, f"{PUBLIC}/telephony/plivo/status")
        assert await plivo.number_webhook() == url
        assert await plivo.point_number(url) == f"Plivo number {api.phone_number} already sends calls to {url}"
        moved = f"{PUBLIC}/telephony/plivo/inbound/sales"
        assert f"changed from {url} to {moved}" in (await plivo.point_number(moved) or "")
        assert api.app["answer_url"] == moved
