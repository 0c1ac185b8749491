"""PartitionOffsets against the stack's Kafka: the records missing before a record Faust handed over too early
are read straight from the topic, in order, and the guard then takes the stream up after them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from aiokafka import AIOKafkaProducer

from kagoflow.agents.offsets import PartitionOffsets
from kagoflow.settings import Settings

pytestmark = pytest.mark.integration


def test_the_records_missing_before_an_early_one_are_read_from_kafka_in_order(
        stack: Settings, kafka_topic: Callable[..., str]) -> None:
    topic = kafka_topic("gap", partitions=2)

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
        await producer.start()
        for n in range(12):
            await producer.send_and_wait(topic, value=f"r{n}".encode(), key=b"k", partition=1)
        await producer.send_and_wait(topic, value=b"other", key=b"k", partition=0)
        await producer.stop()
        offsets = PartitionOffsets(SimpleNamespace(conf=SimpleNamespace(id="kagoflow-test-gap")), [topic],
                                   bootstrap=stack.kafka_bootstrap)
        offsets.guard.expect(topic, 1, 3)  # assigned with committed offset 3
        assert offsets.admit(SimpleNamespace(topic=topic, partition=1, offset=3)) == -1
        early = SimpleNamespace(topic=topic, partition=1, offset=9)  # 4..8 never handed over
        start = offsets.admit(early)
        assert start == 4
        missing = await offsets.missing(early, start)
        assert [(r.offset, r.value) for r in missing] == [(n, f"r{n}".encode()) for n in range(4, 9)]
        assert offsets.admit(SimpleNamespace(topic=topic, partition=1, offset=10)) == -1
        assert offsets.admit(SimpleNamespace(topic=topic, partition=1, offset=6)) is None  # re-fetched: skipped

    asyncio.run(run())
