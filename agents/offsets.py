"""The Faust side of ``kagoflow.worker.offsets.OffsetGuard``: committed offsets on assignment, gaps filled.

On assignment the member topics' committed offsets of the new partitions are read from the group (the earliest
offset where there is none) and become the guard's expectations; when a record comes past missing ones, they
are read straight from Kafka and handed over first.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from faust.types import TP

from kagoflow.worker.offsets import OffsetGuard

log = logging.getLogger(__name__)


class PartitionOffsets:
    def __init__(self, app: Any, topics: list[str], *, bootstrap: str) -> None:
        self.app = app
        self.topics = topics
        self.bootstrap = bootstrap
        self.guard = OffsetGuard()

    async def assigned(self, partitions: set[int]) -> None:
        """Expect each member topic's records of ``partitions`` from the group's committed offset on."""
        if not partitions:
            return
        tps = [TopicPartition(topic, partition) for topic in self.topics for partition in sorted(partitions)]
        try:
            committed = await self._committed(tps)
            missing = [TP(tp.topic, tp.partition) for tp in tps if committed.get(tp, -1) < 0]
            earliest = await self.app.consumer.earliest_offsets(*missing) if missing else {}
        except Exception:  # no expectation means no check: the worker runs as it did without the guard
            log.exception("committed offsets of partitions %s unavailable; their records are not checked",
                          sorted(partitions))
            return
        for tp in tps:
            offset = committed.get(tp, -1)
            if offset < 0:
                offset = earliest.get(TP(tp.topic, tp.partition), -1)
            if offset >= 0:
                self.guard.expect(tp.topic, tp.partition, offset)

    def revoked(self, partitions: set[int]) -> None:
        self.guard.forget(partitions)

    def admit(self, message: Any) -> int | None:
        """-1: hand the record over; None: skip it (handed over before); else the first of the records
        missing before it: ``await missing(message, start)`` and hand those over first."""
        verdict, start = self.guard.check(message.topic, message.partition, message.offset)
        if verdict == "process":
            return -1
        return None if verdict == "skip" else start

    async def missing(self, message: Any, start: int) -> list[Any]:
        """The records ``start..`` before ``message``, read from Kafka (aiokafka ``ConsumerRecord``s)."""
        log.warning("%s[%d]: record %d came before %d..%d (fetched before a rebalance, see "
                    "kagoflow.worker.offsets): reading those from Kafka first", message.topic, message.partition,
                    message.offset, start, message.offset - 1)
        return await self._read(TopicPartition(message.topic, message.partition), start, message.offset)

    async def _read(self, tp: TopicPartition, start: int, end: int) -> list[Any]:
        """The records ``start..end-1`` of ``tp`` (fewer where offsets do not exist: compaction, markers)."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                    client_id=f"{self.app.conf.id}-gap")
        await consumer.start()
        records: list[Any] = []
        try:
            consumer.assign([tp])
            consumer.seek(tp, start)
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                records += [record for record in batch.get(tp, []) if record.offset < end]
        finally:
            await consumer.stop()
        return records

    async def _committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=f"{self.app.conf.id}-offsets")
        await admin.start()
        try:
            answer = await admin.list_consumer_group_offsets(self.app.conf.id, partitions=tps)
        finally:
            await admin.close()
        return {tp: meta.offset for tp, meta in answer.items()}
