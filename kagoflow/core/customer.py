"""The customer part of a member's state (SPEC §13): aggregates, profile dates, date/inactive turns, coupons.

Kept in one object (``MemberState.cust``, ``None`` until the member has an order, a base value or a
customer field), so the millions of members who only browse pay nothing for it in memory or state size.
``behaviour`` calls the ``on_*`` functions while applying records; the programs and filters read
``facts``; the coupon step records issued codes with ``record_issued`` and orders redeem them.
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Any

from kagoflow.core.segments import Aggregates, CustomerFacts

if TYPE_CHECKING:
    from kagoflow.core.behaviour import MemberState
    from kagoflow.core.events import MemberUpdate, OrderUpdate

_ISSUED_RULE, _ISSUED_KEY, _ISSUED_AT, _REDEEMED_AT, _REDEEMED_BY, _ISSUED_STEP, _MORE_KEYS = range(7)


class CustomerData:
    __slots__ = ("agg", "birthday", "coupons", "gender", "known", "registered_at", "turns")

    def __init__(self) -> None:
        self.agg = Aggregates()
        self.birthday: str | None = None
        self.gender: str | None = None
        self.registered_at: int | None = None
        self.known: dict[str, int] = {}
        """Date field → time it was (last) set: a date rule fires first at the next occurrence after it."""
        self.turns: dict[str, Any] = {}
        """Date / inactive rule id → the occurrence year / since-time already decided."""
        self.coupons: dict[str, list[Any]] = {}
        """Issued code → [rule, decision key, issued ms, redeemed ms or None, redeeming order or None, step,
        later decision keys of the same (fixed) code]."""

    def to_list(self) -> list[Any]:
        return [self.agg.to_list(), self.birthday, self.gender, self.registered_at, self.known, self.turns,
                self.coupons]

    @classmethod
    def from_list(cls, values: list[Any]) -> CustomerData:
        data = cls()
        agg, data.birthday, data.gender, data.registered_at, data.known, data.turns, data.coupons = values
        data.agg = Aggregates.from_list(agg)
        return data

    def birthday_date(self) -> date | None:
        return None if self.birthday is None else date.fromisoformat(self.birthday)


def customer(state: MemberState) -> CustomerData:
    """The member's customer data, created on first use from what an older state knew (its purchase count
    becomes the base; its known orders are not counted again)."""
    data: CustomerData | None = state.cust
    if data is None:
        data = state.cust = CustomerData()
        if state.purchase_base is not None or state.orders:
            data.agg.set_base("purchase_count", (state.purchase_base or 0) + state.orders_after_base)
            for order_id in state.orders:
                data.agg.add_known(order_id)
    return data


def purchase_count(state: MemberState) -> int:
    data: CustomerData | None = state.cust
    if data is None:
        return (state.purchase_base or 0) + state.orders_after_base
    return data.agg.purchase_count()


def facts(state: MemberState) -> CustomerFacts:
    data: CustomerData | None = state.cust
    if data is None:
        return CustomerFacts(purchase_count=purchase_count(state), locale=state.locale)
    count, first, last, total, largest = data.agg.facts()
    return CustomerFacts(count, first, last, total, largest, data.birthday_date(), data.gender, state.locale,
                         data.registered_at)


def on_profile(state: MemberState, update: MemberUpdate) -> None:
    """Base values and customer fields of a profile record (each field only when present)."""
    if (update.purchase_count is None and update.total_amount is None and update.first_purchase_at is None
            and update.last_purchase_at is None and update.birthday is None and update.gender is None
            and update.registered_at is None):
        return
    data = customer(state)
    agg = data.agg
    for name, value in (("purchase_count", update.purchase_count), ("total_amount", update.total_amount),
                        ("first_purchase_at", update.first_purchase_at),
                        ("last_purchase_at", update.last_purchase_at)):
        if value is not None:
            agg.set_base(name, value)
    if update.birthday is not None and update.birthday != data.birthday:
        data.birthday = update.birthday
        data.known["birthday"] = update.ts
    if update.registered_at is not None and update.registered_at != data.registered_at:
        data.registered_at = update.registered_at
        data.known["registered_at"] = update.ts
    if update.gender is not None:
        data.gender = update.gender


def on_purchase_beacon(state: MemberState, order_id: str, ts: int) -> None:
    customer(state).agg.add_purchase_beacon(order_id, ts)


def order_amount(update: OrderUpdate) -> float | None:
    """``total``, else Σ quantity × price of the items, else unknown (None)."""
    if update.total is not None:
        return update.total
    if update.items:
        return sum(item.quantity * item.price for item in update.items)
    return None


def on_order(state: MemberState, update: OrderUpdate, cancelled_statuses: frozenset[str]) -> None:
    """Aggregates follow the order's latest status; an order carrying an issued code redeems it (the first
    such order, not cancelled, ordered at or after the issuing send)."""
    data = customer(state)
    cancelled = update.status in cancelled_statuses
    data.agg.add_order(update.order_id, ordered_at=update.ordered_at, amount=order_amount(update),
                       cancelled=cancelled)
    code = update.coupon
    if code is None or cancelled:
        return
    issued = data.coupons.get(code)
    if issued is not None and issued[_REDEEMED_AT] is None and update.ordered_at >= issued[_ISSUED_AT]:
        issued[_REDEEMED_AT] = update.ts
        issued[_REDEEMED_BY] = update.order_id


def is_cancelled(state: MemberState, order_id: str) -> bool:
    data: CustomerData | None = state.cust
    return data is not None and data.agg.is_cancelled(order_id)


MAX_KEYS_PER_CODE = 20
"""A fixed code goes out with many sends; the decision keys after the first one are kept up to this many."""


def record_issued(state: MemberState, code: str, *, rule: str, key: str, issued_ms: int, step: int = 0) -> None:
    """Remember a code sent to the member (idempotent: a replay keeps the first record). A fixed code sent
    again by another decision remembers that decision's key too."""
    coupons = customer(state).coupons
    issued = coupons.get(code)
    if issued is None:
        coupons[code] = [rule, key, issued_ms, None, None, step, []]
    elif key != issued[_ISSUED_KEY] and key not in issued[_MORE_KEYS] and len(issued[_MORE_KEYS]) < MAX_KEYS_PER_CODE:
        issued[_MORE_KEYS].append(key)


def unused_codes(state: MemberState, rule: str, step: int | None = None) -> list[str]:
    """Codes issued by ``rule`` (and ``step``) that no order has redeemed yet (scenario ``coupon_unused``)."""
    data: CustomerData | None = state.cust
    if data is None:
        return []
    return [code for code, issued in data.coupons.items()
            if issued[_ISSUED_RULE] == rule and (step is None or issued[_ISSUED_STEP] == step)
            and issued[_REDEEMED_AT] is None]


def codes_of(state: MemberState, key_prefix: str) -> set[str]:
    """Codes issued to the member by decisions whose key starts with ``key_prefix`` (e.g. one scenario
    step of one run: ``member|scenario|order|step|``)."""
    data: CustomerData | None = state.cust
    if data is None:
        return set()
    return {code for code, issued in data.coupons.items()
            if any(key.startswith(key_prefix) for key in (issued[_ISSUED_KEY], *issued[_MORE_KEYS]))}


def redemption(state: MemberState, code: str) -> tuple[int, str] | None:
    """(redeemed ms, order id) of an issued code, or None."""
    data: CustomerData | None = state.cust
    issued = None if data is None else data.coupons.get(code)
    if issued is None or issued[_REDEEMED_AT] is None:
        return None
    return issued[_REDEEMED_AT], issued[_REDEEMED_BY]
