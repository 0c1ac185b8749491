"""The delivery agent: ``sent`` decisions from ``mail_decisions`` → rendered mail → SMTP, exactly once.

Events are acknowledged only after every mail of their batch reached an outcome, so a worker killed mid-batch
gets the batch again after its restart: the Redis ledger then resends what was only ``reserved`` (its end of
DATA never written, so never delivered), reports ``transmitting`` as ``uncertain`` and finished mails as
``duplicate`` — never a second mail. When Redis is away, the batch waits and is retried — nothing is sent
unrecorded.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
import orjson

from kagoflow.adapters.catalog_follower import CatalogFollower
from kagoflow.adapters.redis_store import RedisStore, StoreUnavailable
from kagoflow.agents.offsets import PartitionOffsets
from kagoflow.core.decisions import Decision
from kagoflow.mail.context import MemberProfile
from kagoflow.mail.delivery import Deliverer, DeliveryJob
from kagoflow.settings import Settings
from kagoflow.streams.topics import Topics

log = logging.getLogger(__name__)


def delivery_job(data: dict[str, Any], catalog: CatalogFollower) -> DeliveryJob | None:
    """The job of one ``mail_decisions`` record, or None when there is nothing to deliver."""
    if data.get("status") != "sent" or not data.get("profile"):
        return None
    decision = Decision.from_json(data)
    profile = MemberProfile.from_json(decision.member_id, data["profile"])
    # Unknown products are left out: the mail falls back to the bare product id for them.
    products = [info for product_id in decision.products if (info := catalog.get(product_id)) is not None]
    return decision, profile, products


async def decision_values(events: list[Any], offsets: PartitionOffsets) -> list[bytes]:
    """The values of a batch's records, each once and in offset order per partition: records Faust lost
    across a rebalance are read from Kafka first (``kagoflow.worker.offsets``), ones handed over before are
    left out."""
    values: list[bytes] = []
    for event in events:
        message = event.message
        start = offsets.admit(message)
        if start is None:
            continue
        if start >= 0:
            values += [record.value for record in await offsets.missing(message, start) if record.value]
        values.append(message.value)
    return values


def make_delivery_agent(
    app: faust.App, *, settings: Settings, catalog: CatalogFollower, store: RedisStore, deliverer: Deliverer,
    offsets: PartitionOffsets,
) -> Any:
    source = app.topic(Topics(settings.topic_prefix).mail_decisions, key_serializer="raw", value_serializer="raw")

    @app.agent(source, name="kagoflow-delivery")
    async def delivery_agent(stream: Any) -> None:  # a faust.Stream (StreamT lacks noack_take)
        await catalog.caught_up.wait()
        async for events in stream.noack_take(256, within=0.2):
            values = await decision_values(events, offsets)
            jobs = [job for value in values if (job := delivery_job(orjson.loads(value), catalog))]
            delay = 0.5
            while jobs:
                try:
                    await deliverer.deliver_many(jobs)
                    break
                except* StoreUnavailable:
                    log.warning("redis unavailable: %d mails wait, retrying in %.1fs", len(jobs), delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            for event in events:
                event.ack()

    return delivery_agent
