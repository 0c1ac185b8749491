"""The archive consumer against real Kafka and ClickHouse: flow, bad records, crash + replay, outage.

Every test uses its own topics, consumer group and ClickHouse database, so it never sees (or disturbs) other
sessions' data on the shared stack. The outage test stops a private ClickHouse server, not the stack's.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from kagoflow.adapters.clickhouse import ClickHouseArchive
from kagoflow.archive import Archiver
from kagoflow.core.decisions import Decision
from kagoflow.settings import PROJECT_ROOT, Settings
from tests.archive import chserver

pytestmark = pytest.mark.integration
T0 = 1_709_222_400_000


def beacon(i: int, *, prefix: str = "e") -> bytes:
    return orjson.dumps({"event_id": f"{prefix}{i}", "member_id": f"m{i % 97}", "type": "cart_add",
                         "ts": T0 + i, "product_id": f"sku-{i % 13}", "price": 1000 + i % 7, "device": "pc"})


async def produce(settings: Settings, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=str(i % 97).encode())
                   for i, value in enumerate(values)]
        await producer.flush()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def wait_until(check: Callable[[], Awaitable[bool]], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.2)


async def partitions(admin: AIOKafkaAdminClient, topics: list[str]) -> list[TopicPartition]:
    described = await admin.describe_topics(topics)
    tps = [TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]]
    assert {tp.topic for tp in tps} == set(topics)
    return tps


async def fully_committed(settings: Settings, group: str, topics: list[str]) -> bool:
    """The group's committed offsets equal the end offsets of every partition of ``topics``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    await admin.start()
    try:
        tps = await partitions(admin, topics)
        ends = await consumer.end_offsets(tps)
        committed = await admin.list_consumer_group_offsets(group)
        return all(end == 0 or (tp in committed and committed[tp].offset == end) for tp, end in ends.items())
    finally:
        await admin.close()
        await consumer.stop()


