"""Deliverer end to end: stack Redis, the stack SMTP sink (mails read back from .eml) or scripted servers."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import time
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller

from kagoflow.adapters.redis_store import RedisStore
from kagoflow.adapters.smtp import SmtpPool
from kagoflow.mail.delivery import Deliverer
from kagoflow.mail.engagement import MemorySink
from kagoflow.mail.message import message_id_for
from kagoflow.mail.tokens import verify
from kagoflow.settings import Settings
from tests.conftest import Mailbox
from tests.mail.helpers import (  # noqa: F401  (fixtures)
    ScriptedSmtp,
    html_part,
    mail_settings,
    make_decision,
    make_products,
    make_profile,
    redis_store_fixture,
    scripted_smtp_fixture,
    text_part,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def _deliverer(
    settings: Settings, store: RedisStore, sink: MemorySink, port: int | None = None, **options: float
) -> Deliverer:
    pool = SmtpPool(host="127.0.0.1", port=port or settings.smtp_port, size=2)
    return Deliverer(settings, store=store, sink=sink, pool=pool, **options)  # type: ignore[arg-type]


def _to(address: str):  # type: ignore[no-untyped-def]
    return lambda m: address in str(m["X-Envelope-To"])


async def test_mail_read_back_from_the_sink_has_headers_parts_and_products(
    stack: Settings,
    redis_store: RedisStore,
    smtp_mailbox: Mailbox,
) -> None:
    settings = mail_settings(stack)
    sink = MemorySink()
    deliverer = _deliverer(settings, redis_store, sink)
    profile = make_profile("m-read", name="<script>alert(1)</script>\r\nBcc: victim@example.com")
    decision = make_decision("m-read", products=("p1", "p2", "p3", "p4"), sender_name="ランジェリーチェ")
    result = await deliverer.deliver(decision, profile=profile, products=make_products(4))
    assert result.status == "delivered", result
    [message] = await asyncio.to_thread(smtp_mailbox.wait_for, 1, match=_to(profile.email))
    assert message["Message-ID"] == message_id_for(decision.key, "example.com") == result.message_id
    assert message["Date"].datetime is not None
    assert message["Subject"].endswith("カートに商品が残っています（クーポン付き）")
    assert message["From"].addresses[0].display_name == "ランジェリーチェ"
    assert message["Bcc"] is None
    unsubscribe = re.fullmatch(r"<https://track\.example\.com/u/([^>]+)>", message["List-Unsubscribe"])
    assert unsubscribe is not None
    token = verify(unsubscribe.group(1), secret=settings.tracking_secret, kind="unsub")
    assert (token.key, token.member_id, token.rule_id) == (decision.key, "m-read", "cart-1h")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    html, text = html_part(message), text_part(message)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # the cart template shows 3 products with prices
    assert [f"テスト商品{i}" in text for i in (1, 2, 3, 4)] == [True, True, True, False]
    assert "1,980円" in html and "2,980円" in text
    assert "CART10" in text
    assert await redis_store.state(decision.key) is not None
    assert sink.of_type("delivery") == [
        {
            "type": "delivery",
            "key": decision.key,
            "member_id": "m-read",
            "rule": "cart-1h",
            "at_ms": sink.events[0]["at_ms"],
            "status": "delivered",
            "detail": result.detail,
        }
    ]
    await deliverer.close()


async def test_second_delivery_of_a_decision_is_a_duplicate_and_sends_nothing(
    stack: Settings,
    redis_store: RedisStore,
    scripted_smtp: tuple[ScriptedSmtp, Controller],
) -> None:
    handler, controller = scripted_smtp
    deliverer = _deliverer(mail_settings(stack), redis_store, MemorySink(), controller.port)
    decision, profile = make_decision("m-dup"), make_profile("m-dup")
    first = await deliverer.deliver(decision, profile=profile, products=make_products())
    second = await deliverer.deliver(decision, profile=profile, products=make_products())
    assert (first.status, second.status) == ("delivered", "duplicate")
    assert handler.recipients() == [profile.email]
    assert deliverer.metrics["delivered"] == 1 and deliverer.metrics["duplicate"] == 1
    await deliverer.close()


@pytest.mark.parametrize("transmitted", [False, True], ids=["reserved", "transmitting"])
async def test_after_a_crash_reserved_is_resent_and_transmitting_is_uncertain(
    stack: Settings,
    redis_store: RedisStore,
    scripted_smtp: tuple[ScriptedSmtp, Controller],
    transmitted: bool,
) -> None:
    handler, controller = scripted_smtp
    deliverer = _deliverer(mail_settings(stack), redis_store, MemorySink(), controller.port)
    decision, profile = make_decision("m-crash"), make_profile("m-crash")
    # A previous process reserved the send and died: before writing the end of DATA (e.g. while waiting for
    # a connection), or between writing it and reading the reply.
    earlier = await redis_store.reserve(decision.key, member_id="m-crash", email=profile.email, now_ms=1)
    if transmitted:
        await redis_store.mark_transmitting(decision.key, token=earlier.token, now_ms=2)
    result = await deliverer.deliver(decision, profile=profile, products=make_products())
    if transmitted:
        assert result.status == "uncertain"
        assert handler.recipients() == []
        assert await redis_store.count_uncertain() == 1
    else:
        assert result.status == "delivered", result
        assert result.message_id == message_id_for(decision.key, "example.com")  # as on the first try
        assert handler.recipients() == [profile.email]
        assert await redis_store.count_uncertain() == 0
    assert deliverer.metrics["uncertain" if transmitted else "resumed"] == 1
    await deliverer.close()


async def test_the_ledger_says_transmitting_only_once_the_server_has_everything_but_the_end(
    stack: Settings,
    redis_store: RedisStore,
    scripted_smtp: tuple[ScriptedSmtp, Controller],
) -> None:
    handler, controller = scripted_smtp
    deliverer = _deliverer(mail_settings(stack), redis_store, MemorySink(), controller.port)
    decision, profile = make_decision("m-mark"), make_profile("m-mark")
    seen: list[tuple[str | None, int]] = []
    mark = redis_store.mark_transmitting

    async def spy(key: str, **kwargs: object) -> None:
        before = await redis_store.state(key)
        seen.append((before.state if before else None, len(handler.received)))
        await mark(key, **kwargs)  # type: ignore[arg-type]

    redis_store.mark_transmitting = spy  # type: ignore[method-assign]
    result = await deliverer.deliver(decision, profile=profile, products=make_products())
    assert result.status == "delivered"
    assert seen == [("reserved", 0)]  # marked once, before the server could accept the mail
    entry = await redis_store.state(decision.key)
    assert entry is not None and entry.state == "sent"
    await deliverer.close()


async def test_a_send_cancelled_during_its_transmitting_mark_is_resent_not_uncertain(
    stack: Settings,
    redis_store: RedisStore,
    scripted_smtp: tuple[ScriptedSmtp, Controller],
) -> None:
    """A worker stopping (SIGTERM cancels its sends) between the mark and the end of DATA wrote no end: the
    entry goes back to ``reserved`` and the next owner sends the mail, instead of reporting it uncertain."""
    handler, controller = scripted_smtp
    deliverer = _deliverer(mail_settings(stack), redis_store, MemorySink(), controller.port)
    decision, profile = make_decision("m-cancel"), make_profile("m-cancel")
    mark = redis_store.mark_transmitting
    marked = asyncio.Event()

    async def slow_reply(key: str, **kwargs: object) -> None:
        await mark(key, **kwargs)  # type: ignore[arg-type]
        marked.set()
        await asyncio.sleep(0.3)  # the mark is in Redis, its answer not yet back

    redis_store.mark_transmitting = slow_reply  # type: ignore[method-assign]
    sending = asyncio.ensure_future(deliverer.deliver(decision, profile=profile, products=make_products()))
    await asyncio.wait_for(marked.wait(), 10)
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    entry = await redis_store.state(decision.key)
    assert entry is not None and entry.state == "reserved"
    assert handler.recipients() == []
    redis_store.mark_transmitting = mark  # type: ignore[method-assign]
    result = await deliverer.deliver(decision, profile=profile, products=make_products())
    assert result.status == "delivered", result
    assert handler.recipients() == [profile.email]
    await deliverer.close()


async def test_5xx_suppresses_the_member_and_is_not_retried(
    stack: Settings,
    redis_store: RedisStore,
    scripted_smtp: tuple[ScriptedSmtp, Controller],
) -> None:
    handler, controller = scripted_smtp
    sink = MemorySink()
    deliverer = _deliverer(mail_settings(stack), redis_store, sink, controller.port)
    profile = make_profile("m-bounce")
    handler.permanent.add(profile.email)
    result = await deliverer.deliver(make_decision("m-bounce"), profile=profile, products=make_products())
    assert result.status == "failed" and "550" in result.detail and result.attempts == 1
    assert deliverer.metrics["retried"] == 0
    assert "550" in (await redis_store.suppression_reason(email=profile.email) or "")
    later = await deliverer.deliver(make_decision("m-bounce"), profile=profile, products=make_products())
    assert later.status == "suppressed"
    assert handler.recipients() == []
    assert [e["status"] for e in sink.events] == ["failed", "suppressed"]
    await deliverer.close()


async def test_a_5xx_about_our_protocol_fails_without_suppressing_the_member(
    stack: Settings,
    redis_store: RedisStore,
    scripted_smtp: tuple[ScriptedSmtp, Controller],
) -> None:
    handler, controller = scripted_smtp
    deliverer = _deliverer(mail_settings(stack), redis_store, MemorySink(), controller.port)
    profile = make_profile("m-503")
    handler.protocol_error.add(profile.email)
    result = await deliverer.deliver(make_decision("m-503"), profile=profile, products=make_products())
    assert result.status == "failed" and "503" in result.detail
    assert await redis_store.suppression_reason(member_id="m-503", email=profile.email) is None
    await deliverer.close()


async def test_unsubscribed_member_is_suppressed(
    stack: Settings,
    redis_store: RedisStore,
    scripted_smtp: tuple[ScriptedSmtp, Controller],
) -> None:
    handler, controller = scripted_smtp
    deliverer = _deliverer(mail_settings(stack), redis_store, MemorySink(), controller.port)
    await redis_store.suppress(member_id="m-unsub", reason="unsubscribe", now_ms=1)
    result = await deliverer.deliver(
        make_decision("m-unsub"), profile=make_profile("m-unsub"), products=make_products()
    )
    assert (result.status, result.detail) == ("suppressed", "unsubscribe")
    assert handler.recipients() == []
    await deliverer.close()


async def test_4xx_for_30_seconds_then_every_mail_arrives_exactly_once(
    stack: Settings,
    redis_store: RedisStore,
    scripted_smtp: tuple[ScriptedSmtp, Controller],
) -> None:
    handler, controller = scripted_smtp
    deliverer = _deliverer(
        mail_settings(stack), redis_store, MemorySink(), controller.port, retry_seconds=90, retry_max_delay=4
    )
    jobs = [(make_decision(f"m-grey{i}"), make_profile(f"m-grey{i}"), make_products()) for i in range(12)]
    handler.refuse_for(30)
    started = time.monotonic()
    results = await deliverer.deliver_many(jobs)
    assert time.monotonic() - started >= 29
    assert [r.status for r in results] == ["delivered"] * 12
    assert sorted(handler.recipients()) == sorted(job[1].email for job in jobs)
    assert handler.refused >= 12 and deliverer.metrics["retried"] >= 12
    await deliverer.close()


async def test_gives_up_after_the_retry_budget_and_releases_the_reservation(
    stack: Settings,
    redis_store: RedisStore,
    scripted_smtp: tuple[ScriptedSmtp, Controller],
) -> None:
    handler, controller = scripted_smtp
    deliverer = _deliverer(
        mail_settings(stack),
        redis_store,
        MemorySink(),
        controller.port,
        retry_seconds=1.0,
        retry_base_delay=0.2,
    )
    handler.refuse_for(60)
    decision, profile = make_decision("m-giveup"), make_profile("m-giveup")
    result = await deliverer.deliver(decision, profile=profile, products=make_products())
    assert result.status == "failed" and "gave up" in result.detail and result.attempts >= 2
    assert await redis_store.state(decision.key) is None  # a replay may try again
    handler.refuse_until = 0
    assert (
        await deliverer.deliver(decision, profile=profile, products=make_products())
    ).status == "delivered"
    await deliverer.close()


async def test_no_consent_and_broken_address_send_nothing(
    stack: Settings,
    redis_store: RedisStore,
    scripted_smtp: tuple[ScriptedSmtp, Controller],
) -> None:
    from dataclasses import replace

    handler, controller = scripted_smtp
    deliverer = _deliverer(mail_settings(stack), redis_store, MemorySink(), controller.port)
    no_consent = replace(make_profile("m-nc"), opt_in=False)
    broken = replace(make_profile("m-broken"), email="not-an-address")
    first = await deliverer.deliver(make_decision("m-nc"), profile=no_consent, products=[])
    second = await deliverer.deliver(make_decision("m-broken"), profile=broken, products=[])
    assert (first.status, second.status) == ("suppressed", "failed")
    assert handler.recipients() == []
    await deliverer.close()


def _parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


async def test_deliver_many_sends_each_decision_once_under_concurrency(
    stack: Settings,
    redis_store: RedisStore,
    scripted_smtp: tuple[ScriptedSmtp, Controller],
) -> None:
    handler, controller = scripted_smtp
    deliverer = _deliverer(mail_settings(stack), redis_store, MemorySink(), controller.port)
    jobs = [
        (
            make_decision(f"m-many{i % 20}", episode="e1"),
            make_profile(f"m-many{i % 20}", email=f"many{i % 20}@example.com"),
            make_products(),
        )
        for i in range(60)
    ]
    results = await deliverer.deliver_many(jobs)
    assert sum(r.status == "delivered" for r in results) == 20
    assert sum(r.status == "duplicate" for r in results) == 40
    assert sorted(handler.recipients()) == sorted(f"many{i}@example.com" for i in range(20))
    subjects = {_parse(env.original_content or b"")["Message-ID"] for env in handler.received}
    assert len(subjects) == 20
    await deliverer.close()
