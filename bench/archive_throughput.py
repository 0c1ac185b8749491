"""Archive throughput: N beacons in Kafka → archiver → ClickHouse, on the local stack.

    .venv/bin/python bench/archive_throughput.py [--beacons 200000] [--partitions 4] [--batch-rows 20000]

Produces N ~250-byte beacons to a fresh topic, then times one archiver (default settings otherwise) from
``run()`` until every row is stored and committed; also times parse + row mapping alone. Uses its own topic,
group and ClickHouse database and removes them afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from dataclasses import replace

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from kagoflow.adapters.clickhouse import ClickHouseArchive
from kagoflow.archive import Archiver
from kagoflow.archive.rows import beacon_row
from kagoflow.settings import Settings

T0 = 1_709_222_400_000
TYPES = ("view", "view", "view", "cart_add", "favorite_add", "cart_remove")


def beacon(i: int) -> bytes:
    return orjson.dumps({"event_id": f"bench-{i}", "member_id": f"member-{i % 50_000}", "type": TYPES[i % 6],
                         "ts": T0 + i * 10, "product_id": f"sku-{i % 5000}", "price": 1000 + i % 900,
                         "quantity": 1 + i % 3, "device": "smartphone", "shop_id": "default"})


async def produce(settings: Settings, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=20,
                                max_batch_size=1 << 20, acks=1)
    await producer.start()
    try:
        for i in range(count):
            await producer.send(topic, beacon(i), key=f"member-{i % 50_000}".encode())
        await producer.flush()
    finally:
        await producer.stop()


async def main(count: int, partitions: int, batch_rows: int) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic, group, database = f"bench-beacons-{suffix}", f"bench-archive-{suffix}", f"bench_archive_{suffix}"
    settings = replace(Settings.from_env(), clickhouse_database=database, archive_batch_rows=batch_rows)
    values = [beacon(i) for i in range(20_000)]
    started = time.perf_counter()
    for i, value in enumerate(values):
        beacon_row(value, 0, i, None)
    parse_rate = len(values) / (time.perf_counter() - started)
    print(f"parse + row mapping alone: {parse_rate:,.0f} beacons/s")

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    archive = ClickHouseArchive.from_settings(settings)
    try:
        started = time.perf_counter()
        await produce(settings, topic, count)
        print(f"produced {count:,} beacons in {time.perf_counter() - started:.1f} s")
        archiver = Archiver(settings, archive=archive, topics={topic: "beacons"}, group_id=group)
        await archiver.start()  # schema + group join are not part of the measurement
        started = time.perf_counter()
        task = asyncio.create_task(archiver.run())
        while archiver.metrics.rows_inserted.get("beacons", 0) < count or archiver.pending_rows:
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        await archiver.stop()
        await task
        stored = archive.query(f"SELECT count() FROM {archive.table('v_beacons')}")[0][0]
        m = archiver.metrics
        print(f"archived {stored:,} rows in {elapsed:.2f} s = {count / elapsed:,.0f} rows/s "
              f"({m.batches} batches of <= {batch_rows} rows, {partitions} partitions, retries {m.retries}, "
              f"{m.insert_seconds:.2f} s of it in ClickHouse inserts)")
    finally:
        archive.query(f"DROP DATABASE IF EXISTS {database}")
        archive.close()
        await admin.delete_topics([topic])
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beacons", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-rows", type=int, default=Settings().archive_batch_rows)
    args = parser.parse_args()
    asyncio.run(main(args.beacons, args.partitions, args.batch_rows))
