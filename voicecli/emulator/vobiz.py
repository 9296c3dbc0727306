"""Vobiz's side of a call: the Plivo family's, signed as Vobiz documents it."""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from voicecli.emulator.plivo_family import PlivoFamilyCaller
from voicecli.providers.plivo_family import base_url, hmac_b64
from voicecli.providers.vobiz import V2, V3, VobizProvider


class VobizCaller(PlivoFamilyCaller):
    provider = VobizProvider

    def sign(self, token: str, url: str, form: Mapping[str, str]) -> dict[str, str]:
        # Per Vobiz's docs: base URL and nonce only (protocols.md C5).
        base = base_url(url)
        nonce = "".join(secrets.choice("0123456789") for _ in range(20))
        return {
            V3: hmac_b64(token, f"{base}.{nonce}"),
            f"{V3}-Nonce": nonce,
            V2: hmac_b64(token, base + nonce),
            f"{V2}-Nonce": nonce,
        }


caller = VobizCaller
