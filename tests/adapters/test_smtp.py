"""SmtpPool against real SMTP servers (aiosmtpd on free loopback ports, scripted answers)."""

from __future__ import annotations

import asyncio

import pytest
from aiosmtpd.controller import Controller

from kagoflow.adapters.smtp import SmtpPermanentError, SmtpPool, SmtpTemporaryError
from tests.mail.helpers import ScriptedSmtp, free_port, scripted_smtp_fixture, smtp_server  # noqa: F401

pytestmark = pytest.mark.asyncio(loop_scope="session")
MESSAGE = b"Subject: hi\r\nFrom: shop@example.com\r\nTo: a@example.com\r\n\r\nbody\r\n"


async def test_sends_many_mails_over_at_most_size_connections(
    scripted_smtp: tuple[ScriptedSmtp, Controller],
) -> None:
    handler, controller = scripted_smtp
    pool = SmtpPool(host="127.0.0.1", port=controller.port, size=3)
    replies = await asyncio.gather(
        *(pool.send(sender="shop@example.com", recipient=f"r{i}@example.com", data=MESSAGE) for i in range(30))
    )
    assert all(reply.startswith("250") for reply in replies)
    assert sorted(handler.recipients()) == sorted(f"r{i}@example.com" for i in range(30))
    assert len(pool._open) <= 3
    await pool.close()


async def test_4xx_is_temporary_5xx_is_permanent_and_the_connection_stays_usable(
    scripted_smtp: tuple[ScriptedSmtp, Controller],
) -> None:
    handler, controller = scripted_smtp
    pool = SmtpPool(host="127.0.0.1", port=controller.port, size=1)
    handler.permanent.add("gone@example.com")
    with pytest.raises(SmtpPermanentError) as permanent:
        await pool.send(sender="shop@example.com", recipient="gone@example.com", data=MESSAGE)
    assert permanent.value.code == 550
    handler.refuse_for(60)
    with pytest.raises(SmtpTemporaryError) as temporary:
        await pool.send(sender="shop@example.com", recipient="a@example.com", data=MESSAGE)
    assert temporary.value.code == 451
    handler.refuse_until = 0
    await pool.send(sender="shop@example.com", recipient="a@example.com", data=MESSAGE)
    assert handler.recipients() == ["a@example.com"]
    await pool.close()


async def test_unreachable_server_is_temporary() -> None:
    pool = SmtpPool(host="127.0.0.1", port=free_port(), size=1, timeout=2)
    with pytest.raises(SmtpTemporaryError):
        await pool.send(sender="shop@example.com", recipient="a@example.com", data=MESSAGE)
    await pool.close()


async def test_reconnects_after_the_server_restarts() -> None:
    handler = ScriptedSmtp()
    port = free_port()
    pool = SmtpPool(host="127.0.0.1", port=port, size=1)
    with smtp_server(handler, port=port):
        await pool.send(sender="shop@example.com", recipient="a@example.com", data=MESSAGE)
    with smtp_server(handler, port=port):
        # The pooled connection died with the old server: the send moves to a fresh connection by itself.
        await pool.send(sender="shop@example.com", recipient="b@example.com", data=MESSAGE)
    assert handler.recipients() == ["a@example.com", "b@example.com"]
    await pool.close()
