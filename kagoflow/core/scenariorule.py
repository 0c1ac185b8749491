"""The scenario rule (SPEC §12): its parsed form and the strict parser of one ``kind: scenario`` file.

Every fault raises ``RuleError(file, dotted key, value, problem)`` like the other kinds (keys of steps are
written ``steps.<index>.<key>``, counting from 0 as YAML lists do).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kagoflow.core.abandonrule import (
    RULE_ID,
    CountRange,
    _count_range,
    _enabled,
    _no_unknown_keys,
    _optional_text,
    _product_list,
    parse_hhmm,
    parse_product_purchase_count,
    parse_template,
)
from kagoflow.core.coupons import CouponSpec, parse_coupon
from kagoflow.core.errors import RuleError
from kagoflow.core.memberfilters import MemberFilter, parse_member_filters
from kagoflow.core.variants import parse_measurement

Anchor = Literal["ordered", "shipped", "delivered", "previous"]
ANCHORS: tuple[str, ...] = ("ordered", "shipped", "delivered", "previous")
WHILE: tuple[str, ...] = ("always", "unopened", "unclicked", "not_purchased", "coupon_unused")
MAX_STEPS = 7
DAY_MS = 86_400_000
MAX_AFTER_MS = 90 * DAY_MS
MAX_DAYS = 365
DEFAULT_LATE_AFTER_MS = 3 * DAY_MS
DEFAULT_ANCHOR_WAIT_MS = 30 * DAY_MS
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?\Z")
_TOP_KEYS = ("id", "kind", "priority", "start", "end", "late_after", "anchor_wait", "steps", "sender_name",
             "coupon", "enabled", "holdout")
_START_KEYS = ("status", "products", "order_count", "min_amount", "coupons", "product_purchase_count", "filters")
_STEP_KEYS = ("send", "template", "split", "repeat")


@dataclass(frozen=True, slots=True)
class Repeat:
    """``repeat: {while: C, times: K, then: next|end, products: [...]}`` of one step."""

    while_: str
    times: int
    then: Literal["next", "end"] = "next"
    products: frozenset[str] | None = None
    """``not_purchased`` only: the products that count (None = any product)."""


@dataclass(frozen=True, slots=True)
class Step:
    """One step. Exactly one of ``after_ms`` or (``days``, ``at``) is set."""

    anchor: Anchor
    templates: tuple[str, ...]
    """One template, or two for an A/B test (A first)."""
    after_ms: int | None = None
    days: int | None = None
    at: tuple[int, int] | None = None
    split: int = 50
    """Percent of members that get template A."""
    repeat: Repeat | None = None

    def describe(self) -> str:
        if self.after_ms is not None:
            when = f"{format_span(self.after_ms)} after {self.anchor}"
        else:
            assert self.at is not None
            when = f"{self.days} day(s) after {self.anchor} at {self.at[0]:02d}:{self.at[1]:02d}"
        template = self.templates[0] if len(self.templates) == 1 else (
            f"A/B {self.templates[0]} {self.split}% / {self.templates[1]} {100 - self.split}%")
        line = f"{when}: {template}"
        if self.repeat is not None:
            products = f" of {','.join(sorted(self.repeat.products))}" if self.repeat.products else ""
            line += (f"; repeated while {self.repeat.while_}{products}, up to {self.repeat.times} sends, "
                     f"then {self.repeat.then}")
        return line


@dataclass(frozen=True, slots=True)
class ScenarioRule:
    id: str
    steps: tuple[Step, ...]
    start_status: frozenset[str]
    priority: int = 0
    include: frozenset[str] | None = None
    exclude: frozenset[str] = frozenset()
    order_count: CountRange | None = None
    min_amount: float | None = None
    coupons: frozenset[str] | None = None
    product_purchase_count: tuple[frozenset[str], CountRange] | None = None
    end_status: frozenset[str] = frozenset()
    end_purchased: frozenset[str] | Literal["any"] | None = None
    late_after_ms: int = DEFAULT_LATE_AFTER_MS
    anchor_wait_ms: int = DEFAULT_ANCHOR_WAIT_MS
    sender_name: str | None = None
    coupon: CouponSpec | None = None
    """Any form of SPEC §13; the coupon step gives each ``sent`` its code (``kagoflow.core.couponing``)."""
    enabled: bool = True
    file: str = ""
    kind: Literal["scenario"] = "scenario"
    start_filters: tuple[MemberFilter, ...] = ()
    """``start.filters``: member filters of SPEC §13, evaluated at the start."""
    holdout: int = 0
    """Percent of members held out (SPEC §14): their sends become ``held_out`` (``kagoflow.core.measure``)."""

    @property
    def template(self) -> str:
        """The first step's template (what one-template tools such as preview show by default)."""
        return self.steps[0].templates[0]

    def describe(self) -> str:
        """A header line, then one line per step."""
        start = [f"status {','.join(sorted(self.start_status))}"]
        if self.include is not None:
            start.append("products " + ",".join(sorted(self.include)))
        if self.exclude:
            start.append("not " + ",".join(sorted(self.exclude)))
        if self.order_count is not None:
            start.append(f"order_count={self.order_count.describe()}")
        if self.min_amount is not None:
            start.append(f"min_amount={self.min_amount:g}")
        if self.coupons is not None:
            start.append("coupons " + ",".join(sorted(self.coupons)))
        if self.product_purchase_count is not None:
            products, count = self.product_purchase_count
            start.append(f"product_purchase_count({','.join(sorted(products))})={count.describe()}")
        end = []
        if self.end_status:
            end.append("status " + ",".join(sorted(self.end_status)))
        if self.end_purchased is not None:
            end.append("purchase of " + ("anything" if self.end_purchased == "any"
                                         else ",".join(sorted(self.end_purchased))))
        head = (f"{self.id}: scenario, priority {self.priority}, starts on an order with {' '.join(start)}; "
                f"ends on {' or '.join(end) if end else 'its last step'}; late after "
                f"{format_span(self.late_after_ms)}, anchor wait {format_span(self.anchor_wait_ms)}")
        if self.coupon:
            head += f"; {self.coupon.describe()}"
        if not self.enabled:
            head += " (disabled)"
        lines = [head] + [f"  step {n}: {step.describe()}" for n, step in enumerate(self.steps, 1)]
        return "\n".join(lines)


