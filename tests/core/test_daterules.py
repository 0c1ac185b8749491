"""``kind: date`` and ``kind: inactive`` rules (§13): parsing, due times, the month-day index."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from kagoflow.core.coupons import CouponSpec
from kagoflow.core.dateindex import DateIndex
from kagoflow.core.daterules import (
    DateRule,
    InactiveRule,
    first_at_or_after,
    parse_date_rule,
    parse_elapsed,
    parse_inactive_rule,
)
from kagoflow.core.errors import RuleError
from kagoflow.core.shoptime import from_local
from kagoflow.core.variants import Measurement

TOKYO = ZoneInfo("Asia/Tokyo")
DAY = 86_400_000


def at(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> int:
    return from_local(datetime(y, m, d, hh, mm, tzinfo=TOKYO))


BIRTHDAY: dict[str, Any] = {"id": "birthday", "kind": "date", "date": "birthday",
                            "send": {"days_before": 0, "at": "11:00"}, "template": "birthday",
                            "coupon": {"generate": {"prefix": "BD-", "length": 8}, "valid_days": 30},
                            "filters": {"age": {"min": 20}}}
WINBACK: dict[str, Any] = {"id": "winback-60", "kind": "inactive", "since": "last_purchase",
                           "send": {"after": "60d", "at": "10:00"}, "template": "winback"}


def date_rule(**changes: Any) -> DateRule:
    return parse_date_rule({**BIRTHDAY, **changes}, file="r.yaml")


# -- date rules ----------------------------------------------------------------------------------------------
def test_parse_date_rule() -> None:
    rule = date_rule()
    assert (rule.date, rule.days_before, rule.at, rule.template) == ("birthday", 0, (11, 0), "birthday")
    assert rule.coupon == CouponSpec("generate", "BD-", length=8, valid_days=30)
    assert [f.name for f in rule.filters] == ["age"]
    assert "birthday at 11:00" in rule.describe() and "age=20.." in rule.describe()


def test_birthday_due_this_year_when_known_before_it() -> None:
    rule = date_rule()
    assert rule.next_due(date(1990, 6, 15), at(2026, 6, 1), None, TOKYO) == (2026, at(2026, 6, 15, 11))
    assert rule.next_due(date(1990, 6, 15), at(2026, 6, 15, 11), None, TOKYO) == (2026, at(2026, 6, 15, 11))


def test_birthday_learned_on_the_day_after_misses_that_year() -> None:
    rule = date_rule()
    assert rule.next_due(date(1990, 6, 15), at(2026, 6, 16), None, TOKYO) == (2027, at(2027, 6, 15, 11))
    assert rule.next_due(date(1990, 6, 15), at(2026, 6, 15, 11, 1), None, TOKYO)[0] == 2027


def test_one_decision_per_year_and_days_before_across_new_year() -> None:
    rule = date_rule(send={"days_before": 10, "at": "09:30"})
    # a 5 January birthday is due on 26 December of the year before; the year is the occurrence's
    assert rule.next_due(date(1990, 1, 5), at(2026, 12, 1), None, TOKYO) == (2027, at(2026, 12, 26, 9, 30))
    assert rule.next_due(date(1990, 1, 5), at(2026, 12, 1), 2027, TOKYO) == (2028, at(2027, 12, 26, 9, 30))


def test_29_february_birthday_is_28_february_in_other_years() -> None:
    rule = date_rule()
    assert rule.next_due(date(2000, 2, 29), at(2026, 1, 1), None, TOKYO) == (2026, at(2026, 2, 28, 11))
    assert rule.next_due(date(2000, 2, 29), at(2027, 3, 1), None, TOKYO) == (2028, at(2028, 2, 29, 11))


def test_registration_anniversary_starts_the_year_after_registration() -> None:
    rule = date_rule(id="anniversary", date="registered_at")
    assert rule.next_due(date(2026, 5, 1), at(2026, 5, 1, 9), None, TOKYO) == (2027, at(2027, 5, 1, 11))


@pytest.mark.parametrize(("changes", "key"), [
    ({"date": "anniversary"}, "date"),
    ({"send": {"days_before": 31, "at": "11:00"}}, "send.days_before"),
    ({"send": {"days_before": 0}}, "send.at"),
    ({"send": {"at": "25:00"}}, "send.at"),
    ({"send": {"after": "1d", "at": "11:00"}}, "send.after"),
    ({"when": 1}, "when"),
    ({"filters": {"devices": ["pc"]}}, "filters.devices"),
    ({"coupon": {"pool": "nope"}}, "coupon.pool"),
    ({"holdout": 60}, "holdout"),
    ({"id": "Birthday"}, "id"),
])
def test_bad_date_rule(changes: dict[str, Any], key: str, tmp_path: Any) -> None:
    with pytest.raises(RuleError) as info:
        parse_date_rule({**BIRTHDAY, **changes}, file="rules/bd.yaml", rules_dir=tmp_path)
    assert (info.value.file, info.value.key) == ("rules/bd.yaml", key)


# -- inactive rules -----------------------------------------------------------------------------------------
def test_parse_inactive_rule() -> None:
    rule = parse_inactive_rule(WINBACK, file="r.yaml")
    assert (rule.since, rule.after_ms, rule.at) == ("last_purchase", 60 * DAY, (10, 0))
    assert rule.measurement == Measurement(("winback",))
    assert "60d after last purchase" in rule.describe()


def test_inactive_due_is_the_first_at_at_or_after_since_plus_after() -> None:
    rule = parse_inactive_rule(WINBACK, file="r.yaml")
    since = at(2026, 1, 1, 15)
    assert rule.due(since, since, TOKYO) == at(2026, 3, 3, 10)  # 1 Jan 15:00 + 60 d = 2 Mar 15:00 → 3 Mar 10:00
    exact = at(2026, 1, 1, 10)
    assert rule.due(exact, exact, TOKYO) == at(2026, 3, 2, 10), "at or after: exactly 10:00 is on time"


def test_inactive_due_already_past_fires_at_the_next_at_after_the_record() -> None:
    rule = parse_inactive_rule(WINBACK, file="r.yaml")
    since = at(2025, 1, 1)
    made = at(2026, 4, 1, 12)
    assert rule.due(since, made, TOKYO) == at(2026, 4, 2, 10)


def test_first_at_or_after() -> None:
    assert first_at_or_after(at(2026, 1, 1, 10), (10, 0), TOKYO) == at(2026, 1, 1, 10)
    assert first_at_or_after(at(2026, 1, 1, 10, 1), (10, 0), TOKYO) == at(2026, 1, 2, 10)


def test_elapsed_durations() -> None:
    assert parse_elapsed("1d12h", file="f", key="k") == 36 * 3600_000
    assert parse_elapsed("90m", file="f", key="k") == 90 * 60_000
    with pytest.raises(RuleError):
        parse_elapsed("2w", file="f", key="k")


@pytest.mark.parametrize(("changes", "key"), [
    ({"since": "last_order"}, "since"),
    ({"send": {"after": "23h", "at": "10:00"}}, "send.after"),
    ({"send": {"after": "731d", "at": "10:00"}}, "send.after"),
    ({"send": {"after": "60d"}}, "send.at"),
    ({"send": {"after": "sixty", "at": "10:00"}}, "send.after"),
    ({"template": ["a", "b"], "split": 120}, "split"),
])
def test_bad_inactive_rule(changes: dict[str, Any], key: str) -> None:
    with pytest.raises(RuleError) as info:
        parse_inactive_rule({**WINBACK, **changes}, file="rules/wb.yaml")
    assert info.value.key == key


def test_inactive_demo_delays_with_lowered_floor() -> None:
    rule = parse_inactive_rule({**WINBACK, "send": {"after": "30s", "at": "10:00"}}, file="r",
                               min_delay_seconds=1)
    assert isinstance(rule, InactiveRule) and rule.after_ms == 30_000


# -- month-day index ----------------------------------------------------------------------------------------
def test_date_index_finds_only_the_days_members() -> None:
    index = DateIndex()
    index.put("a", date(1990, 6, 15))
    index.put("b", date(1985, 6, 15))
    index.put("c", date(2000, 2, 29))
    index.put("d", date(1999, 2, 28))
    assert set(index.on(date(2026, 6, 15))) == {"a", "b"}
    assert set(index.on(date(2026, 2, 28))) == {"c", "d"}, "29 February members on 28 February of 2026"
    assert set(index.on(date(2028, 2, 28))) == {"d"}
    assert set(index.on(date(2028, 2, 29))) == {"c"}
    assert index.due_on(date(2026, 6, 5), [10, 0]) == {"a", "b"}
    index.put("a", date(1990, 7, 1))  # a changed birthday moves the member
    assert set(index.on(date(2026, 6, 15))) == {"b"}
    index.drop("b")
    assert not set(index.on(date(2026, 6, 15))) and len(index) == 3
