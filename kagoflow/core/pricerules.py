"""Price-drop and back-in-stock rules (SPEC §5, §10): the parsed, validated form of one rule file.

``kagoflow.core.rules.load_rules`` hands every file whose ``kind`` is ``price_drop`` or ``restock`` to
``parse_price_rule``. Validation is strict because a silently ignored typo in a rule means mails that never
go out (or go to everyone): every unknown key, wrong-kind condition, out-of-range value or malformed time
raises ``RuleError`` naming the file, the key (dotted path) and the value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from kagoflow.core.coupons import CouponSpec, parse_coupon
from kagoflow.core.errors import RuleError
from kagoflow.core.memberfilters import MemberFilter, parse_member_filters
from kagoflow.core.shoptime import next_local_time_after
from kagoflow.core.variants import Measurement, parse_measurement

PriceRuleKind = Literal["price_drop", "restock"]
PRICE_RULE_KINDS: frozenset[str] = frozenset({"price_drop", "restock"})
WATCH_STATES: frozenset[str] = frozenset({"cart", "favorite", "view"})

_ID = re.compile(r"[a-z0-9][a-z0-9-]*\Z")
_HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)\Z")
_TOP_KEYS = frozenset(
    {"id", "kind", "watch", "when", "send", "template", "sender_name", "enabled", "products", "filters",
     "coupon", "split", "holdout"}
)
_REQUIRED = ("id", "kind", "watch", "when", "send", "template")
_PRICE_KEYS = frozenset({"price_at_most", "drop_yen", "drop_percent"})
_STOCK_KEYS = frozenset({"restocked_at_least", "stock_at_most"})


@dataclass(frozen=True, slots=True)
class PriceRule:
    """One ``price_drop`` / ``restock`` rule.

    Exactly one condition family is set: ``price_at_most``; or ``drop_yen`` and/or ``drop_percent``
    (price_drop); or exactly one of ``restocked_at_least`` / ``stock_at_most`` (restock).
    ``send_at`` is the shop-local (hour, minute) of the send; ``None`` means ``send: {immediately: true}``.
    ``include`` / ``exclude`` are the optional product filter (seed 000: 商品選択); empty = all products.
    """

    id: str
    kind: PriceRuleKind
    watch: frozenset[str]
    template: str
    send_at: tuple[int, int] | None = None
    price_at_most: float | None = None
    drop_yen: float | None = None
    drop_percent: float | None = None
    restocked_at_least: int | None = None
    stock_at_most: int | None = None
    sender_name: str | None = None
    enabled: bool = True
    include: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()
    file: str = ""
    filters: tuple[MemberFilter, ...] = ()
    """§13 member filters (checked before consent by ``kagoflow.core.measure``)."""
    coupon: CouponSpec | None = None
    measurement: Measurement | None = None
    """Templates (A/B), split and holdout; None = just ``template``."""

    @property
    def immediately(self) -> bool:
        return self.send_at is None

    def concerns(self, product_id: str) -> bool:
        """Whether the product filter lets ``product_id`` through."""
        if self.include and product_id not in self.include:
            return False
        return product_id not in self.exclude

    def send_time(self, change_ms: int, tz: ZoneInfo) -> int:
        """The change time when immediate, else the first shop-local ``HH:MM`` strictly after it."""
        if self.send_at is None:
            return change_ms
        return next_local_time_after(change_ms, self.send_at, tz)

    def describe(self) -> str:
        """One line for ``kagoflow rules check``."""
        if self.price_at_most is not None:
            when = f"price <= {_num(self.price_at_most)} yen"
        elif self.kind == "price_drop":
            parts = []
            if self.drop_yen is not None:
                parts.append(f">= {_num(self.drop_yen)} yen")
            if self.drop_percent is not None:
                parts.append(f">= {_num(self.drop_percent)} %")
            when = "drop vs start of day " + " or ".join(parts)
        elif self.restocked_at_least is not None:
            when = f"stock 0 -> >= {self.restocked_at_least}"
        else:
            when = f"stock falls to 1..{self.stock_at_most}"
        send = "immediately" if self.send_at is None else "next {:02d}:{:02d}".format(*self.send_at)
        watch = ",".join(sorted(self.watch))
        products = ""
        if self.include:
            products += f" only {','.join(sorted(self.include))};"
        if self.exclude:
            products += f" except {','.join(sorted(self.exclude))};"
        state = "" if self.enabled else "; disabled"
        extra = "".join(f" {f.describe()}" for f in self.filters)
        extra = f"; filters:{extra}" if extra else ""
        if self.measurement is not None and (self.measurement.is_ab or self.measurement.holdout):
            extra += f"; {self.measurement.describe(with_single=False)}"
        if self.coupon is not None:
            extra += f"; {self.coupon.describe()}"
        return (
            f"{self.id}: {self.kind} on {watch},{products} when {when}, send {send}; "
            f"template {self.template}{extra}{state}"
        )


def parse_price_rule(data: Mapping[str, Any], *, file: str, templates_dir: Path | None = None,
                     rules_dir: Path | None = None) -> PriceRule:
    """Validate one rule file's mapping; raise ``RuleError(file, key, value, problem)`` at the first fault."""
    if not isinstance(data, Mapping):
        raise RuleError(file, "", data, "a rule file must be a mapping")
    for key in data:
        if key not in _TOP_KEYS:
            raise RuleError(file, str(key), data[key], "unknown key")
    for key in _REQUIRED:
        if key not in data:
            raise RuleError(file, key, None, "missing required key")

    rule_id = data["id"]
    if not isinstance(rule_id, str) or not _ID.match(rule_id):
        raise RuleError(file, "id", rule_id, "must match [a-z0-9-] (lower-case letters, digits, '-')")
    kind = data["kind"]
    if kind not in PRICE_RULE_KINDS:
        raise RuleError(file, "kind", kind, "must be price_drop or restock")

    when = _parse_when(data["when"], kind=kind, file=file)
    include, exclude = _parse_products(data.get("products", "all"), file=file)
    sender_name = data.get("sender_name")
    if sender_name is not None and (not isinstance(sender_name, str) or not sender_name.strip()):
        raise RuleError(file, "sender_name", sender_name, "must be a non-empty string")
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RuleError(file, "enabled", enabled, "must be true or false")

    measurement = parse_measurement(data, file=file, templates_dir=templates_dir)
    coupon = None if data.get("coupon") is None else parse_coupon(data["coupon"], file=file, rules_dir=rules_dir)
    return PriceRule(
        id=rule_id,
        kind=kind,
        watch=_parse_watch(data["watch"], file=file),
        template=measurement.templates[0],
        measurement=measurement,
        filters=parse_member_filters(data.get("filters"), file=file),
        coupon=coupon,
        send_at=_parse_send(data["send"], file=file),
        sender_name=sender_name,
        enabled=enabled,
        include=include,
        exclude=exclude,
        file=file,
        **when,
    )


