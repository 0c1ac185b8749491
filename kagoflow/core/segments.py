"""Customer data of SPEC §13: member aggregates, CPM classes, RFM scores and the member filters.

Pure and clock-free: every function takes the decision moment ``T`` (epoch ms) and the shop time zone, and
"days between two moments" is always the difference of their shop-local calendar dates (a purchase at 23:59
and a decision at 00:01 the next day are one day apart). The filters are evaluated on a ``CustomerFacts``
snapshot, built once per decision from the member's ``Aggregates`` and profile, so that a rule with every
filter on costs one pass over the member's orders, not one per filter.

Aggregates keep one entry per order id (an ``orders`` record or a ``purchase`` beacon; §11's "one purchase
per order id"); base values of a profile record (``purchase_count``, ``total_amount``, ``first_purchase_at``,
``last_purchase_at``) apply per field and later orders add to them. "Later" is processing order, tracked by
a sequence number: §11 processes a profile before an order of the same ``ts``, so that order adds on top.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from kagoflow.core.shoptime import local_date

DEFAULT_CANCELLED: frozenset[str] = frozenset({"cancelled", "canceled", "returned"})
BASE_FIELDS = ("purchase_count", "total_amount", "first_purchase_at", "last_purchase_at")
GENDERS: tuple[str, ...] = ("female", "male", "other")
CPM_CLASSES: tuple[str, ...] = tuple(
    f"{stage}_{life}" for stage in ("first", "toddler", "steady", "trendy", "loyal") for life in ("active", "lapsed")
)
CPM_LABELS_JA: dict[str, str] = {
    f"{stage}_{life}": f"{ja_stage}{ja_life}"
    for stage, ja_stage in (("first", "初回"), ("toddler", "よちよち"), ("steady", "コツコツ"),
                            ("trendy", "流行"), ("loyal", "優良"))
    for life, ja_life in (("active", "現役客"), ("lapsed", "離脱客"))
}
"""Console labels (初回現役客 … 優良離脱客)."""


@dataclass(frozen=True, slots=True)
class CpmThresholds:
    active_days: int = 240
    young_days: int = 90
    loyal_days: int = 210
    amount: float = 70000


@dataclass(frozen=True, slots=True)
class RfmThresholds:
    recency_days: tuple[int, ...] = (30, 90, 180, 365)
    frequency: tuple[int, ...] = (2, 3, 5, 10)
    monetary: tuple[float, ...] = (10000, 30000, 70000, 150000)


@dataclass(frozen=True, slots=True)
class SegmentConfig:
    """The shop.yaml keys of §13/§14 (``cpm``, ``rfm``, ``cancelled_statuses``, ``attribution_days``)."""

    cpm: CpmThresholds = field(default_factory=CpmThresholds)
    rfm: RfmThresholds = field(default_factory=RfmThresholds)
    cancelled_statuses: frozenset[str] = DEFAULT_CANCELLED
    attribution_days: int = 7


# -- aggregates ----------------------------------------------------------------------------------------------
_SEQ, _TIME, _AMOUNT, _CANCELLED = range(4)
"""Slots of one order entry: first-seen sequence, purchase time (None: unknown, from an old state), amount,
whether its latest ``orders`` status is a cancelled one."""


class Aggregates:
    """Per-member purchase aggregates (mutable; part of the member state, serialized with ``to_list``).

    ``orders``: order id → [seq, purchase ms, amount, cancelled]; ``base``: field → [value, seq] of the
    latest profile record carrying that field; ``seq`` counts records that touched either, so "orders seen
    after the base" is ``order seq > base seq``. Whether a status cancels is decided when the record is
    applied (shop.yaml ``cancelled_statuses``), so reads need no configuration.
    """

    __slots__ = ("base", "orders", "seq")

    def __init__(self) -> None:
        self.orders: dict[str, list[Any]] = {}
        self.base: dict[str, list[Any]] = {}
        self.seq = 0

    def set_base(self, name: str, value: float | int | None) -> None:
        """A profile record carried base value ``name`` (one of ``BASE_FIELDS``)."""
        self.seq += 1
        self.base[name] = [value, self.seq]

    def add_order(self, order_id: str, *, ordered_at: int, amount: float | None, cancelled: bool) -> None:
        """An ``orders`` record: purchase time becomes ``ordered_at``; the amount its total (kept when a later
        record carries neither total nor items); ``cancelled`` follows the latest status."""
        entry = self.orders.get(order_id)
        if entry is None:
            self.seq += 1
            self.orders[order_id] = [self.seq, ordered_at, amount or 0.0, cancelled]
            return
        entry[_TIME] = ordered_at
        if amount is not None:
            entry[_AMOUNT] = amount
        entry[_CANCELLED] = cancelled

    def add_purchase_beacon(self, order_id: str, ts: int) -> bool:
        """A ``purchase`` beacon: a purchase at ``ts`` worth 0 until its order arrives. False if known."""
        if order_id in self.orders:
            return False
        self.seq += 1
        self.orders[order_id] = [self.seq, ts, 0.0, False]
        return True

    def add_known(self, order_id: str) -> None:
        """An order of a state written before aggregates existed: known (no double count), no time."""
        self.orders.setdefault(order_id, [0, None, 0.0, False])

    def is_cancelled(self, order_id: str) -> bool:
        entry = self.orders.get(order_id)
        return entry is not None and bool(entry[_CANCELLED])

    def purchase_count(self) -> int:
        base = self.base.get("purchase_count")
        after = base[1] if base else 0
        count = (base[0] or 0) if base else 0
        for entry in self.orders.values():
            if entry[_SEQ] > after and not entry[_CANCELLED]:
                count += 1
        return int(count)

    def facts(self) -> tuple[int, int | None, int | None, float, float]:
        """(purchase count, first ms, last ms, total amount, largest order amount) over base + later orders."""
        base = self.base
        count_base = base.get("purchase_count")
        total_base = base.get("total_amount")
        first_base = base.get("first_purchase_at")
        last_base = base.get("last_purchase_at")
        count = (count_base[0] or 0) if count_base else 0
        total = float(total_base[0] or 0) if total_base else 0.0
        first: int | None = first_base[0] if first_base else None
        last: int | None = last_base[0] if last_base else None
        count_after = count_base[1] if count_base else 0
        total_after = total_base[1] if total_base else 0
        first_after = first_base[1] if first_base else 0
        last_after = last_base[1] if last_base else 0
        largest = 0.0
        for seq, ms, amount, cancelled in self.orders.values():
            if cancelled:
                continue
            if amount > largest:
                largest = amount
            if seq > count_after:
                count += 1
            if seq > total_after:
                total += amount
            if ms is None:
                continue
            if seq > first_after and (first is None or ms < first):
                first = ms
            if seq > last_after and (last is None or ms > last):
                last = ms
        return count, first, last, total, largest

    def to_list(self) -> list[Any]:
        return [self.orders, self.base, self.seq]

    @classmethod
    def from_list(cls, values: list[Any]) -> Aggregates:
        agg = cls()
        agg.orders, agg.base, agg.seq = values
        return agg


# -- facts and segments ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CustomerFacts:
    """What the §13 filters read about a member at one decision moment."""

    purchase_count: int = 0
    first_purchase_ms: int | None = None
    last_purchase_ms: int | None = None
    total_amount: float = 0.0
    max_order_amount: float = 0.0
    birthday: date | None = None
    gender: str | None = None
    locale: str | None = None
    registered_ms: int | None = None


def facts_of(agg: Aggregates, *, birthday: date | None = None,
             gender: str | None = None, locale: str | None = None,
             registered_ms: int | None = None) -> CustomerFacts:
    count, first, last, total, largest = agg.facts()
    return CustomerFacts(count, first, last, total, largest, birthday, gender, locale, registered_ms)


_BUCKET_MS = 15 * 60_000
"""Every UTC offset and DST change is a multiple of 15 minutes: a 15-minute bucket of epoch time lies within
one shop-local date, so dates are cached per bucket instead of converted per call (~1.5 µs each)."""


@lru_cache(maxsize=65_536)
def _bucket_day(bucket: int, tz: ZoneInfo) -> date:
    return local_date(bucket * _BUCKET_MS, tz)


def local_day(ms: int, tz: ZoneInfo) -> date:
    """``shoptime.local_date``, cached."""
    return _bucket_day(ms // _BUCKET_MS, tz)


def days_between(earlier_ms: int, later_ms: int, tz: ZoneInfo) -> int:
    """Whole shop-local calendar days from ``earlier_ms`` to ``later_ms`` (§13)."""
    return (_bucket_day(later_ms // _BUCKET_MS, tz) - _bucket_day(earlier_ms // _BUCKET_MS, tz)).days


def occurrence(day: date, year: int) -> date:
    """``day``'s month-day in ``year``; 29 February is 28 February in other years (§13 fine points)."""
    if day.month == 2 and day.day == 29:
        try:
            return date(year, 2, 29)
        except ValueError:
            return date(year, 2, 28)
    return day.replace(year=year)


