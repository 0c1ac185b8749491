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
_KEEP: list[asyncio.StreamWriter] = []
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
    control_ours, control_theirs = socket.socketpair()
    link_reader, link_writer = await asyncio.open_connection(sock=ours)
    engine_reader, engine_writer = await asyncio.open_connection(sock=theirs)
    _, control_writer = await asyncio.open_connection(sock=control_ours)
    control_reader, unused_writer = await asyncio.open_connection(sock=control_theirs)
    _KEEP.append(unused_writer)  # a StreamWriter closes its socket when collected
    server = EngineServer(processor, table, member_topics(NAMES), engine_writer)
    task = asyncio.ensure_future(server.run(engine_reader, control_reader))
    link = EngineLink(topics=member_topics(NAMES))
    link.attach(link_reader, link_writer, control_writer)
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
        clock[0] += 2_000  # the tick flushes; the link applies nothing before the reassignment
        link.submit(Event(table, acked, "tick"), NAMES.ticks, 1, 0, clock[0], b"{}", None)
        await link.send_batch()
        while orjson.loads(await link.query("m"))["members"]["flushes"] < 1:  # the engine flushed ...
            await asyncio.sleep(0.01)
        await link.revoke({1})  # ... but the worker stored nothing yet: the flush's results are stale now
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
    """Faust completes the rebalance when ``revoke`` returns: by then the engine must have handled or dropped
    every record of the partition sent before and forgotten the partition, so it never decides for it beside
    its next owner (which replays the dropped records)."""
    async def scenario() -> tuple[list[int], int, set[int], int]:
        clock = [T0]
        link, server, task = await _pair(clock)
        handled: list[int] = []
        on_event = server.processor.on_event

        async def recording(**record: Any) -> None:
            handled.append(record["partition"])
            await on_event(**record)

        server.processor.on_event = recording  # type: ignore[method-assign]
        table, acked = WorkerTable(), []
        link.assign({1, 2})
        await link.dump(table)
        for n in range(200):
            link.submit(Event(table, acked, f"r{n}"), NAMES.beacons, 1 + n % 2, n, T0 + n, beacon(n, f"m{n}"),
                        f"m{n}".encode())
        await link.revoke({1})
        at_revoke = len(handled)
        owned, epoch = set(server.processor.books), server.epoch
        for _ in range(100):
            if handled.count(2) == 100:
                break
            await asyncio.sleep(0.01)
        await link.stop()
        task.cancel()
        return handled, at_revoke, owned, epoch

    handled, at_revoke, owned, epoch = asyncio.run(scenario())
    assert 1 not in handled[at_revoke:], "a record of the revoked partition was handled after the revocation"
    assert handled.count(2) == 100, "records of the partition kept were lost"
    assert owned == {2} and epoch == 2


