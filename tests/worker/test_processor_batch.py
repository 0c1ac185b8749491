"""Batch records on ``beacons`` (``{"batch": [beacon, …]}``, the collector's) are processed like single ones.

Same states and the same decisions as the beacons one record each; a bad beacon is parked alone (with its
index) while the others apply; a replayed batch is dropped beacon by beacon; the record is acked once, after
the flush that stores its effects and after its dead letters are in Kafka.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson

from kagoflow.streams.contract import encode_batch, key_partition
from kagoflow.worker.processor import MemberProcessor
from tests.worker.test_processor_deadletter import Event, KafkaLikeOutbox, _processor

T0 = 1_790_000_000_000
HOUR = 3_600_000


def members_of(partition: int, count: int) -> list[str]:
    """Member ids the default partitioner puts on ``partition`` of 4 (the settings' default count)."""
    return [m for m in (f"m{i}" for i in range(10 * count)) if key_partition(m.encode(), 4) == partition][:count]


def session(members: list[str], seed: int = 7) -> list[dict[str, Any]]:
    """Interleaved storefront sessions: views, cart adds and removes, favourites, a few purchases."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for n in range(600):
        member = rng.choice(members)
        kind = rng.choice(["view", "view", "cart_add", "cart_add", "cart_remove", "favorite_add", "purchase"])
        item: dict[str, Any] = {"event_id": f"e{n}", "member_id": member, "type": kind, "ts": T0 + n * 1000}
        if kind == "purchase":
            item["product_ids"] = [f"p{rng.randrange(5)}"]
        else:
            item["product_id"] = f"p{rng.randrange(5)}"
            item["price"] = 1000
        out.append(item)
    return out


class Run:
    def __init__(self) -> None:
        self.clock = [T0]
        self.outbox = KafkaLikeOutbox()
        self.acked: list[int] = []
        self.processor: MemberProcessor = _processor(self.outbox, self.clock)
        self.processor.assign({0})
        self.offset = 0

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        await self.processor.on_event(topic=topic, partition=0, key=key, value=value, timestamp_ms=self.clock[0],
                                      offset=self.offset, event=Event(self.acked, self.offset))
        self.offset += 1

    async def tick(self, hours: float) -> None:
        self.clock[0] += int(hours * HOUR)
        for _ in range(3):
            await self.processor.on_event(topic="kagoflow-ticks", partition=0, key=None, value=b"{}",
                                          timestamp_ms=self.clock[0], offset=0, event=Event([], -1))


async def profiles(run: Run, members: list[str]) -> None:
    for member in members:
        await run.send("members", member.encode(), orjson.dumps(
            {"member_id": member, "email": f"{member}@example.jp", "opt_in": True, "ts": T0 - HOUR}))


def test_batches_give_the_states_and_decisions_single_records_give() -> None:
    members = members_of(0, 12)
    beacons = session(members)

    async def scenario(batched: bool) -> Run:
        run = Run()
        await profiles(run, members)
        if batched:
            for start in range(0, len(beacons), 50):
                chunk = beacons[start:start + 50]
                await run.send("beacons", chunk[0]["member_id"].encode(),
                               encode_batch([orjson.dumps(b) for b in chunk]))
        else:
            for b in beacons:
                await run.send("beacons", b["member_id"].encode(), orjson.dumps(b))
        for _ in range(8 * 24):  # eight days of hourly ticks: every abandonment timer fires
            await run.tick(1)
        return run

    single, batched = asyncio.run(scenario(False)), asyncio.run(scenario(True))
    decisions = [orjson.loads(v) for r in (single, batched) for t, _, v in r.outbox.stored if t == "mail_decisions"]
    half = len(decisions) // 2
    assert half > 0 and decisions[:half] == decisions[half:]
    for member in members:
        a, b = single.processor.member_state(member), batched.processor.member_state(member)
        assert a is not None and b is not None and a.to_bytes() == b.to_bytes()
    assert batched.outbox.letters("beacons.dlq") == []
    assert batched.acked == list(range(batched.offset))  # every record acked, once, in order
    assert batched.processor.metrics.batched_beacons == len(beacons)


def test_a_bad_beacon_is_parked_with_its_index_and_the_others_apply() -> None:
    good, other = members_of(0, 1)[0], members_of(1, 1)[0]
    items = [
        orjson.dumps({"event_id": "e1", "member_id": good, "type": "cart_add", "product_id": "p1", "ts": T0}),
        orjson.dumps({"event_id": "e2", "member_id": good, "type": "clickk", "product_id": "p1", "ts": T0}),
        b'"not an object"',
        orjson.dumps({"event_id": "e3", "member_id": other, "type": "view", "product_id": "p3", "ts": T0}),
        orjson.dumps({"event_id": "e4", "member_id": good, "type": "favorite_add", "product_id": "p4", "ts": T0}),
    ]

    async def scenario() -> Run:
        run = Run()
        await run.send("beacons", good.encode(), encode_batch(items))
        assert run.acked == []
        await run.tick(0.01)
        await run.send("beacons", good.encode(), encode_batch(items))  # replayed after a crash
        await run.tick(0.01)
        return run

    run = asyncio.run(scenario())
    letters = run.outbox.letters("beacons.dlq")
    assert [(letter["offset"], letter["reason"], letter["raw_text"], letter["key_text"]) for letter in letters][:3] == [
        (0, "batch[1].type: unknown 'clickk'", items[1].decode(), good),
        (0, "batch[2]: not a JSON object", items[2].decode(), None),
        (0, f"batch[3].member_id: '{other}' belongs to partition 1, not 0", items[3].decode(), other),
    ]
    state = run.processor.member_state(good)
    assert state is not None and set(state.products) == {"p1", "p4"}
    assert run.processor.member_state(other) is None
    assert run.processor.metrics.duplicates == 2  # the replay applied nothing twice
    assert run.acked == [0, 1]


def test_a_broken_batch_record_is_parked_whole() -> None:
    async def scenario() -> Run:
        run = Run()
        for value in (b'{"batch": []}', b'{"batch": "x"}', b'{"batch": [' + b"1," * 70_000 + b"1]}"):
            await run.send("beacons", b"m1", value)
        await run.tick(0.01)
        return run

    run = asyncio.run(scenario())
    assert [letter["reason"] for letter in run.outbox.letters("beacons.dlq")] == [
        "batch: must be a list of 1 to 10000 beacons", "batch: must be a list of 1 to 10000 beacons",
        "batch: must be a list of 1 to 10000 beacons"]
    assert run.acked == [0, 1, 2]
