"""The customer part of MemberState (SPEC §13): serialized compatibly, migrated from older states."""

from __future__ import annotations

import orjson

from kagoflow.core import customer
from kagoflow.core.behaviour import MemberState, apply_beacon, apply_member, apply_order

from .abandon_helpers import beacon, jst, profile
from .test_customer_rules import order


def test_round_trip_keeps_aggregates_fields_turns_and_coupons() -> None:
    state = MemberState("m1")
    apply_member(state, profile("2026-01-01 00:00", birthday="1990-06-15", gender="female",
                                registered_at=jst("2025-01-01 00:00"), purchase_count=2, total_amount=9000))
    apply_order(state, order("2026-01-02 10:00", "o1", total=3000))
    customer.record_issued(state, "CODE1", rule="r", key="m1|r|1", issued_ms=jst("2026-01-02 09:00"))
    apply_order(state, order("2026-01-03 10:00", "o2", coupon="CODE1"))
    assert state.cust is not None
    state.cust.turns["birthday"] = 2026
    copy = MemberState.from_bytes(state.to_bytes())
    assert customer.facts(copy) == customer.facts(state)
    assert copy.purchase_count == 4
    assert customer.redemption(copy, "CODE1") == (jst("2026-01-03 10:00"), "o2")
    assert copy.cust is not None and copy.cust.turns == {"birthday": 2026}


def test_a_browsing_member_carries_no_customer_data() -> None:
    state = MemberState("m1")
    apply_beacon(state, beacon("view", "2026-01-01 10:00", "A"))
    assert state.cust is None and "cu" not in orjson.loads(state.to_bytes())


def test_an_older_state_keeps_its_purchase_count_and_does_not_count_its_orders_twice() -> None:
    state = MemberState("m1")
    raw = orjson.loads(state.to_bytes())
    raw["pf"][5] = 3          # purchase_base
    raw["o"] = {"o1": ["A"]}  # an order seen after it
    raw["ob"] = 1
    old = MemberState.from_bytes(orjson.dumps(raw))
    assert old.cust is None and old.purchase_count == 4
    apply_beacon(old, beacon("purchase", "2026-01-05 10:00", order_id="o1"))  # the same order again
    assert old.purchase_count == 4
    apply_order(old, order("2026-01-06 10:00", "o2"))
    assert old.purchase_count == 5
