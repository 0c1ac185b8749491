"""§13 member filters: parsing errors name file, key, value; each filter at its boundaries; shop keys."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from kagoflow.core.errors import RuleError
from kagoflow.core.memberfilters import first_failing, parse_member_filters, parse_segment_config
from kagoflow.core.segments import CpmThresholds, CustomerFacts, RfmThresholds, SegmentConfig
from kagoflow.core.shoptime import from_local

TOKYO = ZoneInfo("Asia/Tokyo")
DAY = 86_400_000
CFG = SegmentConfig()


def at(y: int, m: int, d: int, hh: int = 12) -> int:
    return from_local(datetime(y, m, d, hh, tzinfo=TOKYO))


T = at(2026, 6, 15)


def fails(filters: dict[str, Any], facts: CustomerFacts, now: int = T, cfg: SegmentConfig = CFG) -> str | None:
    return first_failing(parse_member_filters(filters, file="r.yaml"), facts, now, TOKYO, cfg)


BUYER = CustomerFacts(purchase_count=3, first_purchase_ms=at(2025, 6, 15), last_purchase_ms=at(2026, 6, 5),
                      total_amount=40000, max_order_amount=20000, birthday=date(1990, 6, 16), gender="female",
                      locale="ja-JP", registered_ms=at(2024, 6, 15, 23))


@pytest.mark.parametrize(("name", "ok", "bad"), [
    ("total_amount", {"min": 40000}, {"min": 40000.5}),
    ("total_amount", {"max": 40000}, {"max": 39999}),
    ("max_order_amount", {"min": 20000, "max": 20000}, {"min": 20001}),
    ("tenure_days", {"min": 365, "max": 365}, {"min": 366}),
    ("dormancy_days", {"min": 10, "max": 10}, {"max": 9}),
    ("registered_days", {"min": 730, "max": 730}, {"min": 731}),
    ("age", {"max": 35}, {"min": 36}),  # the day before the birthday: still 35
    ("gender", ["female", "other"], ["male"]),
    ("locales", ["ja"], ["en", "ja-jp-x"]),
    ("cpm", ["steady_active"], ["steady_lapsed", "first_active"]),
    ("rfm", {"r": {"min": 5}, "f": {"min": 3, "max": 3}, "m": {"min": 3}}, {"m": {"min": 4}}),
])
def test_each_filter_at_its_boundary(name: str, ok: Any, bad: Any) -> None:
    assert fails({name: ok}, BUYER) is None
    assert fails({name: bad}, BUYER) == name


def test_age_turns_on_the_birthday_and_29_february() -> None:
    assert fails({"age": {"min": 36}}, BUYER, now=at(2026, 6, 16, 0)) is None
    leap = CustomerFacts(birthday=date(2000, 2, 29))
    assert fails({"age": {"min": 26}}, leap, now=at(2026, 2, 27)) == "age"
    assert fails({"age": {"min": 26}}, leap, now=at(2026, 2, 28)) is None


def test_missing_values_fail() -> None:
    nobody = CustomerFacts()
    for name, value in (("tenure_days", {"min": 0}), ("dormancy_days", {"min": 0}),
                        ("registered_days", {"min": 0}), ("age", {"min": 0}), ("gender", ["other"]),
                        ("locales", ["ja"]), ("cpm", ["first_active"])):
        assert fails({name: value}, nobody) == name, name
    assert fails({"total_amount": {"max": 0}}, nobody) is None
    assert fails({"rfm": {"r": {"max": 0}}}, nobody) is None, "scores are 0 without purchases"


def test_first_failing_filter_in_file_order() -> None:
    filters = {"gender": ["male"], "total_amount": {"min": 1e9}}
    assert fails(filters, BUYER) == "gender"
    assert fails(dict(reversed(filters.items())), BUYER) == "total_amount"


def test_shop_thresholds_are_used() -> None:
    cfg = SegmentConfig(cpm=CpmThresholds(active_days=5), rfm=RfmThresholds(frequency=(1, 2, 3, 4)))
    assert fails({"cpm": ["steady_lapsed"]}, BUYER, cfg=cfg) is None
    assert fails({"rfm": {"f": {"min": 4}}}, BUYER, cfg=cfg) is None


@pytest.mark.parametrize(("filters", "key"), [
    ("x", "filters"),
    ({"tenure": {"min": 1}}, "filters.tenure"),
    ({"age": {"min": -1}}, "filters.age.min"),
    ({"age": {"min": 30, "max": 20}}, "filters.age.max"),
    ({"age": {"min": 1.5}}, "filters.age.min"),
    ({"age": {"least": 1}}, "filters.age.least"),
    ({"age": {}}, "filters.age"),
    ({"gender": ["f"]}, "filters.gender.0"),
    ({"gender": []}, "filters.gender"),
    ({"cpm": ["first_active", "vip"]}, "filters.cpm.1"),
    ({"locales": ["ja", ""]}, "filters.locales.1"),
    ({"rfm": {"x": {"min": 1}}}, "filters.rfm.x"),
    ({"rfm": {"r": {"min": 6}}}, "filters.rfm.r.min"),
])
def test_filter_errors_name_file_key_and_value(filters: Any, key: str) -> None:
    with pytest.raises(RuleError) as info:
        parse_member_filters(filters, file="rules/r.yaml")
    assert info.value.file == "rules/r.yaml" and info.value.key == key


def test_describe_lists_filters_in_order() -> None:
    parsed = parse_member_filters({"cpm": ["loyal_active"], "age": {"min": 20}, "rfm": {"r": {"min": 4}}},
                                  file="f")
    assert [f.describe() for f in parsed] == ["cpm=loyal_active", "age=20..", "rfm(r=4..)"]


# -- shop.yaml keys ----------------------------------------------------------------------------------------
def test_segment_defaults_and_values() -> None:
    assert parse_segment_config({}, file="shop.yaml") == SegmentConfig()
    cfg = parse_segment_config({"cpm": {"amount": 50000, "active_days": 100}, "rfm": {"frequency": [2, 4, 6, 8]},
                                "cancelled_statuses": ["void"], "attribution_days": 14}, file="shop.yaml")
    assert cfg.cpm == CpmThresholds(active_days=100, amount=50000)
    assert cfg.rfm.frequency == (2, 4, 6, 8) and cfg.rfm.recency_days == (30, 90, 180, 365)
    assert cfg.cancelled_statuses == frozenset({"void"}) and cfg.attribution_days == 14


@pytest.mark.parametrize(("data", "key"), [
    ({"rfm": {"recency_days": [30, 90, 180]}}, "rfm.recency_days"),
    ({"rfm": {"recency_days": [30, 90, 90, 365]}}, "rfm.recency_days"),
    ({"rfm": {"monetary": [10000, 5000, 70000, 150000]}}, "rfm.monetary"),
    ({"rfm": {"frequency": [1, 2, "x", 4]}}, "rfm.frequency.2"),
    ({"rfm": {"freq": [1, 2, 3, 4]}}, "rfm.freq"),
    ({"cpm": {"young_days": 0}}, "cpm.young_days"),
    ({"cpm": {"young_days": 300}}, "cpm.loyal_days"),
    ({"cpm": {"vip": 1}}, "cpm.vip"),
    ({"cancelled_statuses": "cancelled"}, "cancelled_statuses"),
    ({"attribution_days": 0}, "attribution_days"),
    ({"attribution_days": 91}, "attribution_days"),
])
def test_bad_shop_keys_name_file_key_and_value(data: dict[str, Any], key: str) -> None:
    with pytest.raises(RuleError) as info:
        parse_segment_config(data, file="rules/shop.yaml")
    assert info.value.key == key
    assert "rules/shop.yaml" in str(info.value)
