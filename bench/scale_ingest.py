"""Ingest with 1 vs 2 workers in one consumer group, and what one worker costs (CPU, memory).

For each worker count: a fresh run (topics, app id, data directories), the workers started and left to settle
in their group (every worker handling its ticks, no rebalance for ``--settle`` s), then ``--events``
session-shaped beacons (``bench/traffic.py``) produced at once through kagoflow's own batched producer
(``KafkaOutbox.send_many``, ~2 µs a record, so production hardly competes with the workers). Measured from
the start of that production to the moment the workers' ``/metrics`` counters have covered every record on
their member topics (ticks included):

- beacons/s of the group;
- CPU-seconds per 1,000 beacons, summed over the workers' processes (Faust + member engine), and the
  cores they kept busy (CPU-seconds / wall seconds): on this 2-core machine one worker is already two busy
  processes, so a second worker only competes for the same cores — the numbers size a cluster (cores per
  worker, beacons/s per core), they do not show scaling here;
- RSS per worker (Faust + engine process) after the run.

Reuses ``bench/ingest.py``'s worker machinery (settings, start, ``/metrics``, RSS, cleanup).

    flock /work/bench.lock .venv/bin/python bench/scale_ingest.py --events 200000 --workers 1,2 --rounds 2
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
from dataclasses import dataclass, replace
from pathlib import Path

import orjson
from ingest import (  # bench/ is sys.path[0] when run as a script
    PARTITIONS,
    OffsetReader,
    _children,
    _cleanup,
    _free_port,
    _member_topics,
    _metrics,
    _rss_mb,
    _start_worker,
    _stop,
    create_topic,
    kagoflow_settings,
)
from traffic import generate_beacons

from kagoflow.adapters.kafka_outbox import KafkaOutbox
from kagoflow.settings import Settings
from kagoflow.streams.topics import Topics

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ScaleResult:
    workers: int
    beacons: int
    seconds: float
    """Start of production → every record handled."""
    cpu_s: list[float]
    """CPU-seconds of each worker (Faust + engine process) over that window."""
    rss_mb: list[float]

    @property
    def rate(self) -> float:
        return self.beacons / self.seconds

    @property
    def cpu_per_1k(self) -> float:
        return sum(self.cpu_s) / self.beacons * 1000

    @property
    def cores(self) -> float:
        return sum(self.cpu_s) / self.seconds


def cpu_seconds(pid: int) -> float:
    """user + system CPU of a process and its children (the worker's member engine), from /proc."""
    total = 0
    for one in (pid, *_children(pid)):
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLOCK_TICKS


async def handled(ports: list[int]) -> list[int] | None:
    """Records handled so far by each worker (None while one does not answer)."""
    counts = []
    for port in ports:
        metrics = await asyncio.to_thread(_metrics, port)
        if metrics is None:
            return None
        counts.append(int(metrics["members"]["events"]))
    return counts


async def settle(procs: list[subprocess.Popen[bytes]], ports: list[int], *, quiet_s: float,
                 timeout_s: float) -> None:
    """Wait until every worker handles records (its partitions' ticks) and none has been idle — a worker
    between a revocation and its next assignment — for ``quiet_s`` seconds."""
    started = time.monotonic()
    steady_since: float | None = None
    last: list[int] | None = None
    while time.monotonic() - started < timeout_s:
        if any(proc.poll() is not None for proc in procs):
            raise RuntimeError("a worker exited while starting")
        counts = await handled(ports)
        if counts is not None and last is not None and all(c > p for c, p in zip(counts, last, strict=True)):
            steady_since = steady_since or time.monotonic()
            if time.monotonic() - steady_since >= quiet_s:
                return
        else:
            steady_since = None
        last = counts
        await asyncio.sleep(1.5)  # > the 1 s tick interval: a worker with partitions handles a tick in between
    raise TimeoutError(f"workers did not settle in {timeout_s:.0f} s")


async def feed(settings: Settings, beacons: list[tuple[bytes, bytes]]) -> None:
    outbox = KafkaOutbox(bootstrap=settings.kafka_bootstrap, client_id="scale-ingest-bench")
    await outbox.start()
    try:
        for start in range(0, len(beacons), 50_000):
            await asyncio.gather(*await outbox.send_many(Topics(settings.topic_prefix).beacons,
                                                         beacons[start:start + 50_000]))
    finally:
        await outbox.stop()


async def measure(settings: Settings, workers: int, beacons: list[tuple[bytes, bytes]], *, quiet_s: float,
                  timeout_s: float) -> ScaleResult:
    names = Topics(settings.topic_prefix)
    await create_topic(settings.kafka_bootstrap, names.beacons)
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for index in range(workers):
            one = replace(settings, data_dir=settings.data_dir / f"w{index}", web_port=_free_port(),
                          operator_port=_free_port())
            one.data_dir.mkdir()
            procs.append(_start_worker(one, one.data_dir / "worker.log")[0])
            ports.append(one.operator_port)
        await settle(procs, ports, quiet_s=quiet_s, timeout_s=timeout_s)
        async with OffsetReader(settings.kafka_bootstrap) as offsets:
            ends_before = await offsets.read(_member_topics(settings))
            counts_before = await handled(ports)
            cpu_before = [cpu_seconds(proc.pid) for proc in procs]
            started = time.monotonic()
            await feed(settings, beacons)
            while True:
                if time.monotonic() - started > timeout_s:
                    raise TimeoutError(f"not caught up after {timeout_s:.0f} s; logs in {settings.data_dir}")
                ends = await offsets.read(_member_topics(settings))
                counts = await handled(ports)
                if counts is not None and counts_before is not None:
                    todo = sum(end - ends_before.get(tp, 0) for tp, end in ends.items())
                    if sum(counts) - sum(counts_before) >= todo:
                        break
                await asyncio.sleep(0.1)
            seconds = time.monotonic() - started
            cpu = [cpu_seconds(proc.pid) - before for proc, before in zip(procs, cpu_before, strict=True)]
        return ScaleResult(workers, len(beacons), seconds, cpu, [_rss_mb(proc.pid)[0] for proc in procs])
    finally:
        for proc in procs:
            _stop(proc, grace_s=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--members", type=int, default=40_000)
    parser.add_argument("--workers", default="1,2", help="worker counts, run in this order each round")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds of a stable group before feeding")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--archive", action="store_true", help="workers run their ClickHouse archiver too")
    parser.add_argument("--bootstrap", default=Settings.from_env().kafka_bootstrap)
    args = parser.parse_args()
    tag = f"kfbench-{time.strftime('%m%d%H%M%S')}-{os.getpid()}"
    workdir = Path(tempfile.mkdtemp(prefix=f"{tag}-"))
    now = int(time.time() * 1000)
    # Event times end now: no abandonment timer (>= 15 min) falls due during the run.
    beacons = [(b["member_id"].encode(), orjson.dumps(b)) for b in generate_beacons(
        members=args.members, events=args.events, seed=args.seed, start_ms=now - 600_000, span_s=600)]
    timeout_s = 300 + args.events / 200
    results: dict[int, list[ScaleResult]] = {}
    settings: Settings | None = None
    try:
        for round_ in range(1, args.rounds + 1):
            for workers in (int(w) for w in args.workers.split(",")):
                prefix = f"{tag}-w{workers}-r{round_}-"
                settings = kagoflow_settings(tag=tag, prefix=prefix, workdir=workdir, bootstrap=args.bootstrap,
                                             archive=args.archive, round_=round_, name=f"w{workers}")
                result = asyncio.run(measure(settings, workers, beacons, quiet_s=args.settle,
                                             timeout_s=timeout_s))
                results.setdefault(workers, []).append(result)
                print(f"round {round_}, {workers} worker(s): {result.rate:,.0f} beacons/s; "
                      f"{result.cpu_per_1k:.2f} CPU-s per 1k beacons ({', '.join(f'{c:.1f}' for c in result.cpu_s)}"
                      f" CPU-s per worker over {result.seconds:.1f} s: {result.cores:.2f} cores busy); RSS "
                      f"{', '.join(f'{r:.0f}' for r in result.rss_mb)} MiB per worker; load {os.getloadavg()[0]:.1f}",
                      flush=True)
    finally:
        _cleanup(bootstrap=args.bootstrap, tag=tag, workdir=workdir, settings=settings)
    print(f"\n{args.events} beacons, {args.members} members, {PARTITIONS} partitions, medians of {args.rounds} "
          "round(s):")
    for workers, runs in results.items():
        print(f"{workers} worker(s): {statistics.median(r.rate for r in runs):,.0f} beacons/s, "
              f"{statistics.median(r.cpu_per_1k for r in runs):.2f} CPU-s per 1k beacons, "
              f"{statistics.median(r.cores for r in runs):.2f} cores busy, "
              f"RSS {statistics.median(x for r in runs for x in r.rss_mb):.0f} MiB per worker")
    return 0


if __name__ == "__main__":
    sys.exit(main())
