from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage

import pytest

from kagoflow.mail.message import (
    MessageError,
    build_message,
    compose,
    encode_header,
    header_text,
    message_id_for,
)
from kagoflow.mail.templates import MailTemplates, RenderedMail
from kagoflow.settings import PROJECT_ROOT, Settings
from tests.mail.helpers import html_part, mail_settings, make_decision, make_products, make_profile, text_part


def _parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def _build(
    subject: str = "件名", from_name: str = "ショップ", text: str = "本文", html: str = "<p>本文</p>"
) -> bytes:
    return build_message(
        RenderedMail(subject=subject, text=text, html=html),
        from_address="shop@example.com",
        from_name=from_name,
        to_address="member@example.com",
        unsubscribe_url="https://track.example.com/u/TOKEN",
        unsubscribe_mailto="unsub@example.com",
        key="m1|cart-1h|e1",
        sent_ms=1_700_000_000_000,
    ).data


def test_headers_and_parts_round_trip_through_a_parser() -> None:
    message = _parse(_build(subject="カートに商品が残っています", from_name="ランジェリーチェ"))
    assert message["Subject"] == "カートに商品が残っています"
    assert message["From"].addresses[0].display_name == "ランジェリーチェ"
    assert message["From"].addresses[0].addr_spec == "shop@example.com"
    assert message["To"] == "member@example.com"
    assert message["Message-ID"] == message_id_for("m1|cart-1h|e1", "example.com")
    assert message["Date"].datetime.timestamp() == 1_700_000_000
    assert message["List-Unsubscribe"] == (
        "<https://track.example.com/u/TOKEN>, <mailto:unsub@example.com?subject=unsubscribe>"
    )
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert text_part(message).strip() == "本文"
    assert html_part(message).strip() == "<p>本文</p>"


@pytest.mark.parametrize(
    "evil",
    [
        "x\r\nBcc: victim@example.com",
        "x\nBcc: victim@example.com",
        "x\rBcc: victim@example.com",
        "x\u2028Bcc: victim@example.com",
        "x\r\n\r\n<html>body injection",
    ],
)
def test_line_breaks_in_names_and_subjects_cannot_add_headers(evil: str) -> None:
    data = _build(subject=evil, from_name=evil)
    head = data.split(b"\r\n\r\n", 1)[0]
    names = [line.split(b":", 1)[0] for line in head.split(b"\r\n") if not line.startswith((b" ", b"\t"))]
    assert b"Bcc" not in names
    assert sorted(names) == sorted(
        [
            b"Subject",
            b"From",
            b"To",
            b"Date",
            b"Message-ID",
            b"List-Unsubscribe",
            b"List-Unsubscribe-Post",
            b"MIME-Version",
            b"Content-Type",
        ]
    )
    message = _parse(data)
    assert message["Bcc"] is None
    assert message["Subject"] == header_text(evil)
    assert "\n" not in message["Subject"] and "\r" not in message["Subject"]


def test_long_japanese_subject_uses_short_encoded_words() -> None:
    subject = "お気に入りの商品が値下がりしました！" * 8
    data = _build(subject=subject)
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    assert all(len(word) <= 75 for word in re.findall(r"=\?utf-8\?b\?[^?]*\?=", head))
    assert all(len(line) <= 78 for line in head.split("\r\n") if line.startswith(("Subject", " =?")))
    assert _parse(data)["Subject"] == subject


def test_body_lines_are_crlf_and_short() -> None:
    data = _build(text="一行目\n二行目\n" * 200, html="<p>" + "長い" * 2000 + "</p>")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    message = _parse(data)
    assert text_part(message).count("二行目") == 200


@pytest.mark.parametrize(
    "address", ["", "no-at-sign", "a@b@c", "a b@c.d", "x@y.z\r\nBcc: v@e.com", "<a@b.c>"]
)
def test_unusable_recipient_is_a_message_error(address: str) -> None:
    with pytest.raises(MessageError):
        build_message(
            RenderedMail("s", "t", "h"),
            from_address="shop@example.com",
            from_name="",
            to_address=address,
            unsubscribe_url="https://t/u/x",
            key="k",
            sent_ms=0,
        )


