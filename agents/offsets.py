"""The Faust side of ``kagoflow.worker.offsets.OffsetGuard``: committed offsets on assignment, seeks back.

On assignment the member topics' committed offsets of the new partitions are read from the group (the earliest
offset where there is none) and become the guard's expectations; when a record comes past a missing one, the
consumer seeks back to it. Faust's gap bookkeeping for that partition (``Consumer._gap``, meant for compacted
topics) is cleared at the same time: left in place it would count the missing records as acknowledged.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from faust.types import TP

from kagoflow.worker.offsets import OffsetGuard

log = logging.getLogger(__name__)


def monotonic_ms() -> int:
    return int(time.monotonic() * 1000)


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
        except Exception:  # no expectation means no check: the worker runs as without the guard
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

    def admit(self, message: Any) -> str:
        """``process``, ``skip`` or ``rewind`` (then ``await rewind(message)`` and drop the record)."""
        return self.guard.check(message.topic, message.partition, message.offset, now_ms=monotonic_ms())

    async def rewind(self, message: Any) -> None:
        expected = self.guard.expected(message.topic, message.partition)
        if expected is None:
            return
        log.warning("%s[%d]: record %d came before %d..%d: seeking back to %d (records fetched before a "
                    "rebalance; see kagoflow.worker.offsets)", message.topic, message.partition, message.offset,
                    expected, message.offset - 1, expected)
        tp = TP(message.topic, message.partition)
        gaps = getattr(self.app.consumer, "_gap", None)
        if gaps is not None:
            gaps.pop(tp, None)
        try:
            await self.app.consumer.seek(tp, expected)
        except Exception:  # e.g. a rebalance under way: the next assignment starts from the committed offset
            log.exception("%s[%d]: seeking back to %d failed", message.topic, message.partition, expected)

    async def _committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=f"{self.app.conf.id}-offsets")
        await admin.start()
        try:
            answer = await admin.list_consumer_group_offsets(self.app.conf.id, partitions=tps)
        finally:
            await admin.close()
        return {tp: meta.offset for tp, meta in answer.items()}
