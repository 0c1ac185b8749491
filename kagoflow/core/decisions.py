"""A mail decision: the one output of the decision core, shared by worker, backtest and delivery."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson

from kagoflow.core.shoptime import UTC, iso

DecisionStatus = Literal["sent", "capped", "suppressed", "skipped", "held_out", "started", "ended", "converted"]
DecisionKind = Literal["abandonment", "price_drop", "restock", "scenario", "date", "inactive"]
LIFE_STATUSES: frozenset[str] = frozenset({"started", "ended", "converted"})
"""Scenario life records (SPEC §12): decisions that send nothing."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What the core decided for (member, rule) at ``at_ms``.

    ``episode`` is deterministic from the input (never from wall-clock randomness), so a replay after a
    crash yields the same ``key`` and the send ledger and cap counter can recognise it.
    ``reason`` is empty for ``sent``; otherwise e.g. ``no_products``, ``filter:devices``, ``no_profile``,
    ``no_consent``, ``unsubscribed``, ``capped``.
    """

    member_id: str
    rule_id: str
    kind: DecisionKind
    status: DecisionStatus
    reason: str
    products: tuple[str, ...]
    due_ms: int
    at_ms: int
    episode: str
    template: str
    coupon: str | None = None
    """The issued code (set by the coupon step after caps, SPEC §13)."""
    sender_name: str | None = None
    cap_exempt: bool = False
    step: int = 0
    """Scenario step (1..7); 0 for life records and other kinds."""
    variant: str = ""
    """``"A"`` / ``"B"`` of an A/B test (template or send time; a scenario step's two templates), else ``""``
    (SPEC §12, §14)."""
    send: int = 0
    """The j-th send of a (repeated) scenario step; 0 for life records."""
    order_id: str | None = None
    """The scenario run's order."""
    coupon_expires: str | None = None
    """Shop-local date ``YYYY-MM-DD`` the coupon is valid through (rules with ``valid_days``)."""

    @property
    def key(self) -> str:
        """Idempotency key: one mail per (member, rule, episode). A scenario's episode is
        ``order_id|step|send``, so its key is (member, scenario, order_id, step, send) as SPEC §12 says."""
        return f"{self.member_id}|{self.rule_id}|{self.episode}"

    def with_status(self, status: DecisionStatus, reason: str) -> Decision:
        return replace(self, status=status, reason=reason)

    def to_json(self) -> dict[str, Any]:
        """The wire form (``mail_decisions`` topic, backtest output — SPEC §9 fields first)."""
        return {
            "member_id": self.member_id,
            "rule": self.rule_id,
            "kind": self.kind,
            "status": self.status,
            "at": iso(self.at_ms, UTC),
            "products": list(self.products),
            "reason": self.reason,
            "due": iso(self.due_ms, UTC),
            "at_ms": self.at_ms,
            "due_ms": self.due_ms,
            "episode": self.episode,
            "key": self.key,
            "template": self.template,
            "coupon": self.coupon,
            "sender_name": self.sender_name,
            "cap_exempt": self.cap_exempt,
            "variant": self.variant,
            "coupon_expires": self.coupon_expires,
            **({"step": self.step, "send": self.send, "order_id": self.order_id}
               if self.kind == "scenario" else {}),
        }

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_json())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Decision:
        return cls(
            member_id=data["member_id"],
            rule_id=data["rule"],
            kind=data["kind"],
            status=data["status"],
            reason=data.get("reason", ""),
            products=tuple(data.get("products", ())),
            due_ms=int(data["due_ms"]),
            at_ms=int(data["at_ms"]),
            episode=data["episode"],
            template=data["template"],
            coupon=data.get("coupon"),
            sender_name=data.get("sender_name"),
            cap_exempt=bool(data.get("cap_exempt", False)),
            step=int(data.get("step", 0)),
            variant=data.get("variant") or "",
            send=int(data.get("send", 0)),
            order_id=data.get("order_id"),
            coupon_expires=data.get("coupon_expires"),
        )
