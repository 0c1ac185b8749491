from __future__ import annotations

import base64
import hmac

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kagoflow.mail.tokens import InvalidToken, TrackingToken, sign, verify

SECRET = "s3cret"


def _token(**changes: object) -> TrackingToken:
    fields: dict[str, object] = {
        "kind": "click",
        "key": "m1|cart-1h|e1",
        "member_id": "m1",
        "rule_id": "cart-1h",
        "sent_ms": 1_700_000_000_000,
        "url": "https://shop.example.com/items/p1?x=1&y=é",
    }
    fields.update(changes)
    return TrackingToken(**fields)  # type: ignore[arg-type]


@given(key=st.text(min_size=1), member=st.text(min_size=1), url=st.text())
def test_round_trip_keeps_every_field(key: str, member: str, url: str) -> None:
    token = _token(key=key, member_id=member, url=url)
    assert verify(sign(token, secret=SECRET), secret=SECRET, kind="click") == token


def test_open_and_unsub_tokens_carry_no_url() -> None:
    for kind in ("open", "unsub"):
        token = _token(kind=kind, url=None)
        assert verify(sign(token, secret=SECRET), secret=SECRET) == token


def test_every_single_character_change_is_rejected() -> None:
    text = sign(_token(), secret=SECRET)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    for i, char in enumerate(text):
        other = alphabet[(alphabet.index(char) + 1) % len(alphabet)]
        tampered = text[:i] + other + text[i + 1 :]
        with pytest.raises(InvalidToken):
            verify(tampered, secret=SECRET)


def test_other_secret_wrong_kind_and_garbage_are_rejected() -> None:
    text = sign(_token(), secret=SECRET)
    with pytest.raises(InvalidToken):
        verify(text, secret="other")
    with pytest.raises(InvalidToken):
        verify(text, secret=SECRET, kind="unsub")
    for garbage in ("", ".", "abc", "a.b.c", "%%%.%%%", "x" * 5000):
        with pytest.raises(InvalidToken):
            verify(garbage, secret=SECRET)


def test_a_click_token_without_url_is_invalid_even_when_signed() -> None:
    with pytest.raises(InvalidToken):
        verify(sign(_token(url=None), secret=SECRET), secret=SECRET)


def _every_decoding(text: str) -> bytes:
    """All bytes an observer could read out of a token: each dot-separated part base64url-decoded, plus the
    raw text."""
    out = text.encode()
    for part in text.split("."):
        try:
            out += base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        except ValueError:
            continue
    return out


def test_the_token_hides_the_member_id_and_the_target() -> None:
    token = _token(member_id="member-4711", key="member-4711|cart-1h|e1", url="https://shop.example.com/items/p1")
    text = sign(token, secret=SECRET)
    readable = _every_decoding(text)
    for secret_part in (b"member-4711", b"shop.example.com", b"items/p1", b"cart-1h"):
        assert secret_part not in readable
    assert verify(text, secret=SECRET, kind="click") == token


def test_tokens_are_deterministic_but_links_of_two_mails_differ() -> None:
    """The same content gives the same text (a resent mail is identical); the same target in another mail
    (another decision key or send time) gives an unrelated text."""
    assert sign(_token(), secret=SECRET) == sign(_token(), secret=SECRET)
    one, other = sign(_token(), secret=SECRET), sign(_token(key="m1|cart-1h|e2"), secret=SECRET)
    assert one[:2] == other[:2]  # version and kind
    assert sum(a == b for a, b in zip(one[2:], other[2:], strict=False)) < len(one) // 4


def test_links_of_the_former_signed_only_format_still_verify() -> None:
    """Unsubscribe links in mails already sent never expire."""
    payload = base64.urlsafe_b64encode(
        orjson.dumps(["u", "m1|cart-1h|e1", "m1", "cart-1h", 1_700_000_000_000])).rstrip(b"=").decode()
    mac = hmac.new(SECRET.encode(), payload.encode(), "sha256").digest()
    legacy = f"{payload}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    assert verify(legacy, secret=SECRET, kind="unsub").member_id == "m1"
    with pytest.raises(InvalidToken):
        verify(legacy, secret="other")
    with pytest.raises(InvalidToken):
        verify(legacy[:-2] + ("AA" if not legacy.endswith("AA") else "BB"), secret=SECRET)


@given(data=st.binary(max_size=200))
def test_random_bytes_never_verify(data: bytes) -> None:
    text = base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    with pytest.raises(InvalidToken):
        verify(text, secret=SECRET)
