"""Per-member behaviour state (SPEC §2, §11): product actions in force, last access, profile, orders.

One ``MemberState`` per member lives in the worker's table (as ``to_bytes()``) and in the backtest's dict.
The record-applying functions run for every beacon (~10k/s per worker), so they mutate in place and
allocate as little as possible; everything derived (a product's state, the purchase count) is computed
on demand from a few stored fields.

State is per product: the actions still in force since the product was last purchased (cart, favorite,
view), each with first and last action time. A purchase deletes the product's entry; a removal withdraws
one action. Besides first/last, favorite and view remember the latest time the action was *concerned*
(SPEC §11: the product's state was that action right after it), which is what ``clock: action`` anchors on:
a ``view`` of a carted product is not a browse-abandonment action, even after the cart is emptied later.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson

from kagoflow.core import customer as cust
from kagoflow.core.events import Beacon, Engagement, MemberUpdate, OrderUpdate
from kagoflow.core.segments import DEFAULT_CANCELLED

ProductStateName = Literal["cart", "favorite", "view"]

DEDUP_WINDOW = 64
"""Recent beacon event ids remembered per member. Redelivery (producer retries, a replay of the events a
worker had not yet flushed and acked) spans seconds — a member's events of one flush interval — not
hundreds of events; every remembered id is ~40 bytes of stored state per member."""
MAX_PRODUCTS = 1000
"""Products kept per member; beyond it the least recently touched one is forgotten (bounds state size
for members who browse for years without buying)."""
FORMAT_VERSION = 1


class ProductActions:
    """The actions in force on one product (``None`` = that action is not in force)."""

    __slots__ = (
        "cart_first",
        "cart_last",
        "cart_price",
        "cart_qty",
        "fav_conc",
        "fav_first",
        "fav_last",
        "view_conc",
        "view_first",
        "view_last",
    )

    def __init__(self) -> None:
        self.cart_first: int | None = None
        self.cart_last: int | None = None
        self.cart_price: float | None = None
        """Price of the latest ``cart_add`` that carried one."""
        self.cart_qty: int | None = None
        """Quantity of the latest ``cart_add`` (``None`` = not given, counts as 1)."""
        self.fav_first: int | None = None
        self.fav_last: int | None = None
        self.fav_conc: int | None = None
        """Latest ``favorite_add`` after which the state was favorite (not carted)."""
        self.view_first: int | None = None
        self.view_last: int | None = None
        self.view_conc: int | None = None
        """Latest ``view`` after which the state was view (neither carted nor favorited)."""

    @property
    def state(self) -> ProductStateName | None:
        if self.cart_first is not None:
            return "cart"
        if self.fav_first is not None:
            return "favorite"
        if self.view_first is not None:
            return "view"
        return None

    def concerned_ms(self, trigger: str) -> int | None:
        """Latest action of ``trigger``'s type after which this product's state was ``trigger``."""
        if trigger == "cart":
            return self.cart_last
        if trigger == "favorite":
            return self.fav_conc
        return self.view_conc

    def last_ms(self) -> int:
        return max(t for t in (self.cart_last, self.fav_last, self.view_last, 0) if t is not None)

    def to_list(self) -> list[Any]:
        """Values in serialized order (format 1; ``MemberState.to_bytes`` inlines the same list)."""
        return [self.cart_first, self.cart_last, self.cart_price, self.cart_qty, self.fav_first,
                self.fav_last, self.fav_conc, self.view_first, self.view_last, self.view_conc]

    @classmethod
    def from_list(cls, values: list[Any]) -> ProductActions:
        pa = _new_object(cls)
        (pa.cart_first, pa.cart_last, pa.cart_price, pa.cart_qty, pa.fav_first, pa.fav_last, pa.fav_conc,
         pa.view_first, pa.view_last, pa.view_conc) = values
        return pa


_new_object = object.__new__
"""Instance without ``__init__``: ``from_list`` sets every slot itself."""


class MemberState:
    """Everything the core knows about one member. Mutable; owned by one partition at a time."""

    __slots__ = (
        "beacon_device",
        "bounced",
        "cust",
        "due_cache",
        "email",
        "episodes",
        "last_access",
        "locale",
        "member_id",
        "name",
        "opt_in",
        "orders",
        "orders_after_base",
        "partition",
        "price_watch",
        "products",
        "profile_device",
        "purchase_base",
        "recent_events",
        "runs",
        "touched",
        "unsubscribed",
    )

    def __init__(self, member_id: str) -> None:
        self.member_id = member_id
        self.products: dict[str, ProductActions] = {}
        self.last_access: int | None = None
        """Time of the member's latest beacon of any type (the ``last_access`` clock)."""
        self.beacon_device: str | None = None
        """Device of the latest beacon that carried one."""
        self.email: str | None = None
        self.opt_in: bool | None = None
        self.name: str | None = None
        self.profile_device: str | None = None
        self.locale: str | None = None
        self.purchase_base: int | None = None
        """``purchase_count`` of the latest profile record carrying one."""
        self.orders: dict[str, list[str]] = {}
        """Orders seen: order id → product ids (a purchase beacon without order id: ``beacon:<event_id>``)."""
        self.orders_after_base = 0
        """Distinct orders first seen after the latest profile record carrying ``purchase_count``."""
        self.unsubscribed = False
        """Sticky (SPEC §11/§12): set by an ``unsubscribe`` engagement record; no marketing mail after it."""
        self.bounced = False
        """Sticky: a permanent delivery failure to the member's address (a ``bounce`` engagement record)."""
        self.runs: dict[str, Any] = {}
        self.cust: cust.CustomerData | None = None
        """Aggregates, customer fields, date/inactive turns and coupons (``kagoflow.core.customer``)."""
        """Scenario runs, owned by ``kagoflow.core.scenario`` (opaque here, JSON-able)."""
        self.recent_events: dict[str, None] = {}
        """Ordered set of the latest ``DEDUP_WINDOW`` beacon event ids."""
        self.episodes: dict[str, tuple[int, int | None]] = {}
        """Open abandonment episodes, owned by ``kagoflow.core.abandonment``:
        rule id → (opening action ms, due ms of the last ``skipped`` evaluation or None)."""
        self.price_watch: dict[str, Any] = {}
        """Pending price/stock mails, owned by ``kagoflow.core.pricewatch`` (opaque here, JSON-able)."""
        self.partition: int | None = None
        self.touched: tuple[str, ...] = ()
        """Transient: products whose state the last applied beacon may have changed (for the watch index)."""
        self.due_cache: int | bool | None = False
        """Transient, owned by the engine: next abandonment due, ``False`` = unknown (recompute)."""

    # -- derived views -------------------------------------------------------------------------------------
    def product_state(self, product_id: str) -> ProductStateName | None:
        pa = self.products.get(product_id)
        return None if pa is None else pa.state

    @property
    def purchase_count(self) -> int:
        """SPEC §11/§13: base + later distinct orders, leaving out cancelled ones."""
        return cust.purchase_count(self)

    @property
    def device(self) -> str | None:
        return self.beacon_device or self.profile_device

    def seen_event(self, event_id: str) -> bool:
        """True when ``event_id`` is a duplicate; else remembers it (bounded window) and returns False."""
        recent = self.recent_events
        if event_id in recent:
            return True
        recent[event_id] = None
        if len(recent) > DEDUP_WINDOW:
            del recent[next(iter(recent))]
        return False

    # -- serialization -------------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        products = self.products
        raw = {
            "v": FORMAT_VERSION,
            "m": self.member_id,
            # inline slot reads: ~3x faster than a method or ``attrgetter`` call per product
            "p": {
                pid: (pa.cart_first, pa.cart_last, pa.cart_price, pa.cart_qty, pa.fav_first, pa.fav_last,
                      pa.fav_conc, pa.view_first, pa.view_last, pa.view_conc)
                for pid, pa in products.items()
            },
            "a": self.last_access,
            "d": self.beacon_device,
            "pf": (self.email, self.opt_in, self.name, self.profile_device, self.locale, self.purchase_base),
            "o": self.orders,
            "ob": self.orders_after_base,
            "u": self.unsubscribed,
            "e": list(self.recent_events),
            "ep": self.episodes,
            "pw": self.price_watch,
            "pt": self.partition,
        }
        # format 1 additions: optional keys, written only when set (older states lack them; read with defaults)
        if self.bounced:
            raw["bo"] = True
        if self.runs:
            raw["sc"] = self.runs
        if self.cust is not None:
            raw["cu"] = self.cust.to_list()
        return orjson.dumps(raw)

    @classmethod
    def from_bytes(cls, data: bytes) -> MemberState:
        raw = orjson.loads(data)
        if not isinstance(raw, dict) or raw.get("v") != FORMAT_VERSION:
            version = raw.get("v") if isinstance(raw, dict) else raw
            raise ValueError(f"unsupported member state format {version!r}")
        state = cls(raw["m"])
        products = state.products
        for pid, values in raw["p"].items():
            pa = _new_object(ProductActions)
            (pa.cart_first, pa.cart_last, pa.cart_price, pa.cart_qty, pa.fav_first, pa.fav_last, pa.fav_conc,
             pa.view_first, pa.view_last, pa.view_conc) = values
            products[pid] = pa
        state.last_access = raw["a"]
        state.beacon_device = raw["d"]
        (state.email, state.opt_in, state.name, state.profile_device, state.locale,
         state.purchase_base) = raw["pf"]
        state.orders = raw["o"]
        state.orders_after_base = raw["ob"]
        state.unsubscribed = raw["u"]
        state.recent_events = dict.fromkeys(raw["e"])
        episodes = raw["ep"]
        if episodes:
            state.episodes = {rule: (episode[0], episode[1]) for rule, episode in episodes.items()}
        state.price_watch = raw["pw"]
        state.partition = raw["pt"]
        state.bounced = raw.get("bo", False)
        runs = raw.get("sc")
        if runs:
            state.runs = runs
        customer = raw.get("cu")
        if customer is not None:
            state.cust = cust.CustomerData.from_list(customer)
        return state


