"""The worker ↔ engine frames round-trip exactly, also across arbitrary read boundaries."""

from __future__ import annotations

import asyncio

import pytest

from kagoflow.worker import frames


def _read_all(data: bytes, chunk: int) -> list[tuple[int, bytes]]:
    async def scenario() -> list[tuple[int, bytes]]:
        reader = asyncio.StreamReader()
        for start in range(0, len(data), chunk):
            reader.feed_data(data[start:start + chunk])
        reader.feed_eof()
        out = []
        while (item := await frames.read_frame(reader)) is not None:
            out.append((item[0], bytes(item[1])))
        return out

    return asyncio.run(scenario())


def test_events_round_trip_in_order_with_empty_null_binary_and_huge_keys_and_values() -> None:
    events: list[frames.Event] = [
        (0, 3, 2**40, 1_790_000_000_123, b"m1", b'{"a":1}'), (4, 0, 0, -5, None, b""),
        (2, 65535, 7, 0, b"", bytes(range(256))),
        (1, 2, 8, 9, b"m2", None),  # a tombstone: must reach the engine as null, not as b""
        (0, 1, 9, 10, None, None), (3, 0, 10, 11, b"k" * 1_000_000, b"v" * 1_048_576),
    ]
    payload = b"".join(b"".join(frames.encode_event(*event)) for event in events)
    assert list(frames.decode_events(memoryview(payload))) == events


def test_results_carry_epoch_writes_and_acks() -> None:
    writes = [(b"0/17", b"KFB1" + b"x" * 1000), (b"3/0", b"")]
    encoded = frames.encode_results(9, writes, {0: 41, 3: 2**50})
    assert frames.decode_results(memoryview(encoded)) == (9, writes, {0: 41, 3: 2**50})
    assert frames.decode_results(memoryview(frames.encode_results(1, [], {}))) == (1, [], {})


def test_partitions_and_items_round_trip() -> None:
    assert frames.decode_partitions(memoryview(frames.encode_partitions({5, 0, 2}))) == {0, 2, 5}
    assert frames.decode_revoke(memoryview(frames.encode_revoke(2**40 + 3, 9, {7, 1}))) == (2**40 + 3, 9, {1, 7})
    assert frames.decode_assign(memoryview(frames.encode_assign(8, {3}))) == (8, {3})
    items = [(b"k", b"v"), (b"", b"long" * 999)]
    assert frames.decode_items(memoryview(frames.encode_items(items)))[0] == items


def test_frames_survive_any_read_boundary_and_a_cut_frame_is_an_error() -> None:
    data = (frames.frame(frames.EVENTS, b"abc") + frames.frame(frames.REPLY_T, b"")
            + frames.frame(frames.ASSIGN, b"\x00"))
    for chunk in (1, 2, 5, len(data)):
        assert _read_all(data, chunk) == [(frames.EVENTS, b"abc"), (frames.REPLY_T, b""), (frames.ASSIGN, b"\x00")]
    for cut in (len(data) - 1, len(data) - 3):  # inside the last payload, inside the last header
        with pytest.raises(ConnectionError):
            _read_all(data[:cut], 3)
