"""The worker's link and the member engine, connected in-process over a socket pair (no Kafka, no Faust).

What must hold whatever the timing: a record is acked only after the bucket values covering it are in the
worker's table; acks come in order per partition; results the engine made before it saw a partition's
latest assignment never reach the table; queries see the engine's live state.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import Any

import orjson

from kagoflow.core.behaviour import MemberState
from kagoflow.core.caps import InMemoryCapStore
from kagoflow.loading import load_ruleset
from kagoflow.settings import Settings
from kagoflow.streams.topics import Topics
from kagoflow.worker import buckets
from kagoflow.worker.engine import EngineServer, RecordingTable, member_topics
from kagoflow.worker.engine_link import EngineLink
from kagoflow.worker.processor import make_processor

NAMES = Topics("")
T0 = 1_790_000_000_000


class Outbox:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes]] = []

    async def send(self, topic: str, *, key: bytes | None, value: bytes, partition: int | None = None) -> Any:
        self.records.append((topic, value))
        return asyncio.sleep(0)

    async def send_many(self, topic: str, records: Sequence[tuple[bytes | None, bytes]], *,
                        partition: int | None = None) -> list[Any]:
        self.records += [(topic, value) for _, value in records]
        return []


class WorkerTable(dict[bytes, bytes]):
    """The Faust table's stand-in: remembers how many values it held whenever a record was acked."""


class Event:
    def __init__(self, table: WorkerTable, acked: list[tuple[str, int]], name: str) -> None:
        self.table, self.acked, self.name = table, acked, name

    def ack(self) -> bool:
        self.acked.append((self.name, len(self.table)))
        return True


def beacon(n: int, member: str, **extra: Any) -> bytes:
    return orjson.dumps({"event_id": f"e{n}", "member_id": member, "type": "view", "product_id": "p1",
                         "ts": T0 + n, **extra})


async def _pair(clock: list[int]) -> tuple[EngineLink, EngineServer, asyncio.Task[None]]:
    settings = Settings(state_flush_seconds=1.0, state_buckets=8)
    ruleset = load_ruleset(settings)
    table = RecordingTable()
    processor = make_processor(settings, ruleset, table=table, catalog={}, caps=InMemoryCapStore(),
                               outbox=Outbox())
    processor.clock = lambda: clock[0]
    ours, theirs = socket.socketpair()
    link_reader, link_writer = await asyncio.open_connection(sock=ours)
    engine_reader, engine_writer = await asyncio.open_connection(sock=theirs)
    server = EngineServer(processor, table, member_topics(NAMES), engine_writer)
    task = asyncio.ensure_future(server.run(engine_reader))
    link = EngineLink(topics=member_topics(NAMES))
    link.attach(link_reader, link_writer)
    return link, server, task


async def _settle(link: EngineLink, partition: int, table: WorkerTable) -> None:
    await link.send_batch()
    for _ in range(50):
        await asyncio.sleep(0.01)
        link.apply(partition, table)


def test_records_are_acked_in_order_only_after_their_buckets_are_stored() -> None:
    async def scenario() -> tuple[list[tuple[str, int]], WorkerTable, MemberState | None]:
        clock = [T0]
        link, _, task = await _pair(clock)
        table, acked = WorkerTable(), []
        await link.dump(table)  # nothing stored yet: assigns partition 0 empty
        link.assign({0})
        await link.dump(table)
        for n in range(5):
            link.submit(Event(table, acked, f"r{n}"), NAMES.beacons, 0, n, T0 + n, beacon(n, "m1"), b"m1")
        await _settle(link, 0, table)
        assert acked == []  # no flush yet: nothing may be acked
        clock[0] += 2_000  # past the flush interval: the next record (a tick) flushes and acks
        link.submit(Event(table, acked, "tick"), NAMES.ticks, 0, 0, clock[0], b'{"now_ms": 0}', None)
        await _settle(link, 0, table)
        state = MemberState.from_bytes(raw) if (raw := await link.query("s", b"m1")) else None
        await link.stop()
        task.cancel()
        return acked, table, state

    acked, table, state = asyncio.run(scenario())
    assert [name for name, _ in acked] == ["r0", "r1", "r2", "r3", "r4", "tick"]
    assert all(stored >= 1 for _, stored in acked), "acked before its bucket was in the worker's table"
    members = [m for _, m, _ in buckets.scan(iter(table.items()), buckets=8)]
    assert members == ["m1"]
    assert state is not None and state.product_state("p1") == "view" and state.last_access == T0 + 4