def consent_reason(state: MemberState) -> str | None:
    """None when a marketing mail may go to the member, else why not."""
    if state.email is None:
        return "no_profile"
    if not state.opt_in:
        return "no_consent"
    if state.unsubscribed:
        return "unsubscribed"
    if state.bounced:
        return "bounced"
    return None


def mark_unsubscribed(state: MemberState) -> None:
    """Honour an unsubscribe at once. Sticky: a later profile record with ``opt_in: true`` does not undo it,
    because shop back-ends re-send unchanged profiles and the member's explicit choice must win."""
    state.unsubscribed = True


# -- applying records ---------------------------------------------------------------------------------------
def apply_beacon(state: MemberState, beacon: Beacon) -> None:
    """Apply one (non-duplicate) beacon: last access, device, and the product action it carries."""
    ts = beacon.ts
    if state.last_access is None or ts > state.last_access:
        state.last_access = ts
    if beacon.device is not None:
        state.beacon_device = beacon.device
    kind = beacon.type
    if kind == "page_view":
        state.touched = ()
        return
    if kind == "purchase":
        _apply_purchase(state, beacon)
        return
    pid = beacon.product_id
    if pid is None:  # the contract guarantees one; tolerate rather than crash the worker
        state.touched = ()
        return
    products = state.products
    pa = products.get(pid)
    if kind == "view" or kind == "cart_add" or kind == "favorite_add":
        if pa is None:
            if len(products) >= MAX_PRODUCTS:
                _evict_oldest(products)
            pa = products[pid] = ProductActions()
        if kind == "cart_add":
            if pa.cart_first is None:
                pa.cart_first = ts
            pa.cart_last = ts
            if beacon.price is not None:
                pa.cart_price = beacon.price
            pa.cart_qty = beacon.quantity
        elif kind == "favorite_add":
            if pa.fav_first is None:
                pa.fav_first = ts
            pa.fav_last = ts
            if pa.cart_first is None:
                pa.fav_conc = ts
        else:
            if pa.view_first is None:
                pa.view_first = ts
            pa.view_last = ts
            if pa.cart_first is None and pa.fav_first is None:
                pa.view_conc = ts
    elif pa is not None:
        if kind == "cart_remove":
            pa.cart_first = pa.cart_last = pa.cart_price = pa.cart_qty = None
        else:  # favorite_remove
            pa.fav_first = pa.fav_last = pa.fav_conc = None
        if pa.cart_first is None and pa.fav_first is None and pa.view_first is None:
            del products[pid]
    state.touched = (pid,)


