"""Signatures, stream tokens and the API token: who may do what."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import WSCloseCode

from tests.conftest import TWILIO_TOKEN, VOBIZ_TOKEN, twilio_env, vobiz_env
from tests.wire import WireCall

FORM = {"CallSid": "CA" + "2" * 32, "From": "+15551230000", "To": "+15559870000"}


async def test_wrong_or_missing_twilio_signature_gets_403(start_server, fake_twilio) -> None:
    server = await start_server(**twilio_env(fake_twilio))
    url = server.url + "/telephony/twilio/inbound/demo"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=FORM) as resp:
            assert resp.status == 403
            assert "X-Twilio-Signature" in await resp.text()
        async with http.post(url, data=FORM, headers={"X-Twilio-Signature": "d3Jvbmc="}) as resp:
            assert resp.status == 403
    assert await server.state.store.list() == []  # nothing recorded for a forged call


async def test_signature_is_checked_against_the_public_url(start_server, fake_twilio) -> None:
    from twilio.request_validator import RequestValidator

    server = await start_server(**twilio_env(fake_twilio, PUBLIC_BASE_URL="https://pub.example.com"))
    path = "/telephony/twilio/inbound/demo"
    local_sig = RequestValidator(TWILIO_TOKEN).compute_signature(server.url + path, FORM)
    public_sig = RequestValidator(TWILIO_TOKEN).compute_signature("https://pub.example.com" + path, FORM)
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + path, data=FORM, headers={"X-Twilio-Signature": local_sig}) as resp:
            assert resp.status == 403
        async with http.post(server.url + path, data=FORM, headers={"X-Twilio-Signature": public_sig}) as resp:
            assert resp.status == 200


async def test_without_an_auth_token_signatures_are_not_checked(start_server) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/telephony/twilio/inbound/demo", data=FORM) as resp:
            assert resp.status == 200
    notes = server.state.provider("twilio").security_notes()
    assert notes and "NOT checked" in notes[0]


@pytest.mark.parametrize("token", [None, "", "call_x.99999999999.forged", "garbage"])
async def test_a_stream_without_a_valid_token_is_refused(start_server, fake_twilio, token) -> None:
    server = await start_server(**twilio_env(fake_twilio))
    wire = WireCall(server.state.settings, server.url)
    async with aiohttp.ClientSession() as http:
        await wire.ring(http)
        params = {k: v for k, v in wire.parameters.items() if k != "stream_token"}
        if token is not None:
            params["stream_token"] = token
        ws = await wire.connect(http)
        await wire.start(ws, params)
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == WSCloseCode.POLICY_VIOLATION
    # The slot came back, and the record the webhook made never went in progress.
    assert server.state.limiter.in_use("twilio") == 0
    assert [c.status for c in await server.state.store.list()] == ["ringing"]


async def test_a_token_from_another_server_secret_is_refused(start_server, fake_twilio) -> None:
    import time

    from voicecli.server.tokens import TokenScope, make_token

    server = await start_server(**twilio_env(fake_twilio))
    wire = WireCall(server.state.settings, server.url)
    async with aiohttp.ClientSession() as http:
        await wire.ring(http)
        call_id = wire.parameters["stream_token"].split(".")[0]
        forged = make_token(b"another-secret", TokenScope(call_id, "twilio", "demo"), time.time())
        params = {**wire.parameters, "stream_token": forged}
        ws = await wire.connect(http)
        await wire.start(ws, params)
        assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE


async def test_a_wrong_signature_on_the_stream_upgrade_is_refused(start_server, fake_twilio) -> None:
    server = await start_server(**twilio_env(fake_twilio))
    wire = WireCall(server.state.settings, server.url)
    async with aiohttp.ClientSession() as http:
        await wire.ring(http)
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await wire.connect(http, headers={"X-Twilio-Signature": "Zm9yZ2Vk"})
        assert info.value.status == 403
        # Present and right is accepted (Twilio signs the wss:// URL of the stream).
        from twilio.request_validator import RequestValidator

        signature = RequestValidator(TWILIO_TOKEN).compute_signature(wire.ws_url, {})
        ws = await wire.connect(http, headers={"X-Twilio-Signature": signature})
        await ws.close()


async def test_management_api_needs_the_bearer_token(start_server) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as http:
        for path in ("/api/calls", "/api/calls/call_x", "/api/status"):
            async with http.get(server.url + path) as resp:
                assert resp.status == 401
            async with http.get(server.url + path, headers={"Authorization": "Bearer wrong"}) as resp:
                assert resp.status == 401
        async with http.get(server.url + "/api/calls", headers=server.headers) as resp:
            assert resp.status == 200
            assert await resp.json() == []
        async with http.get(server.url + "/healthz") as resp:
            assert resp.status == 200


async def test_unknown_provider_or_agent_is_404(start_server) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as http:
        for path in ("/telephony/skype/inbound/demo", "/telephony/twilio/inbound/nobody"):
            async with http.post(server.url + path, data=FORM) as resp:
                assert resp.status == 404
        for path in ("/ws/skype/demo", "/ws/twilio/nobody"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(server.url + path)
            assert info.value.status == 404
    await asyncio.sleep(0)


async def test_no_secret_reaches_the_log_during_calls(start_server, fake_twilio, fake_vobiz) -> None:
    from loguru import logger

    secrets = {
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "VOBIZ_AUTH_TOKEN": VOBIZ_TOKEN,
        "EXOTEL_API_TOKEN": "exotel-api-token-never-logged",
        "EXOTEL_STREAM_SECRET": "exotel-stream-secret-never-logged",
        "VOICECLI_API_TOKEN": "api-token-never-logged-123",
        "VOICECLI_SECRET": "stream-token-secret-never-logged",
    }
    env = {**twilio_env(fake_twilio), **vobiz_env(fake_vobiz), "EXOTEL_ACCOUNT_SID": "x", "EXOTEL_API_KEY": "k"}
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG", format="{level} {message} {extra}")
    try:
        stream_token = await _calls_with_secrets_set(await start_server(**{**env, **secrets}))
    finally:
        logger.remove(sink)
    log = "".join(lines)
    assert "call ended: completed" in log  # the log was captured, debug lines included
    for secret in [*secrets.values(), stream_token]:
        assert secret not in log


async def _calls_with_secrets_set(server) -> str:
    """A Twilio and a Vobiz call to their end, then one more stream; returns that stream's token."""
    from voicecli.emulator.simulator import Press, simulate_call

    for provider in ("twilio", "vobiz"):
        result = await simulate_call(
            server.state.settings, server.url, "demo", provider, [Press("0")], api_token=server.token
        )
        assert result.record and result.record["status"] == "completed"
    wire = WireCall(server.state.settings, server.url)
    async with aiohttp.ClientSession() as http:
        await wire.ring(http)
        ws = await wire.connect(http)
        await wire.start(ws)
        await ws.close()
    return wire.parameters["stream_token"]
