"""Member side of price-drop / restock (SPEC §11): who gets it, when, the send-time re-check, once a day."""

from __future__ import annotations

from datetime import datetime
from itertools import count
from typing import Any
from zoneinfo import ZoneInfo

from kagoflow.core.behaviour import MemberState, apply_beacon, apply_member, mark_unsubscribed
from kagoflow.core.catalog import PriceTrigger, ProductInfo, apply_catalog
from kagoflow.core.decisions import Decision
from kagoflow.core.events import Beacon, CatalogUpdate, MemberUpdate
from kagoflow.core.pricerules import PriceRule, parse_price_rule
from kagoflow.core.pricewatch import (
    FIRED_PRUNE_AT,
    decide_now,
    fanout,
    fire_due,
    fired_marks,
    next_due,
    on_trigger,
    pending_sends,
    reindex,
)
from kagoflow.core.watchindex import WatchIndex

TOKYO = ZoneInfo("Asia/Tokyo")
_events = count()


def jst(day: int, hour: int, minute: int = 0) -> int:
    return int(datetime(2026, 3, day, hour, minute, tzinfo=TOKYO).timestamp() * 1000)


def make_rule(rule_id: str = "drop", kind: str = "price_drop", watch: tuple[str, ...] = ("cart", "favorite"),
              send: dict[str, Any] | None = None, **when: Any) -> PriceRule:
    return parse_price_rule(
        {"id": rule_id, "kind": kind, "watch": list(watch), "when": when or {"drop_yen": 500},
         "send": send or {"at": "10:00"}, "template": kind, "sender_name": "Shop"},
        file=f"{rule_id}.yaml",
    )


def member(member_id: str = "m1", *, opt_in: bool | None = True) -> MemberState:
    state = MemberState(member_id)
    if opt_in is not None:
        apply_member(state, MemberUpdate(member_id, 0, email=f"{member_id}@example.com", opt_in=opt_in))
    return state


def act(state: MemberState, kind: str, product: str, ts: int = 0) -> MemberState:
    apply_beacon(state, Beacon(f"e{next(_events)}", state.member_id, kind, ts, product_id=product))  # type: ignore[arg-type]
    return state


class Shop:
    """The catalog side: product infos and the triggers of each price/stock record."""

    def __init__(self, *rules: PriceRule) -> None:
        self.rules = {rule.id: rule for rule in rules}
        self.catalog: dict[str, ProductInfo] = {}

    def record(self, product: str, ts: int, price: float, stock: int = 5) -> list[PriceTrigger]:
        info, triggers = apply_catalog(self.catalog.get(product), CatalogUpdate(product, ts, price, stock),
                                       rules=list(self.rules.values()), tz=TOKYO)
        self.catalog[product] = info
        return triggers

    def offer(self, state: MemberState, triggers: list[PriceTrigger]) -> list[bool]:
        return [on_trigger(state, t, self.rules[t.rule_id]) for t in triggers]

    def fire(self, state: MemberState, now: int) -> list[Decision]:
        return fire_due(state, now, rules=self.rules, catalog=self.catalog)


def dropped_shop(*products: str, rule: PriceRule | None = None) -> Shop:
    """Products at 10000 yen since 1 March (the reference of 2 March)."""
    shop = Shop(rule or make_rule())
    for product in products:
        shop.record(product, jst(1, 8), 10000)
    return shop


def test_price_drop_sends_next_morning_to_watching_member() -> None:
    shop = dropped_shop("A")
    state = act(member(), "cart_add", "A")
    triggers = shop.record("A", jst(2, 15), 9000)
    assert shop.offer(state, triggers) == [True]
    assert next_due(state) == jst(3, 10)
    assert shop.fire(state, jst(3, 9, 59)) == []
    [decision] = shop.fire(state, jst(3, 10))
    assert (decision.status, decision.reason, decision.kind) == ("sent", "", "price_drop")
    assert decision.products == ("A",)
    assert (decision.due_ms, decision.at_ms, decision.cap_exempt) == (jst(3, 10), jst(3, 10), True)
    assert (decision.template, decision.sender_name, decision.rule_id) == ("price_drop", "Shop", "drop")
    assert decision.episode == str(jst(3, 10)) and decision.key == f"m1|drop|{jst(3, 10)}"
    assert next_due(state) is None and shop.fire(state, jst(4, 10)) == []


