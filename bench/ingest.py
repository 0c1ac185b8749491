"""Ingest benchmark: how many storefront beacons per second each consumer design sustains on one topic.

Pre-loads N session-shaped beacons (``bench/traffic.py``) into a fresh 4-partition topic keyed by member id,
then runs each variant in its own process, one after another, each reading ALL N events from the start with
its own consumer group (= Faust app id) and a temporary data directory:

  a  raw aiokafka ``getmany`` + ``orjson.loads``, no state                         (ceiling of the client)
  b  naive Faust: ``faust.Record`` value type, one RocksDB table write per event    (the baseline)
  d  Faust stream path, tuned (raw values, ``stream_wait_empty=False``, uvloop), orjson, no state
  c  the real kagoflow worker (``python -m kagoflow.cli worker``) on the same topic via KAGOFLOW_TOPIC_PREFIX,
     measured through its ``/metrics`` endpoint
  cb (c′) the same worker on the same beacons as partition-batched records (``{"batch": […]}``), grouped as
     ``kagoflow collect`` groups them: the beacons of one partition arriving within its 50 ms window, here at
     ``--batch-rate`` beacons/s (``--batch-rate 8000``: 400 beacons a window, ~100 per record on 4 partitions),
     produced once the worker runs (counted from the start of that production: a lower bound)

``events/s`` = N / (time of last event − time of first event), so it excludes start-up; ``wall`` includes
process start, group join and recovery. ``--rss-members M`` instead measures the worker's RSS with M members
in its tables and how long a restarted worker takes to process again. Every topic, consumer group, data
directory and ClickHouse database the run creates carries one run tag and is removed at the end (unless
``--keep``). See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
from traffic import generate_beacons  # bench/ is sys.path[0] when run as a script

from kagoflow.settings import PROJECT_ROOT, Settings, to_env
from kagoflow.streams.contract import MAX_BATCH_BYTES, encode_batch, key_partition
from kagoflow.streams.topics import Topics

PARTITIONS = 4
VARIANTS = {"a": "raw aiokafka + orjson", "b": "naive Faust (Record, RocksDB write/event)",
            "d": "Faust stream path, tuned, no state", "c": "kagoflow worker",
            "cb": "kagoflow worker, partition-batched records"}
LABELS = {"a": "(a)", "b": "(b)", "d": "(d)", "c": "(c)", "cb": "(c′)"}


@dataclass(frozen=True)
class VariantResult:
    name: str
    events: int
    first_s: float
    """Seconds from process start to the first event processed."""
    last_s: float
    """Seconds from process start to the last event processed."""
    peak_rss_mb: float | None = None
    measured: float | None = None
    """Events processed between ``first_s`` and ``last_s`` when the first observation came late (the worker's
    ``/metrics`` answers only once it runs: events it handled before that are not in the window)."""

    @property
    def rate(self) -> float:
        events = self.events if self.measured is None else self.measured
        return events / max(self.last_s - self.first_s, 1e-9)

    @property
    def wall_rate(self) -> float:
        return self.events / max(self.last_s, 1e-9)


# -- Kafka helpers ---------------------------------------------------------------------------------


async def create_topic(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


async def delete_topics_tagged(bootstrap: str, tag: str) -> list[str]:
    """Delete every topic whose name starts with ``tag`` (inputs, changelogs, Faust leader topics)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        doomed = [t for t in await admin.list_topics() if t.startswith(tag)]
        if doomed:
            await admin.delete_topics(doomed)
        return doomed
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, beacons: Iterable[dict[str, Any]]) -> int:
    """Produce keyed by member id, uncompressed, in large batches; returns the count."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024,
                                compression_type=None, acks=1)
    await producer.start()
    count = 0
    try:
        pending: list[asyncio.Future[Any]] = []
        for beacon in beacons:
            pending.append(await producer.send(topic, orjson.dumps(beacon), key=beacon["member_id"].encode()))
            count += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return count


def batch_records(beacons: Iterable[dict[str, Any]], *, window: int, partitions: int = PARTITIONS,
                  max_bytes: int = 256 * 1024) -> Iterator[tuple[bytes, int, bytes]]:
    """(key, partition, value) of the batch records the collector makes of ``beacons`` when ``window`` of them
    arrive within one linger window: per window and partition one record (split at ``max_bytes``), keyed by its
    first member id, beacons in arrival order."""
    def flush(pending: dict[int, list[tuple[bytes, bytes]]]) -> Iterator[tuple[bytes, int, bytes]]:
        for partition, items in pending.items():
            start, size = 0, 0
            for i, (_, raw) in enumerate(items):
                if size + len(raw) + 16 > max_bytes and i > start:
                    yield items[start][0], partition, encode_batch([r for _, r in items[start:i]])
                    start, size = i, 0
                size += len(raw) + 1
            yield items[start][0], partition, encode_batch([r for _, r in items[start:]])

    pending: dict[int, list[tuple[bytes, bytes]]] = {}
    for count, beacon in enumerate(beacons, 1):
        key = beacon["member_id"].encode()
        pending.setdefault(key_partition(key, partitions), []).append((key, orjson.dumps(beacon)))
        if count % window == 0:
            yield from flush(pending)
            pending = {}
    yield from flush(pending)


async def produce_batches(bootstrap: str, topic: str, records: Iterable[tuple[bytes, int, bytes]]) -> int:
    """Produce batch records to their partitions; returns the count of records."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1024 * 1024,
                                max_request_size=MAX_BATCH_BYTES + 64 * 1024, compression_type=None, acks=1)
    await producer.start()
    count = 0
    try:
        pending: list[asyncio.Future[Any]] = []
        for key, partition, value in records:
            pending.append(await producer.send(topic, value, key=key, partition=partition))
            count += 1
            if len(pending) >= 2_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return count


