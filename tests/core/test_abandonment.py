"""SPEC §11 abandonment semantics, one scenario per clause, on the virtual clock (Replay)."""

from __future__ import annotations

import pytest

from kagoflow.core.behaviour import MemberState, mark_unsubscribed
from kagoflow.core.engine import Engine

from .abandon_helpers import HOUR, beacon, brief, jst, local, order, price, profile, rule, ruleset, run

P = profile("2026-11-01 00:00")  # opted-in member m1, known long before every scenario


def test_sent_one_hour_after_the_cart_action() -> None:
    rules = ruleset(rule("cart-1h", coupon="CART10", template="cart"))
    decisions = run(rules, [P, beacon("cart_add", "2026-11-24 10:00", "A")])
    assert brief(decisions) == [("cart-1h", "sent", "", "2026-11-24 11:00", ("A",))]
    d = decisions[0]
    assert d.episode == str(jst("2026-11-24 10:00"))
    assert d.key == f"m1|cart-1h|{jst('2026-11-24 10:00')}"
    assert (d.coupon, d.template, d.kind, d.cap_exempt) == ("CART10", "cart", "abandonment", False)


def test_last_access_clock_every_later_access_moves_the_send_later() -> None:
    rules = ruleset(rule("r", clock="last_access"))
    records = [
        P,
        beacon("cart_add", "2026-11-24 10:00", "A"),
        beacon("page_view", "2026-11-24 10:40"),
        beacon("view", "2026-11-24 10:55", "Z"),
    ]
    assert brief(run(rules, records)) == [("r", "sent", "", "2026-11-24 11:55", ("A",))]


def test_action_clock_ignores_page_views() -> None:
    rules = ruleset(rule("r", clock="action"))
    records = [P, beacon("cart_add", "2026-11-24 10:00", "A"), beacon("page_view", "2026-11-24 10:40")]
    assert brief(run(rules, records)) == [("r", "sent", "", "2026-11-24 11:00", ("A",))]


def test_action_clock_anchor_is_the_latest_concerned_action_and_a_removal_makes_it_earlier() -> None:
    rules = ruleset(rule("r"))
    records = [
        P,
        beacon("cart_add", "2026-11-24 10:00", "A"),
        beacon("cart_add", "2026-11-24 10:30", "B"),
        beacon("cart_remove", "2026-11-24 10:45", "B"),
    ]
    assert brief(run(rules, records)) == [("r", "sent", "", "2026-11-24 11:00", ("A",))]


def test_a_due_moved_into_the_past_fires_at_the_records_time() -> None:
    rules = ruleset(rule("r"))
    records = [
        P,
        beacon("cart_add", "2026-11-24 10:00", "A"),
        beacon("cart_add", "2026-11-24 10:50", "B"),
        beacon("cart_remove", "2026-11-24 11:10", "B"),
    ]
    decisions = run(rules, records)
    assert brief(decisions) == [("r", "sent", "", "2026-11-24 11:10", ("A",))]
    assert decisions[0].due_ms == jst("2026-11-24 11:00")


def test_a_due_equal_to_a_records_ts_fires_before_that_record() -> None:
    rules = ruleset(rule("r"))
    records = [
        P,
        beacon("cart_add", "2026-11-24 10:00", "A"),
        beacon("purchase", "2026-11-24 11:00", product_ids=["A"]),
    ]
    assert brief(run(rules, records)) == [("r", "sent", "", "2026-11-24 11:00", ("A",))]


def test_engine_handle_fires_a_due_equal_to_ts_before_applying_the_record() -> None:
    engine = Engine(ruleset(rule("r")))
    state = MemberState("m1")
    assert engine.handle(state, P, catalog={}) == []
    assert engine.handle(state, beacon("cart_add", "2026-11-24 10:00", "A"), catalog={}) == []
    assert engine.next_due(state) == jst("2026-11-24 11:00")
    decisions = engine.handle(state, beacon("cart_remove", "2026-11-24 11:00", "A"), catalog={})
    assert brief(decisions) == [("r", "sent", "", "2026-11-24 11:00", ("A",))]
    assert engine.next_due(state) is None


def test_purchase_before_due_sends_nothing() -> None:
    rules = ruleset(rule("act"), rule("acc", clock="last_access"))
    records = [
        P,
        beacon("cart_add", "2026-11-24 10:00", "A"),
        beacon("purchase", "2026-11-24 10:20", product_ids=["A"]),
    ]
    # action clock: no concerned product left, so no anchor and no due; last_access: evaluated, nothing left.
    assert brief(run(rules, records)) == [("acc", "skipped", "no_products", "2026-11-24 11:20", ())]


