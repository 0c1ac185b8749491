"""The catalog agent: one owner per catalog partition keeps each product's price/stock reference in a
RocksDB table and broadcasts the price/stock triggers it fires to every member partition."""

from __future__ import annotations

from typing import Any

import faust

from kagoflow.agents.tables import bytes_table
from kagoflow.core.catalog import ProductInfo, apply_catalog
from kagoflow.core.errors import ContractError
from kagoflow.core.rules import RuleSet
from kagoflow.settings import Settings
from kagoflow.streams import contract
from kagoflow.streams.topics import Topics, dlq
from kagoflow.worker.processor import Outbox


def make_catalog_agent(app: faust.App, *, settings: Settings, ruleset: RuleSet, outbox: Outbox) -> Any:
    table = bytes_table(app, "catalog-state", settings)
    names = Topics(settings.topic_prefix)
    source = app.topic(names.catalog, key_serializer="raw", value_serializer="raw", partitions=settings.partitions)
    tz = ruleset.shop.timezone

    @app.agent(source, name="kagoflow-catalog")
    async def catalog_agent(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            try:
                update = contract.parse_catalog(message.value, default_ts=int(message.timestamp * 1000))
            except ContractError as exc:
                envelope = contract.dlq_envelope(message.topic, message.partition, message.offset, message.value,
                                                 exc.reason)
                await outbox.send(dlq(names.catalog), key=None, value=envelope)
                continue
            key = update.product_id.encode()
            raw = table.get(key)
            previous = ProductInfo.from_bytes(raw) if raw is not None else None
            info, triggers = apply_catalog(previous, update, rules=ruleset.price, tz=tz)
            # Triggers go out before the new reference is stored: a crash in between replays the record
            # against the old reference and fires again, which the member side de-duplicates per day.
            for trigger in triggers:
                value = trigger.to_bytes()
                for partition in range(settings.partitions):
                    await outbox.send(names.catalog_events, key=None, value=value, partition=partition)
            table[key] = info.to_bytes()

    return catalog_agent
