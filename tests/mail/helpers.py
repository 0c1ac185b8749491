"""Shared pieces of the mail, tracking and Redis/SMTP adapter tests."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from email.message import EmailMessage
from typing import Any

import pytest
import pytest_asyncio
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from kagoflow.adapters.redis_store import RedisStore
from kagoflow.core.catalog import ProductInfo
from kagoflow.core.decisions import Decision
from kagoflow.mail.context import MemberProfile
from kagoflow.settings import PROJECT_ROOT, Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_decision(
    member_id: str = "m1",
    *,
    rule_id: str = "cart-1h",
    episode: str | None = None,
    products: tuple[str, ...] = ("p1", "p2", "p3", "p4"),
    template: str = "cart",
    coupon: str | None = "CART10",
    sender_name: str | None = None,
    kind: Any = "abandonment",
) -> Decision:
    return Decision(
        member_id=member_id,
        rule_id=rule_id,
        kind=kind,
        status="sent",
        reason="",
        products=products,
        due_ms=1_700_000_000_000,
        at_ms=1_700_000_000_000,
        episode=episode or uuid.uuid4().hex[:12],
        template=template,
        coupon=coupon,
        sender_name=sender_name,
    )


def make_profile(
    member_id: str = "m1",
    *,
    email: str | None = None,
    name: str | None = "山田 太郎",
    device: str | None = "pc",
) -> MemberProfile:
    return MemberProfile(
        member_id=member_id,
        email=email or f"{member_id}-{uuid.uuid4().hex[:8]}@example.com",
        name=name,
        device=device,
        locale="ja",
        opt_in=True,
        purchase_count=0,
    )


def make_products(n: int = 4) -> list[ProductInfo]:
    return [
        ProductInfo(
            product_id=f"p{i}",
            price=1000.0 * i + 980,
            stock=5,
            updated_ms=0,
            name=f"テスト商品{i}",
            url=f"https://shop.example.com/items/p{i}",
            image_url=f"https://shop.example.com/img/p{i}.jpg",
        )
        for i in range(1, n + 1)
    ]


def mail_settings(base: Settings, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "templates_dir": PROJECT_ROOT / "templates",
        "shop_domains": ("shop.example.com",),
        "shop_url": "https://shop.example.com/",
        "tracking_secret": "test-secret",
        "public_base_url": "https://track.example.com",
        "mail_from_address": "shop@example.com",
        "mail_sender_name": "テストショップ",
    }
    values.update(changes)
    return replace(base, **values)


def html_part(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())


def text_part(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


class ScriptedSmtp:
    """aiosmtpd handler whose answers a test controls: refuse with 4xx until a moment, 5xx for addresses."""

    def __init__(self) -> None:
        self.refuse_until = 0.0
        self.permanent: set[str] = set()
        self.protocol_error: set[str] = set()
        self.received: list[Envelope] = []
        self.refused = 0
        self._lock = threading.Lock()

    def refuse_for(self, seconds: float) -> None:
        self.refuse_until = time.monotonic() + seconds

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.permanent:
            return f"550 5.1.1 <{address}>: user unknown"
        if address in self.protocol_error:
            return "503 5.5.1 bad sequence of commands"
        if time.monotonic() < self.refuse_until:
            with self._lock:
                self.refused += 1
            return "451 4.7.1 greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._lock:
            self.received.append(envelope)
        return "250 OK queued"

    def recipients(self) -> list[str]:
        with self._lock:
            return [rcpt for env in self.received for rcpt in env.rcpt_tos]


@contextmanager
def smtp_server(handler: ScriptedSmtp, port: int | None = None) -> Iterator[Controller]:
    """A real SMTP server (aiosmtpd, own thread) on a free loopback port."""
    controller = Controller(handler, hostname="127.0.0.1", port=port or free_port(), ready_timeout=10)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


@pytest.fixture(name="scripted_smtp")
def scripted_smtp_fixture() -> Iterator[tuple[ScriptedSmtp, Controller]]:
    handler = ScriptedSmtp()
    with smtp_server(handler) as controller:
        yield handler, controller


@pytest_asyncio.fixture(name="redis_store")
async def redis_store_fixture(
    stack: Settings, unique_name: Callable[[str], str]
) -> AsyncIterator[RedisStore]:
    """A store on the stack's Redis under a key prefix no other test uses; its keys are deleted after."""
    store = RedisStore.from_url(stack.redis_url, prefix=unique_name("mailtest") + ":")
    yield store
    keys = [key async for key in store.client.scan_iter(match=store.prefix + "*", count=1000)]
    if keys:
        await store.client.delete(*keys)
    await store.close()
