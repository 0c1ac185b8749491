"""RedisStore / RedisCapStore against the stack's Redis and Redis Cluster (each test under its own key prefix)."""

from __future__ import annotations

import asyncio
from zoneinfo import ZoneInfo

import pytest

from kagoflow.adapters.redis_store import (
    LedgerEntry,
    LostReservation,
    RedisStore,
    Reservation,
    StoreUnavailable,
)
from kagoflow.core.caps import CapLimits, CapRequest, InMemoryCapStore, cap_request
from kagoflow.core.shoptime import from_local
from tests.mail.helpers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]
TOKYO = ZoneInfo("Asia/Tokyo")
LIMITS = CapLimits(day=1, week=2, month=3)


def _at(day: int, hour: int = 12) -> int:
    from datetime import datetime

    return from_local(datetime(2026, 3, day, hour, 0, tzinfo=TOKYO))


def _request(key: str, at_ms: int, limits: CapLimits = LIMITS) -> CapRequest:
    return cap_request(member_id="m1", key=key, at_ms=at_ms, limits=limits, tz=TOKYO)


async def test_day_week_and_month_limits(redis_store: RedisStore) -> None:
    caps = redis_store.caps
    # 2026-03-02 is a Monday: days 2..8 are one ISO week, 9..15 the next.
    assert await caps.acquire(_request("k1", _at(2, 9)))
    assert not await caps.acquire(_request("k2", _at(2, 18))), "day limit 1"
    assert await caps.acquire(_request("k3", _at(3)))
    assert not await caps.acquire(_request("k4", _at(4))), "week limit 2"
    assert await caps.acquire(_request("k5", _at(9)))
    assert not await caps.acquire(_request("k6", _at(10))), "month limit 3"
    assert not await caps.acquire(_request("k7", _at(20)))
    counters = {name: await caps.count(name, member_id="m1") for name, _ in _request("x", _at(9)).counters}
    assert sorted(counters.values()) == [1, 1, 3]  # refused calls counted nothing


async def test_replay_of_a_key_returns_the_first_answer_without_counting(redis_store: RedisStore) -> None:
    caps = redis_store.caps
    first = _request("same-key", _at(2))
    assert await caps.acquire(first)
    assert await caps.acquire(first)
    assert await caps.acquire(first)
    day_counter = first.counters[0][0]
    assert await caps.count(day_counter, member_id="m1") == 1
    refused = _request("other-key", _at(2))
    assert not await caps.acquire(refused)
    assert not await caps.acquire(refused)
    assert await caps.count(day_counter, member_id="m1") == 1


async def test_matches_the_in_memory_store_on_a_sequence(redis_store: RedisStore) -> None:
    memory = InMemoryCapStore()
    limits = CapLimits(day=2, week=3, month=5)
    sequence = [(f"k{i % 9}", _at(1 + (i * 7) % 28, 8 + i % 10)) for i in range(40)]
    for key, at_ms in sequence:
        request = _request(key, at_ms, limits)
        assert await redis_store.caps.acquire(request) == await memory.acquire(request), (key, at_ms)


async def test_concurrent_acquires_never_exceed_the_limit(redis_store: RedisStore) -> None:
    limits = CapLimits(day=5)
    results = await asyncio.gather(
        *(redis_store.caps.acquire(_request(f"c{i}", _at(5), limits)) for i in range(50))
    )
    assert sum(results) == 5


async def test_counters_expire_after_the_period_and_answers_later(redis_store: RedisStore) -> None:
    request = _request("ttl", _at(2))
    await redis_store.caps.acquire(request)
    counter_ttl = await redis_store.client.ttl(redis_store.caps.counter_key("m1", request.counters[2][0]))
    answer_ttl = await redis_store.client.ttl(redis_store.caps.answer_key(request))
    assert 31 * 86400 < counter_ttl <= 40 * 86400
    assert answer_ttl > counter_ttl


