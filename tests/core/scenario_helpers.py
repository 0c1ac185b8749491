"""Builders for scenario tests: rules from dicts, orders / engagement at shop-local times, compact output."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kagoflow.core.decisions import Decision
from kagoflow.core.events import Engagement, OrderItem, OrderUpdate
from kagoflow.core.rules import RuleSet, parse_shop
from kagoflow.core.scenariorule import parse_scenario_rule
from tests.core.abandon_helpers import jst, local


def scenario(rule_id: str = "s", steps: list[dict[str, Any]] | None = None, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": rule_id,
        "kind": "scenario",
        "start": {"status": ["ordered"]},
        "steps": [{"send": {"anchor": "ordered", "after": "0m"}, "template": "thanks"}] if steps is None else steps,
    }
    data.update(overrides)
    return data


def rules_of(*scenarios: dict[str, Any], shop: dict[str, Any] | None = None, min_delay_seconds: int = 900) -> RuleSet:
    parsed = [parse_scenario_rule(s, file=f"{s['id']}.yaml", min_delay_seconds=min_delay_seconds) for s in scenarios]
    return RuleSet(shop=parse_shop(shop or {}, file="shop.yaml"), scenarios=parsed,
                   by_id={r.id: r for r in parsed})


def order(at: str, order_id: str = "o1", status: str = "ordered", *, member: str = "m1",
          products: Iterable[str] = ("p1",), ordered: str | None = None, shipped: str | None = None,
          delivered: str | None = None, coupon: str | None = None, total: float | None = None) -> OrderUpdate:
    items = tuple(OrderItem(product_id=p, quantity=1, price=1000.0) for p in products)
    return OrderUpdate(
        order_id=order_id, member_id=member, status=status, ts=jst(at), ordered_at=jst(ordered or at),
        shipped_at=jst(shipped) if shipped else None, delivered_at=jst(delivered) if delivered else None,
        items=items, coupon=coupon, total=total,
    )


def engage(at: str, event: str, rule: str = "s", step: int = 1, *, member: str = "m1",
           bot: bool = False) -> Engagement:
    return Engagement(member_id=member, event=event, ts=jst(at), rule=rule, step=step,  # type: ignore[arg-type]
                      suspected_bot=bot)


def life(decisions: Iterable[Decision]) -> list[tuple[str, str, str, int, int, str]]:
    """(status, reason, local time, step, send, template) — what scenario tests assert."""
    return [(d.status, d.reason, local(d.at_ms), d.step, d.send, d.template) for d in decisions]
