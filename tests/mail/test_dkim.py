"""DKIM signatures of outgoing mails, verified with dkimpy (an independent implementation) and the public key
served by a stand-in DNS function: on a built message, and on a mail as the stack's SMTP sink received it."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kagoflow.adapters.redis_store import RedisStore
from kagoflow.adapters.smtp import SmtpPool
from kagoflow.mail.delivery import Deliverer
from kagoflow.mail.dkimsign import DkimError, DkimSigner, signer_for
from kagoflow.mail.engagement import MemorySink
from kagoflow.mail.message import build_message
from kagoflow.mail.templates import RenderedMail
from kagoflow.settings import Settings
from tests.conftest import Mailbox
from tests.mail.helpers import (  # noqa: F401  (fixture)
    mail_settings,
    make_decision,
    make_products,
    make_profile,
    redis_store_fixture,
)

REQUIRED = {b"from", b"to", b"subject", b"date", b"message-id", b"list-unsubscribe", b"list-unsubscribe-post"}


@pytest.fixture(name="key_file", scope="module")
def key_file_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("dkim") / "dkim.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def _dns(signer: DkimSigner):  # type: ignore[no-untyped-def]
    record = signer.dns_record().encode("ascii")
    expected = f"{signer.selector}._domainkey.{signer.domain}.".encode()

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == expected else None

    return lookup


def _signed(signer: DkimSigner, subject: str = "カートに商品が残っています") -> bytes:
    return build_message(
        RenderedMail(subject=subject, text="本文\n", html="<p>本文</p>\n"),
        from_address="shop@example.com",
        from_name="ランジェリーチェ",
        to_address="member@example.com",
        unsubscribe_url="https://track.example.com/u/" + "T" * 120,
        unsubscribe_mailto="unsub@example.com",
        key="m1|cart-1h|e1",
        sent_ms=1_700_000_000_000,
        signer=signer,
    ).data


def _signed_headers(data: bytes) -> set[bytes]:
    signature = dkim.DKIM(data)
    [header] = [value for name, value in signature.headers if name.lower() == b"dkim-signature"]
    tags = dkim.util.parse_tag_value(header)
    return {name.strip().lower() for name in tags[b"h"].split(b":")}


def test_a_signed_message_verifies_and_covers_what_the_bulk_sender_rules_ask(key_file: Path) -> None:
    signer = DkimSigner(domain="example.com", selector="kf2026", private_key_pem=key_file.read_bytes())
    data = _signed(signer)
    assert data.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=example.com; s=kf2026;")
    assert dkim.verify(data, dnsfunc=_dns(signer))
    assert _signed_headers(data) >= REQUIRED
    assert max(len(line) for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")) <= 998


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"List-Unsubscribe-Post: List-Unsubscribe=Two"),
        (b"To: member@example.com", b"To: other@example.com"),
        (None, b"From: attacker@example.net"),
    ],
    ids=["unsubscribe-post", "to", "added-from"],
)
def test_a_changed_header_breaks_the_signature(key_file: Path, old: bytes | None, new: bytes) -> None:
    signer = DkimSigner(domain="example.com", selector="kf2026", private_key_pem=key_file.read_bytes())
    head, body = _signed(signer).split(b"\r\n\r\n", 1)
    if old is None:  # a second header of that name, added in transit
        head += b"\r\n" + new
    else:
        assert old in head
        head = head.replace(old, new, 1)
    assert not dkim.verify(head + b"\r\n\r\n" + body, dnsfunc=_dns(signer))


def test_settings_enable_signing_and_incomplete_ones_are_refused(key_file: Path) -> None:
    base = mail_settings(Settings())
    assert signer_for(base) is None
    signer = signer_for(replace(base, dkim_selector="kf2026", dkim_private_key_file=str(key_file)))
    assert signer is not None and signer.domain == "example.com"  # the From address's domain by default
    with pytest.raises(DkimError, match="KAGOFLOW_DKIM_PRIVATE_KEY_FILE"):
        signer_for(replace(base, dkim_selector="kf2026"))
    with pytest.raises(DkimError, match="No such file"):
        signer_for(replace(base, dkim_selector="kf2026", dkim_private_key_file="/nonexistent/dkim.pem"))
    assert signer.dns_record().startswith("v=DKIM1; k=rsa; p=MIIBIjAN")


@pytest.mark.integration
@pytest.mark.asyncio(loop_scope="session")
async def test_a_mail_received_by_the_sink_verifies_with_the_public_key(
    stack: Settings, redis_store: RedisStore, smtp_mailbox: Mailbox, key_file: Path
) -> None:
    settings = mail_settings(stack, dkim_selector="kf2026", dkim_private_key_file=str(key_file))
    pool = SmtpPool(host="127.0.0.1", port=settings.smtp_port, size=1)
    deliverer = Deliverer(settings, store=redis_store, sink=MemorySink(), pool=pool)
    profile = make_profile("m-dkim")
    result = await deliverer.deliver(make_decision("m-dkim"), profile=profile, products=make_products())
    await deliverer.close()
    assert result.status == "delivered", result
    await asyncio.to_thread(smtp_mailbox.wait_for, 1, match=lambda m: profile.email in str(m["To"]))
    [path] = [p for p in smtp_mailbox.new_files() if profile.email in str(Mailbox.parse(p)["To"])]
    received = path.read_bytes()
    signer = signer_for(settings)
    assert signer is not None
    assert dkim.verify(received, dnsfunc=_dns(signer))
    assert _signed_headers(received) >= REQUIRED
