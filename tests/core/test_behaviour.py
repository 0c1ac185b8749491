"""Behaviour state (SPEC §2, §11): priorities, resets, profile merge, purchase counting, dedup, format."""

from __future__ import annotations

import pytest

from kagoflow.core.behaviour import (
    DEDUP_WINDOW,
    MAX_PRODUCTS,
    MemberState,
    apply_beacon,
    apply_member,
    apply_order,
    consent_reason,
    current_products,
    mark_unsubscribed,
    product_purchase_count,
)

from .abandon_helpers import beacon, jst, order, profile


def state_after(*records: object) -> MemberState:
    state = MemberState("m1")
    for record in records:
        if hasattr(record, "event_id"):
            apply_beacon(state, record)  # type: ignore[arg-type]
        elif hasattr(record, "order_id"):
            apply_order(state, record)  # type: ignore[arg-type]
        else:
            apply_member(state, record)  # type: ignore[arg-type]
    return state


def test_priority_cart_over_favorite_over_view_and_removals_fall_back() -> None:
    state = MemberState("m1")
    steps = [
        ("view", "view"),
        ("favorite_add", "favorite"),
        ("cart_add", "cart"),
        ("view", "cart"),
        ("cart_remove", "favorite"),
        ("favorite_remove", "view"),
    ]
    for minute, (kind, expected) in enumerate(steps):
        apply_beacon(state, beacon(kind, jst("2026-11-24 10:00") + minute * 60_000, "A"))
        assert state.product_state("A") == expected, kind
    assert state.product_state("B") is None


def test_removing_the_only_action_forgets_the_product() -> None:
    state = state_after(
        beacon("cart_add", "2026-11-24 10:00", "A"),
        beacon("cart_remove", "2026-11-24 10:01", "A"),
        beacon("favorite_remove", "2026-11-24 10:02", "B"),
    )
    assert state.products == {}
    assert state.touched == ("B",)


def test_access_log_view_has_first_and_last_times_and_the_current_flag() -> None:
    state = state_after(
        beacon("view", "2026-11-24 10:00", "A"),
        beacon("view", "2026-11-24 10:05", "A"),
        beacon("cart_add", "2026-11-24 10:06", "A", price=1200.0, quantity=2),
        beacon("view", "2026-11-24 10:07", "B"),
        beacon("page_view", "2026-11-24 10:30"),
    )
    rows = current_products(state)
    assert [r["product_id"] for r in rows] == ["B", "A"]
    a = rows[1]
    assert a["state"] == "cart" and a["last_access"] == jst("2026-11-24 10:30")
    assert a["actions"] == [
        {"type": "cart", "first": jst("2026-11-24 10:06"), "last": jst("2026-11-24 10:06"), "current": True},
        {"type": "view", "first": jst("2026-11-24 10:00"), "last": jst("2026-11-24 10:05"), "current": False},
    ]
    assert (a["cart_price"], a["cart_quantity"]) == (1200.0, 2)


def test_purchase_resets_listed_products_only() -> None:
    state = state_after(
        beacon("cart_add", "2026-11-24 10:00", "A"),
        beacon("view", "2026-11-24 10:01", "B"),
        beacon("favorite_add", "2026-11-24 10:02", "C"),
        beacon("purchase", "2026-11-24 10:03", product_ids=["A", "C"]),
    )
    assert (state.product_state("A"), state.product_state("B"), state.product_state("C")) == (
        None,
        "view",
        None,
    )
    assert set(state.touched) == {"A", "C"}


def test_purchase_with_order_id_uses_known_items_else_the_cart() -> None:
    known = state_after(
        beacon("cart_add", "2026-11-24 10:00", "A"),
        beacon("cart_add", "2026-11-24 10:00", "B"),
        order("2026-11-24 10:01", "o1", ["B"]),
        beacon("purchase", "2026-11-24 10:02", order_id="o1"),
    )
    assert set(known.products) == {"A"}
    unknown = state_after(
        beacon("cart_add", "2026-11-24 10:00", "A"),
        beacon("view", "2026-11-24 10:00", "B"),
        beacon("purchase", "2026-11-24 10:02", order_id="o2"),
    )
    assert set(unknown.products) == {"B"}
    assert unknown.orders["o2"] == ["A"]


