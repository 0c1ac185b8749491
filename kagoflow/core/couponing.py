"""The coupon step (SPEC §13, §14 fine points): after caps and holdout, every ``sent`` decision of a rule with
a ``coupon`` gets its code — or becomes ``skipped`` (``coupon_pool_empty``).

Run by the worker (with the Redis pool) and the backtest (with ``MemoryCouponPool``) on the decisions the
engine and the caps step produced, with access to the members' states: an issued code is remembered in the
member's state (so an order carrying it redeems it, and scenario ``coupon_unused`` can see it), and an
abandonment episode whose pool was empty stays open exactly like after a ``skipped`` evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import orjson

from kagoflow.core import customer
from kagoflow.core.behaviour import MemberState
from kagoflow.core.coupons import CouponPool, CouponSpec, PoolEmpty, issue, running_low
from kagoflow.core.decisions import Decision
from kagoflow.core.shoptime import UTC, iso

log = logging.getLogger("kagoflow.coupons")


@dataclass(frozen=True, slots=True)
class IssuedCoupon:
    """One code sent to one member (the ``coupons_issued`` topic, key = code; ClickHouse)."""

    code: str
    member_id: str
    rule: str
    key: str
    issued_ms: int
    expires: str | None
    expires_ms: int | None
    kind: str
    variant: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "member_id": self.member_id, "rule": self.rule, "key": self.key,
                "issued_at": iso(self.issued_ms, UTC), "issued_ms": self.issued_ms, "expires": self.expires,
                "expires_ms": self.expires_ms, "kind": self.kind, "variant": self.variant}

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_json())


class CouponStep:
    """Attach coupons to ``sent`` decisions; count empty pools; warn when a pool runs below 10 %."""

    def __init__(self, rules: Iterable[Any], *, pool: CouponPool | None, secret: str, tz: Any,
                 on_empty: Callable[[MemberState, Decision], list[Decision]] | None = None) -> None:
        self.specs: dict[str, CouponSpec] = {}
        for rule in rules:
            spec = getattr(rule, "coupon", None)
            if isinstance(spec, CouponSpec):
                self.specs[rule.id] = spec
        self.pool = pool
        self.secret = secret
        self.tz = tz
        self.pool_empty = 0
        """Decisions skipped for an empty pool (a metric)."""
        self.low: set[str] = set()
        """Pools reported as running low (reported once per process)."""
        self.on_empty = on_empty
        """``Engine.coupon_pool_empty``: what an empty pool does to the member's episode or run."""

    def pooled(self, decision: Decision) -> bool:
        """Whether the decision's coupon comes from a pool (so it may yet end ``skipped``)."""
        spec = self.specs.get(decision.rule_id)
        return spec is not None and spec.form == "pool"

    async def apply(self, decisions: list[Decision], state_of: Callable[[str], MemberState | None],
                    admit: Callable[[list[Decision]], Awaitable[set[str]]] | None = None
                    ) -> tuple[list[Decision], list[IssuedCoupon]]:
        """``admit``: called with the ``sent`` decisions that got a pool code, before anything is issued;
        the keys it returns become ``capped`` (their caps were counted only now, see ``core.sending``)."""
        if not self.specs:
            return decisions, []
        out: list[Decision] = []
        issued: list[IssuedCoupon] = []
        taken = await self._take_pool_codes(decisions)
        refused: set[str] = set()
        if taken and admit is not None:
            refused = await admit([d for d in decisions if d.status == "sent" and d.key in taken])
        used_pools: set[str] = set()
        emptied: set[tuple[str, str, str | None]] = set()
        for decision in decisions:
            spec = self.specs.get(decision.rule_id)
            if spec is None or decision.status != "sent":
                if decision.status == "ended" and decision.reason == "completed" and (
                        decision.member_id, decision.rule_id, decision.order_id) in emptied:
                    # the run's last send found the pool empty: that, not completion, ended it
                    decision = decision.with_status("ended", "coupon_pool_empty")
                out.append(decision)
                continue
            if decision.key in refused:
                out.append(decision.with_status("capped", "capped"))
                continue
            try:
                coupon = await issue(spec, decision.key, decision.at_ms, tz=self.tz, secret=self.secret,
                                     pool=None, taken=taken.get(decision.key))
            except PoolEmpty as empty:
                self.pool_empty += 1
                log.warning("coupon pool %s is empty: %s skipped (coupon_pool_empty)", empty.pool, decision.key)
                skipped = decision.with_status("skipped", "coupon_pool_empty")
                out.append(skipped)
                emptied.add((decision.member_id, decision.rule_id, decision.order_id))
                state = state_of(decision.member_id)
                if state is not None and self.on_empty is not None:
                    out.extend(self.on_empty(state, skipped))
                continue
            if spec.form == "pool":
                used_pools.add(spec.value)
            state = state_of(decision.member_id)
            if state is not None:
                customer.record_issued(state, coupon.code, rule=decision.rule_id, key=decision.key,
                                       issued_ms=decision.at_ms, step=int(getattr(decision, "step", 0) or 0))
            out.append(replace(decision, coupon=coupon.code, coupon_expires=coupon.expires))
            issued.append(IssuedCoupon(coupon.code, decision.member_id, decision.rule_id, decision.key,
                                       decision.at_ms, coupon.expires, coupon.expires_ms, decision.kind,
                                       decision.variant))
        if used_pools and self.pool is not None:  # low-water check: once per pool and batch
            for name in used_pools - self.low:
                try:  # after the codes were taken nothing may fail: a retry would redo the state changes
                    left, total = await self.pool.remaining(name)
                except Exception as exc:
                    log.warning("coupon pool %s: cannot read what is left (%s)", name, exc)
                    continue
                if running_low(left, total):
                    self.low.add(name)
                    log.warning("coupon pool %s is running low: %d of %d codes left", name, left, total)
        return out, issued

    async def _take_pool_codes(self, decisions: list[Decision]) -> dict[str, str]:
        """Pool codes of the batch's ``sent`` decisions: one ``take_many`` per pool, in decision order (so
        file order follows decision order)."""
        if self.pool is None:
            return {}
        keys: dict[str, list[str]] = {}
        for decision in decisions:
            spec = self.specs.get(decision.rule_id)
            if spec is not None and spec.form == "pool" and decision.status == "sent":
                keys.setdefault(spec.value, []).append(decision.key)
        out: dict[str, str] = {}
        for pool, pool_keys in keys.items():
            for key, code in zip(pool_keys, await self.pool.take_many(pool, pool_keys), strict=True):
                if code is not None:
                    out[key] = code
        return out
