"""Product master state (current price/stock and the day's reference price) and price/stock triggers.

SPEC §11 "Price drop and restock", product side: ``apply_catalog`` folds one ``catalog`` record into the
product's ``ProductInfo`` and says which ``price_drop`` / ``restock`` rules the change fires. It knows nothing
about members; the member side (who watches, fire-once-per-day, the send-time re-check) is
``kagoflow.core.pricewatch``. Both sides agree on the firing condition through ``condition_holds``, which the
send-time re-check evaluates again on the then-current product against the reference stored in the trigger.

Reference price: the product's price at the start of the shop-local day of the change, i.e. its last price
before that day. ``ProductInfo`` carries it as (``ref_day``, ``ref_price``) and rolls it forward when a
record of a later day arrives. On the day a product first appears there is no earlier price, so
``ref_price`` is ``None`` and ``drop_yen`` / ``drop_percent`` cannot fire until the next day
(``price_at_most`` compares with the previous record and can). Records are expected in ``ts`` order per
product (Kafka key order, the backtest's merge); a late record of an earlier day keeps the current reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

import orjson

from kagoflow.core.events import CatalogUpdate
from kagoflow.core.pricerules import PriceRule, PriceRuleKind
from kagoflow.core.shoptime import local_date

_T = TypeVar("_T")
_EPS = 1e-9
"""Float slack for the edge equalities (a drop of exactly Y yen / Z % fires)."""


@dataclass(frozen=True, slots=True)
class ProductInfo:
    """Current state of one product as the catalog feed last described it."""

    product_id: str
    price: float
    stock: int
    updated_ms: int
    name: str | None = None
    url: str | None = None
    image_url: str | None = None
    on_sale: bool | None = None
    ref_day: str = ""
    """Shop-local ISO date that ``ref_price`` is the reference of."""
    ref_price: float | None = None
    """Price at the start of ``ref_day`` (last price before that day); None when unknown."""

    def to_json(self) -> dict[str, Any]:
        """Storage form (a table value or a compacted topic record)."""
        return {
            "product_id": self.product_id,
            "price": self.price,
            "stock": self.stock,
            "updated_ms": self.updated_ms,
            "name": self.name,
            "url": self.url,
            "image_url": self.image_url,
            "on_sale": self.on_sale,
            "ref_day": self.ref_day,
            "ref_price": self.ref_price,
        }

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_json())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProductInfo:
        ref_price = data.get("ref_price")
        return cls(
            product_id=data["product_id"],
            price=float(data["price"]),
            stock=int(data["stock"]),
            updated_ms=int(data["updated_ms"]),
            name=data.get("name"),
            url=data.get("url"),
            image_url=data.get("image_url"),
            on_sale=data.get("on_sale"),
            ref_day=data.get("ref_day", ""),
            ref_price=None if ref_price is None else float(ref_price),
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> ProductInfo:
        return cls.from_json(orjson.loads(raw))


class CatalogLookup(Protocol):
    """Read access to current product info (a dict satisfies it)."""

    def get(self, product_id: str, /) -> ProductInfo | None: ...


@dataclass(frozen=True, slots=True)
class PriceTrigger:
    """A catalog change that fired a price_drop / restock rule for one product."""

    rule_id: str
    product_id: str
    change_ms: int
    send_at_ms: int
    day: str
    """Shop-local date of the change (fire-once-per-day key)."""
    reference: float
    """Reference the re-check at send time compares against: ``price_at_most`` → X, ``drop_*`` → the
    day's reference price, ``restocked_at_least`` / ``stock_at_most`` → N."""
    kind: PriceRuleKind = "price_drop"
    price: float | None = None
    """Price after the change (for templates and analytics)."""
    stock: int | None = None
    """Stock after the change."""

    def to_json(self) -> dict[str, Any]:
        """Wire form (the internal price-trigger topic that fans a change out to member partitions)."""
        return {
            "rule": self.rule_id,
            "product_id": self.product_id,
            "change_ms": self.change_ms,
            "send_at_ms": self.send_at_ms,
            "day": self.day,
            "reference": self.reference,
            "kind": self.kind,
            "price": self.price,
            "stock": self.stock,
        }

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_json())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PriceTrigger:
        price, stock = data.get("price"), data.get("stock")
        return cls(
            rule_id=data["rule"],
            product_id=data["product_id"],
            change_ms=int(data["change_ms"]),
            send_at_ms=int(data["send_at_ms"]),
            day=data["day"],
            reference=float(data["reference"]),
            kind=data.get("kind", "price_drop"),
            price=None if price is None else float(price),
            stock=None if stock is None else int(stock),
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> PriceTrigger:
        return cls.from_json(orjson.loads(raw))


def apply_catalog(
    prev: ProductInfo | None, update: CatalogUpdate, *, rules: Sequence[object], tz: ZoneInfo
) -> tuple[ProductInfo, list[PriceTrigger]]:
    """New product info after ``update`` and the triggers it fires (never on a product's first record).

    ``rules`` may hold any rules; only enabled ``PriceRule`` s whose product filter passes are considered,
    so the engine can hand over its whole rule set.
    """
    day = local_date(update.ts, tz).isoformat()
    if prev is None:
        first = ProductInfo(
            product_id=update.product_id, price=update.price, stock=update.stock, updated_ms=update.ts,
            name=update.name, url=update.url, image_url=update.image_url, on_sale=update.on_sale,
            ref_day=day, ref_price=None,
        )
        return first, []

    ref_day: str
    ref_price: float | None
    if day > prev.ref_day:
        ref_day, ref_price = day, prev.price
    else:
        ref_day, ref_price = prev.ref_day, prev.ref_price
    info = replace(
        prev, price=update.price, stock=update.stock, updated_ms=update.ts,
        name=_keep(update.name, prev.name), url=_keep(update.url, prev.url),
        image_url=_keep(update.image_url, prev.image_url), on_sale=_keep(update.on_sale, prev.on_sale),
        ref_day=ref_day, ref_price=ref_price,
    )

    triggers: list[PriceTrigger] = []
    for rule in rules:
        if not isinstance(rule, PriceRule) or not rule.enabled or not rule.concerns(update.product_id):
            continue
        reference = _fired_reference(rule, prev, info)
        if reference is not None:
            triggers.append(
                PriceTrigger(
                    rule_id=rule.id, product_id=update.product_id, change_ms=update.ts,
                    send_at_ms=rule.send_time(update.ts, tz), day=day, reference=reference,
                    kind=rule.kind, price=info.price, stock=info.stock,
                )
            )
    return info, triggers


def condition_holds(rule: PriceRule, info: ProductInfo | None, reference: float) -> bool:
    """Whether ``info`` still meets the condition that fired with ``reference`` (the send-time re-check).

    A product that vanished from the catalog no longer holds.
    """
    if info is None:
        return False
    if rule.price_at_most is not None:
        return info.price <= reference + _EPS
    if rule.kind == "price_drop":
        return _drop_meets(rule, reference, info.price)
    if rule.restocked_at_least is not None:
        return info.stock >= reference
    return 1 <= info.stock <= reference


def _fired_reference(rule: PriceRule, prev: ProductInfo, info: ProductInfo) -> float | None:
    """The reference the change fires ``rule`` with, or None when it does not fire."""
    if rule.price_at_most is not None:
        limit = rule.price_at_most
        return limit if prev.price > limit + _EPS and info.price <= limit + _EPS else None
    if rule.kind == "price_drop":
        ref = info.ref_price
        if ref is None or not info.price < prev.price:
            return None
        return ref if _drop_meets(rule, ref, info.price) else None
    if rule.restocked_at_least is not None:
        n = rule.restocked_at_least
        return float(n) if prev.stock <= 0 and info.stock >= n else None
    n = rule.stock_at_most if rule.stock_at_most is not None else 0
    return float(n) if prev.stock > n and 1 <= info.stock <= n else None


def _drop_meets(rule: PriceRule, ref: float, price: float) -> bool:
    """Price is ≥ ``drop_yen`` yen or ≥ ``drop_percent`` % below ``ref`` (either, when both are set)."""
    if ref <= 0:
        return False
    drop = ref - price
    if rule.drop_yen is not None and drop >= rule.drop_yen - _EPS:
        return True
    return rule.drop_percent is not None and drop * 100 >= rule.drop_percent * ref - _EPS * max(ref, 1.0)


def _keep(new: _T | None, old: _T | None) -> _T | None:
    return old if new is None else new
