"""Vobiz's side of a call: the Plivo family's, signed as Vobiz documents it."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from voicecli.emulator.plivo_family import PlivoFamilyApi, PlivoFamilyCaller
from voicecli.providers.plivo_family import base_url, hmac_b64
from voicecli.providers.vobiz import V2, V3, VobizProvider

if TYPE_CHECKING:
    from aiohttp import web


def sign(token: str, url: str) -> dict[str, str]:
    """Vobiz's signature headers on a callback to `url`: per its docs, over the base URL and
    the nonce only (protocols.md C5)."""
    base = base_url(url)
    nonce = "".join(secrets.choice("0123456789") for _ in range(20))
    return {
        V3: hmac_b64(token, f"{base}.{nonce}"),
        f"{V3}-Nonce": nonce,
        V2: hmac_b64(token, base + nonce),
        f"{V2}-Nonce": nonce,
    }


class VobizCaller(PlivoFamilyCaller):
    provider = VobizProvider

    def sign(self, token: str, url: str, form: Mapping[str, str]) -> dict[str, str]:
        return sign(token, url)


class VobizApi(PlivoFamilyApi):
    """Vobiz's API: X-Auth-ID and X-Auth-Token headers, not Basic auth (protocols.md C1)."""

    provider = VobizProvider
    credentials: ClassVar[Mapping[str, str]] = {"auth_id": "MA_TESTAUTH1", "auth_token": "vobiz-test-auth-token-5678"}
    phone_number = "+918071500000"
    path = "/api/v1"

    def credentials_given(self, request: web.Request) -> bool:
        c = self.credentials
        headers = (request.headers.get("X-Auth-ID"), request.headers.get("X-Auth-Token"))
        return headers == (c["auth_id"], c["auth_token"]) and "Authorization" not in request.headers

    def sign(self, url: str, form: Mapping[str, str]) -> dict[str, str]:
        return sign(self.credentials["auth_token"], url)


caller = VobizCaller
api = VobizApi
