"""One negotiated SMTP connection running mail transactions, with PIPELINING (RFC 2920) when offered.

aiosmtplib opens the connection, upgrades it with STARTTLS and authenticates (``SmtpPool._connect``); the
transport is then handed to ``ReplyReader``, which — unlike aiosmtplib's protocol, which reads exactly one
reply per command written — collects any number of replies for one write. With PIPELINING advertised, MAIL
FROM, RCPT TO and DATA go out in one write and their three replies are read together, then the content and
its final reply: two round trips per mail instead of four. Without it, one command at a time.

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

    async def request(self, data: bytes, replies: int) -> list[Reply]:
        """Write ``data`` (one or more commands, or message content) and return its ``replies`` replies."""
        if not self.usable:
            raise Lost(self.closed or "connection closed", [], written=False)
        wait = _Wait(replies, self._loop.create_future())
        self._waiting.append(wait)
        self.transport.write(data)
        timer = self._loop.call_later(self._timeout, self.abort, f"no reply within {self._timeout:g}s")
        try:
            return await wait.future
        finally:
            timer.cancel()

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


def message_content(data: bytes) -> bytes:
    """DATA content: CRLF line ends, lines starting with '.' doubled, the terminating '.' line."""
    if data.count(b"\n") != data.count(b"\r\n") or data.count(b"\r") != data.count(b"\r\n"):
        data = _LINE_ENDINGS.sub(b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b".") or b"\n." in data:
        data = _LINE_START_DOT.sub(b"..", data)
    return data + b".\r\n"


def _first_refusal(replies: list[Reply]) -> Reply | None:
    for reply, positive in zip(replies, _ENVELOPE_OK, strict=False):
        if reply.code not in positive:
            return reply
    return None


class SmtpConnection:
    """A connection after EHLO (and STARTTLS / AUTH): one mail transaction at a time."""

    def __init__(self, reader: ReplyReader, *, pipelining: bool) -> None:
        self.reader = reader
        self.pipelining = pipelining

    @property
    def usable(self) -> bool:
        return self.reader.usable

    async def transaction(self, sender: str, recipient: str, data: bytes, smtputf8: bool) -> str:
        """MAIL / RCPT / DATA / content; returns the final reply, raises as the module doc says."""
        encoding = "utf-8" if smtputf8 else "ascii"
        commands = (
            b"MAIL FROM:<" + sender.encode(encoding) + (b"> SMTPUTF8\r\n" if smtputf8 else b">\r\n"),
            b"RCPT TO:<" + recipient.encode(encoding) + b">\r\n",
            b"DATA\r\n",
        )
        content = message_content(data)
        try:
            if self.pipelining:
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
        try:
            [final] = await self.reader.request(content, 1)
        except Lost as exc:
            if not exc.written:
                raise StaleConnection(exc.reason) from exc
            error = SmtpUncertainError(None, f"{exc.reason} after the message content was sent")
            error.drop_connection = True
            raise error from exc
        if final.code != 250:
            error = classify(final.code, final.text)
            error.drop_connection = final.code == 421
            raise error
        return str(final)

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
