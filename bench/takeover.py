"""Takeover time: SIGKILL one of two workers while decisions fall due on every partition; how long until the
survivor decides on the partitions it took over — with and without standby replicas.

Two real workers (one consumer group, ``--partitions`` partitions, private topics) hold ``--members`` members
of state; carts arrive at ``--rate`` per second for new members, each due ``--delay`` s later, so every
partition has decisions due all the time (opt-in off: decided, never mailed). After ``--steady`` s one worker
is SIGKILLed. Per partition the bench reads from ``mail_decisions`` the first decision made after the kill:
the partitions the dead worker owned show a gap — session timeout (10 s, ``broker_session_timeout``), the
rebalance, the changelog recovery of their table, the engine's rebuild of heaps and indexes, and the first
tick. Reported: kill → first decision on the moved partitions (slowest and median), and the part of it after
the session timeout.

    .venv/bin/python bench/takeover.py --members 20000 --standby 0,1
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from timer_lag import now_ms, write_rules  # bench/ is sys.path[0] when run as a script

from kagoflow.adapters.kafka_admin import TopicSpec, ensure_topics
from kagoflow.settings import PROJECT_ROOT, Settings
from kagoflow.streams.topics import Topics

REVOKE_LOG = re.compile(r"confirmed the revocation of .* in ([0-9.]+) s")
SESSION_TIMEOUT_S = 10.0
"""``broker_session_timeout`` of the worker (agents/app.py)."""


async def load_state(producer: AIOKafkaProducer, topics: Topics, members: int) -> None:
    """Members with a view each: state the new owner has to recover."""
    for i in range(members):
        member_id = f"st{i}"
        await producer.send(topics.members, key=member_id.encode(), value=orjson.dumps(
            {"member_id": member_id, "email": f"{member_id}@bench.invalid", "opt_in": False}))
        await producer.send(topics.beacons, key=member_id.encode(), value=orjson.dumps(
            {"event_id": f"st{i}", "member_id": member_id, "type": "view", "ts": now_ms(), "product_id": "p1"}))
    await producer.flush()


async def carts(producer: AIOKafkaProducer, topics: Topics, rate: int, stop: asyncio.Event) -> None:
    sent = 0
    started = time.monotonic()
    while not stop.is_set():
        while sent < int((time.monotonic() - started) * rate):
            member_id = f"c{sent}"
            await producer.send(topics.beacons, key=member_id.encode(), value=orjson.dumps({
                "event_id": f"c{sent}", "member_id": member_id, "type": "cart_add", "ts": now_ms(),
                "product_id": f"p{sent % 97}", "price": 1000}))
            sent += 1
        await asyncio.sleep(0.02)


async def collect(settings: Settings, topic: str, decisions: list[tuple[int, int]], stop: asyncio.Event) -> None:
    """(partition, decision time) of every decision, as they arrive."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        while not stop.is_set():
            for tp, messages in (await consumer.getmany(timeout_ms=300)).items():
                decisions += [(tp.partition, int(orjson.loads(m.value)["at_ms"])) for m in messages]
    finally:
        await consumer.stop()


