"""What a template sees: the variables of one mail, built from a decision, a member profile and products.

Every link in a mail goes through the worker's tracking endpoints (signed tokens, see ``tokens``): product
links become click redirects, the footer carries the unsubscribe link, the HTML part an open pixel.
Templates receive plain frozen records, never settings or adapters.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from kagoflow.core.catalog import ProductInfo
from kagoflow.core.decisions import Decision
from kagoflow.mail.tokens import TrackingToken, sign
from kagoflow.settings import Settings
from kagoflow.web.urls import UnsafeUrl, redirect_target

MAX_PRODUCTS = 10
"""A product block shows 3, 4 or 5 items (chosen by the template); more than this is never passed."""


@dataclass(frozen=True, slots=True)
class MemberProfile:
    """The member as the ``members`` topic last described them (the worker's profile table)."""

    member_id: str
    email: str
    name: str | None = None
    device: str | None = None
    locale: str | None = None
    opt_in: bool = False
    purchase_count: int | None = None
    order: Mapping[str, Any] | None = None
    """Scenario mails: the run's order as the worker's member state knows it
    (``kagoflow.core.scenario.order_snapshot``)."""

    @classmethod
    def from_json(cls, member_id: str, data: Mapping[str, Any]) -> MemberProfile:
        return cls(
            member_id=member_id,
            email=str(data["email"]),
            name=data.get("name"),
            device=data.get("device"),
            locale=data.get("locale"),
            opt_in=bool(data.get("opt_in", False)),
            purchase_count=data.get("purchase_count"),
            order=data.get("order") if isinstance(data.get("order"), Mapping) else None,
        )


@dataclass(frozen=True, slots=True)
class MailMember:
    member_id: str
    name: str
    """Empty when the shop does not know it."""
    display: str
    """``山田 太郎 様`` or ``お客様``: what a greeting line shows."""


@dataclass(frozen=True, slots=True)
class MailShop:
    name: str
    url: str
    """Tracked link to the shop's top page."""


@dataclass(frozen=True, slots=True)
class MailProduct:
    product_id: str
    name: str
    price: float | None
    """None when unknown: templates hide the price then."""
    was_price: float | None
    """The day's reference price when the current price is below it (price-drop mails), else None."""
    url: str
    """Tracked click link to the product page."""
    image_url: str | None


@dataclass(frozen=True, slots=True)
class MailCoupon:
    """``coupon.code`` and ``coupon.expires`` (shop-local ``YYYY-MM-DD`` or None); ``{{ coupon }}`` alone
    shows the code, as templates written before expiries did."""

    code: str
    expires: str | None = None

    def __str__(self) -> str:
        return self.code


@dataclass(frozen=True, slots=True)
class MailOrder:
    """The order a follow mail is about (scenario mails only; ``order`` is None in other mails)."""

    order_id: str
    ordered_on: str
    """Shop-local date ``YYYY-MM-DD``; ``shipped_on`` / ``delivered_on`` are empty until known."""
    shipped_on: str
    delivered_on: str
    total: float | None


def mail_order(data: Mapping[str, Any] | None) -> MailOrder | None:
    if not data:
        return None
    total = data.get("total")
    return MailOrder(order_id=str(data.get("order_id", "")), ordered_on=str(data.get("ordered_on") or ""),
                     shipped_on=str(data.get("shipped_on") or ""), delivered_on=str(data.get("delivered_on") or ""),
                     total=float(total) if isinstance(total, int | float) else None)


RECORD_FIELDS: dict[type, frozenset[str]] = {
    cls: frozenset(f.name for f in fields(cls)) for cls in (MailMember, MailShop, MailProduct, MailOrder,
                                                            MailCoupon)
}
"""Plain-data fields templates may read without the sandbox's per-access check."""


@functools.lru_cache(maxsize=16384)
def _link_target(url: str, domains: tuple[str, ...], local_mode: bool) -> str | None:
    """The click target a browser would follow for ``url`` if the redirect allows it, else None (see
    ``kagoflow.web.urls``); cached: the catalog's product URLs recur in every mail."""
    try:
        return redirect_target(url, domains=domains, local_mode=local_mode)
    except UnsafeUrl:
        return None


class Links:
    """Tracking URLs of one mail."""

    def __init__(self, settings: Settings, decision: Decision, *, sent_ms: int) -> None:
        self._settings = settings
        self._base = settings.public_base_url.rstrip("/")
        self._decision = decision
        self._sent_ms = sent_ms

    def _token(self, kind: str, url: str | None = None) -> str:
        d = self._decision
        token = TrackingToken(
            kind=kind,  # type: ignore[arg-type]
            key=d.key,
            member_id=d.member_id,
            rule_id=d.rule_id,
            sent_ms=self._sent_ms,
            url=url,
        )
        return sign(token, secret=self._settings.tracking_secret)

    @property
    def open_url(self) -> str:
        return f"{self._base}/o/{self._token('open')}"

    @property
    def unsubscribe_url(self) -> str:
        return f"{self._base}/u/{self._token('unsub')}"

    def click(self, url: str) -> str:
        """Tracked link to ``url``; a URL off the shop's domains is replaced by the shop top page."""
        settings = self._settings
        target = _link_target(url, tuple(settings.shop_domains), settings.local_mode) or settings.shop_url
        return f"{self._base}/c/{self._token('click', target)}"


def mail_products(
    decision: Decision, products: Sequence[ProductInfo], *, settings: Settings, links: Links
) -> list[MailProduct]:
    """The decision's products in decision order; a product without catalog info keeps just its id, and a
    price of 0 or less (no price known) is not shown."""
    infos = {p.product_id: p for p in products}
    shop = settings.shop_url.rstrip("/")
    out: list[MailProduct] = []
    for product_id in decision.products[:MAX_PRODUCTS]:
        info = infos.get(product_id)
        target = (info.url if info and info.url else None) or f"{shop}/products/{product_id}"
        out.append(
            MailProduct(
                product_id=product_id,
                name=(info.name if info and info.name else None) or product_id,
                price=info.price if info is not None and info.price > 0 else None,
                was_price=info.ref_price if info and info.ref_price and info.ref_price > info.price else None,
                url=links.click(target),
                image_url=info.image_url if info is not None else None,
            )
        )
    return out


def mail_context(
    decision: Decision,
    *,
    profile: MemberProfile,
    products: Sequence[ProductInfo],
    settings: Settings,
    sent_ms: int,
) -> dict[str, Any]:
    links = Links(settings, decision, sent_ms=sent_ms)
    name = " ".join((profile.name or "").split())
    return {
        "member": MailMember(
            member_id=profile.member_id, name=name, display=f"{name} 様" if name else "お客様"
        ),
        "shop": MailShop(
            name=decision.sender_name or settings.mail_sender_name, url=links.click(settings.shop_url)
        ),
        "coupon": MailCoupon(decision.coupon, decision.coupon_expires) if decision.coupon else None,
        "products": mail_products(decision, products, settings=settings, links=links),
        "order": mail_order(profile.order),
        "kind": decision.kind,
        "rule_id": decision.rule_id,
        "device": profile.device or "pc",
        "unsubscribe_url": links.unsubscribe_url,
        "open_pixel_url": links.open_url,
    }


def sample_contexts(device: str) -> list[dict[str, Any]]:
    """Contexts for the load-time template check: a full one and a sparse one (no coupon, name, prices)."""
    base = "https://track.example.com"
    full = [
        MailProduct(
            product_id=f"sku{i}",
            name=f"サンプル商品 {i}",
            price=1980.0 * i,
            was_price=2980.0 * i if i % 2 else None,
            url=f"{base}/c/sample{i}",
            image_url=f"https://shop.example.com/img/{i}.jpg",
        )
        for i in range(1, 6)
    ]
    sparse = [
        MailProduct(
            product_id="sku1", name="sku1", price=None, was_price=None, url=f"{base}/c/s", image_url=None
        )
    ]
    common = {
        "shop": MailShop(name="サンプルショップ", url=f"{base}/c/shop"),
        "kind": "abandonment",
        "rule_id": "sample",
        "device": device,
        "unsubscribe_url": f"{base}/u/sample",
        "open_pixel_url": f"{base}/o/sample",
    }
    return [
        {
            **common,
            "member": MailMember("m1", "山田 太郎", "山田 太郎 様"),
            "coupon": MailCoupon("SAMPLE10", "2026-12-31"),
            "products": full,
            "order": MailOrder("A-1001", "2026-11-24", "2026-11-25", "2026-11-27", 5980.0),
        },
        {**common, "member": MailMember("m2", "", "お客様"), "coupon": None, "products": sparse, "order": None},
    ]
