"""The member filters of SPEC §13 and the shop.yaml segment keys: strict parsing and evaluation.

Parsing keeps the filters in file order, because a failing decision reports the *first* failing filter in
file order (``filter:<name>``, §14 fine points); rule kinds that have other filters of their own (e.g.
abandonment's ``min_cart_amount``) interleave them by calling ``parse_member_filter`` per key.
Evaluation reads one ``CustomerFacts`` snapshot and computes the CPM class and RFM scores at most once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

from kagoflow.core.errors import RuleError
from kagoflow.core.segments import (
    CPM_CLASSES,
    DEFAULT_CANCELLED,
    GENDERS,
    CpmThresholds,
    CustomerFacts,
    RfmThresholds,
    SegmentConfig,
    age_on,
    cpm_class,
    local_day,
    locale_matches,
    normalize_locale,
    rfm_scores,
)

RANGE_FILTERS = ("total_amount", "max_order_amount", "tenure_days", "dormancy_days", "registered_days", "age")
SET_FILTERS = ("gender", "locales", "cpm")
MEMBER_FILTER_KEYS: tuple[str, ...] = (*RANGE_FILTERS, *SET_FILTERS, "rfm")
SHOP_SEGMENT_KEYS = ("cpm", "rfm", "cancelled_statuses", "attribution_days")
_AMOUNTS = ("total_amount", "max_order_amount")


@dataclass(frozen=True, slots=True)
class MemberFilter:
    """One §13 filter: a range (``lo``/``hi`` inclusive, None = open), a set of values, or RFM ranges."""

    name: str
    lo: float | None = None
    hi: float | None = None
    values: frozenset[str] = frozenset()
    rfm: tuple[tuple[str, int | None, int | None], ...] = ()

    def describe(self) -> str:
        if self.name in SET_FILTERS:
            return f"{self.name}={','.join(sorted(self.values))}"
        if self.name == "rfm":
            return "rfm(" + " ".join(f"{k}={_bound(lo)}..{_bound(hi)}" for k, lo, hi in self.rfm) + ")"
        return f"{self.name}={_bound(self.lo)}..{_bound(self.hi)}"


def _bound(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if value == int(value) else str(value)


# -- parsing ----------------------------------------------------------------------------------------------
def parse_member_filters(value: object, *, file: str, prefix: str = "filters") -> tuple[MemberFilter, ...]:
    """A mapping holding only §13 member filters (date / inactive rules, scenario ``start.filters``)."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise RuleError(file, prefix, value, "must be a mapping of filters")
    out = []
    for name, raw in value.items():
        if name not in MEMBER_FILTER_KEYS:
            raise RuleError(file, f"{prefix}.{name}", raw,
                            f"unknown filter (allowed: {', '.join(MEMBER_FILTER_KEYS)})")
        out.append(parse_member_filter(str(name), raw, file=file, prefix=prefix))
    return tuple(out)


def parse_member_filter(name: str, raw: object, *, file: str, prefix: str = "filters") -> MemberFilter:
    """One filter of ``MEMBER_FILTER_KEYS``; ``RuleError`` names ``<prefix>.<name>[.sub]`` and the value."""
    key = f"{prefix}.{name}"
    if name in RANGE_FILTERS:
        lo, hi = _range(raw, file=file, key=key, allow_float=name in _AMOUNTS)
        return MemberFilter(name, lo=lo, hi=hi)
    if name == "rfm":
        if not isinstance(raw, Mapping) or not raw:
            raise RuleError(file, key, raw, "must be {r: {min, max}, f: {..}, m: {..}} (each optional)")
        parts = []
        for letter, bounds in raw.items():
            if letter not in ("r", "f", "m"):
                raise RuleError(file, f"{key}.{letter}", bounds, "unknown score (use r, f, m)")
            lo, hi = _range(bounds, file=file, key=f"{key}.{letter}", allow_float=False, top=5)
            parts.append((str(letter), None if lo is None else int(lo), None if hi is None else int(hi)))
        return MemberFilter(name, rfm=tuple(parts))
    allowed: tuple[str, ...] | None = {"gender": GENDERS, "cpm": CPM_CLASSES}.get(name)
    if name not in SET_FILTERS:
        raise RuleError(file, key, raw, f"unknown filter (allowed: {', '.join(MEMBER_FILTER_KEYS)})")
    if not isinstance(raw, list) or not raw:
        raise RuleError(file, key, raw, "must be a non-empty list")
    values = []
    for index, item in enumerate(raw):
        if allowed is not None and item not in allowed:
            raise RuleError(file, f"{key}.{index}", item, f"must be one of {', '.join(allowed)}")
        if allowed is None and (not isinstance(item, str) or not item.strip() or " " in item):
            raise RuleError(file, f"{key}.{index}", item, "must be a locale like ja or en-US")
        values.append(normalize_locale(item) if allowed is None else item)
    return MemberFilter(name, values=frozenset(values))


