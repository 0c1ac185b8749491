"""Every worker's read-only view of the whole product catalog, followed straight from the ``catalog`` topic.

Why not a Faust table: the member agent of any partition needs any product (cart amounts, re-checks at
send time, product blocks in mails), while a Faust table only holds the worker's own partitions, and
GlobalTable recovery is among Faust's most reported problems. The catalog is small next to the member
state, so each worker reads all catalog partitions from the beginning (no consumer group, no commits)
into a dict and keeps following it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from zoneinfo import ZoneInfo

from aiokafka import AIOKafkaConsumer, TopicPartition

from kagoflow.adapters.kafka_admin import partition_count
from kagoflow.core.catalog import ProductInfo, apply_catalog
from kagoflow.core.errors import ContractError
from kagoflow.streams.contract import check_key, parse_catalog
from kagoflow.streams.topics import DEFAULT

log = logging.getLogger(__name__)


class CatalogFollower:
    """``get(product_id)`` satisfies ``kagoflow.core.catalog.CatalogLookup``."""

    def __init__(self, *, bootstrap: str, tz: ZoneInfo, topic: str = DEFAULT.catalog) -> None:
        self._bootstrap = bootstrap
        self._tz = tz
        self._topic = topic
        self.products: dict[str, ProductInfo] = {}
        self.caught_up = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    def get(self, product_id: str, /) -> ProductInfo | None:
        return self.products.get(product_id)

    def apply(self, raw: bytes | None, *, default_ts: int, key: bytes | None) -> None:
        try:
            update = parse_catalog(raw, default_ts=default_ts)
            check_key(key, update.product_id, "product_id")
        except ContractError:
            return  # the catalog agent sends it to the DLQ
        info, _ = apply_catalog(self.products.get(update.product_id), update, rules=(), tz=self._tz)
        self.products[update.product_id] = info

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, enable_auto_commit=False, group_id=None, auto_offset_reset="earliest"
        )
        await consumer.start()
        self._consumer = consumer
        partitions = await partition_count(bootstrap=self._bootstrap, topic=self._topic)
        if not partitions:
            raise RuntimeError(f"catalog topic {self._topic!r} does not exist")
        tps = [TopicPartition(self._topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        self._task = asyncio.create_task(self._run(ends))

    async def _run(self, ends: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        remaining = {tp: end for tp, end in ends.items() if end > 0}
        if not remaining:
            self.caught_up.set()
        while True:
            batches = await self._consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, messages in batches.items():
                for message in messages:
                    self.apply(message.value, default_ts=message.timestamp, key=message.key)
                    if tp in remaining and message.offset + 1 >= remaining[tp]:
                        del remaining[tp]
            if not remaining and not self.caught_up.is_set():
                log.info("catalog follower caught up: %d products", len(self.products))
                self.caught_up.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