Offsets = dict[tuple[str, int], int]
"""(topic, partition) → offset."""


class OffsetReader:
    """One long-lived client for reading partition offsets (polled often while a worker runs)."""

    def __init__(self, bootstrap: str) -> None:
        from aiokafka import AIOKafkaConsumer

        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)

    async def __aenter__(self) -> OffsetReader:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def read(self, topics: Iterable[str], *, earliest: bool = False,
                   partitions: int = PARTITIONS) -> Offsets:
        """End (or beginning) offset of partitions ``0..partitions-1`` of those of ``topics`` that exist
        (the worker creates its topics as it starts, all with the same partition count)."""
        from aiokafka import TopicPartition

        consumer = self._consumer
        existing = await consumer.topics()
        tps = [TopicPartition(t, p) for t in topics if t in existing for p in range(partitions)]
        if not tps:
            return {}
        found = await (consumer.beginning_offsets(tps) if earliest else consumer.end_offsets(tps))
        return {(tp.topic, tp.partition): offset for tp, offset in found.items()}


async def end_offsets(bootstrap: str, topics: Iterable[str], *, earliest: bool = False,
                      partitions: int = PARTITIONS) -> Offsets:
    async with OffsetReader(bootstrap) as reader:
        return await reader.read(topics, earliest=earliest, partitions=partitions)


async def committed_offsets(bootstrap: str, group: str, topics: Iterable[str]) -> Offsets:
    """Where ``group`` resumes on each partition (beginning offset where it never committed)."""
    from aiokafka.admin import AIOKafkaAdminClient

    names = list(topics)
    start = await end_offsets(bootstrap, names, earliest=True)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for tp, meta in (await admin.list_consumer_group_offsets(group)).items():
            if (tp.topic, tp.partition) in start and meta.offset >= 0:
                start[(tp.topic, tp.partition)] = meta.offset
    finally:
        await admin.close()
    return start


# -- child processes: variants a, b, d -------------------------------------------------------------


def _write_result(path: str, first: float, last: float, events: int) -> None:
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(path).write_bytes(orjson.dumps({"first": first, "last": last, "events": events, "peak_kb": peak_kb}))


async def _child_raw(args: argparse.Namespace) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(args.topic, bootstrap_servers=args.bootstrap, group_id=args.group,
                                auto_offset_reset="earliest")
    await consumer.start()
    count, first = 0, 0.0
    try:
        while count < args.events:
            batches = await consumer.getmany(timeout_ms=500)
            if batches and not first:
                first = time.time()
            for messages in batches.values():
                for message in messages:
                    orjson.loads(message.value)
                count += len(messages)
        _write_result(args.result, first, time.time(), count)
    finally:
        await consumer.stop()


