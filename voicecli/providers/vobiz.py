"""Vobiz: the Plivo-compatible family (plivo_family.py) on Vobiz's host, with its own REST
auth and signatures.

Wire details: ../shared/protocols.md section C; Vobiz's docs: https://docs.vobiz.ai/xml/stream
What differs from Plivo: REST auth is X-Auth-ID/X-Auth-Token headers (not Basic, C1);
callbacks are signed with X-Vobiz-Signature-V3/V2 over the base URL and nonce only (its
SDK's V3 also hashes the params, as Plivo's does: both forms are accepted, C5); the dial's
request_uuid is the call's uuid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from voicecli.providers.base import row
from voicecli.providers.plivo_family import (
    PlivoFamilyProvider,
    PlivoFamilySettings,
    base_url,
    hmac_b64,
    plivo_v3_string,
)
from voicecli.settings_schema import as_http_url, as_str

V3, V2 = "X-Vobiz-Signature-V3", "X-Vobiz-Signature-V2"


@dataclass(frozen=True)
class VobizSettings(PlivoFamilySettings):
    auth_id: str | None = row(None, as_str, "Vobiz auth ID (MA_...)", credential=True)
    api_base: str = row("https://api.vobiz.ai/api/v1", as_http_url, "Vobiz REST base URL", file_only=True)


def signatures(token: str, url: str, nonce: str, params: Mapping[str, Any]) -> dict[str, set[str]]:
    """The V3 and V2 values Vobiz may send for this callback (the documented and Plivo forms)."""
    base = base_url(url)
    return {
        "v3": {hmac_b64(token, f"{base}.{nonce}"), hmac_b64(token, f"{plivo_v3_string(url, params)}.{nonce}")},
        "v2": {hmac_b64(token, base + nonce)},
    }


class VobizProvider(PlivoFamilyProvider):
    """Vobiz voice with bidirectional mu-law streams."""

    name = "vobiz"
    label = "Vobiz"
    config_type = VobizSettings
    config: VobizSettings
    signature_headers = (V3, V2)
    credentials_from = "Vobiz console > API keys"
    console_hint = (
        "Vobiz console > Applications > the application of {number} > Answer URL (POST); Hangup URL: {status_url}"
    )

    def auth_headers(self) -> dict[str, str]:
        return {"X-Auth-ID": self.config.auth_id or "", "X-Auth-Token": self.config.auth_token or ""}

    def expected_signatures(self, header: str, url: str, nonce: str, params: Mapping[str, Any]) -> set[str]:
        return signatures(self.config.auth_token or "", url, nonce, params)["v3" if header == V3 else "v2"]


provider = VobizProvider