def test_purchase_resets_only_the_purchased_products() -> None:
    rules = ruleset(rule("r"))
    records = [
        P,
        beacon("cart_add", "2026-11-24 10:00", "A"),
        beacon("cart_add", "2026-11-24 10:05", "B"),
        beacon("purchase", "2026-11-24 10:20", product_ids=["A"]),
    ]
    assert brief(run(rules, records)) == [("r", "sent", "", "2026-11-24 11:05", ("B",))]


def test_purchase_by_order_id_resets_that_orders_items_else_the_cart() -> None:
    rules = ruleset(rule("r"))
    known = [
        P,
        beacon("cart_add", "2026-11-24 10:00", "A"),
        beacon("cart_add", "2026-11-24 10:05", "B"),
        order("2026-11-24 10:19", "o1", ["A"]),
        beacon("purchase", "2026-11-24 10:20", order_id="o1"),
    ]
    assert brief(run(rules, known)) == [("r", "sent", "", "2026-11-24 11:05", ("B",))]
    unknown = [
        P,
        beacon("cart_add", "2026-11-24 10:00", "A"),
        beacon("view", "2026-11-24 10:05", "B"),
        beacon("purchase", "2026-11-24 10:20", order_id="o9"),
    ]
    assert run(rules, unknown) == []


def test_removal_before_due() -> None:
    rules = ruleset(rule("act"), rule("acc", clock="last_access"))
    records = [P, beacon("cart_add", "2026-11-24 10:00", "A"), beacon("cart_remove", "2026-11-24 10:30", "A")]
    assert brief(run(rules, records)) == [("acc", "skipped", "no_products", "2026-11-24 11:30", ())]


def test_a_carted_product_gets_no_browse_mail() -> None:
    rules = ruleset(rule("view-1h", "view"), rule("cart-2h", "cart", send={"after": "2h"}))
    records = [
        P,
        beacon("view", "2026-11-24 10:00", "A"),
        beacon("view", "2026-11-24 10:01", "B"),
        beacon("cart_add", "2026-11-24 10:02", "A"),
    ]
    assert brief(run(rules, records)) == [
        ("view-1h", "sent", "", "2026-11-24 11:01", ("B",)),
        ("cart-2h", "sent", "", "2026-11-24 12:02", ("A",)),
    ]


def test_a_view_of_a_carted_product_is_no_concerned_action() -> None:
    rules = ruleset(rule("view-1h", "view"))
    records = [
        P,
        beacon("cart_add", "2026-11-24 10:00", "A"),
        beacon("view", "2026-11-24 10:10", "A"),
        beacon("favorite_add", "2026-11-24 10:20", "B"),
        beacon("view", "2026-11-24 10:30", "B"),
    ]
    assert run(rules, records) == []


def test_state_falls_back_after_a_removal_but_old_actions_do_not_anchor() -> None:
    # A was viewed while carted (not a browse action); after the cart removal its state is view, so it is
    # concerned, but only a new view anchors the browse rule.
    rules = ruleset(rule("view-1h", "view"))
    records = [
        P,
        beacon("cart_add", "2026-11-24 10:00", "A"),
        beacon("view", "2026-11-24 10:10", "A"),
        beacon("cart_remove", "2026-11-24 10:20", "A"),
        beacon("view", "2026-11-24 12:00", "C"),
    ]
    assert brief(run(rules, records)) == [("view-1h", "sent", "", "2026-11-24 13:00", ("C", "A"))]


def test_product_filter_include_and_exclude() -> None:
    rules = ruleset(rule("inc", products={"include": ["A", "B"]}), rule("exc", products={"exclude": ["A"]}))
    records = [P, beacon("cart_add", "2026-11-24 10:00", "A"), beacon("cart_add", "2026-11-24 10:10", "C")]
    assert brief(run(rules, records)) == [
        ("inc", "sent", "", "2026-11-24 11:00", ("A",)),
        ("exc", "sent", "", "2026-11-24 11:10", ("C",)),
    ]


