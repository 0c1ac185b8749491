"""Timer lag under load: N members with carts due within a few minutes while beacons keep arriving.

Starts the real worker (subprocess, private topic prefix, demo-only delay floor), produces N profiles and
one ``cart_add`` each (due times spread over ``--spread`` seconds), then keeps producing background
``view`` beacons at ``--rate`` events/s until every due decision has been made. Lag = decision ``at`` minus
its ``due``, read back from the ``mail_decisions`` topic.

    .venv/bin/python bench/timer_lag.py --members 100000 --rate 4000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from kagoflow.adapters.kafka_admin import TopicSpec, ensure_topics
from kagoflow.settings import PROJECT_ROOT, Settings
from kagoflow.streams.topics import Topics


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def write_rules(directory: Path, delay_s: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "shop.yaml").write_text("timezone: Asia/Tokyo\n")
    (directory / "cart.yaml").write_text(
        "id: cart-bench\nkind: abandonment\ntrigger: cart\nclock: action\n"
        f"send: {{after: {delay_s}s}}\ntemplate: cart\n"
    )


async def produce_setup(producer: AIOKafkaProducer, topics: Topics, members: int, spread_s: int) -> int:
    start = now_ms()
    for i in range(members):
        member_id = f"lag{i}"
        await producer.send(topics.members, key=member_id.encode(), value=orjson.dumps(
            {"member_id": member_id, "email": f"{member_id}@bench.invalid", "opt_in": False}))
        await producer.send(topics.beacons, key=member_id.encode(), value=orjson.dumps({
            "event_id": f"lag-cart-{i}", "member_id": member_id, "type": "cart_add",
            "ts": start + (i * spread_s * 1000) // members, "product_id": f"p{i % 500}", "price": 1000}))
    await producer.flush()
    return start


async def background(producer: AIOKafkaProducer, topics: Topics, rate: int, stop: asyncio.Event) -> int:
    sent = 0
    started = time.monotonic()
    while not stop.is_set():
        target = int((time.monotonic() - started) * rate)
        while sent < target:
            member_id = f"bg{sent % 50000}"
            await producer.send(topics.beacons, key=member_id.encode(), value=orjson.dumps({
                "event_id": f"bg-{sent}", "member_id": member_id, "type": "view", "ts": now_ms(),
                "product_id": f"p{sent % 997}"}))
            sent += 1
        await asyncio.sleep(0.01)
    return sent


async def collect(settings: Settings, topics: Topics, members: int, timeout_s: float) -> list[int]:
    consumer = AIOKafkaConsumer(topics.mail_decisions, bootstrap_servers=settings.kafka_bootstrap,
                                group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    lags: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(lags) < members and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for message in messages:
                    data = orjson.loads(message.value)
                    if data["rule"] == "cart-bench":
                        lags.setdefault(data["member_id"], int(data["at_ms"]) - int(data["due_ms"]))
    finally:
        await consumer.stop()
    return list(lags.values())


async def main_async(args: argparse.Namespace) -> None:
    base = Settings.from_env()
    tag = uuid.uuid4().hex[:6]
    topics = Topics(f"lag{tag}-")
    tmp = Path(tempfile.mkdtemp(prefix="kagoflow-lag-"))
    write_rules(tmp / "rules", args.delay)
    await ensure_topics(bootstrap=base.kafka_bootstrap, topics=[TopicSpec(name, base.partitions)
                                                                for name in topics.all()], replication=1)
    env = dict(os.environ, KAGOFLOW_APP_ID=f"lag-{tag}", KAGOFLOW_TOPIC_PREFIX=topics.prefix,
               KAGOFLOW_DATA_DIR=str(tmp / "data"), KAGOFLOW_RULES_DIR=str(tmp / "rules"),
               KAGOFLOW_MIN_DELAY_SECONDS="1", KAGOFLOW_WEB_PORT=str(args.web_port),
               KAGOFLOW_ARCHIVE_ENABLED="false", KAGOFLOW_LOCAL_MODE="1")
    log = (tmp / "worker.log").open("wb")
    worker = subprocess.Popen([sys.executable, "-m", "kagoflow.cli", "worker"], cwd=PROJECT_ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        await asyncio.sleep(args.warmup)
        producer = AIOKafkaProducer(bootstrap_servers=base.kafka_bootstrap, linger_ms=5)
        await producer.start()
        stop = asyncio.Event()
        bg = asyncio.create_task(background(producer, topics, args.rate, stop))
        setup_started = time.monotonic()
        await produce_setup(producer, topics, args.members, args.spread)
        print(f"produced {args.members} carts in {time.monotonic() - setup_started:.1f}s; "
              f"due over the next {args.delay}..{args.delay + args.spread}s", flush=True)
        lags = await collect(base, topics, args.members, timeout_s=args.delay + args.spread + 300)
        stop.set()
        background_sent = await bg
        await producer.stop()
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    if not lags:
        print(f"no decisions collected; worker log: {tmp / 'worker.log'}")
        return
    lags.sort()
    q = statistics.quantiles(lags, n=100)
    print(f"decisions: {len(lags)}/{args.members}; background beacons: {background_sent} at {args.rate}/s")
    print(f"fire lag ms: p50 {q[49]:.0f}  p99 {q[98]:.0f}  max {lags[-1]}  (min {lags[0]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=4000, help="background beacons per second")
    parser.add_argument("--delay", type=int, default=90, help="abandonment delay in seconds")
    parser.add_argument("--spread", type=int, default=120, help="cart times spread over this many seconds")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds to let the worker start")
    parser.add_argument("--web-port", type=int, default=16091)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