def start_worker(env: dict[str, str], name: str, port: int, tmp: Path) -> subprocess.Popen[bytes]:
    env = {**env, "KAGOFLOW_WEB_PORT": str(port), "KAGOFLOW_OPERATOR_PORT": str(port + 1),
           "KAGOFLOW_DATA_DIR": str(tmp / name)}
    log = (tmp / f"{name}.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "kagoflow.cli", "worker"], cwd=PROJECT_ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


async def run_once(args: argparse.Namespace, standby: int) -> dict[str, Any]:
    base = Settings.from_env()
    tag = uuid.uuid4().hex[:6]
    topics = Topics(f"to{tag}-")
    tmp = Path(tempfile.mkdtemp(prefix="kagoflow-takeover-"))
    write_rules(tmp / "rules", args.delay)
    await ensure_topics(bootstrap=base.kafka_bootstrap, replication=1,
                        topics=[TopicSpec(name, args.partitions) for name in topics.all()])
    env = dict(os.environ, KAGOFLOW_APP_ID=f"takeover-{tag}", KAGOFLOW_TOPIC_PREFIX=topics.prefix,
               KAGOFLOW_RULES_DIR=str(tmp / "rules"), KAGOFLOW_MIN_DELAY_SECONDS="1", KAGOFLOW_LOCAL_MODE="1",
               KAGOFLOW_ARCHIVE_ENABLED="false", KAGOFLOW_PARTITIONS=str(args.partitions),
               KAGOFLOW_STANDBY_REPLICAS=str(standby))
    survivor = start_worker(env, "a", args.port, tmp)
    victim = start_worker(env, "b", args.port + 2, tmp)
    producer = AIOKafkaProducer(bootstrap_servers=base.kafka_bootstrap, linger_ms=5)
    await producer.start()
    stop, done = asyncio.Event(), asyncio.Event()
    decisions: list[tuple[int, int]] = []
    collector = asyncio.create_task(collect(base, topics.mail_decisions, decisions, done))
    try:
        await load_state(producer, topics, args.members)
        feeder = asyncio.create_task(carts(producer, topics, args.rate, stop))
        # steady: decisions on every partition for a while (both workers up, the group settled)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            recent = {p for p, at in decisions if at > now_ms() - 3000}
            if len(recent) == args.partitions:
                break
            await asyncio.sleep(1)
        else:
            raise RuntimeError(f"decisions never flowed on every partition; logs in {tmp}")
        await asyncio.sleep(args.steady)
        killed_at = now_ms()
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        await asyncio.sleep(args.after)
        stop.set()
        await feeder
    finally:
        done.set()
        await collector
        await producer.stop()
        for proc in (survivor, victim):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)
    # A partition moved if its decisions pause after the kill (a decision the victim made in its last
    # milliseconds may come first): the takeover ends with the first decision after that pause.
    resumed: dict[int, float] = {}
    for partition in range(args.partitions):
        times = sorted(at for p, at in decisions if p == partition and at >= killed_at - 1000)
        for before, after in itertools.pairwise(times):
            if after - before > 2000 and after > killed_at:
                resumed[partition] = (after - killed_at) / 1000
                break
    moved = resumed
    if not moved:
        raise RuntimeError(f"no partition paused after the kill; logs in {tmp}")
    worst = max(moved.values())
    return {"moved": len(moved), "worst_s": worst, "median_s": statistics.median(moved.values()),
            "after_session_s": worst - SESSION_TIMEOUT_S, "revoke_s": revoke_wait_s(tmp / "a.log"),
            "logs": str(tmp)}


def revoke_wait_s(log: Path) -> float:
    """The survivor's longest wait for its engine's answer to a revocation (``engine_link`` logs each)."""
    waits = [float(m.group(1)) for m in REVOKE_LOG.finditer(log.read_text(errors="replace"))]
    return max(waits, default=float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=20_000, help="members of state to recover")
    parser.add_argument("--rate", type=int, default=80, help="carts per second (decisions per second)")
    parser.add_argument("--delay", type=int, default=10, help="abandonment delay in seconds")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--steady", type=float, default=15.0, help="seconds of steady decisions before the kill")
    parser.add_argument("--after", type=float, default=60.0, help="seconds watched after the kill")
    parser.add_argument("--standby", default="0,1", help="standby replica counts to measure, e.g. 0,1")
    parser.add_argument("--repeat", type=int, default=1, help="runs per standby count (alternating counts)")
    parser.add_argument("--port", type=int, default=16191)
    args = parser.parse_args()
    counts = [int(s) for s in args.standby.split(",")]
    slowest: dict[int, list[float]] = {standby: [] for standby in counts}
    for run in range(1, args.repeat + 1):
        for standby in counts:  # alternating, so a drift of the machine's load hits every count alike
            result = asyncio.run(run_once(args, standby))
            slowest[standby].append(result["worst_s"])
            print(f"run {run}, standby replicas {standby}: {result['moved']:.0f} partitions moved; kill → first "
                  f"decision on them: slowest {result['worst_s']:.1f} s, median {result['median_s']:.1f} s "
                  f"({result['after_session_s']:.1f} s after the {SESSION_TIMEOUT_S:.0f} s session timeout); "
                  f"survivor's longest revocation answer {result['revoke_s']:.2f} s; logs {result['logs']}",
                  flush=True)
    for standby, values in slowest.items():
        print(f"standby replicas {standby}: kill → first decision on every moved partition over {len(values)} "
              f"runs: median {statistics.median(values):.1f} s, min {min(values):.1f} s, max {max(values):.1f} s")


if __name__ == "__main__":
    main()
