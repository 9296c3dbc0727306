"""Stateless stream tokens: an HMAC over the call id and an expiry.

The webhook hands a token to the provider, the provider hands it back when it opens the
media stream, and any instance sharing the secret (VOICECLI_SECRET) can check it without
a lookup. A token only proves "this server answered a webhook for this call recently".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

# Long enough for a phone to ring out and the provider to connect; short enough that a
# leaked TwiML document stops being useful the same day.
TOKEN_TTL_S = 6 * 3600


def _sign(secret: bytes, call_id: str, expiry: int) -> str:
    digest = hmac.new(secret, f"{call_id}.{expiry}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


def make_token(secret: bytes, call_id: str, *, now: float | None = None, ttl: int = TOKEN_TTL_S) -> str:
    """A token that lets one stream attach to `call_id` until it expires."""
    expiry = int((time.time() if now is None else now) + ttl)
    return f"{call_id}.{expiry}.{_sign(secret, call_id, expiry)}"


def verify_token(secret: bytes, token: object, *, now: float | None = None) -> str | None:
    """The call id a valid, unexpired token names; None for anything else."""
    if not isinstance(token, str) or token.count(".") != 2 or len(token) > 200:
        return None
    call_id, expiry_text, signature = token.split(".")
    if not expiry_text.isdigit():
        return None
    expiry = int(expiry_text)
    if expiry < (time.time() if now is None else now):
        return None
    if not hmac.compare_digest(signature, _sign(secret, call_id, expiry)):
        return None
    return call_id
