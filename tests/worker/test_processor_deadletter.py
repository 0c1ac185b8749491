"""The member path never dies on a record and never acks one before it is applied or parked (issue 11).

An in-memory outbox that refuses what Kafka refuses (a value over the producer's request size) and can fail
like a broker that is away; the processor must park every bad record — oversized, null, wrongly keyed, not
UTF-8 — in ``<topic>.dlq``, retry a failed dead letter, and ack the record only once its copy is stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from kagoflow.core.caps import InMemoryCapStore
from kagoflow.loading import load_ruleset
from kagoflow.settings import Settings
from kagoflow.streams import deadletter
from kagoflow.worker.engine import RecordingTable
from kagoflow.worker.processor import MemberProcessor, make_processor

T0 = 1_790_000_000_000
MAX_REQUEST = 1_048_576


class KafkaLikeOutbox:
    def __init__(self) -> None:
        self.stored: list[tuple[str, bytes | None, bytes]] = []
        self.down = 0
        """Sends still to fail as if the broker were away."""

    async def send(self, topic: str, *, key: bytes | None, value: bytes, partition: int | None = None) -> Any:
        if len(value) > MAX_REQUEST:
            raise MessageSizeTooLargeError(f"{len(value)} bytes")
        if self.down:
            self.down -= 1
            raise KafkaConnectionError("broker away")
        self.stored.append((topic, key, value))
        return asyncio.sleep(0)

    async def send_many(self, topic: str, records: Sequence[tuple[bytes | None, bytes]], *,
                        partition: int | None = None) -> list[Any]:
        self.stored += [(topic, key, value) for key, value in records]
        return []

    def letters(self, topic: str) -> list[dict[str, Any]]:
        return [orjson.loads(value) for name, _, value in self.stored if name == topic]


class Event:
    def __init__(self, acked: list[int], offset: int) -> None:
        self.acked, self.offset = acked, offset

    def ack(self) -> bool:
        self.acked.append(self.offset)
        return True


def _processor(outbox: KafkaLikeOutbox, clock: list[int]) -> MemberProcessor:
    settings = Settings(state_flush_seconds=1.0, state_buckets=8)
    processor = make_processor(settings, load_ruleset(settings), table=RecordingTable(), catalog={},
                               caps=InMemoryCapStore(), outbox=outbox)
    processor.clock = lambda: clock[0]
    return processor


def beacon(n: int, member: str = "m1", **extra: Any) -> bytes:
    return orjson.dumps({"event_id": f"e{n}", "member_id": member, "type": "view", "product_id": f"p{n}",
                         "ts": T0 + n, **extra})


BAD: list[tuple[str, bytes | None, bytes | None, str]] = [
    ("beacons", b"m1", beacon(1, padding="x" * 1_000_000), "record: larger than 65536 bytes"),
    ("members", b"m1", b'{"member_id": "m1", "x": "' + b"y" * 1_000_000 + b'"}', "record: larger than"),
    ("orders", b"m1", b"z" * 1_040_000, "record: larger than"),
    ("beacons", b"m1", None, "record: null value"),
    ("members", b"m1", None, "record: null value"),
    ("orders", b"m1", None, "record: null value"),
    ("beacons", b"m2", beacon(2), "key: b'm2' is not the member_id 'm1'"),
    ("beacons", None, beacon(3), "key: missing (must be the member_id 'm1')"),
    ("members", b"other", orjson.dumps({"member_id": "m1", "email": "a@b.jp", "opt_in": True}), "key: b'other'"),
    ("orders", b"m9", orjson.dumps({"order_id": "o1", "member_id": "m1", "status": "ordered", "ordered_at": T0}),
     "key: b'm9' is not the member_id 'm1'"),
    ("beacons", b"m1", b'{"event_id": "e4", "member_id": "m\xff1"}', "member_id: not valid UTF-8 at byte 34"),
    ("beacons", b"m1", beacon(5, member="m\u202e1"), "member_id: contains format character U+202E"),
]


def test_every_bad_record_is_parked_and_acked_after_its_copy_while_good_ones_apply() -> None:
    async def scenario() -> tuple[KafkaLikeOutbox, list[int], MemberProcessor]:
        clock, outbox, acked = [T0], KafkaLikeOutbox(), list[int]()
        processor = _processor(outbox, clock)
        processor.assign({0})
        offset = 0
        for topic, key, value, _ in BAD:
            await processor.on_event(topic=topic, partition=0, key=key, value=value, timestamp_ms=T0,
                                     offset=offset, event=Event(acked, offset))
            offset += 1
        await processor.on_event(topic="beacons", partition=0, key=b"m1", value=beacon(99), timestamp_ms=T0,
                                 offset=offset, event=Event(acked, offset))
        clock[0] += 5000
        for _ in range(3):  # ticks drive the flush that acks
            await processor.on_event(topic="kagoflow-ticks", partition=0, key=None, value=b"{}", timestamp_ms=T0,
                                     offset=0, event=Event([], -1))
        return outbox, acked, processor

    outbox, acked, processor = asyncio.run(scenario())
    letters = [letter for topic in ("beacons", "members", "orders") for letter in outbox.letters(f"{topic}.dlq")]
    by_offset = {letter["offset"]: letter for letter in letters}
    assert len(letters) == len(BAD)
    for offset, (topic, _, value, reason) in enumerate(BAD):
        letter = by_offset[offset]
        assert letter["topic"] == topic and letter["reason"].startswith(reason), letter
        assert letter["size"] == (None if value is None else len(value))
    assert acked[:len(BAD) + 1] == list(range(len(BAD) + 1))
    state = processor.member_state("m1")
    assert state is not None and set(state.products) == {"p99"}
    assert processor.metrics.dead_letters == len(BAD)


def test_a_dead_letter_kafka_refuses_for_a_while_holds_the_ack_back_but_never_raises(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deadletter, "RETRY_FIRST_S", 0.05)

    async def scenario() -> tuple[list[int], list[int], KafkaLikeOutbox, MemberProcessor]:
        clock, outbox, acked = [T0], KafkaLikeOutbox(), list[int]()
        processor = _processor(outbox, clock)
        processor.assign({0})
        outbox.down = 3
        await processor.on_event(topic="beacons", partition=0, key=b"m1", value=None, timestamp_ms=T0, offset=0,
                                 event=Event(acked, 0))
        clock[0] += 5000
        tick = processor.on_event(topic="kagoflow-ticks", partition=0, key=None, value=b"{}", timestamp_ms=T0,
                                  offset=0, event=Event([], -1))
        flushing = asyncio.ensure_future(tick)
        await asyncio.sleep(0.06)
        acked_while_down = list(acked)
        await flushing
        return acked_while_down, acked, outbox, processor

    acked_while_down, acked, outbox, processor = asyncio.run(scenario())
    assert acked_while_down == []  # not acked before the dead letter is in Kafka
    assert acked == [0]
    assert [letter["reason"][:18] for letter in outbox.letters("beacons.dlq")] == ["record: null value"]
    assert processor.metrics.dead_letter_failures == 3
