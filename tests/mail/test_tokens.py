from __future__ import annotations

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