def _child_faust(args: argparse.Namespace, *, tuned: bool) -> None:
    import faust

    if tuned:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    options: dict[str, Any] = {"value_serializer": "raw", "stream_wait_empty": False, "store": "memory://"} \
        if tuned else {"store": "rocksdb://"}
    app = faust.App(args.group, broker=f"kafka://{args.bootstrap}", datadir=args.datadir,
                    topic_partitions=PARTITIONS, web_enabled=False, consumer_auto_offset_reset="earliest",
                    **options)
    progress = {"count": 0, "first": 0.0}

    def tick() -> None:
        progress["count"] += 1
        if progress["count"] == 1:
            progress["first"] = time.time()
        if progress["count"] >= args.events:
            _write_result(args.result, progress["first"], time.time(), int(progress["count"]))
            sys.stdout.flush()
            os._exit(0)  # the result is written; a graceful Faust shutdown would only add noise

    if tuned:
        topic = app.topic(args.topic, key_serializer="raw", value_serializer="raw", partitions=PARTITIONS)

        @app.agent(topic, name="parse")
        async def parse(stream: Any) -> None:
            async for value in stream:
                orjson.loads(value)
                tick()
    else:
        class BeaconRecord(faust.Record, serializer="json"):
            event_id: str
            member_id: str
            type: str
            ts: Any
            product_id: str | None = None
            price: float | None = None
            quantity: int | None = None
            device: str | None = None
            shop_id: str | None = None
            product_ids: list[str] | None = None
            order_id: str | None = None

        topic = app.topic(args.topic, value_type=BeaconRecord, partitions=PARTITIONS)
        counts = app.Table("counts", default=int, partitions=PARTITIONS)

        @app.agent(topic, name="count")
        async def count(stream: Any) -> None:
            async for beacon in stream:
                counts[beacon.member_id] += 1
                tick()

    # loglevel 'info', not 'warning': at WARN and above Faust sets the root logger to DEBUG (faust.md).
    faust.Worker(app, loglevel="info", quiet=True).execute_from_commandline()


def _run_child(args: argparse.Namespace) -> int:
    if args.child == "a":
        asyncio.run(_child_raw(args))
    else:
        _child_faust(args, tuned=args.child == "d")
    return 0


# -- parent: running variants ------------------------------------------------------------------------


def _stop(proc: subprocess.Popen[bytes], *, grace_s: float = 20.0) -> None:
    """Stop one process we started, by its PID: SIGTERM, then SIGKILL after ``grace_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _spawn(cmd: list[str], *, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT)


def run_child_variant(variant: str, *, topic: str, n: int, bootstrap: str, tag: str, workdir: Path,
                      timeout_s: float, round_: int = 1) -> VariantResult:
    """Run variant a, b or d in a fresh process with its own group / app id and data directory."""
    datadir = workdir / f"variant-{variant}-r{round_}"
    datadir.mkdir()
    result = datadir / "result.json"
    log = workdir / f"variant-{variant}-r{round_}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--topic", topic, "--events",
           str(n), "--bootstrap", bootstrap, "--group", f"{tag}-{variant}-r{round_}", "--datadir", str(datadir),
           "--result", str(result)]
    started = time.time()
    proc = _spawn(cmd, log=log)
    try:
        while not result.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"variant {variant} exited with {proc.returncode}; see {log}")
            if time.time() - started > timeout_s:
                raise TimeoutError(f"variant {variant}: no result after {timeout_s:.0f}s; see {log}")
            time.sleep(0.05)
        time.sleep(0.05)  # let the writer finish the small file
        data = orjson.loads(result.read_bytes())
    finally:
        _stop(proc)
    return VariantResult(VARIANTS[variant], int(data["events"]), data["first"] - started,
                         data["last"] - started, data["peak_kb"] / 1024)


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``KAGOFLOW_*`` environment that makes ``Settings.from_env()`` return ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGOFLOW_")}
    env.update(to_env(settings))
    return env


def _metrics(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            data: dict[str, Any] = orjson.loads(response.read())
            return data
    except (OSError, ValueError):
        return None


def _rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size in MiB of a process and its children (the worker's member engine
    process), from /proc; the peak is the sum of each process's own peak."""
    current = peak = 0.0
    for one in (pid, *_children(pid)):
        try:
            lines = Path(f"/proc/{one}/status").read_text().splitlines()
        except OSError:
            continue
        values = dict(line.split(":", 1) for line in lines if ":" in line)
        current += int(values["VmRSS"].split()[0]) / 1024
        peak += int(values["VmHWM"].split()[0]) / 1024
    return current, peak


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields_ = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields_[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _member_topics(settings: Settings) -> list[str]:
    """Topics the worker's member agent consumes; every record on them counts in ``/metrics`` events."""
    names = Topics(settings.topic_prefix)
    return [names.beacons, names.members, names.orders, names.ticks, names.catalog_events]


async def _wait_caught_up(proc: subprocess.Popen[bytes], settings: Settings, *, baseline: Offsets,
                          started: float, timeout_s: float, log: Path,
                          seen: list[int] | None = None) -> tuple[float, float, int]:
    """Poll ``/metrics`` until the worker has processed every record on its member topics past ``baseline``.

    Ticks keep arriving while it runs, so the target is re-read on each poll: processed >= available means
    caught up (late by at most one poll). Returns (first event s, caught-up s, events) since ``started``;
    ``seen`` gets the events already processed at the first observation.
    """
    first = 0.0
    async with OffsetReader(settings.kafka_bootstrap) as reader:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"kagoflow worker exited with {proc.returncode}; see {log}")
            if time.time() - started > timeout_s:
                raise TimeoutError(f"kagoflow worker not caught up after {timeout_s:.0f}s; see {log}")
            ends = await reader.read(_member_topics(settings))
            target = sum(end - baseline.get(tp, 0) for tp, end in ends.items())
            metrics = await asyncio.to_thread(_metrics, settings.operator_port)
            now = time.time() - started
            events = int(metrics["members"]["events"]) if metrics else 0
            if events and not first:
                first = now
                if seen is not None:
                    seen.append(events)
            if target and events >= target:
                return first, now, events
            await asyncio.sleep(0.1)


