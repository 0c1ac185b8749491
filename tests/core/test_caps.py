"""Caps and the coupon step together (SPEC §11 "Only `sent` counts", §14 order: caps → holdout → coupon).

A mail that ends ``skipped`` (``coupon_pool_empty``) must not use up the member's cap, so the member's next
mail of the day is ``sent``; a replayed batch gets the same answers and counts once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from kagoflow.backtest import Replay
from kagoflow.core.caps import CapLimits, CapRequest, InMemoryCapStore, cap_request
from kagoflow.core.decisions import Decision
from kagoflow.core.events import Record
from kagoflow.core.rules import RuleSet
from kagoflow.core.sending import finish_decisions

from .abandon_helpers import beacon, local, profile
from .test_customer_rules import replay, rules_dir

SHOP = {"timezone": "Asia/Tokyo", "caps": {"day": 1}, "sender_name": "Shop"}
POOLED = {"id": "cart-1h", "kind": "abandonment", "trigger": "cart", "send": {"after": "1h"},
          "coupon": {"pool": "spring"}}
SHOP_TZ = ZoneInfo("Asia/Tokyo")
PLAIN = {"id": "cart-3h", "kind": "abandonment", "trigger": "cart", "send": {"after": "3h"}}


def _rules(tmp: Path, *rules: dict[str, Any]) -> RuleSet:
    return rules_dir(tmp, *rules, shop=SHOP, pools={"spring": ["S1"]})


def _brief(decisions: list[Decision]) -> list[tuple[str, str, str, str, str | None]]:
    return [(d.member_id, d.rule_id, d.status, d.reason, d.coupon) for d in decisions]


def _records() -> list[Record]:
    # "a" takes the pool's only code; "m1"'s first mail of the day then finds the pool empty
    return [profile("2026-01-01 00:00", member="a"), profile("2026-01-01 00:00", member="m1"),
            beacon("cart_add", "2026-01-05 08:00", "A", member="a"),
            beacon("cart_add", "2026-01-05 10:00", "A", member="m1")]


async def first_due_batch(rp: Replay) -> list[Decision]:
    """m1 carts at 10:00; the decisions the engine makes at m1's first due (before caps and coupons)."""
    for record in [profile("2026-01-01 00:00", member="m1"), beacon("cart_add", "2026-01-05 10:00", "A",
                                                                    member="m1")]:
        await rp.feed(record)
    state = rp.states["m1"]
    return list(rp.engine.tick(state, rp.engine.next_due(state) or 0, catalog=rp.catalog))


def test_a_mail_skipped_for_an_empty_pool_does_not_use_up_the_day_cap(tmp_path: Path) -> None:
    decisions, rp = replay(_rules(tmp_path, POOLED, PLAIN), _records())
    m1 = [d for d in decisions if d.member_id == "m1"]
    assert _brief(m1) == [("m1", "cart-1h", "skipped", "coupon_pool_empty", None),
                          ("m1", "cart-3h", "sent", "", None)]
    assert local(m1[1].at_ms) == "2026-01-05 13:00"
    assert [(d.member_id, d.rule_id, d.status, d.coupon) for d in decisions if d.member_id == "a"] == [
        ("a", "cart-1h", "sent", "S1"), ("a", "cart-3h", "capped", None)]
    day = cap_request(member_id="m1", key="x", at_ms=m1[1].at_ms, limits=CapLimits(day=1), tz=rp.shop.timezone)
    assert rp.caps.counts[day.counters[0][0]] == 1, "only the sent mail counted"


def test_the_same_member_twice_in_one_batch_pooled_first(tmp_path: Path) -> None:
    """Both rules due at the same moment: one batch. The pooled mail, first in order, gets the cap when it
    gets a code; when the pool is empty the plain mail behind it gets it (never a code burnt on a capped
    mail)."""
    same_time = {**PLAIN, "id": "cart-b", "send": {"after": "1h"}}
    decisions, rp = replay(_rules(tmp_path, POOLED, same_time), _records())
    assert [(d.member_id, d.rule_id, d.status, d.coupon) for d in decisions] == [
        ("a", "cart-1h", "sent", "S1"), ("a", "cart-b", "capped", None),
        ("m1", "cart-1h", "skipped", None), ("m1", "cart-b", "sent", None)]
    assert [c.code for c in rp.issued] == ["S1"]


