"""The server's public URLs, built in one place from a base URL (PUBLIC_BASE_URL or its own).

The routes themselves are in server.py; these are what providers are told to call.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


def ws_base(base: str) -> str:
    """https://host -> wss://host (http -> ws): where providers open media streams."""
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path}"


def webhook_url(base: str, provider: str, agent: str) -> str:
    """Where a provider posts an inbound call for `agent`."""
    return f"{base}/telephony/{provider}/inbound/{agent}"


def stream_url(base: str, provider: str, agent: str) -> str:
    """The media WebSocket for `agent`'s calls."""
    return f"{ws_base(base)}/ws/{provider}/{agent}"


def status_url(base: str, provider: str, call_id: str | None = None) -> str:
    """Where a provider reports what became of a call (one of ours, when `call_id` is given)."""
    return f"{base}/telephony/{provider}/status" + (f"/{call_id}" if call_id else "")


def answer_url(base: str, provider: str, call_id: str) -> str:
    """Where a provider fetches the stream document for a call we dialled."""
    return f"{base}/telephony/{provider}/answer/{call_id}"


def transfer_url(base: str, provider: str, call_id: str, destination: str) -> str:
    """Where a provider that transfers by fetching a new document (the Plivo family) gets it."""
    from urllib.parse import quote

    return f"{base}/telephony/{provider}/transfer/{call_id}?to={quote(destination)}"


def machine_url(base: str, provider: str, call_id: str) -> str:
    """Where a provider posts its answering-machine verdict for a call we dialled."""
    return f"{base}/telephony/{provider}/amd/{call_id}"


def hide_password(url: Any) -> Any:
    """A database URL fit to show: its password (in the address or the query) as ****."""
    if not isinstance(url, str) or not url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:****@{host}"
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "password" for key, _ in query):
        shown = urlencode([(key, "****" if key == "password" else value) for key, value in query], safe="*")
    else:
        shown = parts.query
    return urlunsplit((parts.scheme, netloc, parts.path, shown, parts.fragment))


def http_url(host: str, port: int) -> str:
    """`http://host:port`, an IPv6 address in brackets (`serve --host ::` is http://[::]:8000)."""
    host = host.strip("[]")
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