def _start_worker(settings: Settings, log: Path) -> tuple[subprocess.Popen[bytes], float]:
    cmd = [sys.executable, "-m", "kagoflow.cli", "worker"]
    return _spawn(cmd, log=log, env=settings_env(settings)), time.time()


def run_kagoflow_variant(topic: str, n: int, settings: Settings, *, timeout_s: float = 1800.0,
                         archive_process: bool = False, label: str = "c",
                         feed: Callable[[], Awaitable[int]] | None = None) -> VariantResult:
    """Variant c: the real worker process reads ``topic`` (= its prefixed ``beacons``) from the beginning.

    ``settings`` must carry a fresh ``app_id``, ``data_dir`` and ``web_port`` and the ``topic_prefix`` that
    makes ``topic`` its beacons topic. ``n`` is the number of records already on ``topic`` — or, with
    ``feed``, the beacons ``feed()`` produces once the worker's ``/metrics`` answers; the rate is then counted
    from the start of that production (a lower bound: it includes producing them).
    """
    if Topics(settings.topic_prefix).beacons != topic:
        raise ValueError(f"{topic!r} is not the beacons topic of prefix {settings.topic_prefix!r}")
    log = settings.data_dir / "worker.log"

    async def measure() -> VariantResult:
        baseline = await end_offsets(settings.kafka_bootstrap, _member_topics(settings), earliest=True)
        archiver = None
        worker_settings = settings
        if archive_process:  # the archive consumer beside the worker, as ``python -m kagoflow.archive``
            archiver = _spawn([sys.executable, "-m", "kagoflow.archive"], log=settings.data_dir / "archive.log",
                              env=settings_env(settings))
            worker_settings = replace(settings, archive_enabled=False)
        proc, started = _start_worker(worker_settings, log)
        try:
            if feed is not None:
                while await asyncio.to_thread(_metrics, worker_settings.operator_port) is None:
                    if proc.poll() is not None or time.time() - started > timeout_s:
                        raise RuntimeError(f"kagoflow worker not ready; see {log}")
                    await asyncio.sleep(0.2)
                fed_at = time.time() - started
                await feed()
                _, last, _ = await _wait_caught_up(proc, worker_settings, baseline=baseline, started=started,
                                                   timeout_s=timeout_s, log=log)
                return VariantResult(VARIANTS[label], n, fed_at, last, _rss_mb(proc.pid)[1])
            seen: list[int] = []
            first, last, events = await _wait_caught_up(proc, worker_settings, baseline=baseline, started=started,
                                                        timeout_s=timeout_s, log=log, seen=seen)
            # records handled before the first observation are outside the window: count the rest (in events
            # of ``n``: a batch record stands for its share of the beacons)
            late = seen[0] / events if seen and events else 0.0
            if late > 0.5:
                print(f"  warning: {late:.0%} of the records were done before /metrics first answered; the rate "
                      "is from the rest only", file=sys.stderr)
            return VariantResult(VARIANTS[label], n, first, last, _rss_mb(proc.pid)[1], measured=n * (1 - late))
        finally:
            _stop(proc, grace_s=60)
            if archiver is not None:
                _stop(archiver, grace_s=30)

    return asyncio.run(measure())