def parse_span(value: object, *, file: str, key: str, seconds: bool) -> int:
    """``[Nd][Nh][Nm][Ns]`` → ms (elapsed time, 1d = 24 h); ``s`` only when ``seconds`` (demo/test floors)."""
    match = _DURATION.match(value) if isinstance(value, str) and value else None
    if match is None or match.groups() == (None, None, None, None):
        raise RuleError(file, key, value, "must be a duration like 30m, 12h, 2d or 1d12h")
    days, hours, minutes, secs = (int(group or 0) for group in match.groups())
    if match.group(4) is not None and not seconds:
        raise RuleError(file, key, value, "seconds are for demos only (KAGOFLOW_MIN_DELAY_SECONDS below 900)")
    return (((days * 24 + hours) * 60 + minutes) * 60 + secs) * 1000


def format_span(ms: int) -> str:
    parts = []
    for unit, size in (("d", DAY_MS), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        count, ms = divmod(ms, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0m"


def parse_scenario_rule(
    data: Mapping[str, Any], *, file: str, templates_dir: Path | None = None, min_delay_seconds: int = 900,
    rules_dir: Path | None = None,
) -> ScenarioRule:
    """Validate one scenario file's mapping; raises ``RuleError`` on the first fault."""
    _no_unknown_keys(data, _TOP_KEYS, file=file, prefix="")
    for key in ("id", "kind", "start", "steps"):
        if key not in data:
            raise RuleError(file, key, None, "missing required key")
    rule_id = data["id"]
    if not isinstance(rule_id, str) or not RULE_ID.match(rule_id):
        raise RuleError(file, "id", rule_id, "must match [a-z0-9-] (lower-case letters, digits, '-')")
    priority = data.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise RuleError(file, "priority", priority, "must be a whole number (higher wins)")
    seconds = min_delay_seconds < 900
    coupon = None if data.get("coupon") is None else parse_coupon(data["coupon"], file=file, rules_dir=rules_dir)
    steps = _parse_steps(data["steps"], file=file, templates_dir=templates_dir, seconds=seconds,
                         has_coupon=coupon is not None)
    start = _parse_start(data["start"], file=file)
    end_status, end_purchased = _parse_end(data.get("end"), file=file)
    late_after = _bounded_span(data, "late_after", DEFAULT_LATE_AFTER_MS, file=file)
    anchor_wait = _bounded_span(data, "anchor_wait", DEFAULT_ANCHOR_WAIT_MS, file=file)
    return ScenarioRule(
        id=rule_id, steps=steps, priority=priority, end_status=end_status, end_purchased=end_purchased,
        late_after_ms=late_after, anchor_wait_ms=anchor_wait,
        sender_name=_optional_text(data, "sender_name", file=file), coupon=coupon,
        enabled=_enabled(data.get("enabled", True), file=file), file=file,
        holdout=parse_measurement(data, file=file, templates_dir=None, default_template="-").holdout, **start,
    )


def _bounded_span(data: Mapping[str, Any], key: str, default: int, *, file: str) -> int:
    if key not in data:
        return default
    span = parse_span(data[key], file=file, key=key, seconds=False)
    if not DAY_MS <= span <= MAX_DAYS * DAY_MS:
        raise RuleError(file, key, data[key], "must be from 1d to 365d")
    return span


def _statuses(value: object, *, file: str, key: str) -> frozenset[str]:
    if not isinstance(value, list) or not value or not all(isinstance(s, str) and s.strip() for s in value):
        raise RuleError(file, key, value, "must be a non-empty list of order statuses")
    return frozenset(value)


def _parse_start(value: object, *, file: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise RuleError(file, "start", value, "must be a mapping with at least status: [...]")
    _no_unknown_keys(value, _START_KEYS, file=file, prefix="start.")
    if "status" not in value:
        raise RuleError(file, "start.status", None, "missing required key")
    out: dict[str, Any] = {"start_status": _statuses(value["status"], file=file, key="start.status")}
    if "products" in value:
        products = value["products"]
        if not isinstance(products, Mapping) or not products:
            raise RuleError(file, "start.products", products, "must be {include: [...]} and/or {exclude: [...]}")
        _no_unknown_keys(products, ("include", "exclude"), file=file, prefix="start.products.")
        if "include" in products:
            out["include"] = _product_list(products["include"], file=file, key="start.products.include")
        if "exclude" in products:
            out["exclude"] = _product_list(products["exclude"], file=file, key="start.products.exclude")
    if "order_count" in value:
        out["order_count"] = _count_range(value["order_count"], file=file, key="start.order_count")
    if "min_amount" in value:
        amount = value["min_amount"]
        if not isinstance(amount, int | float) or isinstance(amount, bool) or not 0 <= amount < float("inf"):
            raise RuleError(file, "start.min_amount", amount, "must be an amount in yen >= 0")
        out["min_amount"] = float(amount)
    if "coupons" in value:
        coupons = value["coupons"]
        if not isinstance(coupons, list) or not coupons or not all(isinstance(c, str) and c for c in coupons):
            raise RuleError(file, "start.coupons", coupons, "must be a non-empty list of coupon codes")
        out["coupons"] = frozenset(coupons)
    if "product_purchase_count" in value:
        out["product_purchase_count"] = parse_product_purchase_count(
            value["product_purchase_count"], file=file, key="start.product_purchase_count")
    if "filters" in value:
        out["start_filters"] = parse_member_filters(value["filters"], file=file, prefix="start.filters")
    return out


def _parse_end(value: object, *, file: str) -> tuple[frozenset[str], frozenset[str] | Literal["any"] | None]:
    if value is None:
        return frozenset(), None
    if not isinstance(value, Mapping) or not value:
        raise RuleError(file, "end", value, "must be {status: [...]} and/or {purchased: any | {include: [...]}}")
    _no_unknown_keys(value, ("status", "purchased"), file=file, prefix="end.")
    status = _statuses(value["status"], file=file, key="end.status") if "status" in value else frozenset()
    purchased: frozenset[str] | Literal["any"] | None = None
    if "purchased" in value:
        raw = value["purchased"]
        if raw == "any":
            purchased = "any"
        elif isinstance(raw, Mapping) and set(raw) == {"include"}:
            purchased = _product_list(raw["include"], file=file, key="end.purchased.include")
        else:
            raise RuleError(file, "end.purchased", raw, "must be any or {include: [sku, ...]}")
    return status, purchased


def _parse_steps(value: object, *, file: str, templates_dir: Path | None, seconds: bool,
                 has_coupon: bool) -> tuple[Step, ...]:
    if not isinstance(value, list) or not value:
        raise RuleError(file, "steps", value, f"must be a list of 1 to {MAX_STEPS} steps")
    if len(value) > MAX_STEPS:
        raise RuleError(file, "steps", f"{len(value)} steps", f"at most {MAX_STEPS} steps")
    return tuple(
        _parse_step(raw, file=file, key=f"steps.{index}", templates_dir=templates_dir, seconds=seconds,
                    has_coupon=has_coupon)
        for index, raw in enumerate(value)
    )


def _parse_step(raw: object, *, file: str, key: str, templates_dir: Path | None, seconds: bool,
                has_coupon: bool) -> Step:
    if not isinstance(raw, Mapping):
        raise RuleError(file, key, raw, "a step must be a mapping with send and template")
    _no_unknown_keys(raw, _STEP_KEYS, file=file, prefix=key + ".")
    for name in ("send", "template"):
        if name not in raw:
            raise RuleError(file, f"{key}.{name}", None, "missing required key")
    anchor, after_ms, days, at = _parse_step_send(raw["send"], file=file, key=f"{key}.send", seconds=seconds)
    names = raw["template"] if isinstance(raw["template"], list) else [raw["template"]]
    if not 1 <= len(names) <= 2:
        raise RuleError(file, f"{key}.template", raw["template"], "one template, or two for an A/B test")
    templates = tuple(
        _template(name, file=file, key=f"{key}.template", templates_dir=templates_dir) for name in names
    )
    split = raw.get("split", 50)
    if "split" in raw and len(templates) != 2:
        raise RuleError(file, f"{key}.split", split, "split needs two templates (template: [a, b])")
    if not isinstance(split, int) or isinstance(split, bool) or not 1 <= split <= 99:
        raise RuleError(file, f"{key}.split", split, "must be a whole percent 1..99 (share of template A)")
    repeat = None
    if "repeat" in raw:
        if anchor != "previous":
            raise RuleError(file, f"{key}.repeat", raw["repeat"],
                            "repeat is only allowed on a step anchored on previous")
        repeat = _parse_repeat(raw["repeat"], file=file, key=f"{key}.repeat", has_coupon=has_coupon)
    return Step(anchor=anchor, templates=templates, after_ms=after_ms, days=days, at=at, split=split,
                repeat=repeat)


def _template(name: object, *, file: str, key: str, templates_dir: Path | None) -> str:
    try:
        return parse_template(name, file=file, templates_dir=templates_dir)
    except RuleError as exc:
        raise RuleError(file, key, name, exc.problem) from None


def _parse_step_send(value: object, *, file: str, key: str,
                     seconds: bool) -> tuple[Anchor, int | None, int | None, tuple[int, int] | None]:
    if not isinstance(value, Mapping) or "anchor" not in value:
        raise RuleError(file, key, value, 'must be {anchor: A, after: D} or {anchor: A, days: N, at: "HH:MM"}')
    _no_unknown_keys(value, ("anchor", "after", "days", "at"), file=file, prefix=key + ".")
    anchor = value["anchor"]
    if anchor not in ANCHORS:
        raise RuleError(file, f"{key}.anchor", anchor, "must be ordered, shipped, delivered or previous")
    if "after" in value:
        if len(value) > 2:
            other = next(k for k in value if k not in ("anchor", "after"))
            raise RuleError(file, f"{key}.{other}", value[other], "cannot be combined with after")
        after_ms = parse_span(value["after"], file=file, key=f"{key}.after", seconds=seconds)
        if after_ms > MAX_AFTER_MS:
            raise RuleError(file, f"{key}.after", value["after"], "must be at most 90d")
        return anchor, after_ms, None, None
    for name in ("days", "at"):
        if name not in value:
            raise RuleError(file, f"{key}.{name}", None, "missing (send needs after, or days and at)")
    days = value["days"]
    if not isinstance(days, int) or isinstance(days, bool) or not 0 <= days <= MAX_DAYS:
        raise RuleError(file, f"{key}.days", days, f"must be a whole number of days, 0..{MAX_DAYS}")
    return anchor, None, days, parse_hhmm(value["at"], file=file, key=f"{key}.at")


def _parse_repeat(value: object, *, file: str, key: str, has_coupon: bool) -> Repeat:
    if not isinstance(value, Mapping):
        raise RuleError(file, key, value, "must be {while: C, times: K, then: next|end}")
    _no_unknown_keys(value, ("while", "times", "then", "products"), file=file, prefix=key + ".")
    condition = value.get("while")
    if condition not in WHILE:
        raise RuleError(file, f"{key}.while", condition, f"must be one of {', '.join(WHILE)}")
    times = value.get("times")
    if not isinstance(times, int) or isinstance(times, bool) or not 2 <= times <= 10:
        raise RuleError(file, f"{key}.times", times, "must be a whole number 2..10")
    then = value.get("then", "next")
    if then not in ("next", "end"):
        raise RuleError(file, f"{key}.then", then, "must be next or end")
    products = None
    if "products" in value:
        if condition != "not_purchased":
            raise RuleError(file, f"{key}.products", value["products"], "products only go with not_purchased")
        products = _product_list(value["products"], file=file, key=f"{key}.products")
    if condition == "coupon_unused" and not has_coupon:
        raise RuleError(file, f"{key}.while", condition, "coupon_unused needs a coupon on the scenario")
    return Repeat(while_=condition, times=times, then=then, products=products)