def _range(raw: object, *, file: str, key: str, allow_float: bool,
           top: int | None = None) -> tuple[float | None, float | None]:
    if not isinstance(raw, Mapping) or not raw:
        raise RuleError(file, key, raw, "must be {min: N} and/or {max: N}")
    bounds: dict[str, float] = {}
    for name, bound in raw.items():
        if name not in ("min", "max"):
            raise RuleError(file, f"{key}.{name}", bound, "unknown key (use min, max)")
        number_ok = isinstance(bound, int) or (allow_float and isinstance(bound, float))
        if not number_ok or isinstance(bound, bool) or not 0 <= bound < float("inf"):
            kind = "an amount >= 0" if allow_float else "a whole number >= 0"
            raise RuleError(file, f"{key}.{name}", bound, f"must be {kind}")
        if top is not None and bound > top:
            raise RuleError(file, f"{key}.{name}", bound, f"must be at most {top}")
        bounds[str(name)] = bound
    if "min" in bounds and "max" in bounds and bounds["min"] > bounds["max"]:
        raise RuleError(file, f"{key}.max", bounds["max"], f"must be >= min ({_bound(bounds['min'])})")
    return bounds.get("min"), bounds.get("max")


def parse_segment_config(data: Mapping[str, Any], *, file: str) -> SegmentConfig:
    """The §13/§14 keys of shop.yaml (others are the caller's); defaults for absent keys."""
    cpm = CpmThresholds()
    if data.get("cpm") is not None:
        raw = data["cpm"]
        if not isinstance(raw, Mapping):
            raise RuleError(file, "cpm", raw, "must be {active_days, young_days, loyal_days, amount}")
        values: dict[str, Any] = {}
        for name, value in raw.items():
            if name not in ("active_days", "young_days", "loyal_days", "amount"):
                raise RuleError(file, f"cpm.{name}", value,
                                "unknown key (allowed: active_days, young_days, loyal_days, amount)")
            whole = name != "amount"
            if (not isinstance(value, int) and (whole or not isinstance(value, float))) or isinstance(
                    value, bool) or not 0 < value < float("inf"):
                raise RuleError(file, f"cpm.{name}", value,
                                "must be a whole number of days >= 1" if whole else "must be an amount > 0")
            values[str(name)] = value
        cpm = CpmThresholds(**values)
        if cpm.young_days > cpm.loyal_days:
            raise RuleError(file, "cpm.loyal_days", cpm.loyal_days,
                            f"must be >= young_days ({cpm.young_days})")
    rfm = RfmThresholds()
    if data.get("rfm") is not None:
        raw = data["rfm"]
        if not isinstance(raw, Mapping):
            raise RuleError(file, "rfm", raw, "must be {recency_days: [4 numbers], frequency: [..], monetary: [..]}")
        lists: dict[str, tuple[Any, ...]] = {}
        for name, value in raw.items():
            if name not in ("recency_days", "frequency", "monetary"):
                raise RuleError(file, f"rfm.{name}", value,
                                "unknown key (allowed: recency_days, frequency, monetary)")
            lists[str(name)] = _thresholds(value, file=file, key=f"rfm.{name}", allow_float=name == "monetary")
        rfm = RfmThresholds(**lists)
    cancelled = DEFAULT_CANCELLED
    if "cancelled_statuses" in data:
        raw = data["cancelled_statuses"]
        if not isinstance(raw, list) or not all(isinstance(s, str) and s.strip() for s in raw):
            raise RuleError(file, "cancelled_statuses", raw, "must be a list of order statuses")
        cancelled = frozenset(raw)
    attribution = 7
    if "attribution_days" in data:
        raw = data["attribution_days"]
        if not isinstance(raw, int) or isinstance(raw, bool) or not 1 <= raw <= 90:
            raise RuleError(file, "attribution_days", raw, "must be a whole number of days, 1..90")
        attribution = raw
    return SegmentConfig(cpm=cpm, rfm=rfm, cancelled_statuses=cancelled, attribution_days=attribution)