def kagoflow_settings(*, tag: str, prefix: str, workdir: Path, bootstrap: str, archive: bool,
                      round_: int = 1, name: str = "c") -> Settings:
    base = "kagoflow" if name == "c" else f"kagoflow-{name}"
    data_dir = workdir / (base if round_ == 1 else f"{base}-r{round_}")
    data_dir.mkdir(exist_ok=True)
    return replace(Settings.from_env(), kafka_bootstrap=bootstrap,
                   app_id=f"{tag}-{base}" if round_ == 1 else f"{tag}-{base}-r{round_}",
                   topic_prefix=prefix, data_dir=data_dir, web_port=_free_port(), operator_port=_free_port(),
                   local_mode=True, partitions=PARTITIONS,
                   archive_enabled=archive, clickhouse_database=_bench_database(tag))


def _bench_database(tag: str) -> str:
    return tag.replace("-", "_")


def _clickhouse(settings: Settings, sql: str) -> None:
    from clickhouse_driver import Client

    Client(host=settings.clickhouse_host, port=settings.clickhouse_port).execute(sql)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- --rss-members mode ----------------------------------------------------------------------------


def run_rss_mode(*, members: int, settings: Settings, seed: int, new_events: int,
                 timeout_s: float) -> dict[str, float]:
    """Fill the worker's tables with ``members`` members (every member gets a 1–3 action session), then
    measure its RSS, stop it, produce ``new_events`` fresh beacons and time a restart until it has
    processed them (same app id and data directory: local RocksDB state is reused)."""
    names = Topics(settings.topic_prefix)
    log = settings.data_dir / "worker.log"
    now_ms = int(time.time() * 1000)

    async def measure() -> dict[str, float]:
        await create_topic(settings.kafka_bootstrap, names.beacons)
        began = time.time()
        produced = await produce(settings.kafka_bootstrap, names.beacons, generate_beacons(
            members=members, events=2 * members, seed=seed, start_ms=now_ms - 600_000, span_s=600,
            session_events=(1, 3), cover_members=True))
        out: dict[str, float] = {"events": produced, "produce_s": time.time() - began}
        baseline = await end_offsets(settings.kafka_bootstrap, _member_topics(settings), earliest=True)
        proc, started = _start_worker(settings, log)
        try:
            _, out["fill_s"], _ = await _wait_caught_up(proc, settings, baseline=baseline, started=started,
                                                        timeout_s=timeout_s, log=log)
            await asyncio.sleep(2 * settings.state_flush_seconds + 2)  # every member's state flushed
            out["rss_mb"], out["peak_rss_mb"] = _rss_mb(proc.pid)
        finally:
            stopping = time.time()
            _stop(proc, grace_s=120)
            out["stop_s"] = time.time() - stopping
        await produce(settings.kafka_bootstrap, names.beacons, generate_beacons(
            members=members, events=new_events, seed=seed + 1, start_ms=int(time.time() * 1000) - 60_000,
            span_s=60))
        baseline = await committed_offsets(settings.kafka_bootstrap, settings.app_id,
                                           _member_topics(settings))
        proc, started = _start_worker(settings, log)
        try:
            out["restart_first_event_s"], out["restart_caught_up_s"], _ = await _wait_caught_up(
                proc, settings, baseline=baseline, started=started, timeout_s=timeout_s, log=log)
            out["restart_rss_mb"] = _rss_mb(proc.pid)[0]
        finally:
            _stop(proc, grace_s=120)
        return out

    return asyncio.run(measure())


# -- report and main -------------------------------------------------------------------------------


