"""SPEC §12 clause by clause, on the virtual clock (``Replay``): start, anchors, timing, repeat, end, A/B."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from kagoflow.backtest import Replay
from kagoflow.core.behaviour import MemberState
from kagoflow.core.decisions import Decision
from kagoflow.core.engine import Engine
from kagoflow.core.events import Engagement, Record
from kagoflow.core.scenario import step_of_key, variant_of
from tests.core.abandon_helpers import beacon, jst, profile, run
from tests.core.scenario_helpers import engage, life, order, rules_of, scenario

P = profile("2026-11-01 00:00")
THANKS = {"send": {"anchor": "ordered", "after": "0m"}, "template": "thanks"}


def step(anchor: str, template: str = "t", **send: Any) -> dict[str, Any]:
    return {"send": {"anchor": anchor, **send}, "template": template}


def test_thank_you_at_the_order_then_completed() -> None:
    decisions = run(rules_of(scenario("s", [THANKS])), [P, order("2026-11-24 10:00", products=("a", "b"))])
    assert life(decisions) == [
        ("started", "", "2026-11-24 10:00", 0, 0, ""),
        ("sent", "", "2026-11-24 10:00", 1, 1, "thanks"),
        ("ended", "completed", "2026-11-24 10:00", 0, 0, ""),
    ]
    assert all(d.products == ("a", "b") and d.order_id == "o1" and d.kind == "scenario" for d in decisions)
    assert decisions[1].key == "m1|s|o1|1|1"
    assert decisions[1].to_json()["variant"] == ""


def test_days_at_counts_shop_local_dates_across_a_month_end() -> None:
    # 08:00 on 28 Feb in Tokyo is still 27 Feb in UTC: the shop-local date + 1 is 1 March.
    rules = rules_of(scenario("s", [step("ordered", days=1, at="09:00")]))
    decisions = run(rules, [P, order("2026-02-28 08:00")])
    assert life(decisions)[1][:3] == ("sent", "", "2026-03-01 09:00")
    # days: 0 with a time not after the anchor: the first HH:MM strictly after it (next day)
    zero = run(rules_of(scenario("s", [step("ordered", days=0, at="09:00")])), [P, order("2026-11-30 09:00")])
    assert life(zero)[1][:3] == ("sent", "", "2026-12-01 09:00")
    # New Year in the shop zone
    year = run(rules_of(scenario("s", [step("ordered", days=2, at="10:00")])), [P, order("2026-12-31 20:00")])
    assert life(year)[1][:3] == ("sent", "", "2027-01-02 10:00")


def test_shipped_anchor_waits_for_the_record_that_makes_it_known() -> None:
    rules = rules_of(scenario("s", [step("shipped", after="1d")]))
    decisions = run(rules, [P, order("2026-11-24 10:00"),
                            order("2026-11-26 09:00", status="shipped", ordered="2026-11-24 10:00",
                                  shipped="2026-11-26 09:00")])
    assert [entry[:3] for entry in life(decisions)] == [
        ("started", "", "2026-11-24 10:00"), ("sent", "", "2026-11-27 09:00"),
        ("ended", "completed", "2026-11-27 09:00"),
    ]


def test_delivered_falls_back_to_shipped_plus_48h_and_follows_a_real_delivery() -> None:
    rules = rules_of(scenario("s", [step("delivered", after="2d")], start={"status": ["shipped"]}))
    shipped = order("2026-11-24 10:00", status="shipped", ordered="2026-11-23 10:00", shipped="2026-11-24 10:00")
    fallback = run(rules, [P, shipped])
    assert life(fallback)[1][:3] == ("sent", "", "2026-11-28 10:00")
    delivered = order("2026-11-25 12:00", status="delivered", ordered="2026-11-23 10:00",
                      shipped="2026-11-24 10:00", delivered="2026-11-25 12:00")
    real = run(rules, [P, shipped, delivered])
    assert life(real)[1][:3] == ("sent", "", "2026-11-27 12:00")


def test_late_after_skips_old_orders_but_exactly_late_after_is_sent() -> None:
    rules = rules_of(scenario("s", [step("shipped", after="1d")], start={"status": ["shipped"]}))
    late = run(rules, [P, order("2026-11-24 10:01", status="shipped", ordered="2026-11-19 10:00",
                                shipped="2026-11-20 10:00")])
    assert [entry[:5] for entry in life(late)] == [
        ("started", "", "2026-11-24 10:01", 0, 0), ("skipped", "late", "2026-11-24 10:01", 1, 1),
        ("ended", "late", "2026-11-24 10:01", 0, 0),
    ]
    exact = run(rules, [P, order("2026-11-24 10:00", status="shipped", ordered="2026-11-19 10:00",
                                 shipped="2026-11-20 10:00")])
    assert life(exact)[1][:3] == ("sent", "", "2026-11-24 10:00")
    custom = rules_of(scenario("s", [step("shipped", after="1d")], start={"status": ["shipped"]},
                               late_after="10d"))
    assert life(run(custom, [P, order("2026-11-24 10:01", status="shipped", ordered="2026-11-19 10:00",
                                      shipped="2026-11-20 10:00")]))[1][0] == "sent"


def test_anchor_wait_ends_a_run_whose_anchor_never_comes() -> None:
    rules = rules_of(scenario("s", [step("shipped", after="1d")], anchor_wait="2d"))
    decisions = run(rules, [P, order("2026-11-24 10:00")])
    assert [entry[:3] for entry in life(decisions)] == [
        ("started", "", "2026-11-24 10:00"), ("ended", "anchor_missing", "2026-11-26 10:00"),
    ]
    # a shipping record after the deadline comes too late: the run already ended
    after = run(rules, [P, order("2026-11-24 10:00"),
                        order("2026-11-27 10:00", status="shipped", ordered="2026-11-24 10:00",
                              shipped="2026-11-27 10:00")])
    assert [d.status for d in after] == ["started", "ended"]


def test_priority_replacement_before_the_first_send_and_blocking_after_it() -> None:
    low = scenario("low", [step("previous", after="1d")])
    high = scenario("high", [step("previous", after="1d")], priority=10, start={"status": ["shipped"]})
    ordered = order("2026-11-24 10:00")
    shipped = order("2026-11-24 12:00", status="shipped", ordered="2026-11-24 10:00", shipped="2026-11-24 12:00")
    replaced = run(rules_of(low, high), [P, ordered, shipped])
    assert [(d.rule_id, d.status, d.reason) for d in replaced] == [
        ("low", "started", ""), ("low", "ended", "replaced"), ("high", "started", ""), ("high", "sent", ""),
        ("high", "ended", "completed"),
    ]
    assert life(replaced)[3][2] == "2026-11-25 12:00"  # previous = the run's start for step 1
    late_ship = order("2026-11-26 12:00", status="shipped", ordered="2026-11-24 10:00", shipped="2026-11-26 12:00")
    blocked = run(rules_of(low, high), [P, ordered, late_ship])
    assert [(d.rule_id, d.status) for d in blocked][:3] == [("low", "started"), ("low", "sent"), ("low", "ended")]
    # once low has ended, a later record may start high
    assert [(d.rule_id, d.status) for d in blocked][3:] == [("high", "started"), ("high", "sent"), ("high", "ended")]


def test_equal_priority_goes_to_the_smaller_id_and_an_active_run_blocks_other_orders() -> None:
    rules = rules_of(scenario("b", [step("ordered", after="1d")]), scenario("a", [step("ordered", after="1d")]))
    decisions = run(rules, [P, order("2026-11-24 10:00"), order("2026-11-24 11:00", "o2")])
    assert [(d.rule_id, d.status, d.order_id) for d in decisions] == [
        ("a", "started", "o1"), ("a", "sent", "o1"), ("a", "ended", "o1"),
    ]


def salt(**repeat: Any) -> dict[str, Any]:
    return scenario("s", [
        THANKS,
        {"send": {"anchor": "previous", "after": "1d"}, "template": "two", "repeat": repeat},
        step("previous", "three", after="1d"),
    ], coupon="SALT10")


def sends(decisions: list[Decision]) -> list[tuple[str, str, int, int, str]]:
    return [(d.status, d.reason, d.step, d.send, life([d])[0][2]) for d in decisions if d.status != "started"]


def done(at: str) -> tuple[str, str, int, int, str]:
    return ("ended", "completed", 0, 0, at)


def test_repeat_while_unopened_then_end() -> None:
    decisions = run(rules_of(salt(**{"while": "unopened", "times": 3, "then": "end"})),
                    [P, order("2026-11-24 10:00")])
    assert sends(decisions) == [
        ("sent", "", 1, 1, "2026-11-24 10:00"), ("sent", "", 2, 1, "2026-11-25 10:00"),
        ("sent", "", 2, 2, "2026-11-26 10:00"), ("sent", "", 2, 3, "2026-11-27 10:00"),
        ("ended", "repeat_exhausted", 0, 0, "2026-11-28 10:00"),
    ]
    next_ = run(rules_of(salt(**{"while": "unopened", "times": 2})), [P, order("2026-11-24 10:00")])
    assert sends(next_)[-2:] == [("sent", "", 3, 1, "2026-11-27 10:00"), done("2026-11-27 10:00")]


def test_an_open_changes_course_bots_and_other_steps_do_not() -> None:
    rules = rules_of(salt(**{"while": "unopened", "times": 3, "then": "end"}))
    opened = run(rules, [P, order("2026-11-24 10:00"), engage("2026-11-26 12:00", "open", step=2)])
    assert sends(opened)[2:] == [
        ("sent", "", 2, 2, "2026-11-26 10:00"), ("sent", "", 3, 1, "2026-11-27 10:00"),
        ("ended", "completed", 0, 0, "2026-11-27 10:00"),
    ]
    ignored = [engage("2026-11-26 12:00", "open", step=2, bot=True), engage("2026-11-26 12:00", "open", step=1),
               engage("2026-11-26 12:00", "open", rule="other", step=2)]
    still = run(rules, [P, order("2026-11-24 10:00"), *ignored])
    assert sends(still)[-1] == ("ended", "repeat_exhausted", 0, 0, "2026-11-28 10:00")
    # C stops holding after the K-th send but before step 3 would be due: step 3 follows as usual
    rescued = run(rules, [P, order("2026-11-24 10:00"), engage("2026-11-27 18:00", "click", step=2)])
    assert sends(rescued)[-2] == ("sent", "", 3, 1, "2026-11-28 10:00")
    # an open dated before any send of the step does not count
    early = run(rules, [P, order("2026-11-24 10:00"), engage("2026-11-24 12:00", "open", step=2)])
    assert sends(early)[-1][1] == "repeat_exhausted"


def test_unclicked_needs_a_click_always_repeats_k_times() -> None:
    rules = rules_of(salt(**{"while": "unclicked", "times": 2, "then": "end"}))
    opened = run(rules, [P, order("2026-11-24 10:00"), engage("2026-11-25 12:00", "open", step=2)])
    assert sends(opened)[-1][1] == "repeat_exhausted"
    clicked = run(rules, [P, order("2026-11-24 10:00"), engage("2026-11-25 12:00", "click", step=2)])
    assert sends(clicked)[2:4] == [("sent", "", 3, 1, "2026-11-26 10:00"), done("2026-11-26 10:00")]
    always = run(rules_of(salt(**{"while": "always", "times": 2})), [P, order("2026-11-24 10:00")])
    assert [(s[2], s[3]) for s in sends(always) if s[0] == "sent"] == [(1, 1), (2, 1), (2, 2), (3, 1)]


def test_not_purchased_counts_only_the_listed_products_and_purchase_beacons() -> None:
    rules = rules_of(salt(**{"while": "not_purchased", "products": ["full"], "times": 3, "then": "end"}))
    other = run(rules, [P, order("2026-11-24 10:00"), beacon("purchase", "2026-11-25 12:00", product_ids=["x"])])
    assert sends(other)[-1][1] == "repeat_exhausted"
    bought = run(rules, [P, order("2026-11-24 10:00"), beacon("purchase", "2026-11-25 12:00", product_ids=["full"])])
    assert sends(bought)[2:] == [("sent", "", 3, 1, "2026-11-26 10:00"), done("2026-11-26 10:00")]
    by_order = run(rules, [P, order("2026-11-24 10:00"), order("2026-11-25 12:00", "o2", products=("full",))])
    assert sends(by_order)[2][:4] == ("sent", "", 3, 1)
    cancelled = run(rules, [P, order("2026-11-24 10:00"),
                            order("2026-11-25 12:00", "o2", status="cancelled", products=("full",))])
    assert sends(cancelled)[-1][1] == "repeat_exhausted"


def test_coupon_unused_stops_when_an_order_carries_the_code() -> None:
    rules = rules_of(salt(**{"while": "coupon_unused", "times": 3, "then": "end"}))
    used = run(rules, [P, order("2026-11-24 10:00"), order("2026-11-25 12:00", "o2", coupon="SALT10")])
    assert sends(used)[2][:4] == ("sent", "", 3, 1)
    other_code = run(rules, [P, order("2026-11-24 10:00"), order("2026-11-25 12:00", "o2", coupon="X")])
    assert sends(other_code)[-1][1] == "repeat_exhausted"


def test_repeat_on_the_last_step_completes_when_c_stops_or_after_k_sends() -> None:
    rules = rules_of(scenario("s", [THANKS, {"send": {"anchor": "previous", "after": "1d"}, "template": "two",
                                             "repeat": {"while": "unopened", "times": 2, "then": "end"}}]))
    exhausted = run(rules, [P, order("2026-11-24 10:00")])
    assert sends(exhausted)[-1] == ("ended", "completed", 0, 0, "2026-11-26 10:00")
    opened = run(rules, [P, order("2026-11-24 10:00"), engage("2026-11-25 11:00", "open", step=2)])
    assert sends(opened)[-1] == ("ended", "completed", 0, 0, "2026-11-25 11:00")


def test_end_status_of_the_own_order_ends_the_run_another_orders_status_does_not() -> None:
    rules = rules_of(scenario("s", [THANKS, step("previous", after="2d")], end={"status": ["cancelled"]}))
    own = run(rules, [P, order("2026-11-24 10:00"), order("2026-11-25 10:00", status="cancelled",
                                                          ordered="2026-11-24 10:00")])
    assert sends(own)[-1] == ("ended", "status:cancelled", 0, 0, "2026-11-25 10:00")
    other = run(rules, [P, order("2026-11-24 10:00"), order("2026-11-25 10:00", "o2", status="cancelled")])
    assert sends(other)[-2][:4] == ("sent", "", 2, 1)


def test_conversion_by_another_order_not_by_the_runs_own_order() -> None:
    rules = rules_of(scenario("s", [THANKS, step("previous", after="2d")], end={"purchased": "any"}))
    own = run(rules, [P, order("2026-11-24 10:00"),
                      order("2026-11-25 10:00", status="shipped", ordered="2026-11-24 10:00",
                            shipped="2026-11-25 10:00")])
    assert sends(own)[-1][:2] == ("ended", "completed")
    other = [d for d in run(rules, [P, order("2026-11-24 10:00"), order("2026-11-25 10:00", "o2")])
             if d.order_id == "o1"]
    assert sends(other)[-1] == ("converted", "", 0, 0, "2026-11-25 10:00")
    assert all(d.status != "sent" or d.step == 1 for d in other)  # the pending step never went out
    # the converting order then starts its own run (a record first ends the run, then may start one)
    listed = rules_of(scenario("s", [THANKS, step("previous", after="2d")],
                               end={"purchased": {"include": ["full"]}}))
    not_listed = run(listed, [P, order("2026-11-24 10:00"), order("2026-11-25 10:00", "o2")])
    assert sends(not_listed)[-1][1] == "completed"
    buy = beacon("purchase", "2026-11-25 09:00", product_ids=["full"])
    beacon_buy = run(listed, [P, order("2026-11-24 10:00"), buy])
    assert sends(beacon_buy)[-1][0] == "converted"


def test_unsubscribe_mid_run_suppresses_the_next_step_and_ends_the_run() -> None:
    rules = rules_of(scenario("s", [THANKS, step("previous", after="1d")]))
    unsub = Engagement(member_id="m1", event="unsubscribe", ts=jst("2026-11-24 18:00"))
    decisions = run(rules, [P, order("2026-11-24 10:00"), unsub])
    assert sends(decisions)[1:] == [
        ("suppressed", "unsubscribed", 2, 1, "2026-11-25 10:00"), ("ended", "suppressed", 0, 0, "2026-11-25 10:00"),
    ]
    no_profile = run(rules, [order("2026-11-24 10:00")])
    assert sends(no_profile) == [("suppressed", "no_profile", 1, 1, "2026-11-24 10:00"),
                                 ("ended", "suppressed", 0, 0, "2026-11-24 10:00")]


def test_a_run_starts_once_per_scenario_and_order_and_only_from_orders() -> None:
    rules = rules_of(scenario("s", [THANKS], start={"status": ["ordered", "shipped"]}))
    decisions = run(rules, [P, order("2026-11-24 10:00"),
                            order("2026-11-25 10:00", status="shipped", ordered="2026-11-24 10:00"),
                            beacon("purchase", "2026-11-26 10:00", product_ids=["p1"])])
    assert [d.status for d in decisions] == ["started", "sent", "ended"]


def test_start_conditions() -> None:
    def starts(records: list[Record], **start: Any) -> bool:
        rules = rules_of(scenario("s", [THANKS], start={"status": ["ordered"], **start}))
        return any(d.status == "started" and d.order_id == "o1" for d in run(rules, [P, *records]))

    first = order("2026-11-24 10:00", products=("salt-sample",), total=500.0, coupon="SAMPLE10")
    earlier = order("2026-10-01 10:00", "o0", products=("salt-set",))  # its own run has ended by o1
    assert starts([first], products={"include": ["salt-sample"]})
    assert not starts([first], products={"exclude": ["salt-sample"]})
    assert starts([first], order_count={"min": 1, "max": 1})
    assert not starts([earlier, first], order_count={"max": 1})
    assert starts([first], min_amount=500) and not starts([first], min_amount=501)
    assert starts([first], coupons=["SAMPLE10"]) and not starts([first], coupons=["X"])
    ppc = {"products": ["salt-set"], "max": 0}
    assert starts([first], product_purchase_count=ppc)
    assert not starts([earlier, first], product_purchase_count=ppc)


def test_ab_variant_is_deterministic_and_near_the_split() -> None:
    counts = Counter(variant_of(f"m{n}", "salt", 2, 50) for n in range(10_000))
    assert 4800 <= counts["A"] <= 5200
    thirty = Counter(variant_of(f"m{n}", "salt", 2, 30) for n in range(10_000))
    assert 2800 <= thirty["A"] <= 3200
    assert [variant_of("m1", "salt", 2, 50) for _ in range(3)] == [variant_of("m1", "salt", 2, 50)] * 3
    rules = rules_of(scenario("salt", [THANKS, {"send": {"anchor": "previous", "after": "1d"},
                                                "template": ["a", "b"], "split": 30,
                                                "repeat": {"while": "always", "times": 2}}]))
    for member in ("m1", "m2", "m3", "m4"):
        decisions = run(rules, [profile("2026-11-01 00:00", member=member), order("2026-11-24 10:00", member=member)])
        mails = [d for d in decisions if d.step == 2]
        want = variant_of(member, "salt", 2, 30)
        assert [(d.variant, d.template) for d in mails] == [(want, "a" if want == "A" else "b")] * 2


def test_runs_survive_serialization_mid_run() -> None:
    rules = rules_of(salt(**{"while": "unopened", "times": 3, "then": "end"}))
    straight = run(rules, [P, order("2026-11-24 10:00"), engage("2026-11-26 12:00", "open", step=2)])

    async def go() -> list[Decision]:
        replay = Replay(rules)
        out: list[Decision] = []
        for record in [P, order("2026-11-24 10:00")]:
            out += await replay.feed(record)
        out += await replay.advance(jst("2026-11-25 11:00"))
        replay.states["m1"] = MemberState.from_bytes(replay.states["m1"].to_bytes())  # a restart
        out += await replay.feed(engage("2026-11-26 12:00", "open", step=2))
        out += await replay.advance(None)
        return out

    assert asyncio.run(go()) == straight


def test_engine_next_due_and_late_ticks_fire_at_the_tick_time() -> None:
    engine = Engine(rules_of(scenario("s", [THANKS, step("previous", after="1d")])))
    state = MemberState("m1")
    engine.handle(state, P, catalog={})
    engine.handle(state, order("2026-11-24 10:00"), catalog={})
    assert engine.next_due(state) == jst("2026-11-25 10:00")
    fired = engine.tick(state, jst("2026-11-25 10:05"), catalog={})
    assert [(d.status, d.due_ms, d.at_ms) for d in fired] == [
        ("sent", jst("2026-11-25 10:00"), jst("2026-11-25 10:05")), ("ended", jst("2026-11-25 10:05"),
                                                                      jst("2026-11-25 10:05")),
    ]
    assert engine.next_due(state) is None


def test_step_of_key() -> None:
    assert step_of_key("m1|salt|o|1|2|1", "m1", "salt") == 2
    assert step_of_key("m1|cart-1h|1700000000000", "m1", "cart-1h") == 0
    assert step_of_key("other|salt|o1|2|1", "m1", "salt") == 0


def test_a_step_due_before_its_predecessor_fires_with_it_or_is_late() -> None:
    with_it = rules_of(scenario("s", [step("previous", "one", after="2d"), step("ordered", "two", after="1d")]))
    assert [e[:5] for e in life(run(with_it, [P, order("2026-11-24 10:00")]))[1:]] == [
        ("sent", "", "2026-11-26 10:00", 1, 1), ("sent", "", "2026-11-26 10:00", 2, 1),
        ("ended", "completed", "2026-11-26 10:00", 0, 0),
    ]
    late = rules_of(scenario("s", [step("previous", "one", after="4d"), step("ordered", "two", after="0m")]))
    assert [e[:4] for e in life(run(late, [P, order("2026-11-24 10:00")]))[1:]] == [
        ("sent", "", "2026-11-28 10:00", 1), ("skipped", "late", "2026-11-28 10:00", 2),
        ("ended", "late", "2026-11-28 10:00", 0),
    ]


def test_a_repeat_with_days_at_counts_from_the_previous_send() -> None:
    rules = rules_of(scenario("s", [step("ordered", "one", days=0, at="18:00"),
                                    {"send": {"anchor": "previous", "days": 1, "at": "09:30"}, "template": "two",
                                     "repeat": {"while": "always", "times": 2}}]))
    assert [e[2] for e in life(run(rules, [P, order("2026-11-30 10:00")])) if e[0] == "sent"] == [
        "2026-11-30 18:00", "2026-12-01 09:30", "2026-12-02 09:30"]


def test_a_run_whose_rule_was_removed_or_lost_its_step_ends_at_the_next_record() -> None:
    three = rules_of(scenario("s", [THANKS, step("previous", after="1d"), step("previous", after="1d")]))
    state = MemberState("m1")
    engine = Engine(three)
    engine.handle(state, P, catalog={})
    engine.handle(state, order("2026-11-24 10:00"), catalog={})
    engine.tick(state, jst("2026-11-25 10:00"), catalog={})  # step 2 sent; step 3 current
    for reloaded in (rules_of(scenario("s", [THANKS])), rules_of(scenario("other", [THANKS]))):
        again = MemberState.from_bytes(state.to_bytes())
        engine = Engine(reloaded)
        assert engine.next_due(again) is None
        out = engine.handle(again, beacon("purchase", "2026-11-25 12:00", product_ids=["x"]), catalog={})
        assert [(d.status, d.reason) for d in out] == [("ended", "rule_removed")]