def test_results_made_before_a_reassignment_never_reach_the_table() -> None:
    async def scenario() -> tuple[WorkerTable, list[tuple[str, int]], dict[str, Any]]:
        clock = [T0]
        link, _, task = await _pair(clock)
        table, acked = WorkerTable(), []
        link.assign({1})
        await link.dump(table)
        for n in range(3):
            link.submit(Event(table, acked, f"old{n}"), NAMES.beacons, 1, n, T0 + n, beacon(n, "m2"), b"m2")
        await _settle(link, 1, table)
        clock[0] += 2_000  # the tick flushes; the link takes no turn of the loop before the reassignment
        link.submit(Event(table, acked, "tick"), NAMES.ticks, 1, 0, clock[0], b"{}", None)
        await link.send_batch()
        await link.revoke({1})  # before the worker stored anything: the flush's results are stale now
        link.assign({1})
        await link.dump(table)
        await _settle(link, 1, table)
        metrics = orjson.loads(await link.query("m"))
        await link.stop()
        task.cancel()
        return table, acked, metrics

    table, acked, metrics = asyncio.run(scenario())
    assert metrics["members"]["events"] == 4 and metrics["members"]["flushes"] == 1 and metrics["archive"] is None
    assert table == {} and acked == []  # replayed by Kafka instead: unacked, unstored


def test_tombstones_and_wrong_keys_cross_the_link_and_are_parked_before_their_ack() -> None:
    async def scenario() -> tuple[list[tuple[str, int]], list[dict[str, Any]], MemberState | None]:
        clock = [T0]
        link, server, task = await _pair(clock)
        table, acked = WorkerTable(), list[tuple[str, int]]()
        link.assign({0})
        await link.dump(table)
        link.submit(Event(table, acked, "null"), NAMES.beacons, 0, 0, T0, None, b"m1")
        link.submit(Event(table, acked, "nokey"), NAMES.members, 0, 1, T0, None, None)
        link.submit(Event(table, acked, "wrong"), NAMES.beacons, 0, 2, T0, beacon(2, "m1"), b"m3")
        link.submit(Event(table, acked, "good"), NAMES.beacons, 0, 3, T0, beacon(3, "m1"), b"m1")
        await _settle(link, 0, table)
        clock[0] += 2_000
        link.submit(Event(table, acked, "tick"), NAMES.ticks, 0, 0, clock[0], None, None)
        await _settle(link, 0, table)
        assert not task.done(), task.exception()
        state = MemberState.from_bytes(raw) if (raw := await link.query("s", b"m1")) else None
        await link.stop()
        task.cancel()
        outbox = server.processor.outbox
        assert isinstance(outbox, Outbox)
        return acked, [orjson.loads(value) for topic, value in outbox.records if topic.endswith(".dlq")], state

    acked, letters, state = asyncio.run(scenario())
    assert [name for name, _ in acked] == ["null", "nokey", "wrong", "good", "tick"]
    assert [(letter["offset"], letter["reason"][:18]) for letter in letters] == [
        (0, "record: null value"), (1, "record: null value"), (2, "key: b'm3' is not ")]
    assert letters[0]["key_text"] == "m1" and letters[1]["key_base64"] is None
    assert state is not None and set(state.products) == {"p1"}


def test_a_revocation_returns_only_after_the_engine_dropped_the_partition() -> None:
    """Faust completes the rebalance when ``revoke`` returns: by then the engine must have handled every record
    of the partition sent before and forgotten the partition, so it never decides for it beside its next owner."""
    async def scenario() -> tuple[int, set[int], int]:
        clock = [T0]
        link, server, task = await _pair(clock)
        table, acked = WorkerTable(), []
        link.assign({1, 2})
        await link.dump(table)
        for n in range(200):
            link.submit(Event(table, acked, f"r{n}"), NAMES.beacons, 1 + n % 2, n, T0 + n, beacon(n, f"m{n}"),
                        f"m{n}".encode())
        await link.revoke({1})
        handled, owned, epoch = server.processor.metrics.events, set(server.processor.books), server.epoch
        await link.stop()
        task.cancel()
        return handled, owned, epoch

    handled, owned, epoch = asyncio.run(scenario())
    assert handled == 200, "records sent before the revocation were still unhandled when it returned"
    assert owned == {2} and epoch == 2