async def test_ledger_reserve_confirm_and_replay(redis_store: RedisStore) -> None:
    first = await redis_store.reserve("m1|r|e1", member_id="m1", email="a@example.com", now_ms=1000)
    assert first.reserved and first.resumed is None
    # reserved, never transmitted (a crash before the end of DATA): a replay takes it over and sends
    again = await redis_store.reserve("m1|r|e1", member_id="m1", email="a@example.com", now_ms=2000)
    assert again.reserved and again.resumed is not None and again.resumed.state == "reserved"
    assert again.resumed.at_ms == 1000 and again.token != first.token
    with pytest.raises(LostReservation):  # the first attempt may no longer transmit
        await redis_store.mark_transmitting("m1|r|e1", token=first.token, now_ms=2500)
    await redis_store.mark_transmitting("m1|r|e1", token=again.token, now_ms=2600)
    assert await redis_store.state("m1|r|e1") == LedgerEntry("transmitting", 2600, again.token)
    # transmitting: the outcome is unknown, so a replay only sees the entry
    third = await redis_store.reserve("m1|r|e1", member_id="m1", email="a@example.com", now_ms=2700)
    assert not third.reserved and third.existing == LedgerEntry("transmitting", 2600, again.token)
    await redis_store.mark_transmitting("m1|r|e1", token=again.token, now_ms=2800, undo=True)
    assert await redis_store.state("m1|r|e1") == LedgerEntry("reserved", 2800, again.token)
    await redis_store.confirm("m1|r|e1", now_ms=3000, detail="<id@x>")
    entry = await redis_store.state("m1|r|e1")
    assert entry is not None and (entry.state, entry.at_ms, entry.detail) == ("sent", 3000, "<id@x>")
    await redis_store.release("m1|r|e2")
    assert await redis_store.state("m1|r|e2") is None
    assert await redis_store.count_uncertain() == 0
    await redis_store.note_uncertain("m1|r|e1")
    await redis_store.note_uncertain("m1|r|e1")
    assert await redis_store.count_uncertain() == 1
    assert await redis_store.uncertain_keys() == ["m1|r|e1"]


async def test_reservations_of_one_turn_go_together_and_each_gets_its_own_answer(redis_store: RedisStore) -> None:
    await redis_store.suppress(member_id="m-off", reason="unsubscribe", now_ms=1)
    await redis_store.reserve("old|r|e", member_id="m-old", email="old@example.com", now_ms=7)
    await redis_store.confirm("old|r|e", now_ms=8, detail="<old@x>")
    # 54 reservations asked for in one event-loop turn: one script call, answered each on its own
    answers = await asyncio.gather(
        *(redis_store.reserve(f"k{i}|r|e", member_id=f"m{i}", email=f"m{i}@example.com", now_ms=10) for i in range(50)),
        redis_store.reserve("dup|r|e", member_id="m-dup", email="dup@example.com", now_ms=11),
        redis_store.reserve("dup|r|e", member_id="m-dup", email="dup@example.com", now_ms=12),
        redis_store.reserve("off|r|e", member_id="m-off", email="off@example.com", now_ms=13),
        redis_store.reserve("old|r|e", member_id="m-old", email="old@example.com", now_ms=14),
    )
    assert all(a.reserved for a in answers[:50])
    dup_first, dup_second, off, old = answers[50:]
    assert dup_first.reserved and dup_second.reserved
    assert dup_second.resumed == LedgerEntry("reserved", 11, dup_first.token)
    assert off.suppressed == "unsubscribe" and await redis_store.state("off|r|e") is None
    assert old.existing == LedgerEntry("sent", 8, "<old@x>")
    # confirmations and new reservations of one turn share a write
    *_, late = await asyncio.gather(
        *(redis_store.confirm(f"k{i}|r|e", now_ms=20, detail=f"<{i}@x>") for i in range(50)),
        redis_store.reserve("late|r|e", member_id="m-late", email="late@example.com", now_ms=21),
    )
    assert late.reserved and late.resumed is None and late.token
    assert await redis_store.state("k7|r|e") == LedgerEntry("sent", 20, "<7@x>")
    assert 59 * 86400 < await redis_store.client.ttl(redis_store.prefix + "ledger:{k7|r|e}") <= 60 * 86400


