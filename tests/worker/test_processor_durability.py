"""A member state that records a fired mail is stored only once Kafka has that mail's decision.

Why: after a crash the worker restarts from the stored state and replays the unacked records; a state
stored with the timer already fired, but whose decision never reached ``mail_decisions``, would not decide
the mail again — the mail would be lost (seen as one missing mail after a SIGKILL among pending timers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from kagoflow.core.behaviour import MemberState
from kagoflow.core.caps import InMemoryCapStore
from kagoflow.settings import Settings
from kagoflow.worker import buckets
from kagoflow.worker.engine import RecordingTable
from kagoflow.worker.processor import make_processor
from tests.core.abandon_helpers import jst
from tests.core.test_caps import PLAIN, SHOP
from tests.core.test_customer_rules import rules_dir
from tests.worker.test_processor_deadletter import Event


class SlowOutbox:
    """Kafka's answer to each produced record arrives only when the test says so."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes]] = []
        self.pending: list[asyncio.Future[None]] = []

    async def send(self, topic: str, *, key: bytes | None, value: bytes, partition: int | None = None) -> Any:
        return (await self.send_many(topic, [(key, value)], partition=partition))[0]

    async def send_many(self, topic: str, records: Sequence[tuple[bytes | None, bytes]], *,
                        partition: int | None = None) -> list[Any]:
        self.records += [(topic, value) for _, value in records]
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        return [future]

    def answer(self) -> None:
        for future in self.pending:
            if not future.done():
                future.set_result(None)


def test_a_fired_mail_is_not_stored_before_kafka_has_its_decision(tmp_path: Path) -> None:
    rules = rules_dir(tmp_path, PLAIN, shop=SHOP)

    async def run() -> None:
        outbox, table, acked = SlowOutbox(), RecordingTable(), []
        clock = [jst("2026-01-05 08:00")]
        processor = make_processor(Settings(state_flush_seconds=1.0, state_buckets=8), rules, table=table,
                                   catalog={}, caps=InMemoryCapStore(), outbox=outbox)
        processor.clock = lambda: clock[0]
        processor.assign({0})

        async def feed(kind: str, value: dict[str, Any], offset: int) -> None:
            clock[0] = value["ts"]
            await processor.on_event(topic=getattr(processor.names, kind), partition=0, key=b"m1",
                                     value=orjson.dumps(value), timestamp_ms=value["ts"], offset=offset,
                                     event=Event(acked, offset))

        await feed("members", {"member_id": "m1", "email": "m1@example.com", "opt_in": True,
                               "ts": jst("2026-01-05 08:00")}, 0)
        await feed("beacons", {"event_id": "e1", "member_id": "m1", "type": "cart_add", "product_id": "A",
                               "ts": jst("2026-01-05 08:00:01")}, 1)
        stored = table.take_writes()
        assert stored and acked == [0, 1]  # the profile and beacon are stored, the mail pending
        [(_, _, raw)] = list(buckets.scan(iter(stored), buckets=8, partitions={0}))
        assert processor.engine.next_due(MemberState.from_bytes(raw)) is not None
        due = jst("2026-01-05 11:00:01")
        # This tick fires cart-3h and runs the partition's flush: the decision is produced, Kafka has not
        # answered yet, so the state with the fired mail must not be stored nor the tick acked.
        ticking = asyncio.ensure_future(feed("ticks", {"ts": due}, 2))
        for _ in range(50):
            await asyncio.sleep(0)
        decisions = [v for t, v in outbox.records if t == processor.names.mail_decisions]
        assert len(decisions) == 1 and orjson.loads(decisions[0])["status"] == "sent"
        assert table.take_writes() == [], "a state with the fired mail was stored before Kafka had the mail"
        assert acked == [0, 1]

        outbox.answer()
        await asyncio.wait_for(ticking, 1.0)
        written = table.take_writes()
        assert written, "the state is stored once Kafka has the decision"
        [(_, _, raw)] = list(buckets.scan(iter(written), buckets=8, partitions={0}))
        assert processor.engine.next_due(MemberState.from_bytes(raw)) is None  # the stored state: mail fired
        assert acked == [0, 1, 2]

    asyncio.run(run())
