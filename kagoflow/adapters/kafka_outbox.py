"""Records the worker produces (decisions, dead letters, catalog triggers) through one aiokafka producer.

Why not Faust's ``topic.send``: Faust pushes every message through its producer buffer one at a time
(~150 µs each under load), which is what table changelogs need but decisions do not. aiokafka batches
(``linger_ms``) and returns a future per record; the member agent awaits those futures before it acks the
events that caused them, so nothing is acknowledged before Kafka has its consequences.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner


class KafkaOutbox:
    """``kagoflow.worker.processor.Outbox`` over aiokafka; ``start`` inside the running event loop."""

    def __init__(self, *, bootstrap: str, client_id: str) -> None:
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._started = asyncio.Event()
        self._partitioner = DefaultPartitioner()

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap, client_id=self._client_id, acks="all", enable_idempotence=True,
            linger_ms=5, max_batch_size=900 * 1024,
        )
        await self._producer.start()
        self._started.set()

    async def send(self, topic: str, *, key: bytes | None, value: bytes, partition: int | None = None) -> Any:
        """Queue one record; returns a future resolved when the broker has it."""
        if self._producer is None:
            await self._started.wait()
        assert self._producer is not None
        return await self._producer.send(topic, value=value, key=key, partition=partition)

    async def send_many(self, topic: str, records: Sequence[tuple[bytes | None, bytes]], *,
                        partition: int | None = None) -> list[Any]:
        """Queue many ``(key, value)`` records at once; returns futures resolved when the broker has them.

        Same partitions as ``send`` (the default murmur2 partitioner on the key, or ``partition`` modulo the
        topic's partition count), but the records of one partition go into record batches built here:
        ~2 µs a record instead of ~20 µs through ``send``, which is what lets one catalog change turn into
        200k decisions quickly.
        """
        if self._producer is None:
            await self._started.wait()
        producer = self._producer
        assert producer is not None
        partitions = sorted(await producer.partitions_for(topic))
        by_partition: dict[int, list[tuple[bytes | None, bytes]]] = {}
        if partition is not None:
            by_partition[partitions[partition % len(partitions)]] = list(records)
        for key, value in records if partition is None else ():
            chosen = self._partitioner(key, partitions, partitions)
            by_partition.setdefault(chosen, []).append((key, value))
        queued = await asyncio.gather(*(
            self._send_partition(producer, topic, chosen, items) for chosen, items in by_partition.items()
        ))
        return [future for futures in queued for future in futures]

    @staticmethod
    async def _send_partition(producer: AIOKafkaProducer, topic: str, partition: int,
                              items: list[tuple[bytes | None, bytes]]) -> list[Any]:
        """Batches of one partition, in order (aiokafka queues one batch per partition at a time, so the
        partitions run side by side)."""
        futures: list[Any] = []
        batch = producer.create_batch()
        for key, value in items:
            if batch.append(key=key, value=value, timestamp=None) is None:  # full: send, start another
                batch.close()
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"record of {len(value)} bytes does not fit a batch of {topic}")
        batch.close()
        futures.append(await producer.send_batch(batch, topic, partition=partition))
        return futures

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