def test_member_not_in_watch_states_is_not_scheduled() -> None:
    shop = dropped_shop("A")
    viewer = act(member(), "view", "A")
    stranger = member("m2")
    triggers = shop.record("A", jst(2, 15), 9000)
    assert shop.offer(viewer, triggers) == [False] and shop.offer(stranger, triggers) == [False]
    assert next_due(viewer) is None and viewer.price_watch == {}


def test_one_decision_lists_all_products_of_the_same_send_time() -> None:
    shop = dropped_shop("A", "B", "C")
    state = act(act(act(member(), "cart_add", "A"), "favorite_add", "B"), "cart_add", "C")
    shop.offer(state, shop.record("A", jst(2, 11), 9000))
    shop.offer(state, shop.record("B", jst(2, 18), 9400))
    shop.offer(state, shop.record("C", jst(3, 11), 9000))  # after 3 March 10:00: the next morning's mail
    assert pending_sends(state) == [("drop", jst(3, 10), ("A", "B")), ("drop", jst(4, 10), ("C",))]
    decisions = shop.fire(state, jst(4, 10))
    assert [(d.due_ms, d.products, d.status) for d in decisions] == [
        (jst(3, 10), ("A", "B"), "sent"), (jst(4, 10), ("C",), "sent")]


def test_drop_then_recover_before_send_mails_nothing() -> None:
    shop = dropped_shop("A", "B")
    state = act(act(member(), "cart_add", "A"), "cart_add", "B")
    shop.offer(state, shop.record("A", jst(2, 11), 9000))
    shop.offer(state, shop.record("B", jst(2, 12), 9000))
    shop.record("A", jst(2, 20), 9600)  # back up: only 400 below the reference of 2 March
    [decision] = shop.fire(state, jst(3, 10))
    assert (decision.status, decision.products) == ("sent", ("B",))
    shop.record("B", jst(3, 9), 10000)
    assert shop.record("A", jst(3, 9, 30), 9200) == []  # 3 March reference is 9600: only 400 below
    assert next_due(state) is None


def test_recheck_uses_reference_of_the_firing_day() -> None:
    # Fired on 2 March against 10000; at 10:00 on 3 March the reference is 9000 but the re-check uses 10000.
    shop = dropped_shop("A")
    state = act(member(), "cart_add", "A")
    shop.offer(state, shop.record("A", jst(2, 23), 9000))
    shop.record("A", jst(3, 1), 9100)
    [decision] = shop.fire(state, jst(3, 10))
    assert (decision.status, decision.products) == ("sent", ("A",))


def test_all_products_dropped_gives_skipped_no_products() -> None:
    shop = dropped_shop("A")
    state = act(member(), "cart_add", "A")
    shop.offer(state, shop.record("A", jst(2, 11), 9000))
    shop.record("A", jst(2, 12), 10000)
    [decision] = shop.fire(state, jst(3, 10))
    assert (decision.status, decision.reason, decision.products) == ("skipped", "no_products", ())


def test_product_leaving_watch_before_send_is_dropped() -> None:
    shop = dropped_shop("A", "B")
    state = act(act(member(), "cart_add", "A"), "cart_add", "B")
    shop.offer(state, shop.record("A", jst(2, 11), 9000))
    shop.offer(state, shop.record("B", jst(2, 11), 9000))
    act(state, "cart_remove", "A", jst(2, 12))
    apply_beacon(state, Beacon("buy", "m1", "purchase", jst(2, 13), product_ids=("B",)))
    [decision] = shop.fire(state, jst(3, 10))
    assert (decision.status, decision.reason) == ("skipped", "no_products")


