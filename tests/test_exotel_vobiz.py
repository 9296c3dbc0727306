"""What Exotel and Vobiz do differently: Exotel's answer modes and static secret, Vobiz's signatures and XML."""

from __future__ import annotations

import base64
import hashlib
import hmac
from html import unescape
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest
from aiohttp import WSCloseCode

from tests.wire import agent_audio
from voicecli.providers import load_caller
from voicecli.providers.vobiz import signatures

NONCE = "12345678901234567890"
PLIVO_PARAMS = {
    "CallStatus": "ringing",
    "CallUUID": "abc-123",
    "Direction": "inbound",
    "Event": "StartApp",
    "From": "919000000000",
    "To": "918000000000",
}


def test_vobiz_signatures_match_the_vectors_in_protocols_md() -> None:
    url = "https://example.com/vobiz/answer?x=1"
    expected = signatures("tok", url, NONCE, PLIVO_PARAMS)
    assert "thldOV75CLR1ylCjdfeHcJRaFSapL+qHayw9ueJj2Bk=" in signatures("tok", url, NONCE, {})["v2"]
    assert "AJ+pycf1Vt2ghY+5v6wOna3PvAe+tHJZggQJ0GOAqJA=" in expected["v3"]  # the documented form
    assert "5XMeu+Cg02ZgBSVcgBWAkbUFIUAnwnv2vWh2X2qporI=" in expected["v3"]  # the Plivo form


def _sign(message: str, token: str = "vobiz-secret") -> str:
    return base64.b64encode(hmac.new(token.encode(), message.encode(), hashlib.sha256).digest()).decode()


WEBHOOK_URL = "https://voice.example.com/telephony/vobiz/inbound/demo"
FORM = {"CallUUID": "abc-123", "From": "+919000000000", "To": "+918000000000", "Direction": "inbound"}
PLIVO_SIGNED = WEBHOOK_URL + "?" + "".join(f"{k}{v}" for k, v in sorted(FORM.items()))


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"X-Vobiz-Signature-V3": _sign(f"{WEBHOOK_URL}.{NONCE}"), "X-Vobiz-Signature-V3-Nonce": NONCE}, 200),
        ({"X-Vobiz-Signature-V3": _sign(f"{PLIVO_SIGNED}.{NONCE}"), "X-Vobiz-Signature-V3-Nonce": NONCE}, 200),
        ({"X-Vobiz-Signature-V2": _sign(WEBHOOK_URL + NONCE), "X-Vobiz-Signature-V2-Nonce": NONCE}, 200),
        ({"X-Vobiz-Signature-V3": "x," + _sign(f"{WEBHOOK_URL}.{NONCE}"), "X-Vobiz-Signature-V3-Nonce": NONCE}, 200),
        ({"X-Vobiz-Signature-V3": _sign(f"{WEBHOOK_URL}.{NONCE}", "other"), "X-Vobiz-Signature-V3-Nonce": NONCE}, 403),
        ({"X-Vobiz-Signature-V3": _sign(f"{WEBHOOK_URL}.{NONCE}")}, 403),  # no nonce
        ({}, 403),
    ],
)
async def test_vobiz_webhooks_are_verified_against_the_public_url(start_server, headers, status) -> None:
    server = await start_server(
        VOBIZ_AUTH_ID="MA1", VOBIZ_AUTH_TOKEN="vobiz-secret", PUBLIC_BASE_URL="https://voice.example.com"
    )
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/telephony/vobiz/inbound/demo", data=FORM, headers=headers) as resp:
            assert resp.status == status, await resp.text()


async def test_vobiz_xml_carries_the_calls_metadata_in_the_stream_query(start_server) -> None:
    server = await start_server(PUBLIC_BASE_URL="https://voice.example.com")
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/telephony/vobiz/inbound/demo", data=FORM) as resp:
            assert resp.status == 200 and resp.content_type == "application/xml"
            xml = await resp.text()
    assert '<Stream bidirectional="true" keepCallAlive="true" contentType="audio/x-mulaw;rate=8000">' in xml
    raw_url = xml.split('rate=8000">')[1].split("</Stream>")[0]
    assert "&amp;" in raw_url and "&agent" not in raw_url  # XML-escaped
    url = urlsplit(unescape(raw_url))
    assert (url.scheme, url.netloc, url.path) == ("wss", "voice.example.com", "/ws/vobiz/demo")
    query = dict(parse_qsl(url.query))
    assert query["call_uuid"] == "abc-123" and query["direction"] == "inbound"
    assert (query["from"], query["to"], query["agent"]) == ("+919000000000", "+918000000000", "demo")
    assert query["token"].startswith(query["call_id"] + ".")


@pytest.mark.parametrize(
    ("method", "headers", "wants_json"),
    [
        ("GET", {}, True),
        ("POST", {"Accept": "application/json"}, True),
        ("POST", {"Accept": "application/xml;q=0.9, application/json"}, True),
        ("POST", {"Accept": "application/json;q=0.5, text/xml"}, False),
        ("POST", {}, False),
    ],
)
async def test_exotel_answers_json_for_the_dynamic_applet_and_exoml_otherwise(
    start_server, method, headers, wants_json
) -> None:
    server = await start_server(PUBLIC_BASE_URL="https://voice.example.com")
    params = {"CallSid": "ex-1", "CallFrom": "09900000000", "CallTo": "08040000000"}
    async with aiohttp.ClientSession() as http:
        url = server.url + "/telephony/exotel/inbound/demo"
        kwargs = {"params": params} if method == "GET" else {"data": params}
        async with http.request(method, url, headers=headers, **kwargs) as resp:
            assert resp.status == 200
            if wants_json:
                stream_url = (await resp.json())["url"]
            else:
                body = await resp.text()
                assert resp.content_type == "application/xml" and "<Connect><Stream url=" in body
                stream_url = unescape(body.split('url="')[1].split('"')[0])
    assert stream_url.startswith("wss://voice.example.com/ws/exotel/demo?token=")


async def _static_stream(server, query: str) -> tuple[int | None, int]:
    """Open an Exotel stream the static way (URL pasted in the applet, no webhook first)."""
    caller = load_caller("exotel", server.state.settings)
    call = caller.new_call("+919000000000", "+918000000000")
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.url.replace("http", "ws") + "/ws/exotel/demo" + query)
        for message in caller.opening(call, {}):
            await ws.send_json(message)
        heard, closed = await agent_audio(ws, caller, 4.0)  # a first call also imports pipecat
        code = ws.close_code if closed else None
        await ws.close()
    return code, heard


async def test_exotel_static_streams_need_the_secret_once_one_is_set(start_server) -> None:
    server = await start_server(EXOTEL_STREAM_SECRET="s3cret-stream-key")
    assert await _static_stream(server, "") == (WSCloseCode.POLICY_VIOLATION, 0)
    assert await _static_stream(server, "?secret=wrong") == (WSCloseCode.POLICY_VIOLATION, 0)
    code, heard = await _static_stream(server, "?secret=s3cret-stream-key")
    assert code is None and heard > 0  # the greeting plays
    assert server.state.provider("exotel").security_notes() == []


async def test_exotel_static_streams_are_open_without_a_secret_and_the_banner_says_so(start_server) -> None:
    server = await start_server()
    code, heard = await _static_stream(server, "")
    assert code is None and heard > 0
    [note] = server.state.provider("exotel").security_notes()
    assert "EXOTEL_STREAM_SECRET" in note
