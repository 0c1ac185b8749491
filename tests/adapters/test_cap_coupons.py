"""Caps and pool coupons through the Redis stores (SPEC §11 "Only `sent` counts"): a mail skipped for an empty
pool leaves the member's day cap free; a replayed batch gets the same answers, counted once, same code."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from kagoflow.adapters.coupon_pool import RedisCouponPool
from kagoflow.adapters.redis_calls import Coalescer
from kagoflow.adapters.redis_store import RedisStore
from kagoflow.backtest import Replay
from kagoflow.core.caps import CapLimits, CapRequest, acquire_caps, apply_caps, cap_request
from kagoflow.core.decisions import Decision
from kagoflow.core.rules import RuleSet
from tests.core.abandon_helpers import beacon, profile
from tests.core.test_caps import PLAIN, POOLED, SHOP, first_due_batch
from tests.core.test_customer_rules import rules_dir
from tests.mail.helpers import make_decision, redis_store_fixture  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def _on_redis(rules: RuleSet, store: RedisStore) -> Replay:
    """The backtest's loop with the worker's Redis cap store and coupon pool in place of the in-memory ones."""
    rp = Replay(rules, secret="s")
    pool = RedisCouponPool(store.client, prefix=store.prefix)
    await pool.load_all(rules.coupon_pools)
    rp.caps = store.caps  # type: ignore[assignment]
    rp.coupons.pool = pool
    return rp


def _brief(decisions: list[Decision]) -> list[tuple[str, str, str, str | None]]:
    return [(d.member_id, d.rule_id, d.status, d.coupon) for d in decisions]


async def test_a_mail_skipped_for_an_empty_pool_leaves_the_day_cap_free(redis_store: RedisStore,
                                                                        tmp_path: Path) -> None:
    rules = rules_dir(tmp_path, POOLED, PLAIN, shop=SHOP, pools={"spring": ["S1"]})
    rp = await _on_redis(rules, redis_store)
    out: list[Decision] = []
    for record in [profile("2026-01-01 00:00", member="a"), profile("2026-01-01 00:00", member="m1"),
                   beacon("cart_add", "2026-01-05 08:00", "A", member="a"),
                   beacon("cart_add", "2026-01-05 10:00", "A", member="m1")]:
        out += await rp.feed(record)
    out += await rp.advance(None)
    assert _brief(out) == [("a", "cart-1h", "sent", "S1"), ("a", "cart-3h", "capped", None),
                           ("m1", "cart-1h", "skipped", None), ("m1", "cart-3h", "sent", None)]
    day = cap_request(member_id="m1", key="x", at_ms=out[-1].at_ms, limits=CapLimits(day=1), tz=rp.shop.timezone)
    assert await redis_store.caps.count(day.counters[0][0], member_id=day.member_id) == 1


async def test_a_replayed_batch_on_redis_is_answered_alike_and_counted_once(redis_store: RedisStore,
                                                                           tmp_path: Path) -> None:
    second = {**POOLED, "id": "cart-c"}
    rules = rules_dir(tmp_path, POOLED, second, PLAIN, shop=SHOP, pools={"spring": ["S1", "S2"]})
    rp = await _on_redis(rules, redis_store)
    fired = await first_due_batch(rp)
    first = await rp._caps(list(fired))
    again = await rp._caps(list(fired))  # a crash before the offsets were committed: the same decisions
    assert _brief(first) == _brief(again) == [("m1", "cart-1h", "sent", "S1"), ("m1", "cart-c", "capped", None)]
    day = cap_request(member_id="m1", key="x", at_ms=first[0].at_ms, limits=CapLimits(day=1), tz=rp.shop.timezone)
    assert await redis_store.caps.count(day.counters[0][0], member_id=day.member_id) == 1
    assert await RedisCouponPool(redis_store.client, prefix=redis_store.prefix).remaining("spring") == (1, 2)


async def test_a_count_lost_to_another_worker_caps_the_mail_and_keeps_its_code(redis_store: RedisStore,
                                                                              tmp_path: Path) -> None:
    """The rebalance race: the check passed, then another worker counted the member before this one."""
    rules = rules_dir(tmp_path, POOLED, shop=SHOP, pools={"spring": ["S1", "S2"]})
    rp = await _on_redis(rules, redis_store)
    fired = await first_due_batch(rp)
    limits = CapLimits(day=1)
    caps = redis_store.caps
    real_acquire = caps.acquire

    async def other_worker_first(request: CapRequest) -> bool:
        other = cap_request(member_id="m1", key="other", at_ms=fired[0].at_ms, limits=limits, tz=rp.shop.timezone)
        await real_acquire(other)
        return await real_acquire(request)

    caps.acquire = other_worker_first  # type: ignore[method-assign]
    raced = await rp._caps(fired)
    caps.acquire = real_acquire  # type: ignore[method-assign]
    assert _brief(raced) == [("m1", "cart-1h", "capped", None)]
    assert rp.issued == []
    pool = RedisCouponPool(redis_store.client, prefix=redis_store.prefix)
    assert await pool.given("spring") == {fired[0].key: "S1"}, "the code stays with its key"
    assert _brief(await rp._caps(fired)) == [("m1", "cart-1h", "capped", None)], "a replay: the same answer"


async def test_the_cap_calls_of_a_batch_share_one_round_trip(redis_store: RedisStore) -> None:
    """Checks (pool-coupon and held-out mails) and check-and-counts of one batch: one Redis pipeline."""
    limits = CapLimits(day=1)
    decisions = [make_decision(f"m{i}") for i in range(20)]
    pooled = {f"m{i}" for i in range(5)}
    batcher = redis_store.caps._batcher
    pipelines: list[int] = []
    real = batcher._pipeline

    async def counted(commands: list[tuple[Any, ...]]) -> list[Any]:
        pipelines.append(len(commands))
        return await real(commands)

    batcher._pipeline = counted  # type: ignore[method-assign]
    batcher._coalescer = Coalescer(counted)
    out = await apply_caps(decisions, redis_store.caps, limits=limits, tz=ZoneInfo("Asia/Tokyo"),
                           deferred=lambda d: d.member_id in pooled)
    assert [d.status for d in out] == ["sent"] * 20
    assert pipelines == [20]
    assert await acquire_caps(out[:5], redis_store.caps, limits=limits, tz=ZoneInfo("Asia/Tokyo")) == set()
    assert pipelines == [20, 5]
