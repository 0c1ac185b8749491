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
server advertises PIPELINING, one command at a time otherwise. On a pipelining connection a send gives the
connection up once its content is written (to the next waiting send, whose envelope rides in that write)
and then only waits for its own final reply.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import aiosmtplib

from kagoflow.adapters.smtp_wire import (
    END_OF_DATA,
    Reply,
    ReplyReader,
    SmtpConnection,
    SmtpError,
    SmtpPermanentError,
    SmtpTemporaryError,
    SmtpUncertainError,
    StaleConnection,
    classify,
    envelope_commands,
    message_content,
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
        self._idle: list[SmtpConnection | None] | None = None
        """Slots not in use (None: no connection open yet); in use, a slot is owned by one send."""
        self._waiting: deque[_Waiter] = deque()
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
            self._idle = [None] * self.size

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

    async def _acquire(self, envelope: bytes) -> _Slot:
        """An idle slot, or the next one released or handed over (FIFO)."""
        assert self._idle is not None
        if self._idle:
            return self._idle.pop(), None
        waiter = _Waiter(envelope, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        try:
            return await waiter.slot
        except BaseException:
            if waiter.slot.done() and not waiter.slot.cancelled():
                connection, written = waiter.slot.result()
                if written is not None and connection is not None:
                    # Our envelope is already out on it and nobody will finish the transaction.
                    self._drop(connection)
                    connection = None
                self._release(connection)
            raise

    def _next_waiter(self) -> _Waiter | None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.slot.done():  # not cancelled meanwhile
                return waiter
        return None

    def _release(self, connection: SmtpConnection | None) -> None:
        waiter = self._next_waiter()
        if waiter is not None:
            waiter.slot.set_result((connection, None))
        elif self._idle is not None:
            self._idle.append(connection)
        elif connection is not None:  # the pool was closed meanwhile
            self._drop(connection)

    async def send(
        self,
        *,
        sender: str,
        recipient: str,
        data: bytes,
        smtputf8: bool = False,
        before_end: Callable[[], Awaitable[None]] | None = None,
    ) -> str:
        """Send one message; returns the server's final reply. Raises the errors of the module doc.

        ``before_end`` is awaited once the server accepted DATA (354) and the content but its final ``.``
        is written: the last moment at which the mail is certainly not delivered (a sender records it to
        tell a crash before from a crash after); only the three bytes of the end of DATA follow it, so a
        crash between the record and the end is as short as can be. If it raises, the connection is
        dropped — the server discards a transaction without its end of DATA — and its exception
        propagates. Without ``before_end`` the content and its end go out in one write.

        The send owns its connection from the envelope until the content is written. On a pipelining
        connection it then hands the connection to the next waiting send — whose envelope goes out in the
        same write as this content — or frees it, and only waits for its own final reply; otherwise it
        holds it until that reply. A pooled connection the server has meanwhile closed (idle timeout,
        restart) is noticed before or at MAIL; the send then moves to a fresh connection at once instead of
        failing as temporary.
        """
        for address in (sender, recipient):
            if not address or _UNUSABLE_IN_ADDRESS.search(address):
                raise ValueError(f"unusable envelope address {address!r}")
        commands = envelope_commands(sender, recipient, smtputf8)
        content = message_content(data)
        await self.start()
        connection, written = await self._acquire(b"".join(commands))
        owner = True
        try:
            while True:
                reused = written is not None or (connection is not None and connection.usable)
                if not reused:
                    if connection is not None:
                        self._drop(connection)
                    connection = None
                    connection = await self._connect()
                assert connection is not None
                try:
                    await connection.envelope(commands, written)
                    written = None
                    end = content
                    if before_end is not None:
                        connection.send_body(content[: -len(END_OF_DATA)])
                        end = END_OF_DATA
                        await before_end()
                    final = self._send_content(connection, end)
                    owner = not connection.pipelining
                    return await connection.finish(final)
                except StaleConnection as exc:
                    written = None
                    self._drop(connection)
                    connection = None
                    if not reused:
                        raise SmtpTemporaryError(None, f"connection lost: {exc}") from exc
                except SmtpError as exc:
                    if exc.drop_connection:
                        self._drop(connection)
                        if owner:
                            connection = None
                    raise
                except BaseException:
                    if owner:  # cancelled mid-transaction: the protocol state is unknown, never reuse it
                        self._drop(connection)
                        connection = None
                    raise
        finally:
            if owner:
                self._release(connection)

    def _send_content(self, connection: SmtpConnection, content: bytes) -> asyncio.Future[list[Reply]]:
        """Write the content; on a pipelining connection pass it on (with the next waiting envelope in the
        same write) or free it. Returns the future of the final reply."""
        if not connection.pipelining:
            return connection.send_content(content)[0]
        waiter = self._next_waiter()
        if waiter is None:
            final, _ = connection.send_content(content)
            self._release(connection)
            return final
        try:
            final, following = connection.send_content(content, waiter.envelope)
        except BaseException:
            self._waiting.appendleft(waiter)
            raise
        waiter.slot.set_result((connection, following))
        return final


_Slot = tuple[SmtpConnection | None, "asyncio.Future[list[Reply]] | None"]
"""A connection (None: open one) and, when handed over, the future of the envelope already sent on it."""


@dataclass(slots=True)
class _Waiter:
    envelope: bytes
    slot: asyncio.Future[_Slot]