def test_series_each_rule_fires_once_per_episode_and_a_new_action_opens_a_new_one() -> None:
    rules = ruleset(
        rule("s-1h", clock="last_access"),
        rule("s-3d", clock="last_access", send={"days": 3, "at": "10:00"}, coupon="C5"),
        rule("s-7d", clock="last_access", send={"days": 7, "at": "10:00"}, coupon="C10"),
    )
    records = [P, beacon("cart_add", "2026-11-24 20:00", "A"), beacon("page_view", "2026-11-26 08:00")]
    first = run(rules, records)
    assert brief(first) == [
        ("s-1h", "sent", "", "2026-11-24 21:00", ("A",)),
        ("s-3d", "sent", "", "2026-11-29 10:00", ("A",)),
        ("s-7d", "sent", "", "2026-12-03 10:00", ("A",)),
    ]
    # A later page view (no concerned action) opens nothing; a new cart_add opens a new episode per rule.
    more = run(
        rules,
        [*records, beacon("page_view", "2026-12-05 09:00"), beacon("cart_add", "2026-12-06 09:00", "B")],
    )
    assert brief(more)[3:] == [
        ("s-1h", "sent", "", "2026-12-06 10:00", ("B", "A")),
        ("s-3d", "sent", "", "2026-12-09 10:00", ("B", "A")),
        ("s-7d", "sent", "", "2026-12-13 10:00", ("B", "A")),
    ]
    assert len({d.key for d in more}) == 6


def test_days_at_uses_the_shop_local_date_across_midnight() -> None:
    rules = ruleset(rule("d1", send={"days": 1, "at": "09:00"}))
    # 00:30 Tokyo is still the previous day in UTC; the shop-local date decides.
    assert brief(run(rules, [P, beacon("cart_add", "2026-11-25 00:30", "A")])) == [
        ("d1", "sent", "", "2026-11-26 09:00", ("A",))
    ]
    assert brief(run(rules, [P, beacon("cart_add", "2026-11-24 23:59", "A")])) == [
        ("d1", "sent", "", "2026-11-25 09:00", ("A",))
    ]


def test_days_at_across_month_and_year_ends() -> None:
    rules = ruleset(rule("d1", send={"days": 1, "at": "09:00"}), rule("d3", send={"days": 3, "at": "21:30"}))
    cases = {
        "2027-01-31 23:00": ("2027-02-01 09:00", "2027-02-03 21:30"),
        "2027-02-28 12:00": ("2027-03-01 09:00", "2027-03-03 21:30"),
        "2028-02-28 12:00": ("2028-02-29 09:00", "2028-03-02 21:30"),
        "2026-12-31 23:59": ("2027-01-01 09:00", "2027-01-03 21:30"),
    }
    for at, (d1, d3) in cases.items():
        got = [local(d.at_ms) for d in run(rules, [P, beacon("cart_add", at, "A")])]
        assert got == [d1, d3], at


def test_after_crossing_midnight_stays_anchor_plus_delay() -> None:
    rules = ruleset(rule("r", send={"after": "12h"}))
    assert brief(run(rules, [P, beacon("cart_add", "2026-11-30 23:30", "A")])) == [
        ("r", "sent", "", "2026-12-01 11:30", ("A",))
    ]


def test_evaluation_order_products_then_filters_then_consent() -> None:
    rules = ruleset(rule("r", clock="last_access", filters={"devices": ["pc"]}))
    # no products beats a failing filter
    records = [beacon("cart_add", "2026-11-24 10:00", "A"), beacon("cart_remove", "2026-11-24 10:01", "A")]
    assert brief(run(rules, records))[0][1:3] == ("skipped", "no_products")
    # a failing filter beats missing consent (no device known at all: the devices filter fails)
    assert brief(run(rules, [beacon("cart_add", "2026-11-24 10:00", "A")]))[0][1:3] == (
        "skipped",
        "filter:devices",
    )
    # filters pass, no profile
    assert brief(run(rules, [beacon("cart_add", "2026-11-24 10:00", "A", device="pc")]))[0][1:3] == (
        "suppressed",
        "no_profile",
    )


def test_consent_reasons() -> None:
    rules = ruleset(rule("r"))
    cart = beacon("cart_add", "2026-11-24 10:00", "A")
    no_consent = run(rules, [profile("2026-11-01 00:00", opt_in=False), cart])
    assert brief(no_consent)[0][1:3] == ("suppressed", "no_consent")
    # opt_in merges field by field: a later record without opt_in keeps the consent
    merged = run(rules, [P, profile("2026-11-02 00:00", opt_in=None, name="Taro"), cart])
    assert brief(merged)[0][1:3] == ("sent", "")


