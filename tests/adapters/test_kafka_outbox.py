"""The outbox against the real broker: ``send_many`` delivers every record, in order, on ``send``'s partitions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer

from kagoflow.adapters.kafka_outbox import KafkaOutbox
from kagoflow.settings import Settings

pytestmark = pytest.mark.integration


async def _read_all(bootstrap: str, topic: str, count: int) -> list[tuple[int, bytes | None, bytes]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        seen: list[tuple[int, bytes | None, bytes]] = []
        while len(seen) < count:
            batches = await asyncio.wait_for(consumer.getmany(timeout_ms=500), timeout=30)
            for tp, records in batches.items():
                seen += [(tp.partition, record.key, record.value) for record in records]
        return seen
    finally:
        await consumer.stop()


def test_send_many_delivers_everything_in_order_on_the_partitions_send_would_choose(
    stack: Settings, kafka_topic: Callable[..., str]
) -> None:
    many, one = kafka_topic("outbox-many", partitions=4), kafka_topic("outbox-one", partitions=4)
    records = [(f"m{n % 700}".encode(), b"x" * (n % 2000) + f"#{n}".encode()) for n in range(6000)]

    async def scenario() -> tuple[list[tuple[int, bytes | None, bytes]], list[tuple[int, bytes | None, bytes]]]:
        outbox = KafkaOutbox(bootstrap=stack.kafka_bootstrap, client_id="test-outbox")
        await outbox.start()
        try:
            futures = await outbox.send_many(many, records)
            futures += await outbox.send_many(pinned, records[:50], partition=6)  # 6 % 4 partitions
            await asyncio.gather(*futures)
            singles = [await outbox.send(one, key=key, value=value) for key, value in records[:700]]
            await asyncio.gather(*singles)
        finally:
            await outbox.stop()
        return (await _read_all(stack.kafka_bootstrap, many, len(records)),
                await _read_all(stack.kafka_bootstrap, one, 700))

    pinned = kafka_topic("outbox-pinned", partitions=4)
    got, singles = asyncio.run(scenario())
    assert {partition for partition, _, _ in asyncio.run(_read_all(stack.kafka_bootstrap, pinned, 50))} == {2}
    assert sorted(value for _, _, value in got) == sorted(value for _, value in records)  # all, once each
    partition_of = {key: partition for partition, key, _ in singles}
    assert all(partition_of[key] == partition for partition, key, _ in got)  # same partitions as send()
    for key in (b"m0", b"m1", b"m699"):  # per key, the order of the input
        assert [v for _, k, v in got if k == key] == [v for k, v in records if k == key]
