"""A pool of persistent SMTP connections (aiosmtplib) with outcomes a sender can act on.

``SmtpPool.send`` runs one MAIL / RCPT / DATA transaction on an idle connection and raises one of three
errors that say what the caller may do next:

- ``SmtpTemporaryError`` — 4xx, or the connection failed before the message content went out: the mail
  was certainly not accepted; retry later.
- ``SmtpPermanentError`` — 5xx: the server refuses the mail for good; do not retry.
- ``SmtpUncertainError`` — the connection broke while the content was being transmitted or acknowledged:
  the server may have accepted it. Retrying could deliver it twice, so the caller must not.

Connections are opened lazily, reused, and replaced after any connection-level failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiosmtplib

from kagoflow.settings import Settings

log = logging.getLogger(__name__)


class SmtpError(Exception):
    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(f"{code} {message}" if code else message)
        self.code = code
        self.message = message
        self.drop_connection = False
        """Internal: the connection it happened on is unusable."""


class _StaleConnection(Exception):
    """The connection broke before any message content was sent (safe to retry elsewhere)."""


class SmtpTemporaryError(SmtpError):
    pass


class SmtpPermanentError(SmtpError):
    pass


class SmtpUncertainError(SmtpError):
    pass


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
    ) -> None:
        if size < 1:
            raise ValueError("SMTP pool size must be >= 1")
        self.host = host
        self.port = port
        self.size = size
        self._username = username
        self._password = password
        self._starttls = starttls
        self._timeout = timeout
        self._idle: asyncio.LifoQueue[aiosmtplib.SMTP | None] | None = None
        self._open: set[aiosmtplib.SMTP] = set()

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
        for client in list(self._open):
            await self._drop(client, polite=True)
        self._idle = None

    async def _connect(self) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self._timeout,
            start_tls=self._starttls or False,
            username=self._username or None,
            password=self._password or None,
        )
        try:
            await client.connect()
        except aiosmtplib.SMTPResponseException as exc:
            raise _classify(exc.code, f"connect: {exc.message}") from exc
        except (*_CONNECTION_ERRORS, aiosmtplib.SMTPException) as exc:
            raise SmtpTemporaryError(None, f"connect {self.host}:{self.port}: {exc}") from exc
        self._open.add(client)
        return client

    async def _drop(self, client: aiosmtplib.SMTP, *, polite: bool = False) -> None:
        self._open.discard(client)
        if polite and client.is_connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.quit(), timeout=2)
        with contextlib.suppress(Exception):
            client.close()

    async def send(self, *, sender: str, recipient: str, data: bytes, smtputf8: bool = False) -> str:
        """Send one message; returns the server's final reply. Raises the errors of the module doc.

        A pooled connection the server has meanwhile closed (idle timeout, restart) is noticed at MAIL;
        the send then moves to a fresh connection at once instead of failing as temporary.
        """
        for address in (sender, recipient):
            if not address or any(c in address for c in "<> \r\n\t"):
                raise ValueError(f"unusable envelope address {address!r}")
        await self.start()
        idle = self._idle
        assert idle is not None
        client = await idle.get()
        try:
            while True:
                reused = client is not None and client.is_connected
                if not reused:
                    if client is not None:
                        await self._drop(client)
                    client = None
                    client = await self._connect()
                assert client is not None
                try:
                    return await self._transaction(client, sender, recipient, data, smtputf8)
                except _StaleConnection as exc:
                    await self._drop(client)
                    client = None
                    if not reused:
                        raise SmtpTemporaryError(None, f"connection lost: {exc.__cause__}") from exc.__cause__
                except SmtpError as exc:
                    if exc.drop_connection:
                        await self._drop(client)
                        client = None
                    raise
                except BaseException:
                    # Cancelled mid-transaction: the connection's protocol state is unknown, never reuse it.
                    await self._drop(client)
                    client = None
                    raise
        finally:
            idle.put_nowait(client)

    async def _transaction(
        self, client: aiosmtplib.SMTP, sender: str, recipient: str, data: bytes, smtputf8: bool
    ) -> str:
        encoding = "utf-8" if smtputf8 else "ascii"
        mail_from = [b"FROM:<" + sender.encode(encoding) + b">"] + ([b"SMTPUTF8"] if smtputf8 else [])
        rcpt_to = b"TO:<" + recipient.encode(encoding) + b">"
        stage = "envelope"
        try:
            # MAIL and RCPT go out directly: aiosmtplib's mail()/rcpt() re-parse each address with
            # email.utils.parseaddr, a quarter of the client's CPU per mail (measured); send() checked them.
            if client.is_ehlo_or_helo_needed:
                await client.ehlo()
            reply = await client.execute_command(b"MAIL", *mail_from)
            if reply.code != 250:
                raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)
            reply = await client.execute_command(b"RCPT", rcpt_to)
            if reply.code not in (250, 251):
                raise aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)
            stage = "data"
            response = await client.data(data)
        except aiosmtplib.SMTPResponseException as exc:
            # The server answered: nothing was accepted. 421 means it is closing the connection.
            error = _classify(exc.code, exc.message)
            error.drop_connection = exc.code == 421 or not await self._reset(client)
            raise error from exc
        except (*_CONNECTION_ERRORS, aiosmtplib.SMTPException) as exc:
            if stage == "data":
                error = SmtpUncertainError(None, f"connection lost during DATA: {exc}")
                error.drop_connection = True
                raise error from exc
            raise _StaleConnection() from exc
        return f"{response.code} {response.message}"

    async def _reset(self, client: aiosmtplib.SMTP) -> bool:
        try:
            await client.rset()
        except Exception:
            return False
        return True


def _classify(code: int, message: str) -> SmtpError:
    if 400 <= code < 500:
        return SmtpTemporaryError(code, message)
    if code >= 500:
        return SmtpPermanentError(code, message)
    return SmtpTemporaryError(code, f"unexpected reply: {message}")