async def test_two_workers_racing_for_the_same_decisions_transmit_each_once(
    redis_url: str, redis_store: RedisStore
) -> None:
    other = RedisStore.from_url(redis_url, prefix=redis_store.prefix)  # a second worker's connection
    try:
        keys = [f"race{i}|r|e" for i in range(40)]
        mine, theirs = await asyncio.gather(
            asyncio.gather(*(redis_store.reserve(k, member_id="m", email="m@example.com", now_ms=1) for k in keys)),
            asyncio.gather(*(other.reserve(k, member_id="m", email="m@example.com", now_ms=2) for k in reversed(keys))),
        )
        theirs_by_key = list(reversed(theirs))

        async def marked(store: RedisStore, key: str, answer: Reservation) -> bool:
            try:
                await store.mark_transmitting(key, token=answer.token, now_ms=3)
            except LostReservation:
                return False
            return True

        outcomes = await asyncio.gather(
            *(marked(redis_store, k, a) for k, a in zip(keys, mine, strict=True)),
            *(marked(other, k, b) for k, b in zip(keys, theirs_by_key, strict=True)),
        )
        # whoever reserved last owns the decision: exactly one of the two may write the end of DATA
        assert all(a != b for a, b in zip(outcomes[:40], outcomes[40:], strict=True))
    finally:
        await other.close()


async def test_suppression_by_member_and_by_address(redis_store: RedisStore) -> None:
    await redis_store.suppress(member_id="m2", reason="unsubscribe", now_ms=1)
    await redis_store.suppress(email="Bounce@Example.com", reason="bounce: 550 user unknown", now_ms=2)
    assert await redis_store.suppression_reason(member_id="m2") == "unsubscribe"
    assert await redis_store.suppression_reason(email="bounce@example.com") == "bounce: 550 user unknown"
    assert await redis_store.suppression_reason(member_id="m3", email="ok@example.com") is None
    by_member = await redis_store.reserve("m2|r|e", member_id="m2", email="x@example.com", now_ms=5)
    by_email = await redis_store.reserve("m4|r|e", member_id="m4", email="BOUNCE@example.com", now_ms=5)
    assert by_member.suppressed == "unsubscribe" and not by_member.reserved
    assert by_email.suppressed == "bounce: 550 user unknown"
    assert await redis_store.state("m2|r|e") is None  # nothing reserved for a suppressed member
    await redis_store.unsuppress(member_id="m2")
    assert (await redis_store.reserve("m2|r|e", member_id="m2", email="x@example.com", now_ms=6)).reserved


async def test_unreachable_redis_raises_store_unavailable() -> None:
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(StoreUnavailable):
        await store.caps.acquire(_request("k", _at(2)))
    with pytest.raises(StoreUnavailable):
        await store.reserve("k", member_id="m", email="a@b.c", now_ms=0)
    await store.close()


async def test_scripts_reload_after_the_server_forgot_them(redis_store: RedisStore) -> None:
    """EVALSHA first; NOSCRIPT (a restarted or failed-over server) loads the script and runs it once."""
    assert await redis_store.caps.acquire(_request("before-flush", _at(2)))
    await redis_store.client.script_flush()
    assert not await redis_store.caps.acquire(_request("after-flush", _at(2))), "day limit 1, counted once"
    await redis_store.client.script_flush()
    assert (await redis_store.reserve("f|r|e", member_id="f", email="f@example.com", now_ms=1)).reserved
    assert await redis_store.caps.count(_request("x", _at(2)).counters[0][0], member_id="m1") == 1


async def test_suppression_hashes_of_an_earlier_version_are_moved(redis_store: RedisStore) -> None:
    prefix = redis_store.prefix
    await redis_store.client.hset(f"{prefix}suppressed:member", mapping={"m-old": "unsubscribe|1"})
    await redis_store.client.hset(f"{prefix}suppressed:email", mapping={"old@example.com": "bounce: 550|2"})
    await redis_store.suppress(member_id="m-new", reason="unsubscribe", now_ms=3)
    assert await redis_store.migrate_suppression_hashes() == 2
    assert await redis_store.migrate_suppression_hashes() == 0
    assert await redis_store.suppression_reason(member_id="m-old") == "unsubscribe"
    assert await redis_store.address_reasons(["OLD@example.com", "new@example.com"]) == ["bounce: 550", None]
    assert (await redis_store.reserve("m-old|r|e", member_id="m-old", email="x@example.com", now_ms=4)).suppressed
