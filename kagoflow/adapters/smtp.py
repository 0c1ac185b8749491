"""A pool of persistent SMTP connections with outcomes a sender can act on.

``SmtpPool.send`` runs one MAIL / RCPT / DATA transaction on an idle connection and raises one of three
errors that say what the caller may do next:

- ``SmtpTemporaryError`` — 4xx, or the connection failed before the message content went out: the mail
  was certainly not accepted; retry later.
- ``SmtpPermanentError`` — 5xx: the server refuses the mail for good; do not retry.
- ``SmtpUncertainError`` — the connection broke (or the final reply timed out) once the content had been
  written: the server may have accepted it. Retrying could deliver it twice, so the caller must not.

Connections are opened lazily by aiosmtplib (connect, STARTTLS, AUTH, EHLO), reused, and replaced after any
connection-level failure; the transactions themselves run in ``smtp_wire`` — pipelined (RFC 2920) when the
server advertises PIPELINING, one command at a time otherwise.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from typing import cast

import aiosmtplib

from kagoflow.adapters.smtp_wire import (
    ReplyReader,
    SmtpConnection,
    SmtpError,
    SmtpPermanentError,
    SmtpTemporaryError,
    SmtpUncertainError,
    StaleConnection,
    classify,
)
from kagoflow.settings import Settings

__all__ = ["SmtpError", "SmtpPermanentError", "SmtpPool", "SmtpTemporaryError", "SmtpUncertainError"]

_UNUSABLE_IN_ADDRESS = re.compile(r"[\x00-\x20<>\x7f]")
_CONNECTION_ERRORS = (
    aiosmtplib.SMTPServerDisconnected,
    aiosmtplib.SMTPConnectError,
    aiosmtplib.SMTPTimeoutError,
    aiosmtplib.SMTPConnectTimeoutError,
    aiosmtplib.SMTPReadTimeoutError,
    OSError,
    TimeoutError,
)


class SmtpPool:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        size: int = 4,
        username: str = "",
        password: str = "",
        starttls: bool = False,
        timeout: float = 30.0,
        tls_context: ssl.SSLContext | None = None,
        pipelining: bool = True,
    ) -> None:
        """``tls_context`` replaces the default (system CAs, certificate checked) for STARTTLS;
        ``pipelining=False`` never pipelines, even when the server offers it."""
        if size < 1:
            raise ValueError("SMTP pool size must be >= 1")
        self.host = host
        self.port = port
        self.size = size
        self._username = username
        self._password = password
        self._starttls = starttls
        self._timeout = timeout
        self._tls_context = tls_context
        self._pipelining = pipelining
        self._idle: asyncio.LifoQueue[SmtpConnection | None] | None = None
        self._open: set[SmtpConnection] = set()

    @classmethod
    def from_settings(cls, settings: Settings, *, size: int | None = None) -> SmtpPool:
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            size=size or settings.smtp_pool_size,
            username=settings.smtp_username,
            password=settings.smtp_password,
            starttls=settings.smtp_starttls,
            timeout=settings.smtp_timeout_seconds,
        )

    async def start(self) -> None:
        """Create the pool's slots; connections open on first use (an SMTP outage must not stop a worker)."""
        if self._idle is None:
            self._idle = asyncio.LifoQueue()
            for _ in range(self.size):
                self._idle.put_nowait(None)

    async def close(self) -> None:
        connections = list(self._open)
        self._open.clear()
        await asyncio.gather(*(connection.quit() for connection in connections))
        self._idle = None

    async def _connect(self) -> SmtpConnection:
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self._timeout,
            start_tls=self._starttls or False,
            username=self._username or None,
            password=self._password or None,
            tls_context=self._tls_context,
        )
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()
        except aiosmtplib.SMTPResponseException as exc:
            client.close()
            raise classify(exc.code, f"connect: {exc.message}") from exc
        except (*_CONNECTION_ERRORS, aiosmtplib.SMTPException) as exc:
            client.close()
            raise SmtpTemporaryError(None, f"connect {self.host}:{self.port}: {exc}") from exc
        # aiosmtplib's protocol reads one reply per command; the transactions need several per write.
        transport = cast(asyncio.Transport, client.transport)
        reader = ReplyReader(transport, timeout=self._timeout)
        transport.set_protocol(reader)
        connection = SmtpConnection(reader, pipelining=self._pipelining and client.supports_extension("pipelining"))
        self._open.add(connection)
        return connection

    def _drop(self, connection: SmtpConnection) -> None:
        self._open.discard(connection)
        connection.close()

    async def send(self, *, sender: str, recipient: str, data: bytes, smtputf8: bool = False) -> str:
        """Send one message; returns the server's final reply. Raises the errors of the module doc.

        A pooled connection the server has meanwhile closed (idle timeout, restart) is noticed before or at
        MAIL; the send then moves to a fresh connection at once instead of failing as temporary.
        """
        for address in (sender, recipient):
            if not address or _UNUSABLE_IN_ADDRESS.search(address):
                raise ValueError(f"unusable envelope address {address!r}")
        await self.start()
        idle = self._idle
        assert idle is not None
        connection = await idle.get()
        try:
            while True:
                reused = connection is not None and connection.usable
                if not reused:
                    if connection is not None:
                        self._drop(connection)
                    connection = None
                    connection = await self._connect()
                assert connection is not None
                try:
                    return await connection.transaction(sender, recipient, data, smtputf8)
                except StaleConnection as exc:
                    self._drop(connection)
                    connection = None
                    if not reused:
                        raise SmtpTemporaryError(None, f"connection lost: {exc}") from exc
                except SmtpError as exc:
                    if exc.drop_connection:
                        self._drop(connection)
                        connection = None
                    raise
                except BaseException:
                    # Cancelled mid-transaction: the connection's protocol state is unknown, never reuse it.
                    self._drop(connection)
                    connection = None
                    raise
        finally:
            idle.put_nowait(connection)