async def rewind_group(settings: Settings, group: str, topic: str) -> None:
    """Commit offset 0 everywhere: the next archiver of ``group`` re-reads (replays) the whole topic."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        tps = await partitions(admin, [topic])
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.commit(dict.fromkeys(tps, 0))
    finally:
        await consumer.stop()


def counts(archive: ClickHouseArchive, table: str, key: str) -> tuple[int, int]:
    """(rows in the deduplicated view, distinct ``key`` values in the raw table)."""
    view = archive.query(f"SELECT count() FROM {archive.table('v_' + table)}")[0][0]
    distinct = archive.query(f"SELECT uniqExact({key}) FROM {archive.table(table)}")[0][0]
    return int(view), int(distinct)


@pytest.fixture
def archive(stack: Settings, unique_name: Callable[[str], str]) -> Iterator[ClickHouseArchive]:
    archive = ClickHouseArchive(host=stack.clickhouse_host, port=stack.clickhouse_port,
                                database=unique_name("archive"))
    try:
        yield archive
    finally:
        archive.query(f"DROP DATABASE IF EXISTS {archive.database}")
        archive.close()


@pytest.fixture
def fast(stack: Settings, archive: ClickHouseArchive) -> Settings:
    return replace(stack, clickhouse_database=archive.database, archive_batch_rows=500,
                   archive_batch_seconds=0.3)


async def test_every_topic_flows_to_clickhouse_and_bad_records_are_skipped(
        fast: Settings, archive: ClickHouseArchive, kafka_topic: Callable[..., str],
        unique_name: Callable[[str], str]) -> None:
    topics = {kind: kafka_topic(kind, partitions=2) for kind in
              ("beacons", "members", "catalog", "orders", "mail_decisions", "engagement")}
    bad_beacons = [b"not json", b"[]",
                   orjson.dumps({"event_id": "x", "member_id": "m", "type": "clickk", "ts": T0}),
                   orjson.dumps({"event_id": "y", "member_id": "m", "type": "view", "ts": "2024-01-01"})]
    good = [beacon(i) for i in range(1500)]
    await produce(fast, topics["beacons"], good[:700] + bad_beacons + good[700:])
    await produce(fast, topics["members"], [orjson.dumps({"member_id": f"m{i}", "email": f"m{i}@example.jp",
                                                          "opt_in": True}) for i in range(5)])
    await produce(fast, topics["catalog"], [orjson.dumps({"product_id": f"sku-{i}", "price": 500, "stock": i})
                                            for i in range(4)])
    order = {"order_id": "o1", "member_id": "m1", "status": "ordered", "ordered_at": T0, "total": 1200}
    await produce(fast, topics["orders"], [orjson.dumps(order)])
    decision = Decision(member_id="m1", rule_id="cart-1h", kind="abandonment", status="sent", reason="",
                        products=("sku-1",), due_ms=T0, at_ms=T0, episode="e1", template="cart")
    await produce(fast, topics["mail_decisions"], [decision.to_bytes()] * 2)  # a producer retry: one row
    await produce(fast, topics["engagement"], [
        orjson.dumps({"event": "open", "decision_key": decision.key, "member_id": "m1", "at_ms": T0 + 5}),
        orjson.dumps({"event": "teleport", "member_id": "m1", "at_ms": T0})])

    group = unique_name("archive-group")
    archiver = Archiver(fast, archive=archive, topics={name: kind for kind, name in topics.items()},
                        group_id=group)
    await archiver.start()
    task = asyncio.create_task(archiver.run())
    try:
        await wait_until(lambda: fully_committed(fast, group, list(topics.values())), timeout=60,
                         what="all offsets committed")
    finally:
        await archiver.stop()
        await task
    assert counts(archive, "beacons", "event_id") == (1500, 1500)
    for table, expected in (("members", 5), ("catalog", 4), ("orders", 1), ("mail_decisions", 1),
                            ("engagement", 1)):
        view = archive.query(f"SELECT count() FROM {archive.table('v_' + table)}")[0][0]
        assert view == expected, table
    metrics = archiver.metrics.snapshot()
    assert metrics["records_skipped"] == {topics["beacons"]: 4, topics["engagement"]: 1}
    assert metrics["rows_inserted"]["beacons"] == 1500
    assert metrics["retries"] == 0 and metrics["batches"] >= 3  # 1500 beacons / 500 rows per batch
    assert "beacons" in metrics["last_skip_reason"] or "engagement" in metrics["last_skip_reason"]


async def test_cancelled_archiver_resumes_and_replays_without_duplicates(
        fast: Settings, archive: ClickHouseArchive, kafka_topic: Callable[..., str],
        unique_name: Callable[[str], str]) -> None:
    topic, group = kafka_topic("beacons", partitions=4), unique_name("archive-group")
    await produce(fast, topic, [beacon(i) for i in range(6000)])

    first = Archiver(fast, archive=archive, topics={topic: "beacons"}, group_id=group)
    task = asyncio.create_task(first.run())
    await wait_until(lambda: _true(first.metrics.rows_inserted.get("beacons", 0) >= 1500), timeout=60,
                     what="first rows archived")
    task.cancel()  # a crash: whatever is batched or inserted-but-uncommitted is not acknowledged
    with pytest.raises(asyncio.CancelledError):
        await task
    await first.stop(flush=False)
    await produce(fast, topic, [beacon(i) for i in range(6000, 8000)])

    async def archive_all() -> Archiver:
        own = ClickHouseArchive(host=fast.clickhouse_host, port=fast.clickhouse_port,
                                database=archive.database)
        archiver = Archiver(fast, archive=own, topics={topic: "beacons"}, group_id=group)
        task = asyncio.create_task(archiver.run())
        try:
            await wait_until(lambda: fully_committed(fast, group, [topic]), timeout=90, what="caught up")
        finally:
            await archiver.stop()
            await task
        return archiver

    await archive_all()
    assert counts(archive, "beacons", "event_id") == (8000, 8000)
    await rewind_group(fast, group, topic)  # replay everything once more
    replay = await archive_all()
    assert replay.metrics.rows_inserted["beacons"] == 8000
    assert counts(archive, "beacons", "event_id") == (8000, 8000)


async def _true(value: bool) -> bool:
    return value


async def test_killed_process_restarts_without_loss_or_duplicates(
        fast: Settings, archive: ClickHouseArchive, kafka_topic: Callable[..., str],
        unique_name: Callable[[str], str]) -> None:
    topic, group = kafka_topic("beacons", partitions=4), unique_name("archive-group")
    await produce(fast, topic, [beacon(i) for i in range(5000)])
    env = {**os.environ, "KAGOFLOW_KAFKA_BOOTSTRAP": fast.kafka_bootstrap,
           "KAGOFLOW_CLICKHOUSE_HOST": fast.clickhouse_host,
           "KAGOFLOW_CLICKHOUSE_PORT": str(fast.clickhouse_port),
           "KAGOFLOW_CLICKHOUSE_DATABASE": archive.database, "KAGOFLOW_ARCHIVE_BATCH_ROWS": "500",
           "KAGOFLOW_ARCHIVE_BATCH_SECONDS": "0.3", "KAGOFLOW_LOG_LEVEL": "warning"}
    command = [sys.executable, "-m", "kagoflow.archive", "--topic", f"{topic}=beacons", "--group", group]

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    async def stored() -> int:
        return counts(archive, "beacons", "event_id")[0] if _has_schema(archive) else 0

    proc = spawn()
    try:
        await wait_until(lambda: _ge(stored(), 1000), timeout=60, what="first rows archived")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        await produce(fast, topic, [beacon(i) for i in range(5000, 7000)])
        proc = spawn()
        await wait_until(lambda: fully_committed(fast, group, [topic]), timeout=120,
                         what="caught up after kill")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert counts(archive, "beacons", "event_id") == (7000, 7000)


def _has_schema(archive: ClickHouseArchive) -> bool:
    rows = archive.query("SELECT count() FROM system.tables WHERE database = %(db)s AND name = 'v_beacons'",
                         {"db": archive.database})
    return bool(rows[0][0])


async def _ge(value: Awaitable[int], minimum: int) -> bool:
    return await value >= minimum


@pytest.mark.skipif(not chserver.available(), reason="clickhouse-server is not installed")
async def test_clickhouse_outage_pauses_the_archive_and_loses_nothing(
        stack: Settings, tmp_path: Path, kafka_topic: Callable[..., str],
        unique_name: Callable[[str], str]) -> None:
    server = chserver.PrivateClickHouse(tmp_path / "clickhouse")
    server.start()
    try:
        settings = replace(stack, clickhouse_port=server.tcp_port, clickhouse_database="kagoflow",
                           archive_batch_rows=500, archive_batch_seconds=0.3)
        archive = ClickHouseArchive(port=server.tcp_port, connect_timeout=1.0)
        topic, group = kafka_topic("beacons", partitions=4), unique_name("archive-group")
        archiver = Archiver(settings, archive=archive, topics={topic: "beacons"}, group_id=group,
                            max_backoff_seconds=5.0)
        task = asyncio.create_task(archiver.run())
        await produce(settings, topic, [beacon(i) for i in range(3000)])
        await wait_until(lambda: fully_committed(settings, group, [topic]), timeout=60, what="before outage")

        server.stop()
        await produce(settings, topic, [beacon(i) for i in range(3000, 6000)])
        most_pending, deadline = 0, time.monotonic() + 30
        while time.monotonic() < deadline:  # ClickHouse is down for 30 s
            most_pending = max(most_pending, archiver.pending_rows)
            assert not task.done()
            await asyncio.sleep(0.5)
        assert not await fully_committed(settings, group, [topic])  # nothing acknowledged while down
        assert archiver.metrics.retries >= 5 and archiver.metrics.last_error
        assert most_pending <= settings.archive_batch_rows  # the backlog waits in Kafka, not in memory

        server.start()
        await wait_until(lambda: fully_committed(settings, group, [topic]), timeout=60, what="after outage")
        await archiver.stop()
        await task
        reader = ClickHouseArchive(port=server.tcp_port)
        assert counts(reader, "beacons", "event_id") == (6000, 6000)
        reader.close()
    finally:
        server.stop()
