"""§13/§14 through the engine on the virtual clock: date and inactive rules, coupons, holdouts, A/B, filters."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from kagoflow.backtest import Replay
from kagoflow.core import customer
from kagoflow.core.coupons import generated_code
from kagoflow.core.decisions import Decision
from kagoflow.core.events import OrderItem, OrderUpdate, Record
from kagoflow.core.rules import RuleSet, load_rules
from kagoflow.core.variants import ab_bucket, is_held_out

from .abandon_helpers import beacon, jst, local, price, profile

SECRET = "test-secret"


def rules_dir(tmp: Path, *rules: dict[str, Any], shop: dict[str, Any] | None = None,
              pools: dict[str, list[str]] | None = None) -> RuleSet:
    for data in rules:
        (tmp / f"{data['id']}.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    if shop:
        (tmp / "shop.yaml").write_text(yaml.safe_dump(shop), encoding="utf-8")
    if pools:
        (tmp / "coupons").mkdir(exist_ok=True)
        for name, codes in pools.items():
            (tmp / "coupons" / f"{name}.txt").write_text("\n".join(codes) + "\n", encoding="utf-8")
    return load_rules(tmp, min_delay_seconds=1)


def replay(rules: RuleSet, records: Iterable[Record]) -> tuple[list[Decision], Replay]:
    async def go() -> tuple[list[Decision], Replay]:
        rp = Replay(rules, secret=SECRET)
        out: list[Decision] = []
        for record in records:
            out.extend(await rp.feed(record))
        out.extend(await rp.advance(None))
        return out, rp

    return asyncio.run(go())


def brief(decisions: Iterable[Decision]) -> list[tuple[str, str, str, str]]:
    return [(d.rule_id, d.status, d.reason, local(d.at_ms)) for d in decisions]


def order(at: str, order_id: str, *, total: float = 5000, status: str = "ordered", coupon: str | None = None,
          member: str = "m1", ordered: str | None = None) -> OrderUpdate:
    return OrderUpdate(order_id=order_id, member_id=member, status=status, ts=jst(at),
                       ordered_at=jst(ordered or at), items=(OrderItem("A", 1, total),), total=total, coupon=coupon)


BIRTHDAY = {"id": "birthday", "kind": "date", "date": "birthday", "send": {"days_before": 0, "at": "11:00"},
            "template": "birthday", "coupon": {"generate": {"prefix": "BD-", "length": 8}, "valid_days": 30}}
WINBACK = {"id": "winback", "kind": "inactive", "since": "last_purchase", "send": {"after": "60d", "at": "10:00"},
           "template": "winback"}


# -- date -------------------------------------------------------------------------------------------------
def test_birthday_mail_each_year_with_a_generated_coupon(tmp_path: Path) -> None:
    rules = rules_dir(tmp_path, BIRTHDAY)
    decisions, _ = replay(rules, [profile("2026-06-01 09:00", birthday="1990-06-15")])
    assert brief(decisions) == [("birthday", "sent", "", "2026-06-15 11:00"),
                                ("birthday", "sent", "", "2027-06-15 11:00")]  # the run-on lasts 400 days
    first = decisions[0]
    assert (first.kind, first.products, first.cap_exempt, first.episode) == ("date", (), True, "2026")
    assert first.key == "m1|birthday|2026"
    assert first.coupon == generated_code(SECRET, "m1|birthday|2026", "BD-", 8)
    assert first.coupon_expires == "2026-07-15"


def test_birthday_learned_the_day_after_misses_that_year(tmp_path: Path) -> None:
    rules = rules_dir(tmp_path, BIRTHDAY)
    decisions, _ = replay(rules, [profile("2026-06-16 09:00", birthday="1990-06-15")])
    assert brief(decisions) == [("birthday", "sent", "", "2027-06-15 11:00")]


def test_birthday_filters_consent_and_a_changed_birthday(tmp_path: Path) -> None:
    rules = rules_dir(tmp_path, {**BIRTHDAY, "filters": {"age": {"min": 20}}})
    records = [profile("2026-01-01 09:00", birthday="2010-03-01", member="young"),
               profile("2026-01-01 09:00", birthday="1980-03-02", member="noconsent", opt_in=False),
               profile("2026-01-01 09:00", birthday="1980-03-03", member="moved"),
               profile("2026-02-01 09:00", birthday="1980-04-04", member="moved")]
    decisions, _ = replay(rules, records)
    firsts = {(d.member_id, d.status, d.reason, local(d.at_ms)) for d in decisions if d.episode == "2026"}
    assert firsts == {("young", "skipped", "filter:age", "2026-03-01 11:00"),
                      ("noconsent", "suppressed", "no_consent", "2026-03-02 11:00"),
                      ("moved", "sent", "", "2026-04-04 11:00")}


def test_29_february_birthday_on_28_february(tmp_path: Path) -> None:
    rules = rules_dir(tmp_path, BIRTHDAY)
    decisions, _ = replay(rules, [profile("2026-01-01 00:00", birthday="2000-02-29")])
    assert brief(decisions)[0] == ("birthday", "sent", "", "2026-02-28 11:00")


# -- inactive ---------------------------------------------------------------------------------------------
def test_winback_after_the_last_purchase_moves_with_a_newer_one(tmp_path: Path) -> None:
    rules = rules_dir(tmp_path, WINBACK)
    records = [profile("2026-01-01 00:00"), order("2026-01-01 15:00", "o1"), order("2026-02-01 15:00", "o2")]
    decisions, _ = replay(rules, records)
    assert brief(decisions) == [("winback", "sent", "", "2026-04-03 10:00")]  # 1 Feb 15:00 + 60 d → 3 Apr
    assert decisions[0].episode == str(jst("2026-02-01 15:00")) and decisions[0].products == ()


def test_winback_one_decision_per_period_and_a_cancelled_order_does_not_count(tmp_path: Path) -> None:
    rules = rules_dir(tmp_path, WINBACK)
    records = [profile("2026-01-01 00:00"), order("2026-01-01 15:00", "o1"),
               order("2026-01-20 15:00", "o2"), order("2026-01-21 15:00", "o2", status="cancelled",
                                                      ordered="2026-01-20 15:00"),
               order("2026-03-10 12:00", "o3")]
    decisions, _ = replay(rules, records)
    assert brief(decisions) == [("winback", "sent", "", "2026-03-03 10:00"),
                                ("winback", "sent", "", "2026-05-10 10:00")]


def test_winback_due_already_past_fires_at_the_next_at_after_the_record(tmp_path: Path) -> None:
    rules = rules_dir(tmp_path, WINBACK)
    decisions, _ = replay(rules, [profile("2026-05-01 12:00", last_purchase_at=jst("2025-01-01 00:00"))])
    assert brief(decisions) == [("winback", "sent", "", "2026-05-02 10:00")]


def test_winback_on_last_access(tmp_path: Path) -> None:
    rules = rules_dir(tmp_path, {**WINBACK, "since": "last_access", "send": {"after": "7d", "at": "10:00"}})
    records = [profile("2026-01-01 00:00"), beacon("page_view", "2026-01-02 08:00"),
               beacon("page_view", "2026-01-05 20:00")]
    assert brief(replay(rules, records)[0]) == [("winback", "sent", "", "2026-01-13 10:00")]


# -- holdout and A/B --------------------------------------------------------------------------------------
def _members(rule_id: str, holdout: int) -> tuple[str, str]:
    names = [f"m{i}" for i in range(200)]
    held = next(m for m in names if is_held_out(m, rule_id, holdout))
    kept = next(m for m in names if not is_held_out(m, rule_id, holdout))
    return held, kept


def test_held_out_member_gets_no_mail_no_coupon_and_no_cap_count(tmp_path: Path) -> None:
    cart = {"id": "cart-1h", "kind": "abandonment", "trigger": "cart", "send": {"after": "1h"},
            "holdout": 50, "coupon": {"code": "C10", "valid_days": 7}}
    second = {"id": "cart-2h", "kind": "abandonment", "trigger": "cart", "send": {"after": "2h"}}
    rules = rules_dir(tmp_path, cart, second, shop={"caps": {"day": 1}})
    held, kept = _members("cart-1h", 50)
    records: list[Record] = []
    for m in (held, kept):
        records += [profile("2026-01-01 00:00", member=m), beacon("cart_add", "2026-01-05 10:00", "A", member=m)]
    decisions, _ = replay(rules, records)
    by = {(d.member_id, d.rule_id): d for d in decisions}
    assert (by[held, "cart-1h"].status, by[held, "cart-1h"].coupon) == ("held_out", None)
    assert by[held, "cart-2h"].status == "sent", "a held-out decision does not count against caps"
    assert (by[kept, "cart-1h"].status, by[kept, "cart-1h"].coupon) == ("sent", "C10")
    assert by[kept, "cart-1h"].coupon_expires == "2026-01-12"
    assert by[kept, "cart-2h"].status == "capped"
    # the episode ended as after a send: a later cart action opens a new one
    records.append(beacon("cart_add", "2026-01-06 10:00", "B", member=held))
    again = [d for d in replay(rules, records)[0] if d.member_id == held and d.rule_id == "cart-1h"]
    assert [d.status for d in again] == ["held_out", "held_out"]


def test_ab_templates_follow_h_and_split(tmp_path: Path) -> None:
    for name in ("cart-a", "cart-b"):
        (tmp_path / "templates" / name).mkdir(parents=True)
    rule = {"id": "ab", "kind": "abandonment", "trigger": "cart", "send": {"after": "1h"},
            "template": ["cart-a", "cart-b"], "split": 30}
    rules = rules_dir(tmp_path, rule)
    members = [f"m{i}" for i in range(40)]
    records: list[Record] = []
    for m in members:
        records += [profile("2026-01-01 00:00", member=m), beacon("cart_add", "2026-01-05 10:00", "A", member=m)]
    for d in replay(rules, records)[0]:
        expected = "A" if ab_bucket(d.member_id, "ab") < 30 else "B"
        assert d.variant == expected
        assert d.template == ("cart-a" if expected == "A" else "cart-b")


def test_send_time_test_picks_the_timing_by_variant(tmp_path: Path) -> None:
    rule = {"id": "st", "kind": "abandonment", "trigger": "cart", "send": [{"after": "1h"}, {"after": "3h"}]}
    rules = rules_dir(tmp_path, rule)
    members = [f"m{i}" for i in range(20)]
    records: list[Record] = []
    for m in members:
        records += [profile("2026-01-01 00:00", member=m), beacon("cart_add", "2026-01-05 10:00", "A", member=m)]
    for d in replay(rules, records)[0]:
        variant = "A" if ab_bucket(d.member_id, "st") < 50 else "B"
        assert (d.variant, local(d.due_ms)) == (variant, "2026-01-05 11:00" if variant == "A" else "2026-01-05 13:00")


# -- coupons ----------------------------------------------------------------------------------------------
def test_a_pool_shared_by_two_rules_in_file_order_then_empty_keeps_the_episode_open(tmp_path: Path) -> None:
    one = {"id": "cart-1h", "kind": "abandonment", "trigger": "cart", "send": {"after": "1h"},
           "coupon": {"pool": "spring", "valid_days": 14}}
    bday = {**BIRTHDAY, "coupon": {"pool": "spring"}}
    rules = rules_dir(tmp_path, one, bday, pools={"spring": ["S1", "S2"]})
    records = [profile("2026-01-01 00:00", member="a"), profile("2026-01-01 00:00", member="b",
                                                                 birthday="1990-01-03"),
               profile("2026-01-01 00:00", member="c"),
               beacon("cart_add", "2026-01-02 10:00", "A", member="a"),
               beacon("cart_add", "2026-01-05 10:00", "A", member="c"),
               beacon("cart_add", "2026-01-06 10:00", "B", member="c")]
    decisions, rp = replay(rules, records)
    got = [(d.member_id, d.rule_id, d.status, d.reason, d.coupon) for d in decisions if d.episode != "2027"]
    assert got == [("a", "cart-1h", "sent", "", "S1"), ("b", "birthday", "sent", "", "S2"),
                   ("c", "cart-1h", "skipped", "coupon_pool_empty", None),
                   ("c", "cart-1h", "skipped", "coupon_pool_empty", None)]
    assert rp.coupons.pool_empty == 3  # c twice (the episode stayed open), b's 2027 birthday once
    assert [c.code for c in rp.issued] == ["S1", "S2"]
    assert rp.issued[0].expires == "2026-01-16"


def test_an_order_carrying_an_issued_code_redeems_it(tmp_path: Path) -> None:
    rules = rules_dir(tmp_path, {"id": "cart-1h", "kind": "abandonment", "trigger": "cart",
                                 "send": {"after": "1h"}, "coupon": {"generate": {"prefix": "K", "length": 6}}})
    records: list[Record] = [profile("2026-01-01 00:00"), beacon("cart_add", "2026-01-02 10:00", "A")]
    decisions, rp = replay(rules, records)
    code = decisions[0].coupon
    assert code is not None
    state = rp.states["m1"]
    assert customer.unused_codes(state, "cart-1h") == [code]
    records += [order("2026-01-02 12:00", "o1", coupon=code, status="cancelled"),
                order("2026-01-02 13:00", "o2", coupon=code)]
    _, rp = replay(rules, records)
    assert customer.redemption(rp.states["m1"], code) == (jst("2026-01-02 13:00"), "o2")
    assert customer.unused_codes(rp.states["m1"], "cart-1h") == []


# -- filters and aggregates -------------------------------------------------------------------------------
def test_cancelled_orders_leave_the_purchase_count(tmp_path: Path) -> None:
    rule = {"id": "first", "kind": "abandonment", "trigger": "cart", "send": {"after": "1h"},
            "filters": {"purchase_count": {"max": 0}}}
    rules = rules_dir(tmp_path, rule, shop={"cancelled_statuses": ["void"]})
    records = [profile("2026-01-01 00:00"), order("2026-01-01 10:00", "o1"),
               order("2026-01-01 11:00", "o1", status="void", ordered="2026-01-01 10:00"),
               beacon("cart_add", "2026-01-02 10:00", "A")]
    assert brief(replay(rules, records)[0]) == [("first", "sent", "", "2026-01-02 11:00")]


def test_first_failing_filter_in_file_order_across_kinds_of_filters(tmp_path: Path) -> None:
    rule = {"id": "r", "kind": "abandonment", "trigger": "cart", "send": {"after": "1h"},
            "filters": {"cpm": ["loyal_active"], "min_cart_amount": 999999}}
    rule2 = {**rule, "id": "r2", "filters": {"min_cart_amount": 999999, "cpm": ["loyal_active"]}}
    rules = rules_dir(tmp_path, rule, rule2)
    records = [profile("2026-01-01 00:00"), beacon("cart_add", "2026-01-02 10:00", "A", price=100)]
    assert {d.rule_id: d.reason for d in replay(rules, records)[0]} == {"r": "filter:cpm",
                                                                       "r2": "filter:min_cart_amount"}


def test_segment_filters_read_aggregates_and_profile(tmp_path: Path) -> None:
    rule = {"id": "r", "kind": "abandonment", "trigger": "cart", "send": {"after": "1h"},
            "filters": {"total_amount": {"min": 12000}, "gender": ["female"], "locales": ["ja"],
                        "rfm": {"f": {"min": 2}}}}
    rules = rules_dir(tmp_path, rule)
    records = [profile("2026-01-01 00:00", gender="female", locale="ja-JP", total_amount=5000, purchase_count=1),
               order("2026-01-01 10:00", "o1", total=7000), beacon("cart_add", "2026-01-02 10:00", "A")]
    assert brief(replay(rules, records)[0]) == [("r", "sent", "", "2026-01-02 11:00")]
    records[1] = order("2026-01-01 10:00", "o1", total=6999)
    assert brief(replay(rules, records)[0]) == [("r", "skipped", "filter:total_amount", "2026-01-02 11:00")]


def test_price_rule_filters_come_before_consent(tmp_path: Path) -> None:
    rule = {"id": "drop", "kind": "price_drop", "watch": ["cart"], "when": {"price_at_most": 3000},
            "send": {"immediately": True}, "template": "price_drop", "filters": {"gender": ["male"]}}
    rules = rules_dir(tmp_path, rule)
    records: list[Record] = [
        price("2026-01-01 00:00", "A", 5000),
        profile("2026-01-01 00:00", member="f", gender="female", opt_in=False),
        profile("2026-01-01 00:00", member="m", gender="male"),
        beacon("cart_add", "2026-01-02 10:00", "A", member="f"),
        beacon("cart_add", "2026-01-02 10:00", "A", member="m"),
        price("2026-01-03 10:00", "A", 2500),
    ]
    got = {(d.member_id, d.status, d.reason) for d in replay(rules, records)[0]}
    assert got == {("f", "skipped", "filter:gender"), ("m", "sent", "")}


def test_scenario_start_filters_are_evaluated_at_the_start(tmp_path: Path) -> None:
    scenario = {"id": "welcome", "kind": "scenario",
                "start": {"status": ["ordered"], "filters": {"cpm": ["first_active"]}},
                "steps": [{"send": {"anchor": "ordered", "after": "1h"}, "template": "thanks"}]}
    rules = rules_dir(tmp_path, scenario)
    first = [profile("2026-01-01 00:00"), order("2026-01-02 10:00", "o1")]
    assert [(d.status, d.step) for d in replay(rules, first)[0]][:2] == [("started", 0), ("sent", 1)]
    second = [order("2025-12-01 10:00", "o0"), profile("2026-01-01 00:00"), order("2026-01-02 10:00", "o1")]
    started = [d.order_id for d in replay(rules, second)[0] if d.status == "started"]
    assert started == ["o0"], "the second order makes the member toddler_active: no start"
    (tmp_path / "plain").mkdir()
    unfiltered = rules_dir(tmp_path / "plain", {**scenario, "start": {"status": ["ordered"]}})
    assert [d.order_id for d in replay(unfiltered, second)[0] if d.status == "started"] == ["o0", "o1"]


def test_scenario_holdout_goes_on_as_after_a_send(tmp_path: Path) -> None:
    scenario = {"id": "follow", "kind": "scenario", "holdout": 50, "coupon": "F10",
                "start": {"status": ["ordered"]},
                "steps": [{"send": {"anchor": "ordered", "after": "1h"}, "template": "thanks"},
                          {"send": {"anchor": "previous", "after": "1d"}, "template": "review"}]}
    rules = rules_dir(tmp_path, scenario)
    held, kept = _members("follow", 50)
    records: list[Record] = []
    for m in (held, kept):
        records += [profile("2026-01-01 00:00", member=m), order("2026-01-02 10:00", f"o-{m}", member=m)]
    mails = [(d.member_id, d.step, d.status, d.coupon, local(d.at_ms)) for d in replay(rules, records)[0]
             if d.step > 0]
    assert sorted(mails) == sorted([
        (held, 1, "held_out", None, "2026-01-02 11:00"), (held, 2, "held_out", None, "2026-01-03 11:00"),
        (kept, 1, "sent", "F10", "2026-01-02 11:00"), (kept, 2, "sent", "F10", "2026-01-03 11:00")])


def test_an_empty_pool_ends_a_scenario_run(tmp_path: Path) -> None:
    scenario = {"id": "follow", "kind": "scenario", "coupon": {"pool": "tiny"}, "start": {"status": ["ordered"]},
                "steps": [{"send": {"anchor": "ordered", "after": "1h"}, "template": "thanks"},
                          {"send": {"anchor": "previous", "after": "1d"}, "template": "review"}]}
    rules = rules_dir(tmp_path, scenario, pools={"tiny": ["T1"]})
    records = [profile("2026-01-01 00:00"), order("2026-01-02 10:00", "o1")]
    got = [(d.status, d.reason, d.step, d.coupon) for d in replay(rules, records)[0]]
    assert got == [("started", "", 0, None), ("sent", "", 1, "T1"), ("skipped", "coupon_pool_empty", 2, None),
                   ("ended", "coupon_pool_empty", 0, None)]
    three = {**scenario, "steps": [*scenario["steps"], {"send": {"anchor": "previous", "after": "1d"},
                                                       "template": "review"}]}
    (tmp_path / "three").mkdir()
    rules = rules_dir(tmp_path / "three", three, pools={"tiny": ["T1"]})
    got = [(d.status, d.reason, d.step) for d in replay(rules, records)[0]]
    assert got == [("started", "", 0), ("sent", "", 1), ("skipped", "coupon_pool_empty", 2),
                   ("ended", "coupon_pool_empty", 0)], "step 3 never comes"


def test_caps_come_before_the_holdout_and_never_count_it(tmp_path: Path) -> None:
    early = {"id": "early", "kind": "abandonment", "trigger": "cart", "send": {"after": "30m"}}
    late = {"id": "late", "kind": "abandonment", "trigger": "cart", "send": {"after": "1h"}, "holdout": 50}
    rules = rules_dir(tmp_path, early, late, shop={"caps": {"day": 1}})
    held, _ = _members("late", 50)
    records = [profile("2026-01-01 00:00", member=held), beacon("cart_add", "2026-01-05 10:00", "A", member=held)]
    assert [(d.rule_id, d.status) for d in replay(rules, records)[0]] == [("early", "sent"), ("late", "capped")]
    (tmp_path / "alone").mkdir()
    alone = rules_dir(tmp_path / "alone", late, shop={"caps": {"day": 1}})
    again = [*records, beacon("cart_add", "2026-01-05 12:00", "B", member=held)]
    assert [(d.rule_id, d.status) for d in replay(alone, again)[0]] == [("late", "held_out"), ("late", "held_out")]
