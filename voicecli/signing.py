"""The one signature on everything voicecli sends to the user's own services: post-call
webhooks and HTTP tools. README ("Post-call webhooks") shows a receiver's check."""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "X-Voicecli-Signature"


def signature(secret: str, timestamp: int, body: str) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def signed(secret: str, body: str) -> dict[str, str]:
    """The signature header for `body`, stamped now."""
    return {HEADER: signature(secret, int(time.time()), body)}
