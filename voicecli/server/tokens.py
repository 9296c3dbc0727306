"""Stream tokens: an HMAC over the call id, its provider, its agent and an expiry.

The webhook (or the dial) hands a token to the provider, the provider hands it back when
it opens the media stream. The signature binds the token to one call of one provider and
one agent, so an Exotel token cannot open a Twilio stream or another agent's. A token is
single-use: the stream that presents it claims its call's record (ringing -> in-progress)
in the store, and a second stream finds the call already taken or ended.

The expiry is computed from the record's start, not drawn at random: the same call always
gets the same token, so answering a callback for a call mints nothing new.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

# Long enough for a dialled phone to ring out (providers give up after about 60 s) and the
# provider to connect; short enough that a leaked stream document is soon worthless.
TOKEN_TTL_S = 120


@dataclass(frozen=True)
class TokenScope:
    """What a token opens: one call's stream, for one provider and agent."""

    call_id: str
    provider: str
    agent: str


def _sign(secret: bytes, scope: TokenScope, expiry: int) -> str:
    message = f"{scope.call_id}.{scope.provider}.{scope.agent}.{expiry}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


def make_token(secret: bytes, scope: TokenScope, issued_at: float, ttl: int = TOKEN_TTL_S) -> str:
    """The token that lets one stream attach to `scope.call_id` until `issued_at + ttl`."""
    expiry = int(issued_at) + ttl
    return f"{scope.call_id}.{expiry}.{_sign(secret, scope, expiry)}"


def verify_token(secret: bytes, token: object, provider: str, agent: str, now: float) -> str | None:
    """The call id of a valid, unexpired token for this provider and agent; None otherwise."""
    if not isinstance(token, str) or token.count(".") != 2 or len(token) > 200:
        return None
    call_id, expiry_text, signature = token.split(".")
    # isascii: str.isdigit accepts "²" and other digits int() refuses.
    if not (expiry_text.isascii() and expiry_text.isdigit()) or int(expiry_text) < now:
        return None
    expected = _sign(secret, TokenScope(call_id, provider, agent), int(expiry_text))
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        return None
    return call_id