def test_two_pooled_mails_of_one_member_in_one_batch_take_one_code(tmp_path: Path) -> None:
    second = {**POOLED, "id": "cart-c"}
    rules = rules_dir(tmp_path, POOLED, second, shop=SHOP, pools={"spring": ["S1", "S2"]})
    decisions, rp = replay(rules, [profile("2026-01-01 00:00", member="m1"),
                                   beacon("cart_add", "2026-01-05 10:00", "A", member="m1")])
    assert [(d.rule_id, d.status, d.coupon) for d in decisions] == [
        ("cart-1h", "sent", "S1"), ("cart-c", "capped", None)]
    assert [c.code for c in rp.issued] == ["S1"]


def test_a_replayed_batch_gets_the_same_answers_and_counts_once(tmp_path: Path) -> None:
    rules = rules_dir(tmp_path, POOLED, PLAIN, shop=SHOP, pools={"spring": ["S1", "S2"]})

    async def go() -> tuple[list[Decision], list[Decision], dict[str, int]]:
        rp = Replay(rules, secret="s")
        fired = await first_due_batch(rp)
        first = await rp._caps(list(fired))
        again = await rp._caps(list(fired))  # a crash before the offsets were committed: the same decisions
        return first, again, dict(rp.caps.counts)

    first, again, counts = asyncio.run(go())
    assert _brief(first) == _brief(again) == [("m1", "cart-1h", "sent", "", "S1")]
    assert sorted(counts.values()) == [1]


def test_check_answers_a_known_key_as_it_was_answered() -> None:
    async def go() -> tuple[bool, bool, bool]:
        store = InMemoryCapStore()
        first = cap_request(member_id="m", key="k1", at_ms=0, limits=CapLimits(day=1), tz=SHOP_TZ)
        second = cap_request(member_id="m", key="k2", at_ms=0, limits=CapLimits(day=1), tz=SHOP_TZ)
        assert await store.acquire(first)
        return await store.check(first), await store.check(second), await store.acquire(second)

    assert asyncio.run(go()) == (True, False, False)



class FlakyCaps(InMemoryCapStore):
    """Fails the ``fail_at``-th call (counting both kinds) once, like Redis going away for a moment."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.calls = 0
        self.fail_at = fail_at

    def _tick(self) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise ConnectionError("redis away")

    async def acquire(self, request: CapRequest) -> bool:
        self._tick()
        return await super().acquire(request)

    async def check(self, request: CapRequest) -> bool:
        self._tick()
        return await super().check(request)


def test_a_store_failure_retries_only_the_failed_part(tmp_path: Path) -> None:
    """m1's two mails of one moment are decided in two parts; a failure in the second retries it alone, so
    the first part's coupon is issued once."""
    same_time = {**PLAIN, "id": "cart-b", "send": {"after": "1h"}}
    rules = rules_dir(tmp_path, POOLED, same_time, shop=SHOP, pools={"spring": ["S1"]})

    async def go() -> tuple[list[Decision], list[str], list[Exception]]:
        rp = Replay(rules, secret="s")
        fired = await first_due_batch(rp)
        errors: list[Exception] = []

        async def wait(exc: Exception) -> None:
            errors.append(exc)

        final, issued = await finish_decisions(
            fired, caps=FlakyCaps(fail_at=3), limits=rp.shop.caps, tz=rp.shop.timezone, coupons=rp.coupons,
            state_of=rp.states.get, addresses=None, email_of=lambda _: None, wait=wait)
        return final, [c.code for c in issued], errors

    final, codes, errors = asyncio.run(go())
    assert [(d.rule_id, d.status, d.coupon) for d in final] == [("cart-1h", "sent", "S1"), ("cart-b", "capped", None)]
    assert codes == ["S1"] and len(errors) == 1