def _thresholds(value: object, *, file: str, key: str, allow_float: bool) -> tuple[Any, ...]:
    """Exactly four strictly ascending numbers >= 0 (score 2, 3, 4, 5 boundaries)."""
    if not isinstance(value, list) or len(value) != 4:
        raise RuleError(file, key, value, "must be a list of exactly 4 ascending numbers")
    for index, item in enumerate(value):
        if (not isinstance(item, int) and not (allow_float and isinstance(item, float))) or isinstance(
                item, bool) or not 0 <= item < float("inf"):
            raise RuleError(file, f"{key}.{index}", item, "must be a whole number >= 0")
        if index and item <= value[index - 1]:
            raise RuleError(file, key, value, "must be strictly ascending")
    return tuple(value)


def describe_segments(config: SegmentConfig) -> str:
    c, r = config.cpm, config.rfm
    return (f"segments: cpm active {c.active_days}d young {c.young_days}d loyal {c.loyal_days}d amount "
            f"{_bound(c.amount)}; rfm R {list(r.recency_days)} F {list(r.frequency)} M "
            f"{[_bound(m) for m in r.monetary]}; cancelled {','.join(sorted(config.cancelled_statuses))}; "
            f"attribution {config.attribution_days}d")


# -- evaluation -------------------------------------------------------------------------------------------
def first_failing(filters: Iterable[MemberFilter], facts: CustomerFacts, now_ms: int, tz: ZoneInfo,
                  config: SegmentConfig) -> str | None:
    """Name of the first filter (in file order) that does not hold at ``now_ms``, else None."""
    today: date | None = None
    scores: tuple[int, int, int] | None = None
    for flt in filters:
        name = flt.name
        value: float | None
        if name in _DAY_FIELDS:
            at = getattr(facts, _DAY_FIELDS[name])
            if at is None:
                return name
            if today is None:
                today = local_day(now_ms, tz)
            value = (today - local_day(at, tz)).days
        elif name == "total_amount":
            value = facts.total_amount
        elif name == "max_order_amount":
            value = facts.max_order_amount
        elif name == "age":
            if facts.birthday is None:
                return name
            if today is None:
                today = local_day(now_ms, tz)
            value = age_on(facts.birthday, today)
        elif name == "gender":
            if facts.gender not in flt.values:
                return name
            continue
        elif name == "locales":
            if not locale_matches(facts.locale, flt.values):
                return name
            continue
        elif name == "cpm":
            if cpm_class(facts, now_ms, tz, config.cpm) not in flt.values:
                return name
            continue
        else:  # rfm
            if scores is None:
                scores = rfm_scores(facts, now_ms, tz, config.rfm)
            for letter, lo, hi in flt.rfm:
                score = scores["rfm".index(letter)]
                if (lo is not None and score < lo) or (hi is not None and score > hi):
                    return name
            continue
        if (flt.lo is not None and value < flt.lo) or (flt.hi is not None and value > flt.hi):
            return name
    return None


_DAY_FIELDS = {"tenure_days": "first_purchase_ms", "dormancy_days": "last_purchase_ms",
               "registered_days": "registered_ms"}
