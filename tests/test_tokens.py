"""Stream tokens: stateless, bound to a call, its provider and its agent, expiring."""

from __future__ import annotations

from voicecli.server.tokens import TokenScope, make_token, verify_token

SECRET = b"s3cret"
SCOPE = TokenScope("call_abc", "twilio", "demo")


def test_a_token_names_its_call_for_its_provider_and_agent_only() -> None:
    token = make_token(SECRET, SCOPE, issued_at=1000)
    assert verify_token(SECRET, token, "twilio", "demo", now=1000) == "call_abc"
    assert verify_token(SECRET, token, "exotel", "demo", now=1000) is None
    assert verify_token(SECRET, token, "twilio", "sales", now=1000) is None


def test_the_same_call_always_gets_the_same_token() -> None:
    assert make_token(SECRET, SCOPE, issued_at=1000.7) == make_token(SECRET, SCOPE, issued_at=1000)


def test_other_secret_expired_tampered_and_junk_tokens_are_refused() -> None:
    token = make_token(SECRET, SCOPE, issued_at=1000, ttl=60)
    assert verify_token(SECRET, token, "twilio", "demo", now=1059) == "call_abc"
    assert verify_token(SECRET, token, "twilio", "demo", now=1061) is None
    assert verify_token(b"other", token, "twilio", "demo", now=1000) is None
    call_id, expiry, signature = token.split(".")
    assert verify_token(SECRET, f"call_xyz.{expiry}.{signature}", "twilio", "demo", now=1000) is None
    assert verify_token(SECRET, f"{call_id}.{int(expiry) + 999}.{signature}", "twilio", "demo", now=1000) is None
    for junk in (None, 42, "", "a.b", "a.b.c.d", "call.notdigits.sig", "x" * 500):
        assert verify_token(SECRET, junk, "twilio", "demo", now=1000) is None
