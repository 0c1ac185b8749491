"""KafkaEngagementSink against the stack's Kafka: events arrive as JSON keyed by member id."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from kagoflow.adapters.engagement import KafkaEngagementSink
from kagoflow.mail.engagement import engagement_event
from kagoflow.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_events_are_produced_as_json_keyed_by_member(
    stack: Settings, kafka_topic: Callable[..., str]
) -> None:
    topic = kafka_topic("engagement", partitions=2)
    sink = KafkaEngagementSink(stack, topic=topic)
    await sink.start()
    sent = [
        engagement_event("delivery", key="m1|r|e", member_id="m1", rule="r", at_ms=1, status="delivered"),
        engagement_event("open", key="m1|r|e", member_id="m1", rule="r", at_ms=2, suspected_bot=False),
        engagement_event(
            "click", key="m2|r|e", member_id="m2", rule="r", at_ms=3, url="https://shop.example.com/"
        ),
    ]
    for event in sent:
        await sink.emit(event)
    await sink.close()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=stack.kafka_bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        received: list[tuple[bytes | None, dict[str, object]]] = []
        while len(received) < len(sent):
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, "events did not arrive within 10 s"
            for records in batch.values():
                received += [(r.key, orjson.loads(r.value or b"")) for r in records]
    finally:
        await consumer.stop()
    assert sorted(received, key=lambda kv: kv[1]["at_ms"]) == [(e["member_id"].encode(), e) for e in sent]
    assert "detail" not in received[0][1]  # absent optional fields are left out, not null