def test_once_per_rule_product_member_per_day() -> None:
    shop = dropped_shop("A", rule=make_rule(send={"immediately": True}))
    state = act(member(), "cart_add", "A")
    assert shop.offer(state, shop.record("A", jst(2, 9), 9000)) == [True]
    assert [d.status for d in shop.fire(state, jst(2, 9))] == ["sent"]
    shop.record("A", jst(2, 10), 10000)
    assert shop.offer(state, shop.record("A", jst(2, 11), 9000)) == [False]  # same day: already fired
    assert shop.fire(state, jst(2, 11)) == []
    shop.record("A", jst(3, 0, 30), 10500)  # the reference of 4 March will be 10500
    triggers = shop.record("A", jst(4, 9), 9000)
    assert shop.offer(state, triggers) == [True]
    assert [(d.status, d.due_ms) for d in shop.fire(state, jst(4, 9))] == [("sent", jst(4, 9))]


def test_fired_marks_stay_bounded() -> None:
    # A different product fires every day for four weeks; marks of days before yesterday get pruned.
    products = [f"p{day}" for day in range(2, 30)]
    shop = dropped_shop(*products, rule=make_rule(send={"immediately": True}, price_at_most=5000))
    state = member()
    for product in products:
        act(state, "cart_add", product)
    for day, product in zip(range(2, 30), products, strict=True):
        assert shop.offer(state, shop.record(product, jst(day, 9), 4000)) == [True]
        assert [d.products for d in shop.fire(state, jst(day, 9))] == [(product,)]
    marks = fired_marks(state)
    assert len(marks) <= FIRED_PRUNE_AT
    assert marks["drop|p29"] == "2026-03-29" and min(marks.values()) >= "2026-03-20"


def test_consent_and_unsubscribe_suppress() -> None:
    shop = dropped_shop("A")
    no_profile = act(member("m1", opt_in=None), "cart_add", "A")
    no_consent = act(member("m2", opt_in=False), "cart_add", "A")
    gone = act(member("m3"), "cart_add", "A")
    triggers = shop.record("A", jst(2, 11), 9000)
    for state in (no_profile, no_consent, gone):
        assert shop.offer(state, triggers) == [True]
    mark_unsubscribed(gone)
    outcomes = [shop.fire(state, jst(3, 10))[0] for state in (no_profile, no_consent, gone)]
    assert [(d.status, d.reason, d.products) for d in outcomes] == [
        ("suppressed", "no_profile", ("A",)), ("suppressed", "no_consent", ("A",)),
        ("suppressed", "unsubscribed", ("A",))]


def test_restock_rechecks_stock_at_send_time() -> None:
    rule = make_rule("back", kind="restock", watch=("favorite",), restocked_at_least=1)
    shop = Shop(rule)
    shop.record("A", jst(1, 8), 3000, stock=0)
    shop.record("B", jst(1, 8), 3000, stock=0)
    state = act(act(member(), "favorite_add", "A"), "favorite_add", "B")
    shop.offer(state, shop.record("A", jst(2, 11), 3000, stock=2))
    shop.offer(state, shop.record("B", jst(2, 11), 3000, stock=1))
    shop.record("B", jst(2, 18), 3000, stock=0)  # sold out again
    [decision] = shop.fire(state, jst(3, 10))
    assert (decision.kind, decision.status, decision.products, decision.template) == (
        "restock", "sent", ("A",), "restock")


def test_disabled_or_removed_rule_drops_pending_without_decision() -> None:
    shop = dropped_shop("A")
    state = act(member(), "cart_add", "A")
    shop.offer(state, shop.record("A", jst(2, 11), 9000))
    assert shop.fire(state, jst(3, 10)) != []
    shop.record("A", jst(3, 12), 8000)
    state2 = act(member("m2"), "cart_add", "A")
    shop.offer(state2, [PriceTrigger("drop", "A", jst(3, 12), jst(4, 10), "2026-03-03", 10000.0)])
    assert fire_due(state2, jst(4, 10), rules={}, catalog=shop.catalog) == []
    assert next_due(state2) is None


def test_pending_survives_member_state_serialisation() -> None:
    shop = dropped_shop("A")
    state = act(member(), "cart_add", "A")
    shop.offer(state, shop.record("A", jst(2, 11), 9000))
    restored = MemberState.from_bytes(state.to_bytes())
    assert next_due(restored) == jst(3, 10)
    assert shop.offer(restored, shop.record("A", jst(2, 12), 8000)) == [False]  # fired mark survived too
    [decision] = shop.fire(restored, jst(3, 10))
    assert (decision.status, decision.products) == ("sent", ("A",))


