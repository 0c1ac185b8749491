"""Builders for abandonment scenarios: rules from dicts, records at shop-local times, a virtual-clock run."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime
from itertools import count
from typing import Any
from zoneinfo import ZoneInfo

from kagoflow.backtest import Replay
from kagoflow.core.abandonrule import AbandonmentRule, parse_abandonment_rule
from kagoflow.core.decisions import Decision
from kagoflow.core.events import Beacon, CatalogUpdate, MemberUpdate, OrderItem, OrderUpdate, Record
from kagoflow.core.rules import RuleSet, parse_shop

TOKYO = ZoneInfo("Asia/Tokyo")
MIN = 60_000
HOUR = 60 * MIN
_events = count()


def jst(text: str) -> int:
    """'2026-11-24 10:00' (Tokyo) → epoch ms."""
    return int(datetime.fromisoformat(text).replace(tzinfo=TOKYO).timestamp() * 1000)


def rule(rule_id: str = "r", trigger: str = "cart", **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": rule_id,
        "kind": "abandonment",
        "trigger": trigger,
        "send": {"after": "1h"},
        "clock": "action",
    }
    data.update(overrides)
    return data


def ruleset(*rules: dict[str, Any], shop: dict[str, Any] | None = None) -> RuleSet:
    parsed: list[AbandonmentRule] = [parse_abandonment_rule(r, file=f"{r['id']}.yaml") for r in rules]
    return RuleSet(
        shop=parse_shop(shop or {}, file="shop.yaml"), abandonment=parsed, by_id={r.id: r for r in parsed}
    )


def beacon(
    kind: str, at: str | int, product: str | None = None, *, member: str = "m1", **fields: Any
) -> Beacon:
    ts = jst(at) if isinstance(at, str) else at
    if "product_ids" in fields:
        fields["product_ids"] = tuple(fields["product_ids"])
    return Beacon(
        event_id=f"e{next(_events)}",
        member_id=member,
        type=kind,
        ts=ts,  # type: ignore[arg-type]
        product_id=product,
        **fields,
    )


def profile(at: str | int, *, member: str = "m1", opt_in: bool | None = True, **fields: Any) -> MemberUpdate:
    ts = jst(at) if isinstance(at, str) else at
    fields.setdefault("email", f"{member}@example.com")
    return MemberUpdate(member_id=member, ts=ts, opt_in=opt_in, **fields)


def order(at: str, order_id: str, products: Iterable[str], *, member: str = "m1") -> OrderUpdate:
    ts = jst(at)
    items = tuple(OrderItem(product_id=p, quantity=1, price=1000.0) for p in products)
    return OrderUpdate(
        order_id=order_id, member_id=member, status="ordered", ts=ts, ordered_at=ts, items=items
    )


def price(at: str, product: str, yen: float, stock: int = 10) -> CatalogUpdate:
    return CatalogUpdate(product_id=product, ts=jst(at), price=yen, stock=stock)


def run(rules: RuleSet, records: Iterable[Record]) -> list[Decision]:
    """Feed ``records`` (in order) through a ``Replay`` and run the clock on until nothing is pending."""

    async def go() -> list[Decision]:
        replay = Replay(rules)
        out: list[Decision] = []
        for record in records:
            out.extend(await replay.feed(record))
        out.extend(await replay.advance(None))
        return out

    return asyncio.run(go())


def local(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, TOKYO).strftime("%Y-%m-%d %H:%M")


def brief(decisions: Iterable[Decision]) -> list[tuple[str, str, str, str, tuple[str, ...]]]:
    """(rule, status, reason, local decision time, products) — what most scenario tests assert."""
    return [(d.rule_id, d.status, d.reason, local(d.at_ms), d.products) for d in decisions]