def test_purchase_count_is_base_plus_distinct_orders_after_the_latest_base() -> None:
    state = state_after(
        order("2026-11-01 10:00", "o0", ["X"]),
        profile("2026-11-02 00:00", purchase_count=5),  # base 5 (o0 is already in it)
        order("2026-11-03 10:00", "o1", ["X"]),
        beacon("purchase", "2026-11-03 10:01", order_id="o1"),  # same order: counted once
        order("2026-11-03 12:00", "o0", ["X"]),  # status change of an order seen before
        beacon("purchase", "2026-11-04 10:00", product_ids=["Y"]),  # no order id: one order
        profile("2026-11-05 00:00", name="Taro"),  # no purchase_count: base stays
    )
    assert state.purchase_count == 7
    apply_member(state, profile("2026-11-06 00:00", purchase_count=6))
    assert state.purchase_count == 6
    assert product_purchase_count(state, frozenset({"X"})) == 2
    assert product_purchase_count(state, frozenset({"Y", "X"})) == 3
    assert product_purchase_count(state, frozenset({"Z"})) == 0


def test_profile_merges_field_by_field() -> None:
    state = state_after(
        profile("2026-11-01 00:00", name="Taro", device="pc", locale="ja"),
        profile("2026-11-02 00:00", opt_in=None, email="new@example.com", locale="en"),
    )
    assert (state.email, state.opt_in, state.name, state.profile_device, state.locale) == (
        "new@example.com",
        True,
        "Taro",
        "pc",
        "en",
    )


def test_device_is_the_latest_beacon_device_else_the_profile_device() -> None:
    state = state_after(profile("2026-11-01 00:00", device="mobile"))
    assert state.device == "mobile"
    apply_beacon(state, beacon("page_view", "2026-11-24 10:00", device="smartphone"))
    apply_beacon(state, beacon("page_view", "2026-11-24 10:01"))
    assert state.device == "smartphone"
    assert state.last_access == jst("2026-11-24 10:01")


def test_consent_reason_order() -> None:
    state = MemberState("m1")
    assert consent_reason(state) == "no_profile"
    apply_member(state, profile("2026-11-01 00:00", opt_in=False))
    assert consent_reason(state) == "no_consent"
    apply_member(state, profile("2026-11-02 00:00", opt_in=True))
    assert consent_reason(state) is None
    mark_unsubscribed(state)
    apply_member(state, profile("2026-11-03 00:00", opt_in=True))
    assert consent_reason(state) == "unsubscribed"


def test_dedup_window_is_bounded_and_forgets_the_oldest() -> None:
    state = MemberState("m1")
    assert state.seen_event("e0") is False
    assert state.seen_event("e0") is True
    for i in range(1, DEDUP_WINDOW + 1):
        assert state.seen_event(f"e{i}") is False
    assert len(state.recent_events) == DEDUP_WINDOW
    assert state.seen_event(f"e{DEDUP_WINDOW}") is True
    assert state.seen_event("e0") is False  # pushed out of the window


def test_product_count_is_bounded_by_forgetting_the_least_recent() -> None:
    state = MemberState("m1")
    start = jst("2026-11-24 10:00")
    for i in range(MAX_PRODUCTS + 1):
        apply_beacon(state, beacon("view", start + i, f"p{i}"))
    assert len(state.products) == MAX_PRODUCTS
    assert "p0" not in state.products and f"p{MAX_PRODUCTS}" in state.products


def test_bytes_round_trip_keeps_everything() -> None:
    state = state_after(
        profile("2026-11-01 00:00", purchase_count=2, name="花子", device="pc", locale="ja"),
        beacon("cart_add", "2026-11-24 10:00", "A", price=980.5, quantity=3, device="smartphone"),
        beacon("favorite_add", "2026-11-24 10:01", "B"),
        beacon("view", "2026-11-24 10:02", "C"),
        order("2026-11-24 10:03", "o1", ["Z"]),
    )
    state.seen_event("evt-1")
    state.episodes["cart-1h"] = (jst("2026-11-24 10:00"), None)
    state.episodes["view-2h"] = (1, 2)
    state.price_watch = {"pending": {"drop@1": {"rule": "drop", "at": 1, "products": {"A": [1000.0, 5]}}}}
    state.partition = 3
    mark_unsubscribed(state)
    copy = MemberState.from_bytes(state.to_bytes())
    assert copy.to_bytes() == state.to_bytes()
    assert copy.episodes == state.episodes and copy.price_watch == state.price_watch
    assert current_products(copy) == current_products(state)
    assert (copy.purchase_count, copy.device, copy.unsubscribed, copy.partition) == (3, "smartphone", True, 3)
    assert copy.seen_event("evt-1") is True


def test_unknown_format_version_is_refused() -> None:
    with pytest.raises(ValueError, match="format"):
        MemberState.from_bytes(b'{"v": 99}')