def format_table(results: dict[str, VariantResult], errors: dict[str, str]) -> Iterator[str]:
    base = results.get("b")
    yield f"{'variant':<46} {'events/s':>10} {'wall ev/s':>10} {'× (b)':>7} {'first s':>8} {'peak MiB':>9}"
    for key in ("a", "b", "d", "c", "cb"):
        if key in errors:
            yield f"{LABELS[key]} {VARIANTS[key]:<42} FAILED: {errors[key]}"
        if key not in results:
            continue
        r = results[key]
        ratio = f"{r.rate / base.rate:7.1f}" if base else f"{'-':>7}"
        rss = f"{r.peak_rss_mb:9.0f}" if r.peak_rss_mb is not None else f"{'-':>9}"
        yield f"{LABELS[key]} {r.name:<42} {r.rate:10.0f} {r.wall_rate:10.0f} {ratio} {r.first_s:8.1f} {rss}"
    for key in ("c", "cb"):
        if key in results:
            for other in ("d", "b", "a", "c"):
                if other in results and other != key:
                    yield f"{LABELS[key]}/({other}) = {results[key].rate / results[other].rate:.2f}"


def format_medians(rounds: list[dict[str, VariantResult]]) -> Iterator[str]:
    """Per-variant median rate over the rounds, and the median of each round's (c) ratios (a ratio from one
    round compares runs made minutes apart; the machine's speed drifts more between rounds than within)."""
    yield f"\nmedians over {len(rounds)} rounds"
    for key in ("a", "b", "d", "c", "cb"):
        rates = [r[key].rate for r in rounds if key in r]
        if rates:
            yield f"{LABELS[key]} {VARIANTS[key]:<42} {statistics.median(rates):10.0f}   rounds: " + \
                  ", ".join(f"{rate:.0f}" for rate in rates)
    for key, other in (("c", "d"), ("c", "b"), ("c", "a"), ("cb", "a"), ("cb", "c")):
        ratios = [r[key].rate / r[other].rate for r in rounds if key in r and other in r]
        if ratios:
            yield f"{LABELS[key]}/({other}) median {statistics.median(ratios):.2f}   rounds: " + \
                  ", ".join(f"{ratio:.2f}" for ratio in ratios)