def age_on(birthday: date, today: date) -> int:
    """Whole years at ``today``; a 29 February birthday counts on 28 February in other years."""
    years = today.year - birthday.year
    return years if today >= occurrence(birthday, today.year) else years - 1


def cpm_class(facts: CustomerFacts, now_ms: int, tz: ZoneInfo, th: CpmThresholds) -> str | None:
    """The customer-portfolio class at ``now_ms``; None without purchase times (e.g. only a base count)."""
    first, last = facts.first_purchase_ms, facts.last_purchase_ms
    if facts.purchase_count < 1 or first is None or last is None:
        return None
    if facts.purchase_count == 1:
        stage = "first"
    else:
        tenure = days_between(first, last, tz)
        if tenure < th.young_days:
            stage = "toddler"
        elif facts.total_amount < th.amount:
            stage = "steady"
        elif tenure < th.loyal_days:
            stage = "trendy"
        else:
            stage = "loyal"
    active = days_between(last, now_ms, tz) <= th.active_days
    return f"{stage}_{'active' if active else 'lapsed'}"


def rfm_scores(facts: CustomerFacts, now_ms: int, tz: ZoneInfo, th: RfmThresholds) -> tuple[int, int, int]:
    """(R, F, M), each 1–5; 0 without purchases (R is 0 also without a last purchase time)."""
    if facts.purchase_count < 1:
        return 0, 0, 0
    if facts.last_purchase_ms is None:
        r = 0
    else:
        r = 5 - bisect_left(th.recency_days, days_between(facts.last_purchase_ms, now_ms, tz))
    f = 1 + bisect_right(th.frequency, facts.purchase_count)
    m = 1 + bisect_right(th.monetary, facts.total_amount)
    return r, f, m


def locale_matches(member_locale: str | None, listed: frozenset[str]) -> bool:
    """``ja-JP`` matches a listed ``ja`` (not the reverse); case and ``_``/``-`` are ignored."""
    if not member_locale:
        return False
    norm = member_locale.lower().replace("_", "-")
    if norm in listed:
        return True
    parts = norm.split("-")
    return any("-".join(parts[:n]) in listed for n in range(1, len(parts)))


def normalize_locale(value: str) -> str:
    return value.lower().replace("_", "-")