def test_unsubscribed_member_is_suppressed() -> None:
    engine = Engine(ruleset(rule("r")))
    state = MemberState("m1")
    engine.handle(state, P, catalog={})
    engine.handle(state, beacon("cart_add", "2026-11-24 10:00", "A"), catalog={})
    mark_unsubscribed(state)
    engine.handle(state, profile("2026-11-24 10:10", opt_in=True), catalog={})  # does not undo it
    assert engine.tick(state, jst("2026-11-24 10:59"), catalog={}) == []
    fired = engine.tick(state, jst("2026-11-24 12:00"), catalog={})  # a late tick decides at its own time
    assert fired[0].due_ms == jst("2026-11-24 11:00")
    assert brief(fired) == [
        ("r", "suppressed", "unsubscribed", "2026-11-24 12:00", ("A",))
    ]


def test_suppressed_ends_the_episode_and_is_never_retried() -> None:
    rules = ruleset(rule("r", clock="last_access"))
    records = [
        beacon("cart_add", "2026-11-24 10:00", "A"),
        profile("2026-11-24 12:00"),
        beacon("page_view", "2026-11-24 13:00"),
    ]
    assert brief(run(rules, records)) == [("r", "suppressed", "no_profile", "2026-11-24 11:00", ("A",))]


def test_skipped_stays_open_and_is_re_evaluated_only_at_a_later_due_from_a_new_anchor() -> None:
    rules = ruleset(rule("r", clock="last_access", filters={"min_cart_amount": 3000}))
    records = [
        P,
        beacon("cart_add", "2026-11-24 10:00", "A", price=1000.0),
        beacon("cart_add", "2026-11-24 12:00", "B", price=2500.0),
    ]
    decisions = run(rules, records)
    assert brief(decisions) == [
        ("r", "skipped", "filter:min_cart_amount", "2026-11-24 11:00", ("A",)),
        ("r", "sent", "", "2026-11-24 13:00", ("B", "A")),
    ]
    assert decisions[0].episode == decisions[1].episode == str(jst("2026-11-24 10:00"))


def test_skipped_is_not_re_evaluated_when_the_anchor_moves_back() -> None:
    rules = ruleset(rule("r", filters={"min_cart_amount": 3000}))
    records = [
        P,
        beacon("cart_add", "2026-11-24 10:00", "A", price=1000.0),
        beacon("cart_add", "2026-11-24 11:30", "B", price=500.0),
        beacon("cart_remove", "2026-11-24 11:40", "B"),  # anchor back to 10:00: due 11:00 was evaluated
        price("2026-11-24 11:50", "A", 5000.0),
    ]
    assert brief(run(rules, records)) == [
        ("r", "skipped", "filter:min_cart_amount", "2026-11-24 11:00", ("A",))
    ]


def test_min_cart_amount_uses_current_catalog_price_else_cart_price_times_quantity() -> None:
    rules = ruleset(rule("r", filters={"min_cart_amount": 3000}))
    by_cart_price = [P, beacon("cart_add", "2026-11-24 10:00", "A", price=1000.0, quantity=3)]
    assert brief(run(rules, by_cart_price))[0][1] == "sent"
    catalog_wins = [P, price("2026-11-24 09:00", "A", 900.0), *by_cart_price[1:]]
    assert brief(run(rules, catalog_wins))[0][1:3] == ("skipped", "filter:min_cart_amount")
    price_changes_before_due = [*by_cart_price, price("2026-11-24 10:59", "A", 999.0)]
    assert brief(run(rules, price_changes_before_due))[0][1:3] == ("skipped", "filter:min_cart_amount")


def test_devices_filter_uses_latest_beacon_device_else_profile() -> None:
    rules = ruleset(rule("r", filters={"devices": ["smartphone"]}))
    from_profile = [
        profile("2026-11-01 00:00", device="smartphone"),
        beacon("cart_add", "2026-11-24 10:00", "A"),
    ]
    assert brief(run(rules, from_profile))[0][1] == "sent"
    beacon_wins = [
        profile("2026-11-01 00:00", device="smartphone"),
        beacon("cart_add", "2026-11-24 10:00", "A", device="pc"),
    ]
    assert brief(run(rules, beacon_wins))[0][1:3] == ("skipped", "filter:devices")


