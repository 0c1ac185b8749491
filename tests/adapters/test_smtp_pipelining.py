"""The pipelining SMTP client against real servers: aiosmtpd advertising PIPELINING (or not, as it does by
default), with scripted refusals, a dropped connection after the content, STARTTLS + AUTH; and a strict raw
server that answers nothing until MAIL, RCPT and DATA have all arrived, proving they went out together."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import uvloop
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from kagoflow.adapters.smtp import (
    SmtpPermanentError,
    SmtpPool,
    SmtpTemporaryError,
    SmtpUncertainError,
)
from tests.mail.helpers import ScriptedSmtp, free_port, smtp_server

pytestmark = pytest.mark.asyncio(loop_scope="session")
MESSAGE = b"Subject: hi\r\nFrom: shop@example.com\r\nTo: a@example.com\r\n\r\nbody\r\n.hidden dot\r\n"


class PipeliningSmtp(ScriptedSmtp):
    """ScriptedSmtp that advertises PIPELINING (aiosmtpd reads commands in order, so it copes with it), can
    take a mail and then drop the connection before answering, and counts EHLOs (= connections)."""

    def __init__(self, *, pipelining: bool = True) -> None:
        super().__init__()
        self.pipelining = pipelining
        self.drop_after_content: set[str] = set()
        self.refuse_content: set[str] = set()
        self.ehlos = 0

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        self.ehlos += 1
        return [*responses[:-1], "250-PIPELINING", responses[-1]] if self.pipelining else responses

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if set(envelope.rcpt_tos) & self.refuse_content:
            return "554 5.7.1 content rejected"
        reply = await super().handle_DATA(server, session, envelope)
        if set(envelope.rcpt_tos) & self.drop_after_content:
            server.transport.abort()  # the mail is taken, its 250 never reaches the client
        return reply


@pytest.fixture(name="pipelining_smtp")
def pipelining_smtp_fixture() -> Iterator[tuple[PipeliningSmtp, Controller]]:
    handler = PipeliningSmtp()
    with smtp_server(handler) as controller:
        yield handler, controller


def _connections(pool: SmtpPool) -> list[Any]:
    return list(pool._open)


async def _send(pool: SmtpPool, recipient: str) -> str:
    return await pool.send(sender="shop@example.com", recipient=recipient, data=MESSAGE)


async def test_pipelined_send_delivers_the_exact_content(pipelining_smtp: tuple[PipeliningSmtp, Controller]) -> None:
    handler, controller = pipelining_smtp
    pool = SmtpPool(host="127.0.0.1", port=controller.port, size=2)
    replies = await asyncio.gather(*(_send(pool, f"r{i}@example.com") for i in range(20)))
    assert all(reply.startswith("250 ") for reply in replies)
    assert [c.pipelining for c in _connections(pool)] == [True, True]
    assert sorted(handler.recipients()) == sorted(f"r{i}@example.com" for i in range(20))
    # dot-stuffing undone by the server: the content arrives as it was given
    assert {env.original_content for env in handler.received} == {MESSAGE}
    await pool.close()


@pytest.mark.parametrize("advertised", [True, False], ids=["pipelining", "no-pipelining"])
async def test_4xx_on_rcpt_is_temporary_5xx_permanent_and_the_connection_goes_on(advertised: bool) -> None:
    handler = PipeliningSmtp(pipelining=advertised)
    with smtp_server(handler) as controller:
        pool = SmtpPool(host="127.0.0.1", port=controller.port, size=1)
        handler.permanent.add("gone@example.com")
        handler.refuse_content.add("spam@example.com")
        codes = []
        for recipient in ("gone@example.com", "spam@example.com", "grey@example.com", "ok@example.com"):
            handler.refuse_until = time.monotonic() + 60 if recipient == "grey@example.com" else 0
            try:
                await _send(pool, recipient)
                codes.append(250)
            except (SmtpPermanentError, SmtpTemporaryError) as exc:
                codes.append((type(exc).__name__, exc.code))
        assert codes == [("SmtpPermanentError", 550), ("SmtpPermanentError", 554), ("SmtpTemporaryError", 451), 250]
        assert handler.recipients() == ["ok@example.com"]
        # one connection throughout: each refused transaction was ended with RSET
        assert handler.ehlos == 1 and [c.pipelining for c in _connections(pool)] == [advertised]
        await pool.close()


async def test_connection_dropped_after_the_content_is_uncertain_and_not_retried(
    pipelining_smtp: tuple[PipeliningSmtp, Controller],
) -> None:
    handler, controller = pipelining_smtp
    pool = SmtpPool(host="127.0.0.1", port=controller.port, size=1)
    handler.drop_after_content.update({"lost@example.com", "lost2@example.com"})
    with pytest.raises(SmtpUncertainError):
        await _send(pool, "lost@example.com")
    assert handler.recipients() == ["lost@example.com"]  # the server did take it: a retry would duplicate it
    # The same with a second mail waiting: its envelope went out in the write of the lost mail's content,
    # nothing of its content did, so it is retried on a fresh connection and delivered.
    lost, following = await asyncio.gather(
        _send(pool, "lost2@example.com"), _send(pool, "next@example.com"), return_exceptions=True
    )
    assert isinstance(lost, SmtpUncertainError)
    assert isinstance(following, str) and following.startswith("250 ")
    assert handler.recipients() == ["lost@example.com", "lost2@example.com", "next@example.com"]
    assert handler.ehlos == 3
    await pool.close()


async def test_sends_cancelled_while_waiting_for_the_connection_send_nothing_and_free_it(
    pipelining_smtp: tuple[PipeliningSmtp, Controller],
) -> None:
    handler, controller = pipelining_smtp
    pool = SmtpPool(host="127.0.0.1", port=controller.port, size=1)
    await _send(pool, "warm@example.com")
    tasks = [asyncio.create_task(_send(pool, f"c{i}@example.com")) for i in range(5)]
    await asyncio.sleep(0)  # c0 owns the connection, c1..c4 wait for it
    tasks[1].cancel()
    tasks[2].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [type(r).__name__ for r in results[1:3]] == ["CancelledError", "CancelledError"]
    assert all(isinstance(r, str) for r in results[3:])
    # c0 is delivered, or — if c1 had just been handed the connection with its envelope out when it was
    # cancelled, so the connection had to go — uncertain; never sent twice, and c1/c2 never sent at all
    assert isinstance(results[0], str | SmtpUncertainError)
    assert {"c1@example.com", "c2@example.com"}.isdisjoint(handler.recipients())
    await _send(pool, "after@example.com")
    assert handler.recipients()[-1] == "after@example.com"
    await pool.close()


async def test_final_reply_timing_out_is_uncertain(pipelining_smtp: tuple[PipeliningSmtp, Controller]) -> None:
    handler, controller = pipelining_smtp
    pool = SmtpPool(host="127.0.0.1", port=controller.port, size=1, timeout=0.5)
    original = handler.handle_DATA

    async def slow(server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(1.5)
        return await original(server, session, envelope)

    handler.handle_DATA = slow  # type: ignore[method-assign]
    with pytest.raises(SmtpUncertainError):
        await _send(pool, "slow@example.com")
    await pool.close()


class StrictPipeliningServer(asyncio.Protocol):
    """Advertises PIPELINING and answers a MAIL only once the RCPT and DATA after it have arrived too: a
    client that waited for each reply before the next command would hang here."""

    received: list[bytes]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport, self.buffer, self.content = transport, b"", False
        transport.write(b"220 strict ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.content:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    return
                self.received.append(self.buffer[: end + 2])
                self.buffer, self.content = self.buffer[end + 5 :], False
                self.transport.write(b"250 queued\r\n")
                continue
            lines = self.buffer.split(b"\r\n")[:-1]
            if not lines:
                return
            verb = lines[0][:4].upper()
            if verb == b"MAIL":
                if len(lines) < 3:
                    return  # wait for the whole group
                assert lines[1].startswith(b"RCPT TO:") and lines[2] == b"DATA"
                self.buffer = self.buffer.split(b"\r\n", 3)[3]
                self.transport.write(b"250 ok\r\n250 ok\r\n354 go ahead\r\n")
                self.content = True
                continue
            self.buffer = self.buffer.split(b"\r\n", 1)[1]
            replies = {b"EHLO": b"250-strict\r\n250-PIPELINING\r\n250 8BITMIME\r\n", b"QUIT": b"221 bye\r\n"}
            self.transport.write(replies.get(verb, b"502 not here\r\n"))


@pytest_asyncio.fixture(name="strict_server")
async def strict_server_fixture() -> AsyncIterator[tuple[int, list[bytes]]]:
    """A ``StrictPipeliningServer`` on a free port: (port, contents received)."""
    received: list[bytes] = []
    server = await asyncio.get_running_loop().create_server(
        lambda: type("Strict", (StrictPipeliningServer,), {"received": received})(), "127.0.0.1", 0
    )
    yield server.sockets[0].getsockname()[1], received
    server.close()
    await server.wait_closed()


async def test_envelope_goes_out_in_one_write_to_a_strict_server(strict_server: tuple[int, list[bytes]]) -> None:
    port, received = strict_server
    pool = SmtpPool(host="127.0.0.1", port=port, size=1, timeout=3)
    for i in range(3):
        await _send(pool, f"s{i}@example.com")
    assert received == [MESSAGE.replace(b"\r\n.", b"\r\n..")] * 3  # on the wire: dot-stuffed
    await pool.close()


async def test_on_a_busy_connection_the_next_envelope_goes_out_with_the_content(
    strict_server: tuple[int, list[bytes]],
) -> None:
    port, received = strict_server
    pool = SmtpPool(host="127.0.0.1", port=port, size=1, timeout=3)
    await _send(pool, "first@example.com")
    [connection] = _connections(pool)
    transport = connection.reader.transport
    writes: list[bytes] = []

    def write(data: bytes) -> None:
        writes.append(bytes(data))
        type(transport).write(transport, data)

    transport.write = write
    await asyncio.gather(*(_send(pool, f"busy{i}@example.com") for i in range(6)))
    assert len(received) == 7
    # envelope 1, then content 1..5 each with the next envelope, then content 6: 7 writes instead of 12
    assert len(writes) == 7
    assert all(b"\r\n.\r\nMAIL FROM:<shop@example.com>\r\nRCPT TO:<busy" in w for w in writes[1:6])
    await pool.close()


# -- STARTTLS + AUTH, on asyncio's and on uvloop's TLS transport ---------------------------------------------


@pytest.fixture(name="tls_files", scope="module")
def tls_files_fixture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def _authenticator(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"shop", b"s3cret")
    return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd answers 535 itself


async def _tls_send(port: int, cert: Path, password: str) -> tuple[str, list[bool]]:
    pool = SmtpPool(
        host="127.0.0.1",
        port=port,
        size=1,
        starttls=True,
        username="shop",
        password=password,
        tls_context=ssl.create_default_context(cafile=str(cert)),
        timeout=5,
    )
    try:
        reply = await _send(pool, "tls@example.com")
        await _send(pool, "tls2@example.com")
        return reply, [c.pipelining for c in _connections(pool)]
    finally:
        await pool.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_starttls_and_auth_then_pipelined_transactions(tls_files: tuple[Path, Path], loop: str) -> None:
    cert, key = tls_files
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(str(cert), str(key))
    handler = PipeliningSmtp()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=free_port(),
        ready_timeout=10,
        tls_context=server_context,
        require_starttls=True,
        auth_required=True,
        authenticator=_authenticator,
    )
    controller.start()
    try:
        if loop == "asyncio":
            reply, pipelining = await _tls_send(controller.port, cert, "s3cret")
        else:
            result: list[tuple[str, list[bool]]] = []
            thread = threading.Thread(
                target=lambda: result.append(uvloop.run(_tls_send(controller.port, cert, "s3cret")))
            )
            thread.start()
            await asyncio.to_thread(thread.join, 30)
            [(reply, pipelining)] = result
        assert reply.startswith("250 ") and pipelining == [True]
        assert handler.recipients() == ["tls@example.com", "tls2@example.com"]
        with pytest.raises(SmtpPermanentError) as refused:
            await _tls_send(controller.port, cert, "wrong")
        assert refused.value.code == 535
    finally:
        controller.stop()


@pytest.mark.parametrize("advertised", [True, False], ids=["pipelining", "no-pipelining"])
async def test_before_end_runs_when_all_but_the_end_of_data_is_out_and_its_failure_sends_nothing(
    advertised: bool,
) -> None:
    handler = PipeliningSmtp(pipelining=advertised)
    with smtp_server(handler) as controller:
        pool = SmtpPool(host="127.0.0.1", port=controller.port, size=1)
        calls: list[int] = []

        async def record() -> None:
            await asyncio.sleep(0.2)  # the body is at the server by now; without its end it is not a mail
            calls.append(len(handler.received))

        async def crash() -> None:
            raise RuntimeError("the sender may not transmit")

        reply = await pool.send(sender="shop@example.com", recipient="a@example.com", data=MESSAGE, before_end=record)
        assert reply.startswith("250 ") and calls == [0] and handler.recipients() == ["a@example.com"]
        # a second mail waits for the connection while the first one's hook fails: neither is half-sent
        failing = pool.send(sender="shop@example.com", recipient="b@example.com", data=MESSAGE, before_end=crash)
        waiting = pool.send(sender="shop@example.com", recipient="c@example.com", data=MESSAGE, before_end=record)
        failed, ok = await asyncio.gather(failing, waiting, return_exceptions=True)
        assert isinstance(failed, RuntimeError)
        assert isinstance(ok, str) and ok.startswith("250 ")
        await asyncio.sleep(0.2)
        assert handler.recipients() == ["a@example.com", "c@example.com"]
        assert {env.original_content for env in handler.received} == {MESSAGE}
        await pool.close()