def test_compose_links_every_product_through_signed_click_urls() -> None:
    settings = mail_settings(Settings())
    decision = make_decision(products=("p1", "p2", "p3", "p4", "unknown-sku"), template="view")
    products = make_products(4)
    mail = compose(
        decision,
        profile=make_profile(name="<b>花子</b>"),
        products=products,
        settings=settings,
        templates=MailTemplates(PROJECT_ROOT / "templates"),
        sent_ms=1_700_000_000_000,
    )
    message = _parse(mail.data)
    html, text = html_part(message), text_part(message)
    assert "&lt;b&gt;花子&lt;/b&gt; 様" in html
    for product in products:
        assert product.name and product.name in html and product.name in text
        assert product.url not in html  # only through the click redirect
    assert "unknown-sku" in text  # a product without catalog info still shows by id
    assert text.count("https://track.example.com/c/") >= 5
    assert "https://track.example.com/o/" in html
    assert "CART10" in text and "CART10" in html
    assert message["List-Unsubscribe"].startswith("<https://track.example.com/u/")


def test_encode_header_keeps_plain_ascii() -> None:
    assert encode_header("Hello shop") == "Hello shop"
    assert encode_header("=?utf-8?q?fake?=").startswith("=?utf-8?b?")


# -- folding, RFC 8058, DKIM (issue 11) ------------------------------------------------------------------
def _head_lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def test_long_headers_are_folded_within_the_line_limits() -> None:
    subject = " ".join(["sale"] * 400) + " " + "x" * 1500  # 3,500 characters, one word of 1,500
    data = build_message(
        RenderedMail(subject=subject, text="t", html="<p>h</p>"),
        from_address="shop@example.com",
        from_name="Shop " * 40,
        to_address="member@example.com",
        unsubscribe_url="https://track.example.com/u/" + "T" * 300,
        unsubscribe_mailto="unsubscribe-with-a-long-local-part@example.com",
        key="m1|cart-1h|e1",
        sent_ms=1_700_000_000_000,
    ).data
    assert max(len(line) for line in _head_lines(data)) <= 998
    long_lines = [line for line in _head_lines(data) if len(line) > 78]
    assert len(long_lines) == 1 and b"T" * 300 in long_lines[0], long_lines  # only the 300-character URL
    message = _parse(data)
    assert message["Subject"] == subject
    assert message["From"].addresses[0].display_name == ("Shop " * 40).strip()
    assert message["List-Unsubscribe"] == (
        f"<https://track.example.com/u/{'T' * 300}>, "
        "<mailto:unsubscribe-with-a-long-local-part@example.com?subject=unsubscribe>"
    )


def test_an_http_unsubscribe_link_is_refused_outside_local_mode(stack_free_settings: Settings) -> None:
    from dataclasses import replace

    from kagoflow.mail.delivery import check_mail_settings

    settings = replace(stack_free_settings, public_base_url="http://track.example.com")
    with pytest.raises(MessageError, match="RFC 8058"):
        _compose(settings)
    with pytest.raises(ValueError, match="KAGOFLOW_PUBLIC_BASE_URL"):
        check_mail_settings(settings)
    local = replace(settings, local_mode=True)
    check_mail_settings(local)
    assert _parse(_compose(local).data)["List-Unsubscribe"].startswith("<http://track.example.com/u/")


def _compose(settings: Settings):  # type: ignore[no-untyped-def]
    return compose(make_decision("m-url"), profile=make_profile("m-url"), products=make_products(), settings=settings,
                   templates=MailTemplates(settings.templates_dir), sent_ms=1_700_000_000_000)


@pytest.fixture(name="stack_free_settings")
def stack_free_settings_fixture() -> Settings:
    return mail_settings(Settings())