def parse_hhmm(value: object, *, file: str, key: str) -> tuple[int, int]:
    """``"HH:MM"`` (24 h, two-digit hour) → (hour, minute)."""
    if isinstance(value, int) and not isinstance(value, bool):
        # PyYAML (YAML 1.1) reads an unquoted 10:00 as the base-60 integer 600.
        raise RuleError(file, key, value, 'times of day must be quoted, e.g. "10:00"')
    match = _HHMM.match(value) if isinstance(value, str) else None
    if match is None:
        raise RuleError(file, key, value, "must be a time of day HH:MM (00:00..23:59)")
    return int(match.group(1)), int(match.group(2))


def _parse_watch(value: object, *, file: str) -> frozenset[str]:
    if not isinstance(value, list) or not value:
        raise RuleError(file, "watch", value, "must be a non-empty list of cart, favorite, view")
    seen: set[str] = set()
    for index, entry in enumerate(value):
        if entry not in WATCH_STATES:
            raise RuleError(file, f"watch.{index}", entry, "must be one of cart, favorite, view")
        if entry in seen:
            raise RuleError(file, f"watch.{index}", entry, "listed twice")
        seen.add(entry)
    return frozenset(seen)


def _parse_when(value: object, *, kind: str, file: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not value:
        raise RuleError(file, "when", value, "must be a mapping with the rule's condition")
    allowed, other = (_PRICE_KEYS, _STOCK_KEYS) if kind == "price_drop" else (_STOCK_KEYS, _PRICE_KEYS)
    for key, item in value.items():
        if key in other:
            raise RuleError(file, f"when.{key}", item, f"not a condition of a {kind} rule")
        if key not in allowed:
            raise RuleError(file, f"when.{key}", item, "unknown condition")
    out: dict[str, Any] = {}
    if kind == "price_drop":
        if "price_at_most" in value:
            if len(value) > 1:
                extra = next(k for k in value if k != "price_at_most")
                raise RuleError(file, f"when.{extra}", value[extra],
                                "price_at_most cannot be combined with drop_yen / drop_percent")
            out["price_at_most"] = _number(value["price_at_most"], file=file, key="when.price_at_most")
        if "drop_yen" in value:
            out["drop_yen"] = _number(value["drop_yen"], file=file, key="when.drop_yen")
        if "drop_percent" in value:
            pct = _number(value["drop_percent"], file=file, key="when.drop_percent")
            if pct > 100:
                raise RuleError(file, "when.drop_percent", value["drop_percent"], "must be at most 100")
            out["drop_percent"] = pct
        return out
    if len(value) > 1:
        raise RuleError(file, "when.stock_at_most", value["stock_at_most"],
                        "give either restocked_at_least or stock_at_most, not both")
    for key in _STOCK_KEYS & value.keys():
        count = value[key]
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise RuleError(file, f"when.{key}", count, "must be a whole number >= 1")
        out[key] = count
    return out


def _number(value: object, *, file: str, key: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < float("inf"):
        raise RuleError(file, key, value, "must be a number > 0")
    return float(value)


def _parse_send(value: object, *, file: str) -> tuple[int, int] | None:
    if not isinstance(value, Mapping) or len(value) != 1:
        raise RuleError(file, "send", value, 'must be {at: "HH:MM"} or {immediately: true}')
    (key, item), = value.items()
    if key == "at":
        return parse_hhmm(item, file=file, key="send.at")
    if key == "immediately":
        if item is not True:
            raise RuleError(file, "send.immediately", item, 'must be true (or use send: {at: "HH:MM"})')
        return None
    raise RuleError(file, f"send.{key}", item, "unknown key (use at or immediately)")


def _parse_template(value: object, *, file: str, templates_dir: Path | None) -> str:
    if not isinstance(value, str) or not value.strip() or "/" in value or value.startswith("."):
        raise RuleError(file, "template", value, "must be a template name")
    if templates_dir is not None and not (templates_dir / value).is_dir():
        raise RuleError(file, "template", value, f"no such template in {templates_dir}")
    return value


def _parse_products(value: object, *, file: str) -> tuple[frozenset[str], frozenset[str]]:
    if value == "all":
        return frozenset(), frozenset()
    if not isinstance(value, Mapping) or not value:
        raise RuleError(file, "products", value, "must be all or {include: [...]} and/or {exclude: [...]}")
    lists: dict[str, frozenset[str]] = {}
    for key, item in value.items():
        if key not in ("include", "exclude"):
            raise RuleError(file, f"products.{key}", item, "unknown key (use include or exclude)")
        # An unquoted numeric SKU arrives from YAML as an int; product ids are strings on the wire.
        if not isinstance(item, list) or not item or not all(
            (isinstance(p, str) and p) or (isinstance(p, int) and not isinstance(p, bool)) for p in item
        ):
            raise RuleError(file, f"products.{key}", item, "must be a non-empty list of product ids")
        lists[key] = frozenset(str(p) for p in item)
    return lists.get("include", frozenset()), lists.get("exclude", frozenset())


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)
