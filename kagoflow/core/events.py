"""Typed input records of the SPEC §1 contract, after parsing and validation.

Times are integer epoch milliseconds (UTC) everywhere in the core. Money is yen as ``float`` where a
storefront may send fractional values; quantities and stock are ``int``. Records are immutable.
``kagoflow.streams.contract`` turns raw Kafka/JSONL bytes into these (or a ``ContractError``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BeaconType = Literal["view", "cart_add", "cart_remove", "favorite_add", "favorite_remove", "purchase", "page_view"]
BEACON_TYPES: frozenset[str] = frozenset(
    {"view", "cart_add", "cart_remove", "favorite_add", "favorite_remove", "purchase", "page_view"}
)
PRODUCT_BEACON_TYPES: frozenset[str] = frozenset(
    {"view", "cart_add", "cart_remove", "favorite_add", "favorite_remove"}
)
Device = Literal["pc", "smartphone", "mobile"]
DEVICES: frozenset[str] = frozenset({"pc", "smartphone", "mobile"})


@dataclass(frozen=True, slots=True)
class Beacon:
    """One storefront action (topic ``beacons``, key = member id)."""

    event_id: str
    member_id: str
    type: BeaconType
    ts: int
    product_id: str | None = None
    price: float | None = None
    quantity: int | None = None
    device: Device | None = None
    shop_id: str = "default"
    product_ids: tuple[str, ...] = ()
    """``purchase`` only: the purchased products (may be empty when ``order_id`` is given)."""
    order_id: str | None = None
    """``purchase`` only."""


class _BeaconBuilder:
    """``Beacon``'s slot layout without the frozen ``__setattr__``: ``new_beacon`` fills one and then makes
    it a ``Beacon``. A frozen dataclass sets each field through ``object.__setattr__`` (~1.5 µs for 11
    fields, as much as validating the beacon); plain slot stores and one ``__class__`` swap cost ~0.4 µs.
    The slots are copied from ``Beacon``, so the layouts cannot drift (CPython refuses the swap otherwise).
    Keep the ``__init__`` parameters in ``Beacon``'s field order."""

    __slots__ = Beacon.__slots__

    def __init__(self, event_id: str, member_id: str, type: BeaconType, ts: int, product_id: str | None,
                 price: float | None, quantity: int | None, device: Device | None, shop_id: str,
                 product_ids: tuple[str, ...], order_id: str | None) -> None:
        self.event_id = event_id
        self.member_id = member_id
        self.type = type
        self.ts = ts
        self.product_id = product_id
        self.price = price
        self.quantity = quantity
        self.device = device
        self.shop_id = shop_id
        self.product_ids = product_ids
        self.order_id = order_id


def new_beacon(event_id: str, member_id: str, type: BeaconType, ts: int, product_id: str | None,
               price: float | None, quantity: int | None, device: Device | None, shop_id: str,
               product_ids: tuple[str, ...], order_id: str | None) -> Beacon:
    """``Beacon(...)`` with every field given positionally, for the parser's hot path (same object)."""
    beacon = _BeaconBuilder(event_id, member_id, type, ts, product_id, price, quantity, device, shop_id,
                            product_ids, order_id)
    beacon.__class__ = Beacon  # type: ignore[assignment]
    return beacon  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class MemberUpdate:
    """A member profile upsert (topic ``members``). ``None`` fields were absent and keep their old value."""

    member_id: str
    ts: int
    email: str | None = None
    opt_in: bool | None = None
    name: str | None = None
    device: Device | None = None
    locale: str | None = None
    purchase_count: int | None = None
    total_amount: float | None = None
    """Base values (SPEC §13) as of ``ts``: later purchases add to them."""
    first_purchase_at: int | None = None
    last_purchase_at: int | None = None
    birthday: str | None = None
    """``YYYY-MM-DD`` (validated by the contract)."""
    gender: str | None = None
    registered_at: int | None = None


@dataclass(frozen=True, slots=True)
class CatalogUpdate:
    """A product master upsert (topic ``catalog``, key = product id)."""

    product_id: str
    ts: int
    price: float
    stock: int
    name: str | None = None
    url: str | None = None
    image_url: str | None = None
    on_sale: bool | None = None


@dataclass(frozen=True, slots=True)
class OrderItem:
    product_id: str
    quantity: int
    price: float


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    """An order status change (topic ``orders``, key = member id). ``ts`` = the record's own time."""

    order_id: str
    member_id: str
    status: str
    ts: int
    ordered_at: int
    shipped_at: int | None = None
    delivered_at: int | None = None
    items: tuple[OrderItem, ...] = ()
    coupon: str | None = None
    total: float | None = None


EngagementEvent = Literal["open", "click", "unsubscribe", "bounce"]
ENGAGEMENT_EVENTS: frozenset[str] = frozenset({"open", "click", "unsubscribe", "bounce"})


@dataclass(frozen=True, slots=True)
class Engagement:
    """What a recipient (or the mail system) did with a mail (topic ``engagement``, key = member id; SPEC §12).

    ``open`` / ``click`` count for the sends of scenario ``rule``'s step ``step`` (0 = not a scenario step);
    ``unsubscribe`` suppresses every marketing mail of the member from ``ts`` on; ``bounce`` (a permanent
    delivery failure, from the delivery results on the same topic) suppresses them too.
    """

    member_id: str
    event: EngagementEvent
    ts: int
    rule: str = ""
    step: int = 0
    suspected_bot: bool = False
    key: str | None = None
    """``Decision.key`` of the mail the event belongs to, when known."""


Record = Beacon | MemberUpdate | CatalogUpdate | OrderUpdate | Engagement
MemberRecord = Beacon | MemberUpdate | OrderUpdate | Engagement
"""Records keyed by member id: the ones ``Engine.handle`` takes."""

# SPEC §11/§12: records with equal ts are processed members, catalog, orders, engagement, beacons, then
# input order.
RECORD_ORDER: dict[type, int] = {MemberUpdate: 0, CatalogUpdate: 1, OrderUpdate: 2, Engagement: 3, Beacon: 4}
