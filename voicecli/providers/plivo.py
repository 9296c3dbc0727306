"""Plivo: the Plivo-compatible family (plivo_family.py) on Plivo's own host.

Wire details: ../shared/protocols.md sections C and F4; Plivo's docs:
https://www.plivo.com/docs/voice/api/call and /docs/voice-agents/audio-streaming
What is Plivo's own: HTTP Basic auth with the auth ID and token; callbacks signed with
X-Plivo-Signature-V3 over the URL, the sorted POST params and the nonce (C5); a dial's
request_uuid is not the call's CallUUID (callbacks carry both, matched through dial_id),
and a call not yet answered is ended through its request; the number's Application holds
the answer URL, which `serve --update-webhook` sets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from voicecli.errors import ProviderError
from voicecli.providers.base import PointsNumbers, row
from voicecli.providers.plivo_family import (
    PlivoFamilyProvider,
    PlivoFamilySettings,
    api_error,
    hmac_b64,
    plivo_v3_string,
)
from voicecli.server.urls import status_url
from voicecli.settings_schema import as_http_url, as_str

if TYPE_CHECKING:
    import aiohttp

V3 = "X-Plivo-Signature-V3"
APP_NAME = "voicecli"
# Reading, then changing, the number's application is up to four requests.
POINT_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class PlivoSettings(PlivoFamilySettings):
    auth_id: str | None = row(None, as_str, "Plivo auth ID (MA... or SA...)", credential=True)
    api_base: str = row("https://api.plivo.com/v1", as_http_url, "Plivo REST base URL", file_only=True)


def basic_auth(user: str, password: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class PlivoProvider(PlivoFamilyProvider, PointsNumbers):
    """Plivo voice with bidirectional mu-law audio streams."""

    name = "plivo"
    label = "Plivo"
    config_type = PlivoSettings
    config: PlivoSettings
    signature_headers = (V3,)
    credentials_from = "console.plivo.com > Overview (Auth ID, Auth Token)"
    console_hint = (
        "Plivo console > Voice > Applications > the application of {number} > Primary Answer URL (POST);"
        " Hangup URL: {status_url}"
    )

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": basic_auth(self.config.auth_id or "", self.config.auth_token or "")}

    def expected_signatures(self, header: str, url: str, nonce: str, params: Mapping[str, Any]) -> set[str]:
        return {hmac_b64(self.config.auth_token or "", f"{plivo_v3_string(url, params)}.{nonce}")}

    def hang_up_urls(self, provider_call_id: str) -> list[str]:
        # Until answered, the id is the dial's request_uuid: the call is ended through its request.
        return [f"{self.account_url}/Call/{provider_call_id}/", f"{self.account_url}/Request/{provider_call_id}/"]

    # --- the number's application (serve --update-webhook, doctor) ------------------------
    def _number_known(self) -> bool:
        return not self.missing_credentials() and bool(self.config.phone_number)

    async def _call(self, http: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> Any:
        """One authenticated API request: its JSON answer, or ProviderError with Plivo's reason."""
        url = f"{self.account_url}/{path}"
        async with http.request(method, url, json=body, headers=self.auth_headers()) as resp:
            text = await resp.text()
            if resp.status == 404:
                return None
            if resp.status >= 300:
                raise ProviderError(f"Plivo refused {method} {path}: HTTP {resp.status}: {api_error(text)}")
        try:
            return _json(text)
        except ValueError:
            raise ProviderError(f"Plivo answered {method} {path} with something that is not JSON") from None

    async def _application(self, http: aiohttp.ClientSession) -> tuple[str, str | None, Mapping[str, Any] | None]:
        """(the number as Plivo writes it, its application's id, that application), or ProviderError."""
        number = str(self.config.phone_number).lstrip("+")
        found = await self._call(http, "GET", f"Number/{number}/")
        if not isinstance(found, dict):
            raise ProviderError(
                f"{self.config.phone_number} is not a number of Plivo account {self.config.auth_id}: "
                "check PLIVO_PHONE_NUMBER"
            )
        app_uri = found.get("application")
        app_id = app_uri.rstrip("/").rsplit("/", 1)[-1] if isinstance(app_uri, str) and app_uri else None
        app = await self._call(http, "GET", f"Application/{app_id}/") if app_id else None
        return number, app_id, app if isinstance(app, dict) else None

    async def number_webhook(self) -> str | None:
        if not self._number_known():
            return None
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=POINT_TIMEOUT_S)) as http:
            _, _, app = await self._application(http)
        return str(app.get("answer_url") or "") if app else ""

    async def point_number(self, webhook_url: str) -> str | None:
        if not self._number_known():
            return None  # not enough to find the number: the user pastes the URL instead
        import aiohttp

        phone = self.config.phone_number
        hangup = status_url(webhook_url.split("/telephony/", 1)[0], self.name)
        urls = {"answer_url": webhook_url, "answer_method": "POST", "hangup_url": hangup, "hangup_method": "POST"}
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=POINT_TIMEOUT_S)) as http:
                number, app_id, app = await self._application(http)
                if app_id is None or app is None:
                    created = await self._call(http, "POST", "Application/", {"app_name": APP_NAME, **urls})
                    new_id = created.get("app_id") if isinstance(created, dict) else None
                    if not isinstance(new_id, str) or not new_id:
                        raise ProviderError("Plivo created no application (its answer had no app_id)")
                    await self._call(http, "POST", f"Number/{number}/", {"app_id": new_id})
                    return f"Plivo number {phone}: new application {APP_NAME} ({new_id}) answers at {webhook_url}"
                before = app.get("answer_url") or "(none)"
                if before == webhook_url and str(app.get("answer_method", "POST")).upper() == "POST":
                    return f"Plivo number {phone} already sends calls to {webhook_url}"
                await self._call(http, "POST", f"Application/{app_id}/", urls)
        except ProviderError:
            raise
        except TimeoutError:
            raise ProviderError(f"Plivo did not answer within {POINT_TIMEOUT_S:g} s; {phone} was not updated") from None
        except aiohttp.ClientError as exc:
            raise ProviderError(f"Plivo could not be reached to update {phone}: {type(exc).__name__}: {exc}") from None
        return f"Plivo number {phone}: application {app_id} answer URL changed from {before} to {webhook_url} (POST)"


def _json(text: str) -> Any:
    import json

    return json.loads(text) if text.strip() else {}


provider = PlivoProvider
