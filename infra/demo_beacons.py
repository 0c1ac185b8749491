"""Interim demo: produce session-like sample beacons to ``beacons`` and read them back with a consumer group.

Shows that the local stack carries real traffic; the mail pipeline replaces this in ``infra/demo`` later.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from kagoflow.settings import Settings

PRODUCTS = [f"P{n:03d}" for n in range(1, 13)]


def sample_beacons(*, run: str, members: int, seed: int = 7) -> list[dict[str, object]]:
    """One browsing session per member: page views, product views, some carts and favourites, few buys."""
    rng = random.Random(seed)
    now_ms = time.time_ns() // 1_000_000
    beacons: list[dict[str, object]] = []
    for m in range(members):
        member = f"demo-{m:03d}"
        ts = now_ms - rng.randint(20, 60) * 60_000
        device = rng.choice(["pc", "smartphone"])
        actions: list[tuple[str, str | None]] = [("page_view", None)]
        for viewed in rng.sample(PRODUCTS, 4):
            actions.append(("view", viewed))
            if rng.random() < 0.5:
                actions.append(("cart_add", viewed))
            elif rng.random() < 0.3:
                actions.append(("favorite_add", viewed))
        carted = [p for kind, p in actions if kind == "cart_add" and p is not None]
        if carted and rng.random() < 0.25:
            actions.append(("purchase", carted[0]))
        for kind, product in actions:
            ts += rng.randint(5, 90) * 1000
            beacon: dict[str, object] = {"event_id": f"{run}-{len(beacons)}", "member_id": member,
                                         "type": kind, "ts": ts, "device": device}
            if product is not None:
                beacon |= {"product_id": product, "price": 1000 + 100 * PRODUCTS.index(product)}
            if kind == "purchase":
                beacon["product_ids"] = [product]
            beacons.append(beacon)
    return beacons


async def main() -> None:
    settings = Settings.from_env()
    run = uuid.uuid4().hex[:8]
    beacons = sample_beacons(run=run, members=30)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=f"kagoflow-demo-{run}",
                                enable_auto_commit=False, auto_offset_reset="latest")
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await asyncio.gather(consumer.start(), producer.start())
    try:
        partitions = [TopicPartition("beacons", p) for p in sorted(await producer.partitions_for("beacons"))]
        start = await consumer.end_offsets(partitions)
        for beacon in beacons:
            await producer.send("beacons", key=str(beacon["member_id"]).encode(), value=orjson.dumps(beacon))
        await producer.flush()
        end = await consumer.end_offsets(partitions)
        members = len({b["member_id"] for b in beacons})
        print(f"produced {len(beacons)} beacons of {members} members to 'beacons'")

        consumer.subscribe(["beacons"])
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=200)
        for tp in partitions:
            consumer.seek(tp, start[tp])
        mine = 0
        async with asyncio.timeout(30):
            while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    mine += sum(orjson.loads(r.value or b"{}").get("event_id", "").startswith(run)
                                for r in records)
        await consumer.commit()
        print(f"consumed {mine} of them back with consumer group 'kagoflow-demo-{run}'")
    finally:
        await asyncio.gather(consumer.stop(), producer.stop())


if __name__ == "__main__":
    asyncio.run(main())
