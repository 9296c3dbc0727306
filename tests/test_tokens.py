"""Stream tokens: stateless, bound to a call, expiring."""

from __future__ import annotations

from voicecli.tokens import make_token, verify_token

SECRET = b"s3cret"


def test_a_token_names_its_call() -> None:
    assert verify_token(SECRET, make_token(SECRET, "call_abc")) == "call_abc"


def test_other_secret_expired_tampered_and_junk_tokens_are_refused() -> None:
    token = make_token(SECRET, "call_abc", now=1000, ttl=60)
    assert verify_token(SECRET, token, now=1059) == "call_abc"
    assert verify_token(SECRET, token, now=1061) is None
    assert verify_token(b"other", token, now=1000) is None
    call_id, expiry, signature = token.split(".")
    assert verify_token(SECRET, f"call_xyz.{expiry}.{signature}", now=1000) is None
    assert verify_token(SECRET, f"{call_id}.{int(expiry) + 999}.{signature}", now=1000) is None
    for junk in (None, 42, "", "a.b", "a.b.c.d", "call.notdigits.sig", "x" * 500):
        assert verify_token(SECRET, junk, now=1000) is None
