"""One negotiated SMTP connection running mail transactions, with PIPELINING (RFC 2920) when offered.

aiosmtplib opens the connection, upgrades it with STARTTLS and authenticates (``SmtpPool._connect``); the
transport is then handed to ``ReplyReader``, which — unlike aiosmtplib's protocol, which reads exactly one
reply per command written — collects any number of replies for one write. With PIPELINING advertised, MAIL
FROM, RCPT TO and DATA go out in one write and their three replies are read together; the content follows
with, when another mail waits for the connection, that mail's MAIL / RCPT / DATA in the same write (RFC 2920
lets the message content start a command group). One write and one round trip per mail instead of four.
Without PIPELINING, one command at a time.

Outcomes are told apart exactly (see ``kagoflow.adapters.smtp``): a refusal is classified by the first
command the server refused; a connection lost before any message content was written is safe to retry
(``StaleConnection``); lost once the content was written, the server may have accepted the mail
(``SmtpUncertainError``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from dataclasses import dataclass, field

MAX_PENDING_BYTES = 64 * 1024
"""A reply line longer than this is a broken server: the connection is dropped."""
END_OF_DATA = b".\r\n"
"""The line that ends the content: once written, the server may accept the mail at any moment."""
_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r")
_LINE_START_DOT = re.compile(rb"(?m)^\.")
_ENVELOPE_OK: tuple[frozenset[int], ...] = (frozenset({250}), frozenset({250, 251}), frozenset({354}))
"""Positive replies to MAIL FROM, RCPT TO and DATA."""


class SmtpError(Exception):
    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(f"{code} {message}" if code else message)
        self.code = code
        self.message = message
        self.drop_connection = False
        """Internal: the connection it happened on is unusable."""


class SmtpTemporaryError(SmtpError):
    pass


class SmtpPermanentError(SmtpError):
    pass


class SmtpUncertainError(SmtpError):
    pass


class StaleConnection(Exception):
    """The connection broke before any message content was written (safe to retry elsewhere)."""


def classify(code: int, message: str) -> SmtpError:
    if 400 <= code < 500:
        return SmtpTemporaryError(code, message)
    if code >= 500:
        return SmtpPermanentError(code, message)
    return SmtpTemporaryError(code, f"unexpected reply: {message}")


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class Lost(Exception):
    """The connection broke or a reply timed out; ``replies`` are those of the request that did arrive."""

    def __init__(self, reason: str, replies: list[Reply], *, written: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.replies = replies
        self.written = written
        """The request's bytes were handed to the transport (the server may have read them)."""


@dataclass(slots=True)
class _Wait:
    count: int
    future: asyncio.Future[list[Reply]]
    replies: list[Reply] = field(default_factory=list)