def test_purchase_count_filters() -> None:
    rules = ruleset(
        rule("first", filters={"purchase_count": {"max": 0}}),
        rule("repeat", filters={"purchase_count": {"min": 2}}),
        rule("sku", filters={"product_purchase_count": {"products": ["X"], "min": 1}}),
    )
    base = [
        profile("2026-11-01 00:00", purchase_count=1),
        beacon("purchase", "2026-11-10 10:00", product_ids=["X"], order_id="o1"),
        order("2026-11-10 10:01", "o1", ["X"]),
        beacon("cart_add", "2026-11-24 10:00", "A"),
    ]
    assert brief(run(rules, base)) == [
        ("first", "skipped", "filter:purchase_count", "2026-11-24 11:00", ("A",)),
        ("repeat", "sent", "", "2026-11-24 11:00", ("A",)),
        ("sku", "sent", "", "2026-11-24 11:00", ("A",)),
    ]


def test_caps_a_full_day_caps_and_ends_the_episode() -> None:
    rules = ruleset(rule("a"), rule("b", send={"after": "2h"}), shop={"caps": {"day": 1}})
    records = [P, beacon("cart_add", "2026-11-24 10:00", "A"), beacon("page_view", "2026-11-25 10:00")]
    assert brief(run(rules, records)) == [
        ("a", "sent", "", "2026-11-24 11:00", ("A",)),
        ("b", "capped", "capped", "2026-11-24 12:00", ("A",)),
    ]


def test_caps_count_per_shop_local_day() -> None:
    rules = ruleset(rule("a"), rule("b", send={"after": "2h30m"}), shop={"caps": {"day": 1}})
    # 22:00 and 23:30 Tokyo: one shop day; 23:00 and 00:30: two shop days (though one UTC day).
    same_day = run(rules, [P, beacon("cart_add", "2026-11-23 21:00", "A")])
    assert [(local(d.at_ms), d.status) for d in same_day] == [
        ("2026-11-23 22:00", "sent"),
        ("2026-11-23 23:30", "capped"),
    ]
    next_day = run(rules, [P, beacon("cart_add", "2026-11-23 22:00", "A")])
    assert [d.status for d in next_day] == ["sent", "sent"]


def test_caps_count_per_iso_week_and_calendar_month() -> None:
    rules = ruleset(rule("a"), shop={"caps": {"week": 2, "month": 3}})

    def sends(*times: str) -> list[str]:
        """One episode per send time: cart an hour before, emptied right after."""
        records = [P]
        for t in times:
            records += [beacon("cart_add", jst(t) - HOUR, "A"), beacon("cart_remove", jst(t) + 60_000, "A")]
        return [d.status for d in run(rules, records)]

    # ISO week: Sun 2026-11-29 and Mon 2026-11-30 are in different weeks.
    assert sends("2026-11-27 10:00", "2026-11-28 10:00", "2026-11-29 10:00") == ["sent", "sent", "capped"]
    assert sends("2026-11-28 10:00", "2026-11-29 10:00", "2026-11-30 00:30") == ["sent", "sent", "sent"]
    # Month: the 4th mail of December is capped, January starts afresh (weeks stay below their cap).
    dec = ["2026-12-01 10:00", "2026-12-08 10:00", "2026-12-15 10:00", "2026-12-22 10:00", "2027-01-01 00:30"]
    assert sends(*dec) == ["sent", "sent", "sent", "capped", "sent"]


def test_catalog_only_record_and_orders_are_no_access() -> None:
    rules = ruleset(rule("r", clock="last_access"))
    records = [
        P,
        beacon("cart_add", "2026-11-24 10:00", "A"),
        order("2026-11-24 10:30", "o5", ["Q"]),
        profile("2026-11-24 10:40", name="Hanako"),
    ]
    assert brief(run(rules, records)) == [("r", "sent", "", "2026-11-24 11:00", ("A",))]


def test_disabled_rules_never_fire() -> None:
    rules = ruleset(rule("on"), rule("off", enabled=False))
    assert [d.rule_id for d in run(rules, [P, beacon("cart_add", "2026-11-24 10:00", "A")])] == ["on"]


def test_handle_rejects_another_members_record() -> None:
    engine = Engine(ruleset(rule("r")))
    with pytest.raises(ValueError, match="m2"):
        engine.handle(MemberState("m1"), beacon("view", "2026-11-24 10:00", "A", member="m2"), catalog={})
