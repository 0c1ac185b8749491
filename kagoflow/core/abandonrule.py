"""The abandonment rule (SPEC §3, §10): its parsed form and the strict parser of one rule file.

Strict because a silently ignored typo in a rule file means mails that never go out, or go to everyone:
every unknown key, wrong type or out-of-range value raises ``RuleError(file, key, value, problem)`` with
the dotted key path, so the operator can fix the file from the one-line message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kagoflow.core.coupons import CouponSpec, parse_coupon
from kagoflow.core.errors import RuleError
from kagoflow.core.events import DEVICES
from kagoflow.core.memberfilters import MEMBER_FILTER_KEYS, MemberFilter, parse_member_filter
from kagoflow.core.variants import Measurement, parse_measurement, variant_of

Trigger = Literal["cart", "favorite", "view"]
Clock = Literal["action", "last_access"]
TRIGGERS: tuple[str, ...] = ("cart", "favorite", "view")
CLOCKS: tuple[str, ...] = ("action", "last_access")
MAX_AFTER_MS = 12 * 3600 * 1000
MAX_DAYS = 365

RULE_ID = re.compile(r"[a-z0-9][a-z0-9-]*\Z")
_HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)\Z")
_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?\Z")
"""Seconds exist for demos and tests, which lower the 15-minute floor (``KAGOFLOW_MIN_DELAY_SECONDS``)."""
_TOP_KEYS = ("id", "kind", "trigger", "products", "clock", "send", "filters", "template", "sender_name",
             "coupon", "enabled", "split", "holdout")
_REQUIRED = ("id", "kind", "trigger", "send")
_FILTER_KEYS = ("purchase_count", "devices", "min_cart_amount", "product_purchase_count", *MEMBER_FILTER_KEYS)
Timing = tuple[int | None, int | None, tuple[int, int] | None]
"""(after_ms, days, at) of one ``send``."""


@dataclass(frozen=True, slots=True)
class CountRange:
    """Inclusive range; ``None`` = unbounded on that side."""

    min: int | None = None
    max: int | None = None

    def contains(self, value: int) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self) -> str:
        return f"{'' if self.min is None else self.min}..{'' if self.max is None else self.max}"


@dataclass(frozen=True, slots=True)
class Filters:
    """Optional rule filters, checked at the due time in this order (first failing one is reported)."""

    purchase_count: CountRange | None = None
    devices: frozenset[str] | None = None
    min_cart_amount: float | None = None
    product_purchase_count: tuple[frozenset[str], CountRange] | None = None
    member: tuple[MemberFilter, ...] = ()
    """The §13 member filters."""
    order: tuple[str, ...] = ()
    """Every filter's name in file order: the first failing one is reported (SPEC §14 fine points)."""

    def describe(self) -> list[str]:
        parts: list[str] = []
        if self.purchase_count is not None:
            parts.append(f"purchase_count={self.purchase_count.describe()}")
        if self.devices is not None:
            devices = (d for d in ("pc", "smartphone", "mobile") if d in self.devices)
            parts.append("devices=" + ",".join(devices))
        if self.min_cart_amount is not None:
            parts.append(f"min_cart_amount={_num(self.min_cart_amount)}")
        if self.product_purchase_count is not None:
            products, count = self.product_purchase_count
            parts.append(f"product_purchase_count({','.join(sorted(products))})={count.describe()}")
        parts += [f.describe() for f in self.member]
        if self.member and self.order:  # with §13 filters: file order, the order they are checked in
            rank = {name: i for i, name in enumerate(self.order)}
            parts.sort(key=lambda part: rank.get(part.split("=")[0].split("(")[0], len(rank)))
        return parts


