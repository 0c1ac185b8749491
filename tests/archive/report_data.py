"""A small story for the §14 additions (member search, held-out mails, holdouts), on top of ``analytics_data``;
every row stored twice (replayed), shared by the 18.16 and chdb tests."""

from __future__ import annotations

from datetime import date
from typing import Any

from tests.archive import analytics_data as data
from tests.archive.analytics_data import DAY_MS, HOUR, T0, _row, beacon, decision, order

DAY2 = date(2024, 3, 2)


def rows() -> dict[str, list[tuple[Any, ...]]]:
    beacons = [
        beacon("s-1", "a1", "view", T0, product_id="P9"),
        beacon("s-2", "a1", "cart_add", T0 + HOUR, product_id="P9"),  # a1: cart is the top action
        beacon("s-3", "a2", "view", T0, product_id="P9"),
        beacon("s-4", "a2", "favorite_add", T0 + HOUR, product_id="P9"),  # a2: favorite
        beacon("s-5", "a3", "view", T0 + DAY_MS, product_id="P9"),  # a3: view, on day 2 only
        beacon("s-6", "a4", "cart_add", T0, product_id="P8"),  # another product
        beacon("s-7", "a5", "purchase", T0, product_ids=("P9", "P7"), order_id="O-9"),
    ]
    decisions = [
        decision("h1|hold|e1", "sent", T0), decision("h2|hold|e1", "sent", T0),
        decision("h3|hold|e1", "held_out", T0), decision("h4|hold|e1", "held_out", T0),
    ]
    # h1 and h2 got a coupon with their mail; h1 used it (OH1), h2 did not
    coupons = [coupon("HOLD-H1", "h1|hold|e1"), coupon("HOLD-H2", "h2|hold|e1")]
    orders = [order("OH1", "h1", T0 + 2 * DAY_MS, total=100.0, coupon="HOLD-H1"),
              order("OH3", "h3", T0 + 9 * DAY_MS, total=50.0)]
    return {"beacons": beacons + beacons, "mail_decisions": decisions + decisions, "orders": orders + orders,
            "coupons_issued": coupons + coupons}


def coupon(code: str, key: str) -> tuple[Any, ...]:
    member_id, rule_id, _ = key.split("|")
    return _row("coupons_issued", code=code, member_id=member_id, rule_id=rule_id, decision_key=key,
                kind="abandonment", variant="", issued_ms=T0, expires="", expires_ms=None)


def check_search(search: Any) -> None:
    """``search(**kwargs)`` → rows of ``queries.member_search``."""
    day = data.DAY

    def ids(**kwargs: Any) -> list[str]:
        return sorted(r["member_id"] for r in search(product_id="P9", **kwargs))

    assert ids(since=day, until=day) == ["a1", "a2", "a5"]
    assert ids(since=day, until=DAY2) == ["a1", "a2", "a3", "a5"]
    assert ids(since=day, until=DAY2, action="view") == ["a1", "a2", "a3"]
    assert ids(since=day, until=DAY2, action="view", top_only=True) == ["a3"]
    assert ids(since=day, until=day, action="favorite", top_only=True) == ["a2"]
    assert ids(since=day, until=day, action="purchase") == ["a5"]
    top = {r["member_id"]: r["top_action"] for r in search(product_id="P9", since=day, until=DAY2)}
    assert top == {"a1": "cart", "a2": "favorite", "a3": "view", "a5": "purchase"}


def check_coupons(coupons: list[dict[str, Any]]) -> None:
    assert [(c["rule_id"], str(c["day"]), c["issued"], c["redeemed"]) for c in coupons] == \
        [("hold", "2024-03-01", 2, 1)]


def check_holdout(report: list[dict[str, Any]], mails: list[dict[str, Any]]) -> None:
    hold = [r for r in report if r["rule_id"] == "hold"]
    assert [(r["sent"], r["held_out"]) for r in hold] == [(2, 2)]
    got = sorted((m["member_id"], m["held_out"], m["purchases"]) for m in mails)
    assert got == [("h1", False, [T0 + 2 * DAY_MS]), ("h2", False, []), ("h3", True, [T0 + 9 * DAY_MS]),
                   ("h4", True, [])]
