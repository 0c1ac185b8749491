"""Console login pieces: password hashes, session cookies, CSRF tokens, the login rate limit."""

from __future__ import annotations

import pytest

from kagoflow.console.auth import LoginLimiter, SessionSigner, hash_password, parse_users, verify_password


def test_scrypt_hash_verifies_only_the_right_password() -> None:
    encoded = hash_password("correct horse")
    assert encoded.startswith("scrypt$16384$8$1$")
    assert verify_password("correct horse", encoded)
    assert not verify_password("correct hors", encoded)
    assert not verify_password("correct horse", "scrypt$1$2$3$bad$worse")
    assert hash_password("x" * 8) != hash_password("x" * 8)  # salted


def test_users_setting_is_parsed_and_a_bad_entry_named_without_its_hash() -> None:
    encoded = hash_password("password1")
    assert parse_users((f"alice:{encoded}",)) == {"alice": encoded}
    with pytest.raises(ValueError, match="'bob'") as info:
        parse_users(("bob:plaintext",))
    assert "plaintext" not in str(info.value)


def test_session_cookie_expires_and_resists_tampering() -> None:
    signer = SessionSigner("s3cret", lifetime_s=60)
    cookie = signer.issue("alice", now_ms=1_000_000)
    session = signer.check(cookie, now_ms=1_000_000 + 59_000)
    assert session is not None and session.user == "alice"
    assert signer.check(cookie, now_ms=1_000_000 + 60_000) is None  # expired
    assert signer.check(cookie.replace("alice", "admin"), now_ms=1_000_001) is None
    assert SessionSigner("other", lifetime_s=60).check(cookie, now_ms=1_000_001) is None
    assert signer.check("", now_ms=0) is None and signer.check("a|b|c|d", now_ms=0) is None


def test_csrf_token_is_bound_to_the_session() -> None:
    signer = SessionSigner("s3cret", lifetime_s=60)
    one = signer.check(signer.issue("alice"))
    two = signer.check(signer.issue("alice"))
    assert one is not None and two is not None
    assert signer.check_csrf(one, signer.csrf_token(one))
    assert not signer.check_csrf(one, signer.csrf_token(two))
    assert not signer.check_csrf(one, "") and not signer.check_csrf(one, None)


def test_login_limiter_blocks_after_five_failures_per_key_within_the_window() -> None:
    limiter = LoginLimiter(attempts=5, window_s=300)
    for i in range(5):
        assert not limiter.blocked("addr:1", "user:a", now=i)
        limiter.failed("addr:1", "user:a", now=i)
    assert limiter.blocked("addr:1", now=10)
    assert limiter.blocked("addr:2", "user:a", now=10)  # same user from elsewhere
    assert not limiter.blocked("addr:2", "user:b", now=10)
    assert not limiter.blocked("addr:1", now=305)  # the window passed