def test_fanout_schedules_exactly_the_watchers() -> None:
    rule = make_rule(watch=("cart",))
    shop = dropped_shop("A", rule=rule)
    states = {
        "c1": act(member("c1"), "cart_add", "A"),
        "c2": act(member("c2"), "cart_add", "A"),
        "v1": act(member("v1"), "view", "A"),
        "o1": act(member("o1"), "cart_add", "B"),
        "gone": act(act(member("gone"), "cart_add", "A"), "cart_remove", "A"),
    }
    index = WatchIndex()
    for state in states.values():
        reindex(index, state)
    assert len(index) == 4  # c1, c2, v1 on A; o1 on B
    [trigger] = shop.record("A", jst(2, 11), 9000)
    changed = list(fanout(trigger, rule, index, states.get))
    assert sorted(s.member_id for s in changed) == ["c1", "c2"]
    assert list(fanout(trigger, rule, index, states.get)) == []  # replayed trigger: nothing new
    assert all(next_due(s) == jst(3, 10) for s in changed)
    assert next_due(states["v1"]) is None


def test_reindex_follows_touched_products() -> None:
    index = WatchIndex()
    state = act(member(), "cart_add", "A")
    reindex(index, state, state.touched)
    assert index.state_of("m1", "A") == "cart"
    apply_beacon(state, Beacon("p1", "m1", "purchase", 5, product_ids=("A",)))
    reindex(index, state, state.touched)
    assert index.state_of("m1", "A") is None and len(index) == 0


def test_an_immediate_rule_decides_at_the_change_exactly_as_pending_then_fire_would() -> None:
    rule = make_rule(send={"immediately": True}, watch=("cart", "favorite", "view"))
    fused, slow = dropped_shop("A", rule=rule), dropped_shop("A", rule=rule)
    members = {"m1": act(member("m1"), "cart_add", "A"), "m2": act(member("m2", opt_in=False), "view", "A"),
               "m3": act(member("m3"), "view", "B")}
    twins = {m: act(member(m, opt_in=(m != "m2")), "cart_add" if m == "m1" else "view", "A" if m != "m3" else "B")
             for m in members}
    index = WatchIndex()
    for state in members.values():
        reindex(index, state)
    [trigger] = fused.record("A", jst(2, 15), 9000)
    assert trigger.send_at_ms == trigger.change_ms
    now = trigger.change_ms + 40
    decided = {state.member_id: decision for state, decision in decide_now(
        trigger, rule, index, members.get, catalog=fused.catalog, now_ms=now)}
    [slow_trigger] = slow.record("A", jst(2, 15), 9000)
    expected = {}
    for member_id, twin in twins.items():
        if slow.offer(twin, [slow_trigger]) == [True]:
            [expected[member_id]] = slow.fire(twin, now)
    assert decided == expected and set(decided) == {"m1", "m2"}
    assert (decided["m1"].status, decided["m2"].status, decided["m2"].reason) == ("sent", "suppressed", "no_consent")
    # once a day: a second drop of A the same day mails nobody; the marks are the same as the slow path's
    [again] = fused.record("A", jst(2, 18), 8000) or [trigger]
    assert list(decide_now(again, rule, index, members.get, catalog=fused.catalog, now_ms=now)) == []
    assert fired_marks(members["m1"]) == fired_marks(twins["m1"]) and pending_sends(members["m1"]) == []


def test_an_immediate_trigger_whose_product_recovered_gives_skipped_no_products() -> None:
    rule = make_rule(send={"immediately": True})
    shop = dropped_shop("A", rule=rule)
    state = act(member(), "favorite_add", "A")
    index = WatchIndex()
    reindex(index, state)
    [trigger] = shop.record("A", jst(2, 15), 9000)
    shop.record("A", jst(2, 15, 1), 10000)  # back up before the member partition saw the trigger
    [(_, decision)] = decide_now(trigger, rule, index, {"m1": state}.get, catalog=shop.catalog,
                                 now_ms=jst(2, 15, 2))
    assert (decision.status, decision.reason, decision.products) == ("skipped", "no_products", ())