@dataclass(frozen=True, slots=True)
class AbandonmentRule:
    """One abandonment rule. Exactly one of ``after_ms`` or (``days``, ``at``) is set."""

    id: str
    trigger: Trigger
    template: str
    clock: Clock = "action"
    include: frozenset[str] | None = None
    """Only these products (``None`` = all products)."""
    exclude: frozenset[str] = frozenset()
    after_ms: int | None = None
    days: int | None = None
    at: tuple[int, int] | None = None
    filters: Filters = Filters()
    sender_name: str | None = None
    coupon: CouponSpec | None = None
    enabled: bool = True
    file: str = ""
    kind: Literal["abandonment"] = "abandonment"
    measurement: Measurement | None = None
    """Templates (A/B), split and holdout; None = just ``template``."""
    send_b: Timing | None = None
    """The B timing of a send-time test (``after_ms``/``days``/``at`` are A's)."""

    def timing(self, member_id: str) -> Timing:
        """The member's (after_ms, days, at): the B timing for B members of a send-time test."""
        measurement = self.measurement
        if self.send_b is not None and measurement is not None and variant_of(
                member_id, self.id, measurement.split) == "B":
            return self.send_b
        return self.after_ms, self.days, self.at

    def concerns(self, product_id: str) -> bool:
        """Whether the product filter lets ``product_id`` through."""
        if self.include is not None and product_id not in self.include:
            return False
        return product_id not in self.exclude

    def describe(self) -> str:
        products = "all products" if self.include is None else "products " + ",".join(sorted(self.include))
        if self.exclude:
            products += " except " + ",".join(sorted(self.exclude))
        anchor = "last access" if self.clock == "last_access" else "the action"
        if self.after_ms is not None:
            when = f"{format_duration(self.after_ms)} after {anchor}"
        else:
            assert self.days is not None and self.at is not None
            days = f"{self.days} day{'s' if self.days > 1 else ''}"
            when = f"{days} after {anchor} at {self.at[0]:02d}:{self.at[1]:02d}"
        parts = [f"{self.id}: abandonment on {self.trigger}, {products}, {when}"]
        filters = self.filters.describe()
        parts.append("filters: " + " ".join(filters) if filters else "no filters")
        if self.measurement is None or not self.measurement.is_ab:
            parts.append(f"template {self.template}")
        if self.send_b is not None:
            b_after, b_days, b_at = self.send_b
            split = self.measurement.split if self.measurement else 50
            b_when = (format_duration(b_after) if b_after is not None
                      else f"{b_days} days at {b_at[0]:02d}:{b_at[1]:02d}" if b_at else "")
            parts.append(f"send-time test B: {b_when} (A {split} %)")
        if self.measurement is not None and (self.measurement.is_ab or self.measurement.holdout):
            parts.append(self.measurement.describe(with_single=False))
        if self.coupon:
            parts.append(self.coupon.describe())
        if self.sender_name:
            parts.append(f"sender {self.sender_name}")
        line = "; ".join(parts)
        return line if self.enabled else line + " (disabled)"


def parse_abandonment_rule(
    data: Mapping[str, Any], *, file: str, templates_dir: Path | None = None, min_delay_seconds: int = 900,
    rules_dir: Path | None = None,
) -> AbandonmentRule:
    """Validate one rule file's mapping; raises ``RuleError`` on the first fault."""
    _no_unknown_keys(data, _TOP_KEYS, file=file, prefix="")
    for key in _REQUIRED:
        if key not in data:
            raise RuleError(file, key, None, "missing required key")
    rule_id = data["id"]
    if not isinstance(rule_id, str) or not RULE_ID.match(rule_id):
        raise RuleError(file, "id", rule_id, "must match [a-z0-9-] (lower-case letters, digits, '-')")
    if data["kind"] != "abandonment":
        raise RuleError(file, "kind", data["kind"], "must be abandonment, price_drop or restock")
    trigger = data["trigger"]
    if trigger not in TRIGGERS:
        raise RuleError(file, "trigger", trigger, "unknown trigger (use cart, favorite or view)")
    clock = data.get("clock", "action")
    if clock not in CLOCKS:
        raise RuleError(file, "clock", clock, "must be action or last_access")
    include, exclude = parse_products(data.get("products", "all"), file=file)
    send = data["send"]
    send_b = None
    if isinstance(send, list):
        if len(send) != 2:
            raise RuleError(file, "send", send, "a send-time test lists exactly two timings")
        after_ms, days, at = _parse_send(send[0], file=file, min_delay_seconds=min_delay_seconds, key="send.0")
        send_b = _parse_send(send[1], file=file, min_delay_seconds=min_delay_seconds, key="send.1")
    else:
        after_ms, days, at = _parse_send(send, file=file, min_delay_seconds=min_delay_seconds)
    measurement = parse_measurement(data, file=file, templates_dir=templates_dir, default_template=trigger,
                                    ab_allowed=send_b is None)
    coupon = None if data.get("coupon") is None else parse_coupon(data["coupon"], file=file, rules_dir=rules_dir)
    return AbandonmentRule(
        id=rule_id,
        trigger=trigger,
        template=measurement.templates[0],
        measurement=measurement,
        send_b=send_b,
        clock=clock,
        include=include,
        exclude=exclude,
        after_ms=after_ms,
        days=days,
        at=at,
        filters=_parse_filters(data.get("filters"), file=file),
        sender_name=_optional_text(data, "sender_name", file=file),
        coupon=coupon,
        enabled=_enabled(data.get("enabled", True), file=file),
        file=file,
    )


