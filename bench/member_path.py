"""The member agent's own cost per event, without Faust or Kafka: where kagoflow's share of (c) goes.

    .venv/bin/python bench/member_path.py [--events 300000] [--members 60000] [--batch N] [--profile]

Feeds the same session-shaped beacons as ``bench/ingest.py`` (serialized as the storefront sends them)
through ``MemberProcessor.on_event`` — parse, dedup, engine, due heap, watch index, flushes of member
buckets into a dict standing in for the Faust table — with the rules in ``rules/``, a wall clock that
advances with the events (so flushes happen every ``KAGOFLOW_STATE_FLUSH_SECONDS`` of event time at
the rate the real worker reaches) and in-memory cap store and outbox. Prints µs per event. ``--batch N``:
the beacons as partition-batched records of up to N (``{"batch": […]}``, as ``kagoflow collect`` makes them:
consecutive beacons grouped per partition), µs per beacon. ``bench/ingest.py``
measures the real thing; this isolates the part kagoflow controls (see README "Benchmarks").
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import pstats
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson
from traffic import generate_beacons  # bench/ is sys.path[0] when run as a script

from kagoflow.core.caps import InMemoryCapStore
from kagoflow.core.engine import Engine
from kagoflow.loading import load_ruleset
from kagoflow.settings import Settings
from kagoflow.streams.contract import encode_batch
from kagoflow.streams.topics import Topics
from kagoflow.worker import buckets
from kagoflow.worker.processor import MemberProcessor, profile_snapshot

PARTITIONS = 4


class _Ack:
    __slots__ = ()

    def ack(self) -> bool:
        return True


class _Outbox:
    """Counts records; completes at once."""

    def __init__(self) -> None:
        self.records = 0

    async def send(self, topic: str, *, key: bytes | None, value: bytes, partition: int | None = None) -> Any:
        self.records += 1
        return asyncio.sleep(0)

    async def send_many(self, topic: str, records: Sequence[tuple[bytes | None, bytes]], *,
                        partition: int | None = None) -> list[Any]:
        self.records += len(records)
        return []


def records(beacons: list[tuple[bytes, int, bytes]], batch: int) -> list[tuple[bytes, int, bytes, int]]:
    """(value, partition, key, index of its first beacon): the beacons one record each, or (``batch`` > 1)
    grouped per partition in windows of ``batch`` × partitions consecutive beacons, as the collector groups
    what arrives within its linger window."""
    if batch <= 1:
        return [(value, partition, key, i) for i, (value, partition, key) in enumerate(beacons)]
    out: list[tuple[bytes, int, bytes, int]] = []
    window = batch * PARTITIONS
    for start in range(0, len(beacons), window):
        groups: dict[int, list[tuple[bytes, int, bytes]]] = {}
        for item in beacons[start:start + window]:
            groups.setdefault(item[1], []).append(item)
        for partition, items in groups.items():
            out.append((encode_batch([value for value, _, _ in items]), partition, items[0][2], start))
    return out


async def run(args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    ruleset = load_ruleset(settings)
    names = Topics("")
    now = [int(time.time() * 1000)]
    start = now[0]
    beacons = [
        (orjson.dumps(b), int(str(b["member_id"])[1:]) % PARTITIONS, str(b["member_id"]).encode())
        for b in generate_beacons(members=args.members, events=args.events, seed=args.seed,
                                  start_ms=start - 600_000, span_s=600)
    ]
    table: dict[bytes, bytes] = {}
    processor = MemberProcessor(
        names=names, engine=Engine(ruleset), ruleset=ruleset, table=table, catalog={}, caps=InMemoryCapStore(),
        outbox=_Outbox(), flush_interval_ms=int(settings.state_flush_seconds * 1000),
        buckets_per_partition=settings.state_buckets, bucket_cache_bytes=settings.state_cache_mb << 20,
        clock=lambda: now[0], profile_of=profile_snapshot, scan=lambda partitions: iter(()),
    )
    step_ms = 1000 / args.rate  # the wall clock advances as if events arrived at --rate per second
    ack = _Ack()
    on_event = processor.on_event
    topic = names.beacons
    gc.set_threshold(50_000, 20, 20)  # as the worker does
    profiler = cProfile.Profile() if args.profile else None
    began = time.perf_counter()
    began_cpu = time.process_time()
    if profiler:
        profiler.enable()
    for offset, (value, partition, key, first) in enumerate(records(beacons, args.batch)):
        now[0] = start + int(first * step_ms)
        await on_event(topic=topic, partition=partition, key=key, value=value, timestamp_ms=now[0],
                       offset=offset, event=ack)
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - began_cpu
    metrics = processor.metrics
    stored = sum(1 for _ in buckets.scan(iter(table.items()), buckets=settings.state_buckets,
                                         partitions=set(range(PARTITIONS))))
    print(f"{len(beacons)} beacons, {args.members} members: {elapsed / len(beacons) * 1e6:.1f} µs per event "
          f"({len(beacons) / elapsed:,.0f} events/s); CPU {cpu / len(beacons) * 1e6:.1f} µs per event "
          "(the wall figure counts waiting for a core on a busy machine)")
    print(f"flushes {metrics.flushes}, states written {metrics.states_written}, buckets written "
          f"{metrics.buckets_written}, table {len(table)} values / {sum(map(len, table.values())) >> 20} MiB "
          f"/ {stored} members, dead letters {metrics.dead_letters}")
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
        print(out.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--members", type=int, default=60_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=5000.0,
                        help="events per second of simulated wall time (sets how often flushes happen)")
    parser.add_argument("--batch", type=int, default=1, help="beacons per record (partition-batched records)")
    parser.add_argument("--profile", action="store_true", help="cProfile the run (slower), top 30 by own time")
    args = parser.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