class HeldOutbox(Outbox):
    """Kafka (or the decision gate) holding every record until ``release``: a flush waits for it."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def send(self, topic: str, *, key: bytes | None, value: bytes, partition: int | None = None) -> Any:
        self.records.append((topic, value))
        return asyncio.ensure_future(self.release.wait())


Held = tuple[EngineLink, EngineServer, "asyncio.Task[None]", HeldOutbox, WorkerTable, list[tuple[str, int]]]


async def _flush_waiting(clock: list[int], assigned: set[int]) -> Held:
    """An engine owning ``assigned`` whose partition 2 flush waits for Kafka (a held dead letter)."""
    link, server, task = await _pair(clock)
    outbox = HeldOutbox()
    server.processor.outbox = outbox
    table, acked = WorkerTable(), list[tuple[str, int]]()
    link.assign(assigned)
    await link.dump(table)
    link.submit(Event(table, acked, "null2"), NAMES.beacons, 2, 0, T0, None, b"m2")  # a dead letter: held
    link.submit(Event(table, acked, "b2"), NAMES.beacons, 2, 1, T0, beacon(1, "m2"), b"m2")
    await _settle(link, 2, table)
    clock[0] += 2_000  # the next record of partition 2 flushes: it waits for the held dead letter
    link.submit(Event(table, acked, "tick2"), NAMES.ticks, 2, 0, clock[0], b"{}", None)
    await link.send_batch()
    await asyncio.sleep(0.2)
    return link, server, task, outbox, table, acked


async def _revoked_within_10s(link: EngineLink, partitions: set[int]) -> bool:
    try:
        await asyncio.wait_for(link.revoke(partitions), 10)
    except TimeoutError:
        return False
    return True


def test_a_revocation_is_answered_while_a_flush_waits_for_kafka() -> None:
    """A flush waits until Kafka has the records its events produced (up to the decision gate's 20 s lease
    for a decision a dead worker claimed). The rebalance must not wait for that: records of the revoked
    partition not yet handled are dropped (the next owner replays them), the engine forgets the partition at
    once, and the waiting flush of the partition it keeps completes afterwards."""
    async def scenario() -> tuple[bool, set[int], list[str], list[str], list[int]]:
        clock = [T0]
        link, server, task, outbox, table, acked = await _flush_waiting(clock, {1, 2})
        link.submit(Event(table, acked, "null1"), NAMES.beacons, 1, 0, T0, None, b"m1")  # queued behind it
        await link.send_batch()
        revoked = await _revoked_within_10s(link, {1})
        owned = set(server.processor.books)
        outbox.release.set()
        await _settle(link, 2, table)
        letters = [orjson.loads(value)["partition"] for topic, value in outbox.records if topic.endswith(".dlq")]
        await link.stop()
        task.cancel()
        return revoked, owned, [name for name, _ in acked], [str(k) for k in table], letters

    revoked, owned, acked, stored, letters = asyncio.run(scenario())
    assert revoked, "the revocation waited for a flush of another partition to get Kafka's answer"
    assert owned == {2}
    assert letters == [2], "a record of the revoked partition was handled after the revocation"
    assert acked == ["null2", "b2", "tick2"] and stored, "the waiting flush did not complete after the revocation"


def test_a_partition_revoked_while_its_own_flush_waits_is_forgotten_after_that_record() -> None:
    """The record being handled belongs to the revoked partition: the answer comes at once, the record
    finishes (its state intact, so no decision is made from a half-dropped partition), nothing it stores
    reaches the worker, and the engine forgets the partition right after it."""
    async def scenario() -> tuple[bool, set[int], list[str], WorkerTable, set[int]]:
        clock = [T0]
        link, server, task, outbox, table, acked = await _flush_waiting(clock, {2})
        revoked = await _revoked_within_10s(link, {2})
        owned_while_waiting = set(server.processor.books)
        outbox.release.set()
        await _settle(link, 2, table)
        owned = set(server.processor.books)
        await link.stop()
        task.cancel()
        return revoked, owned_while_waiting, [name for name, _ in acked], table, owned | set(server.table.closed)

    revoked, owned_while_waiting, acked, table, left = asyncio.run(scenario())
    assert revoked, "the revocation waited for the partition's flush to get Kafka's answer"
    assert owned_while_waiting == {2}, "the partition was dropped under the record being handled"
    assert acked == [] and table == {}, "a revoked partition's flush reached the worker"
    assert left == set(), "the partition was not forgotten after its record"


def test_an_assignment_revoked_before_the_engine_reached_it_is_ignored() -> None:
    """Assignments travel with the records, revocations beside them: while the engine waits on a flush, a
    partition can be assigned and revoked again before it reads the assignment. It must not take the
    partition (nor keep its buckets) when it gets there."""
    async def scenario() -> tuple[bool, set[int], set[int]]:
        clock = [T0]
        link, server, task, outbox, table, acked = await _flush_waiting(clock, {2})
        table[buckets.bucket_key(1, buckets.bucket_of("m1", 8))] = buckets.encode(
            {"m1": MemberState("m1").to_bytes()}, buckets=8)
        link.assign({1})
        await link.dump(table)
        link.submit(Event(table, acked, "b1"), NAMES.beacons, 1, 0, T0, beacon(1, "m1"), b"m1")
        revoked = await _revoked_within_10s(link, {1})
        outbox.release.set()
        await _settle(link, 2, table)
        link.submit(Event(table, acked, "tick2b"), NAMES.ticks, 2, 1, clock[0], b"{}", None)
        await _settle(link, 2, table)
        kept = {p for p, _ in (buckets.parse_key(k) or (-1, 0) for k in server.table.values)}
        await link.stop()
        task.cancel()
        return revoked, set(server.processor.books), kept

    revoked, owned, kept = asyncio.run(scenario())
    assert revoked
    assert owned == {2} and 1 not in kept, "the engine took a partition revoked before it read the assignment"
