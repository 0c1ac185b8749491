"""Each mail decision reaches ``mail_decisions`` once, whichever worker decides it and however often.

Why: a partition's member state is stored every ``KAGOFLOW_STATE_FLUSH_SECONDS``; when the partition moves
(a worker joins, leaves or is killed) the new owner starts from the last stored state and replays the records
after it, so it decides again what the old owner decided since that store — the same decision keys, and the
timers the old owner already fired. The caps, the coupon pool and the send ledger answer a key once, but
reports and every other reader of ``mail_decisions`` would count those decisions twice.

How: the gate wraps the engine's outbox. Before a decision record is produced, one Redis script claims its
(decision key, status) — ``claimed|owner|time`` — and once Kafka has the record the claim becomes
``emitted``. A record whose claim is ``emitted`` is dropped (it is in the topic already). A record claimed by
another owner less than ``LEASE_MS`` ago is held: that owner is producing it right now (a handover in
progress) — the gate asks again every second and drops it once it is emitted, or takes the claim over when
the lease ran out without it (the owner died between the claim and Kafka's answer: nothing was lost, the
record is produced here). Only a worker killed between Kafka's answer and the ``emitted`` mark (one Redis
round trip) can let a record through twice. Records of other topics pass untouched.

The held records are part of the futures the partition's flush waits for, so the records that led to them
are not acknowledged before they are settled. Keys carry the ``{decision key}`` hash tag (Redis Cluster).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Sequence
from typing import Any

import orjson

from kagoflow.adapters.redis_conn import Lua, RedisClient, execute, slot_groups

log = logging.getLogger(__name__)

LEASE_MS = 20_000
"""How long a claim stays another owner's without being emitted (far above a produce's round trip)."""
RETRY_S = 1.0
TTL_S = 14 * 86_400
"""Longer than any replay (Kafka retention of the member topics)."""
CHUNK = 1000
"""Claims per script call (a catalog change can decide 200k mails at once; Redis runs one script at a time)."""

_CLAIM = Lua("""
-- KEYS[i]: gate key of record i; ARGV[1]: owner; ARGV[2]: lease ms; ARGV[3]: TTL s.
-- → per record: 1 = claimed here (produce it), 0 = emitted before (drop it), -1 = claimed by an attempt
-- (this worker's too) that may be producing it right now (wait).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 1, #KEYS do
  local current = redis.call('GET', KEYS[i])
  local state, owner, at = nil, nil, nil
  if current then state, owner, at = string.match(current, '^([^|]*)|([^|]*)|(.*)$') end
  if state == 'emitted' then
    out[i] = 0
  elseif current and now - tonumber(at) < tonumber(ARGV[2]) then
    out[i] = -1
  else
    redis.call('SET', KEYS[i], 'claimed|' .. ARGV[1] .. '|' .. now, 'EX', ARGV[3])
    out[i] = 1
  end
end
return out
""")


class DecisionGate:
    """An ``Outbox`` that produces each (decision key, status) of ``topic`` once (see the module docstring)."""

    def __init__(self, inner: Any, client: RedisClient, *, prefix: str, topic: str, lease_ms: int = LEASE_MS,
                 retry_s: float = RETRY_S) -> None:
        self.inner = inner
        self.lease_ms = lease_ms
        self.retry_s = retry_s
        self.client = client
        self.prefix = prefix
        self.topic = topic
        self.owner = secrets.token_hex(8)
        self.dropped = 0
        """Records not produced because they were emitted before (replays, handovers)."""
        self._tasks: set[asyncio.Task[None]] = set()

    async def send(self, topic: str, *, key: bytes | None, value: bytes, partition: int | None = None) -> Any:
        if topic != self.topic:
            return await self.inner.send(topic, key=key, value=value, partition=partition)
        futures = await self.send_many(topic, [(key, value)], partition=partition)
        return asyncio.gather(*futures)

    async def send_many(self, topic: str, records: Sequence[tuple[bytes | None, bytes]], *,
                        partition: int | None = None) -> list[Any]:
        if topic != self.topic or not records:
            return list(await self.inner.send_many(topic, records, partition=partition))
        keys = [self._key(value) for _, value in records]
        answers = await self._claim(keys)
        produce = [i for i, answer in enumerate(answers) if answer == 1]
        held = [i for i, answer in enumerate(answers) if answer == -1]
        self.dropped += len(records) - len(produce) - len(held)
        futures = await self._produce(topic, records, keys, produce, partition)
        if held:
            log.info("%d decisions are being produced by another worker (a handover): waiting for them", len(held))
            task = asyncio.ensure_future(self._settle(topic, records, keys, held, partition))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            futures.append(task)
        return futures

    def _key(self, value: bytes) -> str:
        decision = orjson.loads(value)
        return f"{self.prefix}decided:{{{decision['key']}}}:{decision['status']}"

    async def _claim(self, keys: list[str]) -> list[int]:
        """One answer per key; waits out a Redis outage (a decision is never produced unclaimed)."""
        delay = 0.2
        while True:
            try:
                commands: list[tuple[Any, ...]] = []
                order: list[list[int]] = []
                for group in slot_groups(self.client, keys):
                    for start in range(0, len(group), CHUNK):
                        chunk = group[start:start + CHUNK]
                        order.append(chunk)
                        commands.append(_CLAIM.command([keys[i] for i in chunk], [self.owner, self.lease_ms, TTL_S]))
                answers = [0] * len(keys)
                for chunk, result in zip(order, await execute(self.client, commands), strict=True):
                    if isinstance(result, Exception):
                        raise result
                    for i, answer in zip(chunk, result, strict=True):
                        answers[i] = int(answer)
                return answers
            except Exception as exc:
                log.warning("decision gate: redis unavailable (%s); %d decisions wait %.1fs", exc, len(keys), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _produce(self, topic: str, records: Sequence[tuple[bytes | None, bytes]], keys: list[str],
                       chosen: list[int], partition: int | None) -> list[Any]:
        if not chosen:
            return []
        futures = list(await self.inner.send_many(topic, [records[i] for i in chosen], partition=partition))
        return [asyncio.ensure_future(self._mark_emitted(futures, [keys[i] for i in chosen]))]

    async def _mark_emitted(self, futures: list[Awaitable[Any]], keys: list[str]) -> None:
        for future in futures:
            await future  # a produce error surfaces to the flush that waits for it, as without the gate
        delay = 0.2
        while True:
            try:
                answers = await execute(self.client, [("SET", key, f"emitted|{self.owner}|0", "EX", TTL_S)
                                                      for key in keys])
                error = next((a for a in answers if isinstance(a, Exception)), None)
                if error is None:
                    return
                raise error
            except Exception as exc:
                log.warning("decision gate: marking %d decisions emitted failed (%s); retry in %.1fs",
                            len(keys), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _settle(self, topic: str, records: Sequence[tuple[bytes | None, bytes]], keys: list[str],
                      held: list[int], partition: int | None) -> None:
        """Ask again until each held record is emitted by its owner (drop it) or its lease ran out (produce
        it here)."""
        while held:
            await asyncio.sleep(self.retry_s)
            answers = await self._claim([keys[i] for i in held])
            mine = [i for i, answer in zip(held, answers, strict=True) if answer == 1]
            self.dropped += sum(1 for answer in answers if answer == 0)
            for future in await self._produce(topic, records, keys, mine, partition):
                await future
            held = [i for i, answer in zip(held, answers, strict=True) if answer == -1]

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()
