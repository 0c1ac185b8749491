"""Product side of price-drop / restock (SPEC §11): reference price, firing conditions, send time."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from kagoflow.core.catalog import PriceTrigger, ProductInfo, apply_catalog, condition_holds
from kagoflow.core.events import CatalogUpdate
from kagoflow.core.pricerules import PriceRule, parse_price_rule

TOKYO = ZoneInfo("Asia/Tokyo")


def jst(day: int, hour: int, minute: int = 0, second: int = 0, month: int = 3) -> int:
    return int(datetime(2026, month, day, hour, minute, second, tzinfo=TOKYO).timestamp() * 1000)


def rule(kind: str = "price_drop", send: dict[str, Any] | None = None, **when: Any) -> PriceRule:
    return parse_price_rule(
        {"id": f"r-{kind.replace('_', '-')}", "kind": kind, "watch": ["cart"], "when": when,
         "send": send or {"immediately": True}, "template": kind},
        file="test.yaml",
    )


def feed(rules: Sequence[object], *records: tuple[int, float, int]) -> list[list[PriceTrigger]]:
    """Apply (ts, price, stock) records of product P in order; the triggers of each record."""
    info: ProductInfo | None = None
    out = []
    for ts, price, stock in records:
        info, triggers = apply_catalog(info, CatalogUpdate("P", ts, price, stock), rules=rules, tz=TOKYO)
        out.append(triggers)
    return out


def fired(rules: Sequence[object], *records: tuple[int, float, int]) -> list[bool]:
    return [bool(t) for t in feed(rules, *records)]


def test_first_record_only_sets_price_and_stock() -> None:
    rules = [rule(price_at_most=3000), rule("restock", restocked_at_least=1)]
    update = CatalogUpdate("P", jst(1, 9), 100.0, 5, name="Tea")
    info, triggers = apply_catalog(None, update, rules=rules, tz=TOKYO)
    assert triggers == []
    assert (info.price, info.stock, info.name, info.updated_ms) == (100.0, 5, "Tea", jst(1, 9))
    assert (info.ref_day, info.ref_price) == ("2026-03-01", None)


@pytest.mark.parametrize(
    ("before", "after", "fires"),
    [(3500, 3000, True), (3000.01, 3000, True), (3500, 3001, False), (3000, 2500, False), (2500, 2000, False),
     (3500, 100, True)],
)
def test_price_at_most_fires_when_crossing_down(before: float, after: float, fires: bool) -> None:
    assert fired([rule(price_at_most=3000)], (jst(1, 9), before, 1), (jst(1, 10), after, 1)) == [False, fires]


def test_price_at_most_does_not_refire_without_going_back_above() -> None:
    records = [(jst(1, 9), 4000, 1), (jst(1, 10), 2900, 1), (jst(1, 11), 2800, 1), (jst(1, 12), 3100, 1),
               (jst(1, 13), 2950, 1)]
    assert fired([rule(price_at_most=3000)], *records) == [False, True, False, False, True]


@pytest.mark.parametrize(
    ("when", "price", "fires"),
    [
        ({"drop_yen": 500}, 9500, True),
        ({"drop_yen": 500}, 9501, False),
        ({"drop_percent": 10}, 9000, True),
        ({"drop_percent": 10}, 9001, False),
        ({"drop_percent": 12.5}, 8750, True),
        ({"drop_yen": 2000, "drop_percent": 5}, 9500, True),   # percent alone is enough
        ({"drop_yen": 500, "drop_percent": 50}, 9500, True),   # yen alone is enough
        ({"drop_yen": 600, "drop_percent": 7}, 9401, False),   # neither
    ],
)
def test_drop_vs_reference_edges(when: dict[str, Any], price: float, fires: bool) -> None:
    # Reference for 2 March = the last price of 1 March.
    records = [(jst(1, 9), 12000, 1), (jst(1, 20), 10000, 1), (jst(2, 9), price, 1)]
    triggers = feed([rule(**when)], *records)
    assert [bool(t) for t in triggers] == [False, False, fires]
    if fires:
        trigger = triggers[2][0]
        assert (trigger.reference, trigger.day, trigger.price) == (10000.0, "2026-03-02", price)


def test_drop_has_no_reference_on_the_products_first_day() -> None:
    # No price before 1 March exists, so the drop conditions cannot fire that day; price_at_most can.
    records = [(jst(1, 9), 10000, 1), (jst(1, 12), 5000, 1)]
    assert fired([rule(drop_yen=500)], *records) == [False, False]
    assert fired([rule(price_at_most=6000)], *records) == [False, True]


def test_drop_needs_a_lowering_record() -> None:
    # Still 20 % below the reference, but the record raises the price (or repeats it): nothing fell.
    records = [(jst(1, 9), 10000, 1), (jst(2, 9), 7000, 1), (jst(2, 10), 8000, 1), (jst(2, 11), 8000, 5),
               (jst(2, 12), 7900, 5)]
    triggers = feed([rule(drop_percent=10)], *records)
    assert [bool(t) for t in triggers] == [False, True, False, False, True]
    assert triggers[4][0].reference == 10000.0  # same day, same reference


def test_reference_day_boundary_in_shop_time_zone() -> None:
    """23:59 and 00:01 shop-local time use different references (the UTC date is the same for both)."""
    base = [(jst(1, 12), 10000, 1), (jst(2, 20), 9600, 1)]
    rules = [rule(drop_yen=500)]
    late = feed(rules, *base, (jst(2, 23, 59), 9200, 1))
    assert late[2] and late[2][0].reference == 10000.0 and late[2][0].day == "2026-03-02"
    early = feed(rules, *base, (jst(3, 0, 1), 9200, 1))
    assert early[2] == []  # reference is now 9600: only 400 yen below
    info: ProductInfo | None = None
    for ts, price, stock in [*base, (jst(3, 0, 1), 9200, 1)]:
        info, _ = apply_catalog(info, CatalogUpdate("P", ts, price, stock), rules=rules, tz=TOKYO)
    assert info is not None and (info.ref_day, info.ref_price) == ("2026-03-03", 9600.0)


def test_reference_skips_days_without_records() -> None:
    # Last price before 5 March is the 1 March price, even though nothing arrived on 2-4 March.
    records = [(jst(1, 9), 10000, 1), (jst(1, 18), 9800, 1), (jst(5, 9), 9300, 1)]
    triggers = feed([rule(drop_yen=500)], *records)
    assert triggers[2] and triggers[2][0].reference == 9800.0


@pytest.mark.parametrize(
    ("when", "before", "after", "fires"),
    [
        ({"restocked_at_least": 3}, 0, 3, True),
        ({"restocked_at_least": 3}, 0, 2, False),
        ({"restocked_at_least": 3}, 1, 5, False),
        ({"restocked_at_least": 1}, 0, 1, True),
        ({"stock_at_most": 3}, 5, 3, True),
        ({"stock_at_most": 3}, 4, 1, True),
        ({"stock_at_most": 3}, 5, 0, False),   # never on 0
        ({"stock_at_most": 3}, 3, 2, False),   # not from above N
        ({"stock_at_most": 3}, 4, 4, False),
        ({"stock_at_most": 3}, 2, 5, False),
    ],
)
def test_stock_conditions(when: dict[str, Any], before: int, after: int, fires: bool) -> None:
    triggers = feed([rule("restock", **when)], (jst(1, 9), 100, before), (jst(1, 10), 100, after))
    assert [bool(t) for t in triggers] == [False, fires]
    if fires:
        trigger = triggers[1][0]
        threshold = float(next(iter(when.values())))
        assert (trigger.kind, trigger.stock, trigger.reference) == ("restock", after, threshold)


@pytest.mark.parametrize(
    ("change", "expected"),
    [(jst(1, 9, 59, 59), jst(1, 10)), (jst(1, 10), jst(2, 10)), (jst(1, 10, 0, 1), jst(2, 10)),
     (jst(1, 23, 59), jst(2, 10)), (jst(31, 23, 0), jst(1, 10, month=4))],
)
def test_send_at_first_local_time_strictly_after_change(change: int, expected: int) -> None:
    at_ten = rule(price_at_most=3000, send={"at": "10:00"})
    triggers = feed([at_ten], (change - 1000, 5000, 1), (change, 2000, 1))
    assert triggers[1][0].send_at_ms == expected and triggers[1][0].change_ms == change


def test_send_immediately_is_the_change_time() -> None:
    triggers = feed([rule(price_at_most=3000)], (jst(1, 9), 5000, 1), (jst(1, 15, 7), 2000, 1))
    assert triggers[1][0].send_at_ms == jst(1, 15, 7)


def test_only_enabled_price_rules_for_the_product_fire() -> None:
    on = rule(price_at_most=3000)
    off = PriceRule(**{**{f: getattr(on, f) for f in on.__slots__}, "id": "off", "enabled": False})
    elsewhere = PriceRule(**{**{f: getattr(on, f) for f in on.__slots__}, "id": "elsewhere",
                             "include": frozenset({"Q"})})
    restock = rule("restock", restocked_at_least=1)
    triggers = feed([on, off, elsewhere, restock, object()], (jst(1, 9), 5000, 0), (jst(1, 10), 2000, 4))
    assert sorted(t.rule_id for t in triggers[1]) == ["r-price-drop", "r-restock"]


def test_upsert_keeps_descriptive_fields_not_given() -> None:
    first, _ = apply_catalog(None, CatalogUpdate("P", jst(1, 9), 100, 1, name="Tea", url="https://s/p"),
                             rules=[], tz=TOKYO)
    second, _ = apply_catalog(first, CatalogUpdate("P", jst(1, 10), 90, 2, on_sale=True), rules=[], tz=TOKYO)
    assert (second.name, second.url, second.on_sale) == ("Tea", "https://s/p", True)
    assert (second.price, second.stock) == (90, 2)


def test_condition_holds_is_the_send_time_recheck() -> None:
    def at(price: float, stock: int = 1) -> ProductInfo:
        return ProductInfo("P", price, stock, 0)

    at_most = rule(price_at_most=3000)
    assert condition_holds(at_most, at(3000), 3000) and not condition_holds(at_most, at(3001), 3000)
    drop = rule(drop_yen=500, drop_percent=10)
    assert condition_holds(drop, at(9500), 10000) and condition_holds(drop, at(9000), 10000)
    assert not condition_holds(drop, at(9600), 10000)
    back = rule("restock", restocked_at_least=2)
    assert condition_holds(back, at(1, 2), 2) and not condition_holds(back, at(1, 1), 2)
    low = rule("restock", stock_at_most=3)
    assert condition_holds(low, at(1, 3), 3) and not condition_holds(low, at(1, 0), 3)
    assert not condition_holds(low, at(1, 4), 3)
    assert not condition_holds(at_most, None, 3000)


def test_wire_forms_round_trip() -> None:
    info = ProductInfo("P", 980.5, 3, jst(1, 9), name="茶", url="https://s/p", image_url=None, on_sale=True,
                       ref_day="2026-03-01", ref_price=1200.0)
    assert ProductInfo.from_bytes(info.to_bytes()) == info
    assert ProductInfo.from_json({"product_id": "P", "price": 1, "stock": 0, "updated_ms": 5}) == ProductInfo(
        "P", 1.0, 0, 5)
    trigger = PriceTrigger("r", "P", jst(1, 9), jst(2, 10), "2026-03-01", 1200.0, kind="restock", price=980.5,
                           stock=3)
    assert PriceTrigger.from_bytes(trigger.to_bytes()) == trigger
    assert trigger.to_json()["rule"] == "r"
