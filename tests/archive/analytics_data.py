"""One small archive with a known story, shared by the ClickHouse 18.16 and the chdb (current engine) tests.

Shop-local day D = 2024-03-01 (Asia/Tokyo). Every row is stored twice (a replay), decisions the second
time with a later ``at`` and another Kafka offset, as a live worker re-deciding after a crash would.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from kagoflow.archive.rows import COLUMNS

DAY = date(2024, 3, 1)
T0 = 1_709_222_400_000  # 2024-03-01T01:00:00+09:00
MIN = 60_000
HOUR = 60 * MIN
DAY_MS = 24 * HOUR

_offsets = iter(range(1, 1_000_000))


def _row(table: str, **values: Any) -> tuple[Any, ...]:
    values.setdefault("kafka_partition", 0)
    values.setdefault("kafka_offset", next(_offsets))
    return tuple(values[c] for c in COLUMNS[table])


def decision(key: str, status: str, at_ms: int, *, step: int = 0, variant: str = "", reason: str = "",
             offset: int | None = None) -> tuple[Any, ...]:
    member_id, rule_id, episode = key.split("|")
    return _row("mail_decisions", decision_key=key, member_id=member_id, rule_id=rule_id,
                kind="abandonment", status=status, reason=reason, products=["sku-1"], at_ms=at_ms,
                due_ms=at_ms, episode=episode, template=rule_id, coupon="", sender_name="", cap_exempt=0,
                step=step, variant=variant, send=1 if step else 0, order_id="",
                kafka_offset=offset if offset is not None else next(_offsets))


def engagement(key: str, event: str, at_ms: int, *, bot: bool = False) -> tuple[Any, ...]:
    return _row("engagement", at_ms=at_ms, event=event, decision_key=key, member_id=key.split("|")[0],
                rule_id=key.split("|")[1], url="https://shop.example.com/p/1" if event == "click" else "",
                detail="", suspected_bot=int(bot))


def order(order_id: str, member_id: str, at_ms: int, *, total: float | None, status: str = "ordered",
          items: tuple[tuple[str, int, float], ...] = (("sku-1", 1, 100.0),), ts_ms: int | None = None,
          coupon: str = "") -> tuple[Any, ...]:
    return _row("orders", ts_ms=ts_ms or at_ms, order_id=order_id, member_id=member_id, status=status,
                ordered_at=at_ms // 1000, shipped_at=None, delivered_at=None,
                item_product_ids=[i[0] for i in items], item_quantities=[i[1] for i in items],
                item_prices=[i[2] for i in items], coupon=coupon, total=total)


def beacon(event_id: str, member_id: str, kind: str, at_ms: int, *, product_id: str = "",
           product_ids: tuple[str, ...] = (), order_id: str = "") -> tuple[Any, ...]:
    return _row("beacons", ts_ms=at_ms, event_id=event_id, member_id=member_id, type=kind,
                product_id=product_id, product_ids=list(product_ids), order_id=order_id, price=None,
                quantity=None, device="", shop_id="default")


def member(member_id: str, email: str, ts_ms: int) -> tuple[Any, ...]:
    return _row("members", ts_ms=ts_ms, member_id=member_id, email=email, opt_in=1, name=None, device="",
                locale=None, purchase_count=None, birthday=None, gender=None, registered_at=None)


K1, K2, K3, K4, K5, K6 = (f"m{i}|cart-1h|e1" for i in range(1, 7))
F1 = "m1|fav-1h|e1"
S1, S2, S3 = "m7|follow|s1", "m8|follow|s1", "m9|follow|s1"


def rows() -> dict[str, list[tuple[Any, ...]]]:
    decisions = [
        decision(K1, "sent", T0), decision(K2, "sent", T0 + HOUR), decision(K3, "sent", T0 + 2 * HOUR),
        decision(K4, "skipped", T0 - HOUR, reason="filter:devices"), decision(K4, "sent", T0 + 3 * HOUR),
        decision(K5, "capped", T0, reason="capped"), decision(K6, "suppressed", T0, reason="no_consent"),
        decision(F1, "sent", T0 + 5 * HOUR),
        decision(S1, "sent", T0, step=1, variant="A"), decision(S2, "sent", T0, step=1, variant="A"),
        decision(S3, "sent", T0, step=1, variant="B"),
    ]
    replayed = [decision(*_key_status_at(d), step=d[14], variant=d[15], reason=d[5]) for d in decisions]
    events = [
        engagement(K1, "delivered", T0 + MIN), engagement(K1, "open", T0 + 10 * MIN),
        engagement(K1, "click", T0 + 11 * MIN), engagement(K1, "click", T0 + 12 * MIN),
        engagement(K2, "delivered", T0 + HOUR + MIN), engagement(K2, "open", T0 + 2 * HOUR),
        engagement(K2, "unsubscribe", T0 + 2 * HOUR + MIN),
        engagement(K3, "bounced", T0 + 2 * HOUR + MIN),
        engagement(K4, "delivered", T0 + 3 * HOUR + MIN),  # a link scanner opens and clicks K4 at once:
        engagement(K4, "open", T0 + 3 * HOUR + MIN, bot=True),
        engagement(K4, "click", T0 + 3 * HOUR + MIN, bot=True),
        engagement(F1, "delivered", T0 + 5 * HOUR + MIN), engagement(F1, "click", T0 + 6 * HOUR),
        engagement(S1, "delivered", T0 + MIN), engagement(S1, "open", T0 + 30 * MIN),
        engagement(S1, "click", T0 + HOUR),
        engagement(S3, "delivered", T0 + MIN), engagement(S3, "click", T0 + 30 * MIN),
    ]
    orders = [
        # m1 clicked K1 (T0+11m) and later F1 (T0+6h): last click wins, F1 gets the 5000 yen.
        order("O1", "m1", T0 + 7 * HOUR, total=5000.0),
        order("O2", "m1", T0 + 3 * DAY_MS, total=999.0),  # > 2 days after every click
        order("O3", "m2", T0 + 2 * HOUR, total=7000.0),  # m2 never clicked
        order("O6", "m4", T0 + 4 * HOUR, total=4000.0),  # only a bot clicked K4
        order("O4", "m7", T0 + DAY_MS, total=None, items=(("sku-1", 2, 1500.0),)),  # amount 3000
        order("O5", "m9", T0 + HOUR, total=800.0),
        order("O5", "m9", T0 + HOUR, total=800.0, status="cancelled", ts_ms=T0 + 90 * MIN),
    ]
    beacons = [
        beacon("b-1", "m1", "cart_add", T0 - 2 * HOUR, product_id="sku-1"),
        beacon("b-2", "m1", "purchase", T0 + 7 * HOUR, product_ids=("sku-1",), order_id="O1"),  # = O1
        beacon("b-3", "m9", "purchase", T0 + 2 * HOUR, product_ids=("sku-1",)),  # no order: amount 0
    ]
    members = [member("m1", "old@example.jp", T0 - DAY_MS), member("m1", "m1@example.jp", T0 - HOUR),
               *(member(f"m{i}", f"m{i}@example.jp", T0 - DAY_MS) for i in range(2, 10))]
    return {
        "mail_decisions": decisions + replayed,
        "engagement": events + events,
        "orders": orders + orders,
        "beacons": beacons + beacons,
        "members": members + members,
    }


def _key_status_at(d: tuple[Any, ...]) -> tuple[str, str, int]:
    return d[0], d[4], d[7] + 1000


# rule, step, variant → sent, capped, suppressed, skipped, delivered, bounced, opened, clicked,
# opened_incl_bots, clicked_incl_bots, unsubscribed, conversions, revenue
EXPECTED_COUNTS = {
    ("cart-1h", 0, ""): (4, 1, 1, 1, 3, 1, 2, 1, 3, 2, 1, 0, 0.0),
    ("fav-1h", 0, ""): (1, 0, 0, 0, 1, 0, 1, 1, 1, 1, 0, 1, 5000.0),
    ("follow", 1, "A"): (2, 0, 0, 0, 1, 0, 1, 1, 1, 1, 0, 1, 3000.0),
    ("follow", 1, "B"): (1, 0, 0, 0, 1, 0, 1, 1, 1, 1, 0, 1, 0.0),
}
COUNT_FIELDS = ("sent", "capped", "suppressed", "skipped", "delivered", "bounced", "opened", "clicked",
                "opened_incl_bots", "clicked_incl_bots", "unsubscribed", "conversions", "revenue")
SEND_LIST = sorted([("m1", "cart-1h", "m1@example.jp"), ("m2", "cart-1h", "m2@example.jp"),
                    ("m3", "cart-1h", "m3@example.jp"), ("m4", "cart-1h", "m4@example.jp"),
                    ("m1", "fav-1h", "m1@example.jp"), ("m7", "follow", "m7@example.jp"),
                    ("m8", "follow", "m8@example.jp"), ("m9", "follow", "m9@example.jp")])


def check_report(report: list[dict[str, Any]]) -> None:
    """The report rows equal the story: counts, and the rates derived from them."""
    got = {(r["rule_id"], int(r["step"]), r["variant"]): r for r in report}
    assert set(got) == set(EXPECTED_COUNTS)
    for key, counts in EXPECTED_COUNTS.items():
        row = got[key]
        assert str(row["day"]) == DAY.isoformat()
        assert tuple(float(row[f]) for f in COUNT_FIELDS) == tuple(float(c) for c in counts), key
        sent, clicked, conversions, revenue = counts[0], counts[7], counts[11], counts[12]
        assert float(row["open_rate"]) == counts[6] / sent
        assert float(row["click_rate"]) == clicked / sent
        assert float(row["conversion_rate"]) == (conversions / clicked if clicked else 0.0)
        assert float(row["revenue_per_mail"]) == revenue / sent