def _cleanup(*, bootstrap: str, tag: str, workdir: Path, settings: Settings | None) -> None:
    deleted = asyncio.run(delete_topics_tagged(bootstrap, tag))
    print(f"cleanup: deleted {len(deleted)} topics tagged {tag}", file=sys.stderr)
    if settings is not None and settings.archive_enabled:
        try:
            _clickhouse(settings, f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")
        except Exception as exc:  # cleanup must not hide the results
            print(f"cleanup: ClickHouse database {settings.clickhouse_database} not dropped: {exc}",
                  file=sys.stderr)
    shutil.rmtree(workdir, ignore_errors=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=500_000, help="beacons to pre-load (default 500000)")
    parser.add_argument("--members", type=int, default=100_000, help="member pool (default 100000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--variants", default="a,b,d,c,cb",
                        help="subset of a,b,d,c,cb (cb = (c′), batched records), run in the order given")
    parser.add_argument("--batch-rate", type=int, default=8000,
                        help="(c′): beacons/s arriving at the collector, which with its 50 ms window sets the "
                             "batch size (default 8000: ~100 beacons per record on 4 partitions)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the variants this many times (fresh groups each round); prints medians")
    parser.add_argument("--bootstrap", default=Settings.from_env().kafka_bootstrap)
    parser.add_argument("--no-archive", action="store_true", help="(c): worker without its archiver")
    parser.add_argument("--archive-process", action="store_true",
                        help="(c): the archiver as its own process beside the worker (python -m kagoflow.archive)")
    parser.add_argument("--timeout", type=float, default=0.0, help="per variant, s (default scales with N)")
    parser.add_argument("--keep", action="store_true", help="keep topics, data dirs and logs (prints where)")
    parser.add_argument("--rss-members", type=int, default=0,
                        help="instead: worker RSS with this many members in its tables, and restart time")
    parser.add_argument("--rss-new-events", type=int, default=1000, help="beacons produced before restarting")
    for name in ("--child", "--topic", "--group", "--datadir", "--result"):  # internal: variant processes
        parser.add_argument(name, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.child:
        args.events = int(args.events)
        return _run_child(args)
    tag = f"kfbench-{time.strftime('%m%d%H%M%S')}-{os.getpid()}"
    prefix = f"{tag}-"
    workdir = Path(tempfile.mkdtemp(prefix=f"{tag}-"))
    timeout_s = args.timeout or 120 + args.events / 500
    kf_settings: Settings | None = None
    try:
        if args.rss_members:
            kf_settings = kagoflow_settings(tag=tag, prefix=prefix, workdir=workdir, bootstrap=args.bootstrap,
                                            archive=not args.no_archive)
            out = run_rss_mode(members=args.rss_members, settings=kf_settings, seed=args.seed,
                               new_events=args.rss_new_events,
                               timeout_s=args.timeout or 120 + args.rss_members / 200)
            for key, value in out.items():
                print(f"{key:<24} {value:12.1f}")
            return 0
        topic = Topics(prefix).beacons
        asyncio.run(create_topic(args.bootstrap, topic))
        began = time.time()
        # Event times end now: the worker's abandonment timers (>= 15 min) stay in the future during the run.
        beacons = list(generate_beacons(members=args.members, events=args.events, seed=args.seed,
                                        start_ms=int(began * 1000) - 600_000, span_s=600))
        keys = [v.strip() for v in args.variants.split(",") if v.strip()]
        for key in keys:
            if key not in VARIANTS:
                raise SystemExit(f"unknown variant {key!r} (use a, b, c, d, cb)")
        if keys != ["cb"]:
            n = asyncio.run(produce(args.bootstrap, topic, beacons))
            print(f"pre-loaded {n} beacons into {topic} in {time.time() - began:.1f}s", file=sys.stderr)
        else:
            n = len(beacons)
        # (c′): the same beacons as the collector batches them, produced to a fresh topic once the worker runs
        # (its start-up on a loaded machine can outlast the whole run of batched records)
        window = max(1, args.batch_rate * 50 // 1000)
        batched = list(batch_records(beacons, window=window)) if "cb" in keys else []
        if batched:
            print(f"{n} beacons as {len(batched)} batch records ({n / len(batched):.1f} per record, windows of "
                  f"{window})", file=sys.stderr)
        rounds: list[dict[str, VariantResult]] = []
        failed = False
        for round_ in range(1, args.rounds + 1):
            results: dict[str, VariantResult] = {}
            errors: dict[str, str] = {}
            for key in keys:
                print(f"round {round_}: running ({key}) {VARIANTS[key]} ...", file=sys.stderr)
                try:
                    if key in ("c", "cb"):
                        key_prefix = prefix if key == "c" else f"{tag}-batched-r{round_}-"
                        feed = None
                        if key == "cb":
                            key_topic = Topics(key_prefix).beacons
                            asyncio.run(create_topic(args.bootstrap, key_topic))
                            feed = functools.partial(produce_batches, args.bootstrap, key_topic, batched)
                        kf_settings = kagoflow_settings(tag=tag, prefix=key_prefix, workdir=workdir,
                                                        bootstrap=args.bootstrap, archive=not args.no_archive,
                                                        round_=round_, name=key)
                        results[key] = run_kagoflow_variant(Topics(key_prefix).beacons, n, kf_settings,
                                                            timeout_s=timeout_s, label=key, feed=feed,
                                                            archive_process=args.archive_process)
                    else:
                        results[key] = run_child_variant(key, topic=topic, n=n, bootstrap=args.bootstrap,
                                                         tag=tag, workdir=workdir, timeout_s=timeout_s,
                                                         round_=round_)
                except (RuntimeError, TimeoutError, OSError) as exc:
                    errors[key] = str(exc)
                print(f"  {results[key].rate:.0f} events/s" if key in results else f"  failed: {errors[key]}",
                      file=sys.stderr)
            round_label = f", round {round_} of {args.rounds}" if args.rounds > 1 else ""
            print(f"\n{n} beacons, {args.members} members, {PARTITIONS} partitions, seed {args.seed}{round_label}")
            for line in format_table(results, errors):
                print(line)
            rounds.append(results)
            failed = failed or bool(errors)
        if args.rounds > 1:
            for line in format_medians(rounds):
                print(line)
        return 1 if failed else 0
    finally:
        if args.keep:
            print(f"kept: topics {tag}*, work dir {workdir}", file=sys.stderr)
        else:
            _cleanup(bootstrap=args.bootstrap, tag=tag, workdir=workdir, settings=kf_settings)


if __name__ == "__main__":
    sys.exit(main())