class ReplyReader(asyncio.Protocol):
    """Parses SMTP replies off a transport and hands them, in order, to the requests waiting for them."""

    def __init__(self, transport: asyncio.Transport, *, timeout: float) -> None:
        self.transport = transport
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._lines: list[bytes] = []
        self._waiting: deque[_Wait] = deque()
        self.closed: str | None = None
        """Why the connection is unusable, once it is."""

    @property
    def usable(self) -> bool:
        return self.closed is None and not self.transport.is_closing()

    def submit(self, data: bytes, *replies: int) -> list[asyncio.Future[list[Reply]]]:
        """Write ``data`` (commands and/or message content) at once; one future per group of ``replies``
        replies that answers it, in order. Raises ``Lost`` (nothing written) on a closed connection."""
        if not self.usable:
            raise Lost(self.closed or "connection closed", [], written=False)
        futures: list[asyncio.Future[list[Reply]]] = []
        for count in replies:
            wait = _Wait(count, self._loop.create_future())
            self._waiting.append(wait)
            futures.append(wait.future)
        self.transport.write(data)
        return futures

    async def wait(self, future: asyncio.Future[list[Reply]]) -> list[Reply]:
        """The replies of a submitted group; the connection is aborted if they do not come in time."""
        timer = self._loop.call_later(self._timeout, self.abort, f"no reply within {self._timeout:g}s")
        try:
            return await future
        finally:
            timer.cancel()

    async def request(self, data: bytes, replies: int) -> list[Reply]:
        [future] = self.submit(data, replies)
        return await self.wait(future)

    def abort(self, reason: str) -> None:
        self._fail(reason)
        self.transport.abort()

    def close(self) -> None:
        self._fail("closed by the client")
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[start:end]).rstrip(b"\r")
            start = end + 1
            self._lines.append(line)
            if line[3:4] != b"-":
                lines, self._lines = self._lines, []
                self._reply(lines)
        del buffer[:start]
        if len(buffer) > MAX_PENDING_BYTES:
            self.abort("reply line too long")

    def _reply(self, lines: list[bytes]) -> None:
        head = lines[0][:3]
        if not (head.isdigit() and len(head) == 3):
            self.abort(f"malformed reply {lines[0][:80]!r}")
            return
        text = "\n".join(line[4:].strip().decode("utf-8", "replace") for line in lines)
        reply = Reply(int(head), text)
        if not self._waiting:
            # Unsolicited (typically "421 idle timeout" before the server closes): out of step from here on.
            self.abort(f"unexpected reply: {reply}")
            return
        wait = self._waiting[0]
        wait.replies.append(reply)
        if len(wait.replies) == wait.count:
            self._waiting.popleft()
            if not wait.future.done():
                wait.future.set_result(wait.replies)

    def eof_received(self) -> bool:
        self._fail("connection closed by the server")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"connection lost: {exc}" if exc else "connection closed by the server")

    def _fail(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        while self._waiting:
            wait = self._waiting.popleft()
            if not wait.future.done():
                wait.future.set_exception(Lost(reason, wait.replies, written=True))
                wait.future.exception()  # retrieved: its sender may be gone (cancelled); awaiting still raises


def message_content(data: bytes) -> bytes:
    """DATA content: CRLF line ends, lines starting with '.' doubled, the terminating '.' line."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        data = _LINE_ENDINGS.sub(b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b".") or b"\n." in data:
        data = _LINE_START_DOT.sub(b"..", data)
    return data + END_OF_DATA


def _first_refusal(replies: list[Reply]) -> Reply | None:
    for reply, positive in zip(replies, _ENVELOPE_OK, strict=False):
        if reply.code not in positive:
            return reply
    return None


def envelope_commands(sender: str, recipient: str, smtputf8: bool) -> tuple[bytes, bytes, bytes]:
    encoding = "utf-8" if smtputf8 else "ascii"
    return (
        b"MAIL FROM:<" + sender.encode(encoding) + (b"> SMTPUTF8\r\n" if smtputf8 else b">\r\n"),
        b"RCPT TO:<" + recipient.encode(encoding) + b">\r\n",
        b"DATA\r\n",
    )


class SmtpConnection:
    """A connection after EHLO (and STARTTLS / AUTH). A transaction is ``envelope``, ``send_content`` and
    ``finish``; with pipelining the next transaction's envelope may go out with this one's content (the
    pool hands the connection over then), so transactions overlap by one round trip."""

    def __init__(self, reader: ReplyReader, *, pipelining: bool) -> None:
        self.reader = reader
        self.pipelining = pipelining

    @property
    def usable(self) -> bool:
        return self.reader.usable

    async def envelope(
        self, commands: tuple[bytes, bytes, bytes], written: asyncio.Future[list[Reply]] | None = None
    ) -> None:
        """MAIL / RCPT / DATA up to the server's 354 (``written``: they already went out, with the content of
        the transaction before). Raises ``StaleConnection`` or the refusal, after which the connection is
        reset (RSET) or marked for dropping."""
        try:
            if written is not None:
                replies = await self.reader.wait(written)
            elif self.pipelining:
                replies = await self.reader.request(b"".join(commands), 3)
            else:
                replies = []
                for command, positive in zip(commands, _ENVELOPE_OK, strict=True):
                    replies += await self.reader.request(command, 1)
                    if replies[-1].code not in positive:
                        break
        except Lost as exc:
            refusal = _first_refusal(exc.replies)
            if refusal is None:
                raise StaleConnection(exc.reason) from exc
            error = classify(refusal.code, refusal.text)
            error.drop_connection = True
            raise error from exc
        refusal = _first_refusal(replies)
        if refusal is not None:
            error = classify(refusal.code, refusal.text)
            error.drop_connection = refusal.code == 421 or not await self._abandon(replies)
            raise error

    def send_body(self, body: bytes) -> None:
        """Write message content without its end (``END_OF_DATA``, sent later by ``send_content``): the
        server cannot accept the mail before that line. Raises ``StaleConnection`` on a closed connection."""
        try:
            self.reader.submit(body)
        except Lost as exc:
            raise StaleConnection(exc.reason) from exc

    def send_content(
        self, content: bytes, next_envelope: bytes = b""
    ) -> tuple[asyncio.Future[list[Reply]], asyncio.Future[list[Reply]] | None]:
        """Write the content (``message_content``), followed by the next transaction's pipelined envelope if
        given; returns the futures of the final reply and of that envelope's three replies."""
        try:
            if next_envelope:
                final, following = self.reader.submit(content + next_envelope, 1, 3)
                return final, following
            [final] = self.reader.submit(content, 1)
        except Lost as exc:  # the connection closed just now: nothing of the content went out
            raise StaleConnection(exc.reason) from exc
        return final, None

    async def finish(self, final: asyncio.Future[list[Reply]]) -> str:
        """The final reply to the content: the server's answer, or ``SmtpUncertainError`` if it never came."""
        try:
            [reply] = await self.reader.wait(final)
        except Lost as exc:
            uncertain = SmtpUncertainError(None, f"{exc.reason} after the message content was sent")
            uncertain.drop_connection = True
            raise uncertain from exc
        if reply.code != 250:
            error = classify(reply.code, reply.text)
            error.drop_connection = reply.code == 421
            raise error
        return str(reply)

    async def _abandon(self, replies: list[Reply]) -> bool:
        """End a refused transaction (RSET); False when the connection is not usable afterwards."""
        try:
            if len(replies) == 3 and replies[2].code == 354:
                # RFC 2920 §3.1: DATA was accepted although MAIL or RCPT was refused: send an empty message.
                await self.reader.request(b".\r\n", 1)
            [reset] = await self.reader.request(b"RSET\r\n", 1)
        except Lost:
            return False
        return reset.code == 250

    async def quit(self) -> None:
        with contextlib.suppress(Lost, TimeoutError):
            await asyncio.wait_for(self.reader.request(b"QUIT\r\n", 1), timeout=2)
        self.reader.close()

    def close(self) -> None:
        self.reader.close()
