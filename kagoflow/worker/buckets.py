"""Member state stored in buckets: many members per table value.

Why: every Faust table write is one changelog record through Faust's producer, and that record — not the
member logic — was the cost of the worker (~300 µs per write here, see README "Benchmarks"). Writing each
changed member once per flush still meant thousands of writes per flush. Grouping the members of a
partition into a fixed number of hash buckets turns a flush into at most ``buckets`` writes per partition,
whatever the number of changed members, at the price of rewriting a bucket's unchanged members' bytes
(a memory copy, not a re-encode: unchanged members stay in their encoded form).

Layout of a stored bucket (the table value)::

    b"KFB1" | u32 bucket count | u32 entries | entries: (u16 id length, u32 state length, id, state)

The bucket count travels in every value so a worker started with another ``state_buckets`` setting
fails loudly instead of reading members from the wrong buckets. The key is ``b"<partition>/<bucket>"``:
the partition in the key keeps keys unique across the partition databases of one worker.
"""

from __future__ import annotations

import struct
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator

MAGIC = b"KFB1"
_HEADER = struct.Struct(">4sII")
_ENTRY = struct.Struct(">HI")


class BucketLayoutError(ValueError):
    """A stored bucket that this worker cannot read (other bucket count, or not a bucket at all)."""


def bucket_of(member_id: str, buckets: int) -> int:
    """The bucket of a member: stable across processes and Python versions (CRC-32, not ``hash``)."""
    return zlib.crc32(member_id.encode()) % buckets


def bucket_key(partition: int, bucket: int) -> bytes:
    return b"%d/%d" % (partition, bucket)


def parse_key(key: bytes) -> tuple[int, int] | None:
    """(partition, bucket) of a bucket key, None for any other key."""
    head, sep, tail = key.partition(b"/")
    if not sep or not head.isdigit() or not tail.isdigit():
        return None
    return int(head), int(tail)


def encode(entries: dict[str, bytes], *, buckets: int) -> bytes:
    """One table value holding every ``member id → encoded state`` of a bucket."""
    parts = [_HEADER.pack(MAGIC, buckets, len(entries))]
    pack = _ENTRY.pack
    for member_id, state in entries.items():
        raw_id = member_id.encode()
        parts.append(pack(len(raw_id), len(state)))
        parts.append(raw_id)
        parts.append(state)
    return b"".join(parts)


def decode(raw: bytes, *, buckets: int, where: str = "") -> dict[str, bytes]:
    """The entries of a stored bucket; ``BucketLayoutError`` names the mismatch."""
    if len(raw) < _HEADER.size:
        raise BucketLayoutError(f"member state bucket {where}: {len(raw)} bytes is not a bucket")
    magic, stored_buckets, count = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise BucketLayoutError(f"member state bucket {where}: unknown format {magic!r}")
    if stored_buckets != buckets:
        raise BucketLayoutError(
            f"member state bucket {where} was written with {stored_buckets} buckets per partition but "
            f"KAGOFLOW_STATE_BUCKETS is {buckets}: keep the setting of the stored state (or start from empty "
            "tables and replay)"
        )
    entries: dict[str, bytes] = {}
    view = memoryview(raw)
    offset = _HEADER.size
    unpack = _ENTRY.unpack_from
    size = _ENTRY.size
    for _ in range(count):
        id_len, state_len = unpack(raw, offset)
        offset += size
        member_id = str(view[offset:offset + id_len], "utf-8")
        offset += id_len
        entries[member_id] = raw[offset:offset + state_len]
        offset += state_len
    if offset != len(raw):
        raise BucketLayoutError(f"member state bucket {where}: {len(raw) - offset} trailing bytes")
    return entries


class BucketCache:
    """Decoded buckets of the partitions a worker owns, least recently used evicted first.

    ``load(partition, bucket)`` returns the stored bytes (None when the bucket was never written). A cached
    bucket is the stored one plus whatever the flush wrote since (it calls ``stored``), so it never needs
    reloading; the budget counts stored bytes, roughly the memory the entries hold.
    """

    def __init__(self, *, buckets: int, capacity_bytes: int, load: Callable[[int, int], bytes | None]) -> None:
        self.buckets = buckets
        self._capacity = capacity_bytes
        self._load = load
        self._cached: OrderedDict[tuple[int, int], tuple[dict[str, bytes], int]] = OrderedDict()
        self._bytes = 0

    def entries(self, partition: int, bucket: int) -> dict[str, bytes]:
        """The bucket's ``member id → encoded state``; the caller may change it, then calls ``stored``."""
        slot = (partition, bucket)
        cached = self._cached.get(slot)
        if cached is not None:
            self._cached.move_to_end(slot)
            return cached[0]
        raw = self._load(partition, bucket)
        entries = {} if raw is None else decode(raw, buckets=self.buckets, where=f"{partition}/{bucket}")
        self._cached[slot] = (entries, 0)
        self.stored(partition, bucket, 0 if raw is None else len(raw))
        return entries

    def stored(self, partition: int, bucket: int, size: int) -> None:
        """Account the bucket's new stored size (after a write) and evict beyond the budget."""
        slot = (partition, bucket)
        entries, old = self._cached[slot]
        self._cached[slot] = (entries, size)
        self._cached.move_to_end(slot)
        self._bytes += size - old
        while self._bytes > self._capacity and len(self._cached) > 1:  # never the bucket just used
            self._bytes -= self._cached.popitem(last=False)[1][1]

    def get(self, partition: int, member_id: str) -> bytes | None:
        """The stored encoding of a member of ``partition``, or None."""
        return self.entries(partition, bucket_of(member_id, self.buckets)).get(member_id)

    def drop_partitions(self, partitions: set[int]) -> None:
        for slot in [slot for slot in self._cached if slot[0] in partitions]:
            self._bytes -= self._cached.pop(slot)[1]

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._cached)


def scan(items: Iterator[tuple[bytes, bytes | None]], *, buckets: int,
         partitions: set[int] | None = None) -> Iterator[tuple[int, str, bytes]]:
    """(partition, member id, encoded state) of every member in stored buckets (of ``partitions``)."""
    for key, raw in items:
        parsed = parse_key(key)
        if parsed is None or raw is None or (partitions is not None and parsed[0] not in partitions):
            continue
        for member_id, state in decode(raw, buckets=buckets, where=key.decode()).items():
            yield parsed[0], member_id, state
