"""Member aggregates, CPM classes and RFM scores (SPEC §13) at their boundaries."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from kagoflow.core.segments import (
    CPM_CLASSES,
    CPM_LABELS_JA,
    Aggregates,
    CpmThresholds,
    CustomerFacts,
    RfmThresholds,
    age_on,
    cpm_class,
    days_between,
    facts_of,
    locale_matches,
    occurrence,
    rfm_scores,
)
from kagoflow.core.shoptime import from_local

TOKYO = ZoneInfo("Asia/Tokyo")
DAY = 86_400_000


def at(y: int, m: int, d: int, hh: int = 12, mm: int = 0) -> int:
    return from_local(datetime(y, m, d, hh, mm, tzinfo=TOKYO))


T0 = at(2026, 1, 1)


# -- aggregates ---------------------------------------------------------------------------------------------
def test_orders_and_beacons_count_once_per_order_and_cancelled_orders_are_left_out() -> None:
    agg = Aggregates()
    assert agg.add_purchase_beacon("o1", at(2026, 1, 5))
    assert agg.facts() == (1, at(2026, 1, 5), at(2026, 1, 5), 0.0, 0.0)
    agg.add_order("o1", ordered_at=at(2026, 1, 4), amount=5000, cancelled=False)
    agg.add_order("o1", ordered_at=at(2026, 1, 4), amount=None, cancelled=False)  # keeps the amount
    agg.add_order("o2", ordered_at=at(2026, 2, 1), amount=8000, cancelled=False)
    assert not agg.add_purchase_beacon("o2", at(2026, 2, 1, 13)), "same order: no second purchase"
    assert agg.facts() == (2, at(2026, 1, 4), at(2026, 2, 1), 13000.0, 8000.0)
    agg.add_order("o2", ordered_at=at(2026, 2, 1), amount=None, cancelled=True)
    assert agg.facts() == (1, at(2026, 1, 4), at(2026, 1, 4), 5000.0, 5000.0)
    assert agg.purchase_count() == 1 and agg.is_cancelled("o2")
    agg.add_order("o2", ordered_at=at(2026, 2, 1), amount=None, cancelled=False)  # the latest status counts
    assert agg.purchase_count() == 2


def test_profile_base_values_apply_per_field_and_later_orders_add_to_them() -> None:
    agg = Aggregates()
    agg.add_order("old", ordered_at=at(2025, 6, 1), amount=1000, cancelled=False)
    agg.set_base("purchase_count", 5)
    agg.set_base("total_amount", 50000)
    # first/last purchase times have no base: every order counts for them
    agg.add_order("new", ordered_at=at(2026, 1, 2), amount=3000, cancelled=False)
    count, first, last, total, largest = agg.facts()
    assert (count, total) == (6, 53000.0)
    assert (first, last) == (at(2025, 6, 1), at(2026, 1, 2))
    assert largest == 3000.0
    agg.set_base("first_purchase_at", at(2020, 1, 1))
    agg.set_base("last_purchase_at", at(2025, 12, 1))
    assert agg.facts()[1:3] == (at(2020, 1, 1), at(2025, 12, 1))
    agg.add_order("newer", ordered_at=at(2026, 1, 3), amount=100, cancelled=False)
    assert agg.facts()[:4] == (7, at(2020, 1, 1), at(2026, 1, 3), 53100.0)


def test_base_count_only_gives_no_times_so_no_cpm_class_and_recency_zero() -> None:
    agg = Aggregates()
    agg.set_base("purchase_count", 4)
    facts = facts_of(agg)
    assert facts.purchase_count == 4 and facts.last_purchase_ms is None
    assert cpm_class(facts, T0, TOKYO, CpmThresholds()) is None
    assert rfm_scores(facts, T0, TOKYO, RfmThresholds())[0] == 0


def test_aggregates_round_trip() -> None:
    agg = Aggregates()
    agg.set_base("purchase_count", 2)
    agg.add_order("o1", ordered_at=T0, amount=10, cancelled=False)
    copy = Aggregates.from_list(agg.to_list())
    assert copy.facts() == agg.facts()


# -- calendar ----------------------------------------------------------------------------------------------
def test_days_are_shop_local_calendar_days() -> None:
    assert days_between(at(2026, 1, 1, 23, 59), at(2026, 1, 2, 0, 1), TOKYO) == 1
    assert days_between(at(2026, 1, 1, 0, 1), at(2026, 1, 1, 23, 59), TOKYO) == 0
    # 23:30 UTC on Jan 1 is already Jan 2 in Tokyo
    utc = ZoneInfo("UTC")
    late = from_local(datetime(2026, 1, 1, 23, 30, tzinfo=utc))
    assert days_between(at(2026, 1, 1, 10), late, TOKYO) == 1
    assert days_between(at(2026, 1, 1, 10), late, utc) == 0


def test_age_on_the_day_before_and_of_the_birthday() -> None:
    born = date(1990, 6, 15)
    assert age_on(born, date(2026, 6, 14)) == 35
    assert age_on(born, date(2026, 6, 15)) == 36


def test_29_february_birthday() -> None:
    born = date(2000, 2, 29)
    assert occurrence(born, 2026) == date(2026, 2, 28)
    assert occurrence(born, 2028) == date(2028, 2, 29)
    assert age_on(born, date(2026, 2, 27)) == 25
    assert age_on(born, date(2026, 2, 28)) == 26, "28 February counts in a non-leap year"
    assert age_on(born, date(2028, 2, 28)) == 27, "in a leap year the birthday is 29 February"
    assert age_on(born, date(2028, 2, 29)) == 28


# -- CPM -----------------------------------------------------------------------------------------------------
def _facts(n: int, first: int, last: int, total: float) -> CustomerFacts:
    return CustomerFacts(purchase_count=n, first_purchase_ms=first, last_purchase_ms=last, total_amount=total)


TH = CpmThresholds()  # active 240, young 90, loyal 210, amount 70000


def test_cpm_first_and_no_purchase() -> None:
    assert cpm_class(CustomerFacts(), T0, TOKYO, TH) is None
    assert cpm_class(_facts(1, T0, T0, 100), T0, TOKYO, TH) == "first_active"


def test_cpm_young_days_boundary() -> None:
    assert cpm_class(_facts(2, T0, T0 + 89 * DAY, 1e6), T0 + 89 * DAY, TOKYO, TH) == "toddler_active"
    assert cpm_class(_facts(2, T0, T0 + 90 * DAY, 1e6), T0 + 90 * DAY, TOKYO, TH) == "trendy_active"


def test_cpm_amount_boundary() -> None:
    last = T0 + 100 * DAY
    assert cpm_class(_facts(3, T0, last, 69999), last, TOKYO, TH) == "steady_active"
    assert cpm_class(_facts(3, T0, last, 70000), last, TOKYO, TH) == "trendy_active"


def test_cpm_loyal_days_boundary() -> None:
    assert cpm_class(_facts(3, T0, T0 + 209 * DAY, 70000), T0 + 209 * DAY, TOKYO, TH) == "trendy_active"
    assert cpm_class(_facts(3, T0, T0 + 210 * DAY, 70000), T0 + 210 * DAY, TOKYO, TH) == "loyal_active"


def test_cpm_active_days_boundary() -> None:
    facts = _facts(1, T0, T0, 100)
    assert cpm_class(facts, T0 + 240 * DAY, TOKYO, TH) == "first_active"
    assert cpm_class(facts, T0 + 241 * DAY, TOKYO, TH) == "first_lapsed"


def test_cpm_shop_thresholds_and_ten_classes() -> None:
    th = CpmThresholds(active_days=10, young_days=5, loyal_days=7, amount=100)
    assert cpm_class(_facts(2, T0, T0 + 7 * DAY, 100), T0 + 18 * DAY, TOKYO, th) == "loyal_lapsed"
    assert len(CPM_CLASSES) == 10 and CPM_LABELS_JA["first_active"] == "初回現役客"
    assert CPM_LABELS_JA["loyal_lapsed"] == "優良離脱客"


# -- RFM -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("days", "score"), [(0, 5), (30, 5), (31, 4), (90, 4), (91, 3), (180, 3), (181, 2),
                                             (365, 2), (366, 1)])
def test_recency_thresholds(days: int, score: int) -> None:
    facts = _facts(1, T0, T0, 0)
    assert rfm_scores(facts, T0 + days * DAY, TOKYO, RfmThresholds())[0] == score


@pytest.mark.parametrize(("count", "score"), [(1, 1), (2, 2), (3, 3), (4, 3), (5, 4), (9, 4), (10, 5)])
def test_frequency_thresholds(count: int, score: int) -> None:
    assert rfm_scores(_facts(count, T0, T0, 0), T0, TOKYO, RfmThresholds())[1] == score


@pytest.mark.parametrize(("total", "score"), [(0, 1), (9999, 1), (10000, 2), (30000, 3), (69999, 3),
                                              (70000, 4), (150000, 5)])
def test_monetary_thresholds(total: float, score: int) -> None:
    assert rfm_scores(_facts(1, T0, T0, total), T0, TOKYO, RfmThresholds())[2] == score


def test_rfm_without_purchases_is_zero() -> None:
    assert rfm_scores(CustomerFacts(), T0, TOKYO, RfmThresholds()) == (0, 0, 0)


# -- locales -------------------------------------------------------------------------------------------------
def test_locale_language_matches_but_not_the_reverse() -> None:
    assert locale_matches("ja-JP", frozenset({"ja"}))
    assert locale_matches("JA_jp", frozenset({"ja-jp"}))
    assert not locale_matches("ja", frozenset({"ja-jp"}))
    assert not locale_matches("jav", frozenset({"ja"}))
    assert not locale_matches(None, frozenset({"ja"}))
    assert locale_matches("zh-Hant-TW", frozenset({"zh-hant"}))
