"""DecisionGate on the stack's Redis and Redis Cluster: each (decision key, status) is produced once across
workers, a handover in progress is waited for, and a claim whose owner died is taken over after its lease."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson
import pytest
import pytest_asyncio

from kagoflow.adapters.decision_gate import DecisionGate
from kagoflow.adapters.redis_conn import RedisClient, connect

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]
TOPIC = "mail_decisions"


class RecordingOutbox:
    """The worker's outbox as the gate sees it: records in, one future per batch out (``hold`` keeps the
    futures pending, a produce still under way)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.hold = False
        self.pending: list[asyncio.Future[None]] = []

    async def send_many(self, topic: str, records: Sequence[tuple[bytes | None, bytes]], *,
                        partition: int | None = None) -> list[Any]:
        self.sent += [(topic, value) for _, value in records]
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.hold:
            self.pending.append(future)
        else:
            future.set_result(None)
        return [future]

    def keys(self, topic: str = TOPIC) -> list[str]:
        return [f"{orjson.loads(v)['key']}/{orjson.loads(v)['status']}" for t, v in self.sent if t == topic]


def _decision(key: str, status: str = "sent") -> tuple[bytes, bytes]:
    return key.encode(), orjson.dumps({"key": key, "status": status, "member_id": key.split("|")[0]})


@pytest_asyncio.fixture(loop_scope="session")
async def gate_client(redis_url: str, unique_name: Callable[[str], str]) -> AsyncIterator[tuple[RedisClient, str]]:
    client = connect(redis_url, decode_responses=True)
    prefix = unique_name("gatetest") + ":"
    yield client, prefix
    async for key in client.scan_iter(match=prefix + "*", count=1000):
        await client.delete(key)
    await client.aclose()


def _gate(client_prefix: tuple[RedisClient, str], outbox: RecordingOutbox, **options: Any) -> DecisionGate:
    client, prefix = client_prefix
    return DecisionGate(outbox, client, prefix=prefix, topic=TOPIC, retry_s=0.05, **options)


async def _settled(futures: list[Any]) -> None:
    for future in futures:
        await future


async def test_a_decision_is_produced_once_across_workers_and_replays(
        gate_client: tuple[RedisClient, str]) -> None:
    first, second = RecordingOutbox(), RecordingOutbox()
    a, b = _gate(gate_client, first), _gate(gate_client, second)
    records = [_decision(f"m{i}|r|1") for i in range(30)]
    await _settled(await a.send_many(TOPIC, records, partition=0))
    await _settled(await b.send_many(TOPIC, [*records, _decision("m-new|r|1")], partition=0))  # the new owner
    await _settled(await a.send_many(TOPIC, records[:5], partition=0))  # a replay on the same worker
    assert sorted(first.keys()) == sorted(f"m{i}|r|1/sent" for i in range(30))
    assert second.keys() == ["m-new|r|1/sent"]
    assert (a.dropped, b.dropped) == (5, 30)
    # another status of the same key is another record; other topics are not gated
    await _settled(await b.send_many(TOPIC, [_decision("m1|r|1", "converted")], partition=0))
    await _settled(await b.send_many("other", [_decision("m1|r|1")]))
    await _settled(await b.send_many("other", [_decision("m1|r|1")]))
    assert second.keys() == ["m-new|r|1/sent", "m1|r|1/converted"]
    assert len(second.keys("other")) == 2


async def test_a_handover_in_progress_is_waited_for_not_produced_twice(
        gate_client: tuple[RedisClient, str]) -> None:
    old_owner, new_owner = RecordingOutbox(), RecordingOutbox()
    old, new = _gate(gate_client, old_owner), _gate(gate_client, new_owner)
    old_owner.hold = True  # the old owner's produce is under way when the new owner decides the same
    old_futures = await old.send_many(TOPIC, [_decision("h1|r|1"), _decision("h2|r|1")], partition=3)
    new_futures = await new.send_many(TOPIC, [_decision("h1|r|1"), _decision("h3|r|1")], partition=3)
    waiting = asyncio.ensure_future(_settled(new_futures))
    await asyncio.sleep(0.3)
    assert not waiting.done(), "the new owner waits for the old owner's produce"
    for future in old_owner.pending:
        future.set_result(None)
    await _settled(old_futures)
    await asyncio.wait_for(waiting, 10)
    assert old_owner.keys() == ["h1|r|1/sent", "h2|r|1/sent"]
    assert new_owner.keys() == ["h3|r|1/sent"]


async def test_a_claim_whose_owner_died_is_taken_over_after_its_lease(
        gate_client: tuple[RedisClient, str]) -> None:
    dead_owner, new_owner = RecordingOutbox(), RecordingOutbox()
    dead, new = _gate(gate_client, dead_owner, lease_ms=500), _gate(gate_client, new_owner, lease_ms=500)
    dead_owner.hold = True  # SIGKILLed before Kafka answered: the record may never have been produced
    await dead.send_many(TOPIC, [_decision("d1|r|1")], partition=1)
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(_settled(await new.send_many(TOPIC, [_decision("d1|r|1")], partition=1)), 10)
    assert new_owner.keys() == ["d1|r|1/sent"]
    assert asyncio.get_running_loop().time() - started >= 0.4, "not before the lease ran out"
