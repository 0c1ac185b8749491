"""Sample data for the local demo: a few members with profiles, a small catalog, their sessions and orders.

Produced with ``ts`` = now so the demo rules (short delays, ``rules/demo``) fire within a minute.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import orjson

from kagoflow.settings import Settings
from kagoflow.streams.topics import Topics

NAMES = ["佐藤 花子", "鈴木 一郎", "高橋 美咲", "田中 健", "伊藤 さくら", "渡辺 翔", "山本 陽菜", "中村 蓮"]
DAY_MS = 86_400_000
"""The catalog is loaded a day earlier, so today's price drop has a reference price (SPEC §11)."""
DOMAIN = "demo.example.com"
PRODUCTS = [
    ("sku-tea-01", "静岡 深蒸し煎茶 100g", 1280),
    ("sku-cup-02", "有田焼 湯呑み 藍", 3200),
    ("sku-bag-03", "帆布トートバッグ 生成り", 4800),
    ("sku-pen-04", "真鍮ボールペン", 2600),
    ("sku-towel-05", "今治タオル フェイス 2枚組", 1980),
    ("sku-soap-06", "京都 米ぬか石鹸", 880),
]


Produced = tuple[str, str, dict[str, Any]]


def sample_records(*, members: int, now_ms: int, prefix: str = "", seed: int = 7) -> list[Produced]:
    """(topic, key, value) in production order: catalog, profiles, then every member's session."""
    rng = random.Random(seed)
    topics = Topics(prefix)
    records: list[tuple[str, str, dict[str, Any]]] = []
    for product_id, name, price in PRODUCTS:
        records.append((topics.catalog, product_id, {
            "product_id": product_id, "name": name, "price": price, "stock": 20, "ts": now_ms - DAY_MS,
            "url": f"https://shop.example.com/products/{product_id}",
            "image_url": f"https://shop.example.com/images/{product_id}.jpg",
        }))
    for i in range(members):
        member_id = f"m{i:04d}"
        records.append((topics.members, member_id, {
            "member_id": member_id, "email": f"{member_id}@{DOMAIN}", "opt_in": i % 7 != 6,
            "name": NAMES[i % len(NAMES)], "device": rng.choice(["pc", "smartphone"]), "locale": "ja-JP",
            "purchase_count": i % 3, "ts": now_ms - 30_000,
        }))
    for i in range(members):
        member_id = f"m{i:04d}"
        ts = now_ms - rng.randint(0, 5_000)
        picks = rng.sample(PRODUCTS, k=3)
        actions = [("view", picks[0]), ("view", picks[1]), ("view", picks[2])]
        if i % 3 == 0:
            actions.append(("cart_add", picks[0]))
        elif i % 3 == 1:
            actions.append(("favorite_add", picks[1]))
        for n, (kind, (product_id, _, price)) in enumerate(actions):
            ts += rng.randint(200, 1_500)
            records.append((topics.beacons, member_id, {
                "event_id": f"demo-{now_ms}-{i}-{n}", "member_id": member_id, "type": kind, "ts": ts,
                "product_id": product_id, "price": price, "quantity": 1, "device": "pc",
            }))
        if i % 4 == 3:  # an order of the last viewed product: starts the follow series (rules/demo/follow-demo)
            product_id, _, price = picks[2]
            records.append((topics.orders, member_id, {
                "order_id": f"demo-{now_ms}-{i}", "member_id": member_id, "status": "ordered",
                "ordered_at": ts + 1_000, "ts": ts + 1_000, "total": price,
                "items": [{"product_id": product_id, "quantity": 1, "price": price}],
            }))
    return records


async def _produce(settings: Settings, records: list[tuple[str, str, dict[str, Any]]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for topic, key, value in records:
            await producer.send(topic, key=key.encode(), value=orjson.dumps(value))
        await producer.flush()
    finally:
        await producer.stop()


def price_drop(*, now_ms: int, prefix: str = "") -> tuple[str, str, dict[str, Any]]:
    """The first sample product goes 15 % cheaper (fires ``drop_percent`` rules)."""
    product_id, name, price = PRODUCTS[0]
    return (Topics(prefix).catalog, product_id, {
        "product_id": product_id, "name": name, "price": round(price * 0.85), "stock": 20, "ts": now_ms,
        "url": f"https://shop.example.com/products/{product_id}",
        "image_url": f"https://shop.example.com/images/{product_id}.jpg",
    })


def produce_sample(settings: Settings, *, members: int, watch: Path | None = None, watch_seconds: float = 0) -> int:
    """Produce the sample sessions, then a price drop; with ``watch``, print the mails that arrive there."""
    before = set(watch.glob("*.eml")) if watch is not None and watch.is_dir() else set()
    records = sample_records(members=members, now_ms=time.time_ns() // 1_000_000, prefix=settings.topic_prefix)
    asyncio.run(_produce(settings, records))
    counts: dict[str, int] = {}
    for topic, _, _ in records:
        counts[topic] = counts.get(topic, 0) + 1
    print("produced " + ", ".join(f"{n} {topic}" for topic, n in counts.items()), flush=True)
    time.sleep(5)
    asyncio.run(_produce(settings, [price_drop(now_ms=time.time_ns() // 1_000_000, prefix=settings.topic_prefix)]))
    print(f"produced a 15% price drop of {PRODUCTS[0][1]}", flush=True)
    if watch is None:
        return 0
    return 0 if _watch_mailbox(watch, before, watch_seconds) else 1


def _watch_mailbox(folder: Path, before: set[Path], seconds: float) -> int:
    """Print every new mail as it arrives; stop after ``seconds`` or 15 s without a new one."""
    import email
    import email.policy

    print(f"waiting for mails in {folder} ...", flush=True)
    seen = set(before)
    started = last = time.monotonic()
    arrived = 0
    while time.monotonic() - started < seconds and not (arrived and time.monotonic() - last > 15):
        for path in sorted(set(folder.glob("*.eml")) - seen):
            seen.add(path)
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if not str(message["To"]).endswith("@" + DOMAIN):
                continue  # someone else's mail (the sink is shared)
            arrived += 1
            last = time.monotonic()
            print(f"  +{last - started:5.1f}s  to {message['To']}: {message['Subject']}", flush=True)
        time.sleep(0.5)
    print(f"{arrived} mails arrived; open them in {folder}")
    return arrived