def parse_duration(value: object, *, file: str, key: str) -> int:
    """``15m``, ``1h30m``, ``12h`` → milliseconds (hours and minutes only)."""
    match = _DURATION.match(value) if isinstance(value, str) and value else None
    if match is None or match.groups() == (None, None, None):
        raise RuleError(file, key, value, "must be a duration like 15m, 1h30m or 12h")
    hours, minutes, seconds = (int(group or 0) for group in match.groups())
    return ((hours * 60 + minutes) * 60 + seconds) * 1000


def format_duration(ms: int) -> str:
    if ms % 60_000:
        return f"{ms // 1000}s"
    minutes = ms // 60_000
    hours, minutes = divmod(minutes, 60)
    if hours and minutes:
        return f"{hours}h{minutes}m"
    return f"{hours}h" if hours else f"{minutes}m"


def parse_hhmm(value: object, *, file: str, key: str) -> tuple[int, int]:
    match = _HHMM.match(value) if isinstance(value, str) else None
    if match is None:
        raise RuleError(file, key, value, "must be a time of day HH:MM (00:00..23:59)")
    return int(match.group(1)), int(match.group(2))


def parse_products(value: object, *, file: str) -> tuple[frozenset[str] | None, frozenset[str]]:
    """``all`` or ``{include: [...]}`` and/or ``{exclude: [...]}`` → (include or None, exclude)."""
    if value == "all":
        return None, frozenset()
    if not isinstance(value, Mapping) or not value:
        raise RuleError(file, "products", value, "must be all or {include: [...]} and/or {exclude: [...]}")
    _no_unknown_keys(value, ("include", "exclude"), file=file, prefix="products.")
    include = exclude = None
    if "include" in value:
        include = _product_list(value["include"], file=file, key="products.include")
    if "exclude" in value:
        exclude = _product_list(value["exclude"], file=file, key="products.exclude")
    if include is not None and exclude is not None and include & exclude:
        both = sorted(include & exclude)
        raise RuleError(file, "products.exclude", both, "listed in both include and exclude")
    return include, exclude or frozenset()


def parse_template(value: object, *, file: str, templates_dir: Path | None) -> str:
    """A template named X exists iff the directory ``templates_dir / X`` exists (checked when given)."""
    if not isinstance(value, str) or not value.strip() or any(c in value for c in "/\\") or value[0] == ".":
        raise RuleError(file, "template", value, "must be a template name")
    if templates_dir is not None and not (templates_dir / value).is_dir():
        raise RuleError(file, "template", value, f"unknown template (no directory {templates_dir / value})")
    return value


def _parse_send(value: object, *, file: str, min_delay_seconds: int, key: str = "send") -> Timing:
    if not isinstance(value, Mapping) or not value:
        raise RuleError(file, key, value, 'must be {after: 1h} or {days: 1, at: "09:00"} (or a list of two)')
    _no_unknown_keys(value, ("after", "days", "at"), file=file, prefix=f"{key}.")
    if "after" in value:
        if len(value) > 1:
            other = next(k for k in value if k != "after")
            raise RuleError(file, f"{key}.{other}", value[other], f"cannot be combined with {key}.after")
        after_ms = parse_duration(value["after"], file=file, key=f"{key}.after")
        if after_ms < min_delay_seconds * 1000:
            raise RuleError(file, f"{key}.after", value["after"],
                            f"must be at least {format_duration(min_delay_seconds * 1000)}")
        if after_ms > MAX_AFTER_MS:
            raise RuleError(file, f"{key}.after", value["after"],
                            'must be at most 12h (use send: {days: N, at: "HH:MM"} for later sends)')
        return after_ms, None, None
    for name in ("days", "at"):
        if name not in value:
            raise RuleError(file, f"{key}.{name}", None, "missing (send needs after, or days and at)")
    days = value["days"]
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_DAYS:
        raise RuleError(file, f"{key}.days", days, f"must be a whole number of days, 1..{MAX_DAYS}")
    return None, days, parse_hhmm(value["at"], file=file, key=f"{key}.at")


