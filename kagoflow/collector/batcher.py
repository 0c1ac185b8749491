"""Partition batches: the beacons of one partition that arrive within ``linger`` become one Kafka record.

Why: Faust spends ~85 µs of framework per Kafka record whatever its size, so a worker reading one beacon per
record stops at ~12k beacons/s. A record ``{"batch": [beacon, …]}`` (``streams/CONTRACT.md``) carries many;
all its beacons hash to its partition (Kafka's default partitioner on their member ids), so the worker's
member state stays where it was.

Guarantee: ``add`` returns a future per batch that completes when the broker has acknowledged the record
(``acks=all``) or fails; the server answers 2xx only after every future of a request
completed. A record the broker never confirmed may still have been written (a timeout, a cut connection);
the client then retries and the worker drops the repeats by ``event_id``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol

from kagoflow.streams.contract import BATCH_PREFIX, encode_batch

log = logging.getLogger(__name__)

BATCH_OVERHEAD = len(BATCH_PREFIX) + 3
"""Bytes of a batch record besides its beacons and their commas."""


class Producer(Protocol):
    """What the batcher needs of a Kafka producer (``aiokafka.AIOKafkaProducer`` fits)."""

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   partition: int | None = None) -> Awaitable[Any]: ...


@dataclass(eq=False)  # identity: a batch is a member of the in-flight set
class _Batch:
    partition: int
    key: bytes
    opened: float
    done: asyncio.Future[None]
    items: list[bytes] = field(default_factory=list)
    size: int = BATCH_OVERHEAD


def _retrieved(future: asyncio.Future[None]) -> None:
    """Mark a failed batch's exception as seen (the requests waiting for it may have timed out already)."""
    if not future.cancelled():
        future.exception()


class PartitionBatcher:
    """Collects encoded beacons per partition and produces each batch as one record of ``topic``."""

    def __init__(self, producer: Producer, topic: str, *, linger_s: float, max_bytes: int,
                 max_pending: int) -> None:
        self.producer = producer
        self.topic = topic
        self.linger_s = linger_s
        self.max_bytes = max_bytes
        self.max_pending = max_pending
        self.pending = 0
        """Beacons added and not yet acknowledged by Kafka (or failed)."""
        self._open: dict[int, _Batch] = {}
        self._in_flight: set[_Batch] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.records = 0
        self.beacons = 0
        self.failures = 0

    def room_for(self, count: int) -> bool:
        """Whether ``count`` more beacons fit under ``max_pending`` (else answer 503: Kafka is behind)."""
        return self.pending + count <= self.max_pending

    def oldest_unacked_s(self) -> float:
        """Age of the oldest batch sent and not yet acknowledged (0 when none): how far Kafka is behind."""
        if not self._in_flight:
            return 0.0
        return time.monotonic() - min(batch.opened for batch in self._in_flight)

    def add(self, partition: int, key: bytes, beacon: bytes) -> asyncio.Future[None]:
        """Queue one encoded beacon (a JSON object) of ``partition``; the future completes when its record
        is in Kafka. ``key`` (its member id) becomes the record key when it opens a batch."""
        batch = self._open.get(partition)
        if batch is not None and batch.size + len(beacon) + 1 > self.max_bytes:
            self._seal(batch)
            batch = None
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = self._open[partition] = _Batch(partition, key, time.monotonic(), loop.create_future())
            batch.done.add_done_callback(_retrieved)
            loop.call_later(self.linger_s, self._seal, batch)
        batch.items.append(beacon)
        batch.size += len(beacon) + 1
        self.pending += 1
        return batch.done

    def flush(self) -> None:
        """Send every open batch now (shutdown)."""
        for batch in list(self._open.values()):
            self._seal(batch)

    async def drain(self) -> None:
        """Wait until every sent batch is acknowledged or failed."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _seal(self, batch: _Batch) -> None:
        if self._open.get(batch.partition) is not batch:
            return  # sealed already (full, or flushed)
        del self._open[batch.partition]
        self._in_flight.add(batch)
        task = asyncio.ensure_future(self._produce(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _produce(self, batch: _Batch) -> None:
        try:
            future = await self.producer.send(self.topic, value=encode_batch(batch.items), key=batch.key,
                                              partition=batch.partition)
            await future
        except Exception as exc:
            self.failures += 1
            log.warning("batch of %d beacons to %s[%d] failed: %s: %s", len(batch.items), self.topic,
                        batch.partition, type(exc).__name__, exc)
            if not batch.done.done():
                batch.done.set_exception(exc)
        else:
            self.records += 1
            self.beacons += len(batch.items)
            if not batch.done.done():
                batch.done.set_result(None)
        finally:
            self.pending -= len(batch.items)
            self._in_flight.discard(batch)