def _apply_purchase(state: MemberState, beacon: Beacon) -> None:
    """SPEC §11: reset ``product_ids``; else the order's items from ``orders``; else the carted products."""
    if beacon.product_ids:
        bought: list[str] = list(beacon.product_ids)
    elif beacon.order_id is not None and state.orders.get(beacon.order_id):
        bought = list(state.orders[beacon.order_id])
    else:
        bought = [pid for pid, pa in state.products.items() if pa.cart_first is not None]
    for pid in bought:
        state.products.pop(pid, None)
    order_id = beacon.order_id if beacon.order_id is not None else f"beacon:{beacon.event_id}"
    cust.on_purchase_beacon(state, order_id, beacon.ts)  # before ``orders`` learns it (see customer())
    _remember_order(state, order_id, bought)
    state.touched = tuple(bought)


def _remember_order(state: MemberState, order_id: str, items: list[str]) -> None:
    known = state.orders.get(order_id)
    if known is None:
        state.orders[order_id] = items
        state.orders_after_base += 1
    elif not known and items:
        state.orders[order_id] = items


def _evict_oldest(products: dict[str, ProductActions]) -> None:
    oldest = min(products, key=lambda pid: products[pid].last_ms())
    del products[oldest]


def apply_member(state: MemberState, update: MemberUpdate) -> None:
    """Merge a profile record field by field (absent fields keep their value)."""
    if update.email is not None:
        state.email = update.email
    if update.opt_in is not None:
        state.opt_in = update.opt_in
    if update.name is not None:
        state.name = update.name
    if update.device is not None:
        state.profile_device = update.device
    if update.locale is not None:
        state.locale = update.locale
    if update.purchase_count is not None:
        state.purchase_base = update.purchase_count
        state.orders_after_base = 0
    cust.on_profile(state, update)
    state.touched = ()


