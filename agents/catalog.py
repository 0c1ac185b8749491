"""The catalog agent: one owner per catalog partition keeps each product's price/stock reference in a
RocksDB table and broadcasts the price/stock triggers it fires to every member partition."""

from __future__ import annotations

import logging
from typing import Any

import faust

from kagoflow.agents.tables import bytes_table
from kagoflow.core.catalog import ProductInfo, apply_catalog
from kagoflow.core.errors import ContractError
from kagoflow.core.rules import RuleSet
from kagoflow.settings import Settings
from kagoflow.streams import contract, deadletter
from kagoflow.streams.topics import Topics
from kagoflow.worker.processor import Outbox

log = logging.getLogger(__name__)


def make_catalog_agent(app: faust.App, *, settings: Settings, ruleset: RuleSet, outbox: Outbox) -> Any:
    table = bytes_table(app, "catalog-state", settings)
    names = Topics(settings.topic_prefix)
    source = app.topic(names.catalog, key_serializer="raw", value_serializer="raw", partitions=settings.partitions)
    tz = ruleset.shop.timezone

    @app.agent(source, name="kagoflow-catalog")
    async def catalog_agent(stream: faust.StreamT[bytes]) -> None:
        # ``events()`` acks a record when the next one is asked for: a dead letter is awaited until Kafka has
        # it, so no record is acked before it is either applied or parked.
        async for event in stream.events():
            message = event.message
            try:
                await apply(message.key, message.value, int(message.timestamp * 1000))
            except ContractError as exc:
                reason = exc.reason
            except Exception as exc:  # a bug must not kill the agent or lose the record: park it
                log.exception("unexpected error on %s[%d]@%d", message.topic, message.partition, message.offset)
                reason = f"internal: {type(exc).__name__}: {exc}"
            else:
                continue
            await deadletter.park(outbox, message.topic, message.partition, message.offset, message.key,
                                  message.value, reason)

    async def apply(key: bytes | None, value: bytes | None, timestamp_ms: int) -> None:
        update = contract.parse_catalog(value, default_ts=timestamp_ms)
        contract.check_key(key, update.product_id, "product_id")
        stored_key = update.product_id.encode()
        raw = table.get(stored_key)
        previous = ProductInfo.from_bytes(raw) if raw is not None else None
        info, triggers = apply_catalog(previous, update, rules=ruleset.price, tz=tz)
        # Triggers go out before the new reference is stored: a crash in between replays the record
        # against the old reference and fires again, which the member side de-duplicates per day.
        for trigger in triggers:
            trigger_value = trigger.to_bytes()
            for partition in range(settings.partitions):
                await outbox.send(names.catalog_events, key=None, value=trigger_value, partition=partition)
        table[stored_key] = info.to_bytes()

    return catalog_agent
