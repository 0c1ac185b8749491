"""Records the worker produces (decisions, dead letters, catalog triggers) through one aiokafka producer.

Why not Faust's ``topic.send``: Faust pushes every message through its producer buffer one at a time
(~150 µs each under load), which is what table changelogs need but decisions do not. aiokafka batches
(``linger_ms``) and returns a future per record; the member agent awaits those futures before it acks the
events that caused them, so nothing is acknowledged before Kafka has its consequences.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer


class KafkaOutbox:
    """``kagoflow.agents.member.Outbox`` over aiokafka; ``start`` inside the running event loop."""

    def __init__(self, *, bootstrap: str, client_id: str) -> None:
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._started = asyncio.Event()

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap, client_id=self._client_id, acks="all", enable_idempotence=True,
            linger_ms=5,
        )
        await self._producer.start()
        self._started.set()

    async def send(self, topic: str, *, key: bytes | None, value: bytes, partition: int | None = None) -> Any:
        """Queue one record; returns a future resolved when the broker has it."""
        if self._producer is None:
            await self._started.wait()
        assert self._producer is not None
        return await self._producer.send(topic, value=value, key=key, partition=partition)

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