def apply_engagement(state: MemberState, record: Engagement) -> None:
    """Unsubscribes and bounces reach the member's (changelogged) state: from ``record.ts`` on, every
    marketing mail of the member is ``suppressed``. Opens and clicks are the scenario program's business."""
    if record.event == "unsubscribe":
        mark_unsubscribed(state)
    elif record.event == "bounce":
        state.bounced = True
    state.touched = ()


def apply_order(state: MemberState, update: OrderUpdate, cancelled: frozenset[str] = DEFAULT_CANCELLED) -> None:
    """Remember the order's items (for purchase beacons naming only the order id), count it once, keep the
    aggregates (``cancelled`` = shop.yaml ``cancelled_statuses``) and redeem an issued coupon it carries."""
    cust.on_order(state, update, cancelled)
    _remember_order(state, update.order_id, [item.product_id for item in update.items])
    state.touched = ()


def product_purchase_count(state: MemberState, products: frozenset[str]) -> int:
    """Orders seen, not cancelled, that contain at least one of ``products``."""
    return sum(1 for order_id, items in state.orders.items()
               if not products.isdisjoint(items) and not cust.is_cancelled(state, order_id))


def current_products(state: MemberState) -> list[dict[str, Any]]:
    """The access-log view (SPEC §2) of the products with actions in force, most recently touched first."""
    out: list[dict[str, Any]] = []
    for pid, pa in state.products.items():
        current = pa.state
        actions = [
            {"type": name, "first": first, "last": last, "current": name == current}
            for name, first, last in (
                ("cart", pa.cart_first, pa.cart_last),
                ("favorite", pa.fav_first, pa.fav_last),
                ("view", pa.view_first, pa.view_last),
            )
            if first is not None
        ]
        entry: dict[str, Any] = {"product_id": pid, "state": current, "last_access": state.last_access,
                                 "actions": actions}
        if pa.cart_first is not None:
            entry["cart_price"] = pa.cart_price
            entry["cart_quantity"] = pa.cart_qty or 1
        out.append(entry)
    out.sort(key=lambda e: (-max(a["last"] for a in e["actions"]), e["product_id"]))
    return out
