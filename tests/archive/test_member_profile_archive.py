"""The profile fields the core segments on (SPEC §13: ``birthday``, ``gender``, ``registered_at``) reach the
ClickHouse ``members`` table, through Kafka and the archiver, also in an installation whose table predates them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import orjson
import pytest

from kagoflow.adapters.clickhouse import ClickHouseArchive
from kagoflow.archive import Archiver
from kagoflow.archive.rows import COLUMNS, member_row
from kagoflow.settings import Settings
from tests.archive.test_archiver import archive, fast, fully_committed, produce, wait_until  # noqa: F401

T0 = 1_709_222_400_000
REGISTERED = 1_600_000_000_123  # 2020-09-13T12:26:40.123Z
OLD_MEMBERS = """CREATE TABLE {db}.members
(
    ts_ms Int64,
    ts DateTime('UTC') DEFAULT toDateTime(intDiv(ts_ms, 1000), 'UTC'),
    date Date DEFAULT toDate(toDateTime(intDiv(ts_ms, 1000), 'UTC')),
    member_id String,
    email String,
    opt_in UInt8,
    name Nullable(String),
    device String,
    locale Nullable(String),
    purchase_count Nullable(UInt32),
    kafka_partition UInt16,
    kafka_offset UInt64,
    archived_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(date)
ORDER BY (member_id, kafka_partition, kafka_offset)"""


def test_member_row_carries_the_profile_fields() -> None:
    value = orjson.dumps({"member_id": "m1", "email": "m1@example.jp", "opt_in": True, "ts": T0,
                          "birthday": "1960-02-29", "gender": "female", "registered_at": REGISTERED})
    row = dict(zip(COLUMNS["members"], member_row(value, 0, 7, None), strict=True))
    assert (row["birthday"], row["gender"], row["registered_at"]) == ("1960-02-29", "female", REGISTERED // 1000)
    bare = dict(zip(COLUMNS["members"], member_row(b'{"member_id":"m2","email":"m2@example.jp","opt_in":true,"ts":1}',
                                                        0, 8, None), strict=True))
    assert (bare["birthday"], bare["gender"], bare["registered_at"]) == (None, None, None)


@pytest.mark.integration
async def test_profile_fields_reach_an_older_members_table(
        fast: Settings, archive: ClickHouseArchive, kafka_topic: Callable[..., str],  # noqa: F811
        unique_name: Callable[[str], str]) -> None:
    archive.query(f"CREATE DATABASE {archive.database}")
    archive.query(OLD_MEMBERS.format(db=archive.database))  # as an installation made before these fields
    archive.insert("members", ("ts_ms", "member_id", "email", "opt_in", "device", "kafka_partition",
                               "kafka_offset"), [(T0 - 1, "m0", "m0@example.jp", 1, "", 0, 0)])
    topic = kafka_topic("members", partitions=1)
    await produce(fast, topic, [
        orjson.dumps({"member_id": "m1", "email": "m1@example.jp", "opt_in": True, "ts": T0,
                      "birthday": "1960-02-29", "gender": "female", "registered_at": REGISTERED}),
        orjson.dumps({"member_id": "m2", "email": "m2@example.jp", "opt_in": True, "ts": T0 + 1,
                      "gender": "other", "registered_at": "2024-03-01T09:00:00+09:00"}),
    ])
    group = unique_name("archive-group")
    archiver = Archiver(fast, archive=archive, topics={topic: "members"}, group_id=group)
    await archiver.start()
    task = asyncio.create_task(archiver.run())
    try:
        await wait_until(lambda: fully_committed(fast, group, [topic]), timeout=60, what="offsets committed")
    finally:
        await archiver.stop()
        await task
    rows = archive.query(f"SELECT member_id, birthday, gender, registered_at FROM {archive.table('v_members')} "
                         "ORDER BY member_id")
    utc = UTC
    assert [tuple(row) for row in rows] == [
        ("m0", None, None, None),
        ("m1", "1960-02-29", "female", datetime.fromtimestamp(REGISTERED // 1000, utc)),
        ("m2", None, "other", datetime(2024, 3, 1, 0, 0, tzinfo=utc)),
    ]