def _parse_filters(value: object, *, file: str) -> Filters:
    if value is None:
        return Filters()
    if not isinstance(value, Mapping):
        raise RuleError(file, "filters", value, "must be a mapping of filters")
    _no_unknown_keys(value, _FILTER_KEYS, file=file, prefix="filters.")
    member = tuple(parse_member_filter(str(name), raw, file=file) for name, raw in value.items()
                   if name in MEMBER_FILTER_KEYS)
    purchase_count = None
    if "purchase_count" in value:
        purchase_count = _count_range(value["purchase_count"], file=file, key="filters.purchase_count")
    devices = None
    if "devices" in value:
        raw = value["devices"]
        if not isinstance(raw, list) or not raw:
            raise RuleError(file, "filters.devices", raw, "must be a non-empty list of pc/smartphone/mobile")
        for index, device in enumerate(raw):
            if device not in DEVICES:
                raise RuleError(file, f"filters.devices.{index}", device, "must be pc, smartphone or mobile")
        devices = frozenset(raw)
    min_cart_amount = None
    if "min_cart_amount" in value:
        raw = value["min_cart_amount"]
        if not isinstance(raw, int | float) or isinstance(raw, bool) or not 0 <= raw < float("inf"):
            raise RuleError(file, "filters.min_cart_amount", raw, "must be an amount in yen >= 0")
        min_cart_amount = float(raw)
    product_purchase_count = None
    if "product_purchase_count" in value:
        product_purchase_count = parse_product_purchase_count(
            value["product_purchase_count"], file=file, key="filters.product_purchase_count")
    return Filters(purchase_count, devices, min_cart_amount, product_purchase_count, member,
                   tuple(str(name) for name in value))


def parse_product_purchase_count(raw: object, *, file: str, key: str) -> tuple[frozenset[str], CountRange]:
    """``{products: [sku, ...], min: N, max: N}`` (abandonment filters, scenario start conditions)."""
    if not isinstance(raw, Mapping) or "products" not in raw:
        raise RuleError(file, key, raw, "must be {products: [sku, ...], min: N, max: N}")
    _no_unknown_keys(raw, ("products", "min", "max"), file=file, prefix=key + ".")
    products = _product_list(raw["products"], file=file, key=key + ".products")
    bounds = {k: v for k, v in raw.items() if k != "products"}
    return products, _count_range(bounds, file=file, key=key)


def _count_range(value: object, *, file: str, key: str) -> CountRange:
    if not isinstance(value, Mapping) or not value:
        raise RuleError(file, key, value, "must be {min: N} and/or {max: N}")
    _no_unknown_keys(value, ("min", "max"), file=file, prefix=key + ".")
    bounds: dict[str, int] = {}
    for name, bound in value.items():
        if not isinstance(bound, int) or isinstance(bound, bool) or bound < 0:
            raise RuleError(file, f"{key}.{name}", bound, "must be a whole number >= 0")
        bounds[name] = bound
    if "min" in bounds and "max" in bounds and bounds["min"] > bounds["max"]:
        raise RuleError(file, f"{key}.max", bounds["max"], f"must be >= min ({bounds['min']})")
    return CountRange(bounds.get("min"), bounds.get("max"))


def _product_list(value: object, *, file: str, key: str) -> frozenset[str]:
    # An unquoted numeric SKU arrives from YAML as an int; product ids are strings on the wire.
    if not isinstance(value, list) or not value:
        raise RuleError(file, key, value, "must be a non-empty list of product ids")
    for index, pid in enumerate(value):
        is_int = isinstance(pid, int) and not isinstance(pid, bool)
        if not (is_int or (isinstance(pid, str) and pid.strip())):
            raise RuleError(file, f"{key}.{index}", pid, "must be a product id")
    return frozenset(str(pid) for pid in value)


def _optional_text(data: Mapping[str, Any], key: str, *, file: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise RuleError(file, key, value, "must be a non-empty string")
    return value


def _enabled(value: object, *, file: str) -> bool:
    if not isinstance(value, bool):
        raise RuleError(file, "enabled", value, "must be true or false")
    return value


def _no_unknown_keys(data: Mapping[Any, Any], allowed: tuple[str, ...], *, file: str, prefix: str) -> None:
    for key in data:
        if key not in allowed:
            raise RuleError(file, f"{prefix}{key}", data[key], f"unknown key (allowed: {', '.join(allowed)})")


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)
