"""The byte frames between the Faust worker and its member engine process (``kagoflow.worker.engine``).

Every frame is ``u32 length | u8 type | payload`` (length counts type + payload). Worker → engine:

- ``E`` events: repeated ``u8 topic index | u16 partition | u64 offset | i64 timestamp ms | u32 key length |
  u32 value length | key | value`` (length ``NULL`` = a null key / value, no bytes); the engine numbers events
  in arrival order from 0 (the worker's sequence numbers are the same).
- ``K`` stored buckets: repeated ``u32 key length | key | u32 value length | value`` (sent before ``A``).
- ``A`` assign: ``u64 link epoch | u16 count | u16 partitions``.

Worker → engine on the control pipe (read beside the events, so a busy engine answers at once):

- ``R`` revoke: ``u64 sequence number | u64 link epoch | u16 count | u16 partitions``: events of those
  partitions numbered below the sequence number (sent before the revocation) are dropped if not handled
  yet, and so is an assignment of them with a lower link epoch (the link counts its assignments and
  revocations) still on its way.
- ``Q`` query: ``u32 request id | u8 what (s = member state, m = metrics) | argument bytes``.

Engine → worker:

- ``W`` results: ``u32 control epoch | u32 writes | writes (as in K) | u32 acks | acks (u16 partition,
  u64 sequence)``: bucket values to store and, per partition, the last event whose effects are stored
  once those writes are. The epoch counts the ``A``/``R`` frames the engine had handled when it made them.
- ``P`` reply: ``u32 request id | payload`` (state bytes, metrics JSON; empty = none).

Plain ``struct`` packing: a frame of a few hundred events costs ~1 µs per event to build and read.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterable, Iterator, Sequence

HEADER = struct.Struct(">IB")
EVENT = struct.Struct(">BHQqII")
NULL = 0xFFFFFFFF
"""Length of a null key or value (a Kafka tombstone must reach the engine, which dead-letters it)."""
ITEM_LEN = struct.Struct(">I")
PARTITIONS = struct.Struct(">H")
QUERY = struct.Struct(">IB")
REPLY = struct.Struct(">I")
RESULT_HEAD = struct.Struct(">II")
ACK = struct.Struct(">HQ")
SEQ = struct.Struct(">Q")

EVENTS, BUCKETS, ASSIGN, REVOKE, QUERY_T, RESULTS, REPLY_T = (ord(c) for c in "EKARQWP")

Event = tuple[int, int, int, int, bytes | None, bytes | None]
"""(topic index, partition, offset, timestamp ms, key, value)."""


def frame(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload) + 1, kind) + payload


def encode_items(items: Iterable[tuple[bytes, bytes]]) -> bytes:
    parts: list[bytes] = []
    pack = ITEM_LEN.pack
    for key, value in items:
        parts += (pack(len(key)), key, pack(len(value)), value)
    return b"".join(parts)


def decode_items(payload: memoryview, offset: int = 0,
                 count: int | None = None) -> tuple[list[tuple[bytes, bytes]], int]:
    """Items from ``offset`` to the end (or ``count`` of them); returns them and the offset after."""
    out: list[tuple[bytes, bytes]] = []
    unpack = ITEM_LEN.unpack_from
    end = len(payload)
    while (count is None and offset < end) or (count is not None and len(out) < count):
        (klen,) = unpack(payload, offset)
        key = bytes(payload[offset + 4:offset + 4 + klen])
        offset += 4 + klen
        (vlen,) = unpack(payload, offset)
        value = bytes(payload[offset + 4:offset + 4 + vlen])
        offset += 4 + vlen
        out.append((key, value))
    return out, offset


def encode_event(topic: int, partition: int, offset: int, timestamp_ms: int, key: bytes | None,
                 value: bytes | None) -> tuple[bytes, ...]:
    """One event's parts (joined into an ``E`` payload by the caller)."""
    head = EVENT.pack(topic, partition, offset, timestamp_ms, NULL if key is None else len(key),
                      NULL if value is None else len(value))
    return head, key or b"", value or b""


def decode_events(payload: memoryview) -> Iterator[Event]:
    unpack = EVENT.unpack_from
    size = EVENT.size
    offset, end = 0, len(payload)
    while offset < end:
        topic, partition, record_offset, ts, key_length, length = unpack(payload, offset)
        offset += size
        key = None
        if key_length != NULL:
            key = bytes(payload[offset:offset + key_length])
            offset += key_length
        if length == NULL:
            yield topic, partition, record_offset, ts, key, None
            continue
        yield topic, partition, record_offset, ts, key, bytes(payload[offset:offset + length])
        offset += length


def encode_partitions(partitions: Iterable[int]) -> bytes:
    ordered = sorted(partitions)
    return PARTITIONS.pack(len(ordered)) + b"".join(PARTITIONS.pack(p) for p in ordered)


def decode_partitions(payload: memoryview) -> set[int]:
    (count,) = PARTITIONS.unpack_from(payload, 0)
    return {PARTITIONS.unpack_from(payload, 2 + 2 * i)[0] for i in range(count)}


def encode_assign(epoch: int, partitions: Iterable[int]) -> bytes:
    return SEQ.pack(epoch) + encode_partitions(partitions)


def decode_assign(payload: memoryview) -> tuple[int, set[int]]:
    """(link epoch, partitions)."""
    return SEQ.unpack_from(payload, 0)[0], decode_partitions(payload[SEQ.size:])


def encode_revoke(before_seq: int, epoch: int, partitions: Iterable[int]) -> bytes:
    return SEQ.pack(before_seq) + SEQ.pack(epoch) + encode_partitions(partitions)


def decode_revoke(payload: memoryview) -> tuple[int, int, set[int]]:
    """(sequence number of the first event sent after the revocation, link epoch, partitions)."""
    return (SEQ.unpack_from(payload, 0)[0], SEQ.unpack_from(payload, SEQ.size)[0],
            decode_partitions(payload[2 * SEQ.size:]))


def encode_results(epoch: int, writes: Sequence[tuple[bytes, bytes]], acks: dict[int, int]) -> bytes:
    return b"".join((
        RESULT_HEAD.pack(epoch, len(writes)), encode_items(writes),
        ITEM_LEN.pack(len(acks)), *(ACK.pack(p, seq) for p, seq in acks.items()),
    ))


def decode_results(payload: memoryview) -> tuple[int, list[tuple[bytes, bytes]], dict[int, int]]:
    epoch, count = RESULT_HEAD.unpack_from(payload, 0)
    writes, offset = decode_items(payload, RESULT_HEAD.size, count)
    (acks_n,) = ITEM_LEN.unpack_from(payload, offset)
    offset += 4
    acks: dict[int, int] = {}
    for _ in range(acks_n):
        partition, seq = ACK.unpack_from(payload, offset)
        acks[partition] = seq
        offset += ACK.size
    return epoch, writes, acks


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, memoryview] | None:
    """The next frame's (type, payload), or None at end of stream."""
    try:
        head = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ConnectionError("member engine stream cut inside a frame header") from None
        return None
    length, kind = HEADER.unpack(head)
    try:
        payload = await reader.readexactly(length - 1)
    except asyncio.IncompleteReadError:
        raise ConnectionError("member engine stream cut inside a frame") from None
    return kind, memoryview(payload)
