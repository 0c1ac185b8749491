"""Scenario step fire lag and memory with N running scenarios while beacons keep arriving.

Starts the real worker (subprocess, private topic prefix, demo-only delay floor), produces N profiles, reads
the worker's RSS (Faust process + member engine), then N orders — each starts a run of a one-step-then-repeat
scenario whose first step is due ``--delay`` .. ``--delay + --spread`` seconds later — and reads the RSS again
while all runs are pending (RSS added per running scenario). Background ``view`` beacons arrive at ``--rate``
events/s throughout. Lag = decision ``at`` minus ``due`` of every step-1 decision, read back from
``mail_decisions``. Members have no consent, so the steps decide ``suppressed`` and no mail is delivered
(the decision path is the same as for ``sent``).

    .venv/bin/python bench/scenario_lag.py --members 100000 --rate 1500
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
from timer_lag import background, now_ms  # bench/ is sys.path[0] when run as a script

from kagoflow.adapters.kafka_admin import TopicSpec, ensure_topics
from kagoflow.settings import PROJECT_ROOT, Settings
from kagoflow.streams.topics import Topics


def write_rules(directory: Path, delay_s: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "shop.yaml").write_text("timezone: Asia/Tokyo\n")
    (directory / "steps.yaml").write_text(f"""id: steps-bench
kind: scenario
start: {{status: [ordered]}}
steps:
  - send: {{anchor: ordered, after: {delay_s}s}}
    template: thanks
  - send: {{anchor: previous, after: 1d}}
    template: shipped
""")


def rss_mib(pid: int) -> float:
    """RSS of ``pid`` and its children (the worker and its member engine process)."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for one in pids:
        for line in Path(f"/proc/{one}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


async def produce(producer: AIOKafkaProducer, topic: str, rows: list[tuple[str, dict[str, object]]]) -> None:
    for key, value in rows:
        await producer.send(topic, key=key.encode(), value=orjson.dumps(value))
    await producer.flush()


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
                    if data["rule"] == "steps-bench" and data.get("step") == 1:
                        lags.setdefault(data["member_id"], int(data["at_ms"]) - int(data["due_ms"]))
    finally:
        await consumer.stop()
    return list(lags.values())


async def main_async(args: argparse.Namespace) -> None:
    base = Settings.from_env()
    tag = uuid.uuid4().hex[:6]
    topics = Topics(f"slag{tag}-")
    tmp = Path(tempfile.mkdtemp(prefix="kagoflow-slag-"))
    write_rules(tmp / "rules", args.delay)
    await ensure_topics(bootstrap=base.kafka_bootstrap, topics=[TopicSpec(name, base.partitions)
                                                                for name in topics.all()], replication=1)
    env = dict(os.environ, KAGOFLOW_APP_ID=f"slag-{tag}", KAGOFLOW_TOPIC_PREFIX=topics.prefix,
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
        members = [f"run{i}" for i in range(args.members)]
        await produce(producer, topics.members, [(m, {"member_id": m, "email": f"{m}@bench.invalid",
                                                      "opt_in": False}) for m in members])
        await asyncio.sleep(args.settle)
        before = rss_mib(worker.pid)
        start = now_ms() + 5_000
        orders = [(m, {"order_id": f"o-{m}", "member_id": m, "status": "ordered",
                       "ordered_at": start + (i * args.spread * 1000) // args.members,
                       "ts": start + (i * args.spread * 1000) // args.members,
                       "items": [{"product_id": f"p{i % 500}", "quantity": 1, "price": 1000}]})
                  for i, m in enumerate(members)]
        setup_started = time.monotonic()
        await produce(producer, topics.orders, orders)
        print(f"produced {args.members} orders in {time.monotonic() - setup_started:.1f}s; step 1 due over "
              f"the next {args.delay}..{args.delay + args.spread}s", flush=True)
        await asyncio.sleep(args.settle)
        during = rss_mib(worker.pid)
        lags = await collect(base, topics, args.members, timeout_s=args.delay + args.spread + 300)
        stop.set()
        background_sent = await bg
        await producer.stop()
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    print(f"RSS worker + engine: {before:.0f} MiB with {args.members} profiles, {during:.0f} MiB with their "
          f"runs pending: +{during - before:.0f} MiB per {args.members} running scenarios")
    if not lags:
        print(f"no decisions collected; worker log: {tmp / 'worker.log'}")
        return
    lags.sort()
    q = statistics.quantiles(lags, n=100)
    print(f"step decisions: {len(lags)}/{args.members}; background beacons: {background_sent} at {args.rate}/s")
    print(f"step fire lag ms: p50 {q[49]:.0f}  p99 {q[98]:.0f}  max {lags[-1]}  (min {lags[0]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=1500, help="background beacons per second")
    parser.add_argument("--delay", type=int, default=150, help="step 1 due this many seconds after the order")
    parser.add_argument("--spread", type=int, default=120, help="order times spread over this many seconds")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds to wait before reading RSS")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds to let the worker start")
    parser.add_argument("--web-port", type=int, default=16092)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
