"""Engagement events to Kafka: the ``engagement`` topic, JSON values, key = member id.

The archive consumes this topic like any other, so opens, clicks, unsubscribes and delivery results land in
ClickHouse with the mail decisions they belong to (joined on the decision key).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from kagoflow.settings import Settings

ENGAGEMENT_TOPIC = "engagement"


class KafkaEngagementSink:
    """``kagoflow.mail.engagement.EngagementSink`` producing to Kafka; ``emit`` returns once the broker
    acknowledged the event (concurrent emits are batched by the producer)."""

    def __init__(self, settings: Settings, *, topic: str = ENGAGEMENT_TOPIC) -> None:
        self.topic = topic
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        """Created in ``start``: aiokafka objects must be created inside the running event loop."""

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._settings.kafka_bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            client_id=f"{self._settings.app_id}-engagement",
        )
        await self._producer.start()

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def emit(self, event: dict[str, Any]) -> None:
        if self._producer is None:
            raise RuntimeError("KafkaEngagementSink.emit before start()")
        await self._producer.send_and_wait(
            self.topic, value=orjson.dumps(event), key=str(event["member_id"]).encode("utf-8")
        )
