"""Pure logic of the SMTP wire layer: DATA content encoding and reply parsing (replies fed in as bytes)."""

from __future__ import annotations

import asyncio

import pytest

from kagoflow.adapters.smtp_wire import Lost, Reply, ReplyReader, message_content


@pytest.mark.parametrize(
    ("data", "content"),
    [
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
        (b"a\nb", b"a\r\nb\r\n.\r\n"),
        (b"a\rb\r\n", b"a\r\nb\r\n.\r\n"),
        (b".top\r\nx\r\n.\r\n..two\r\n", b"..top\r\nx\r\n..\r\n...two\r\n.\r\n"),
        (b"", b"\r\n.\r\n"),
    ],
)
def test_message_content_has_crlf_lines_stuffed_dots_and_the_terminator(data: bytes, content: bytes) -> None:
    assert message_content(data) == content


class BytesTransport(asyncio.Transport):
    """Collects what the reader writes; replies are fed to the reader by the test."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


async def test_replies_split_across_reads_and_multiline_go_to_their_requests_in_order() -> None:
    transport = BytesTransport()
    reader = ReplyReader(transport, timeout=5)
    first = asyncio.ensure_future(reader.request(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", 3))
    second = asyncio.ensure_future(reader.request(b"x\r\n.\r\n", 1))
    await asyncio.sleep(0)
    for chunk in (b"250 ok\r\n25", b"0-first\r\n250 second\r\n354 go", b" on\r\n250 queued as 1\r\n"):
        reader.data_received(chunk)
    assert await first == [Reply(250, "ok"), Reply(250, "first\nsecond"), Reply(354, "go on")]
    assert await second == [Reply(250, "queued as 1")]
    assert transport.written == [b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", b"x\r\n.\r\n"]
    assert reader.usable


async def test_connection_loss_hands_over_the_replies_that_did_arrive() -> None:
    reader = ReplyReader(BytesTransport(), timeout=5)
    pending = asyncio.ensure_future(reader.request(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", 3))
    await asyncio.sleep(0)
    reader.data_received(b"421 4.3.2 shutting down\r\n")
    reader.connection_lost(None)
    with pytest.raises(Lost) as lost:
        await pending
    assert lost.value.replies == [Reply(421, "4.3.2 shutting down")] and lost.value.written
    with pytest.raises(Lost) as later:
        await reader.request(b"RSET\r\n", 1)
    assert not later.value.written and not reader.usable


async def test_unsolicited_or_malformed_replies_make_the_connection_unusable() -> None:
    idle = ReplyReader(BytesTransport(), timeout=5)
    idle.data_received(b"421 idle timeout\r\n")
    assert not idle.usable and "unexpected reply" in (idle.closed or "")
    garbled = ReplyReader(BytesTransport(), timeout=5)
    pending = asyncio.ensure_future(garbled.request(b"RSET\r\n", 1))
    await asyncio.sleep(0)
    garbled.data_received(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(Lost, match="malformed"):
        await pending


async def test_a_reply_not_arriving_in_time_is_lost() -> None:
    transport = BytesTransport()
    reader = ReplyReader(transport, timeout=0.05)
    with pytest.raises(Lost, match="no reply within"):
        await reader.request(b"DATA\r\n", 1)
    assert transport.closing
