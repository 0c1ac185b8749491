"""``kind: date`` (birthday, registration anniversary) and ``kind: inactive`` (win-back) rules of SPEC §13:
their strict parsing and their pure scheduling.

Scheduling is a function of a few member values (the date and when it became known; the since-time) and
the year / period already decided, so the engine keeps only those in the member state and a replay computes
the same due. A date rule decides at most once per (member, rule, occurrence year); an inactive rule once per
inactivity period, identified by its since-time.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from kagoflow.core.abandonrule import RULE_ID, parse_hhmm
from kagoflow.core.coupons import CouponSpec, parse_coupon
from kagoflow.core.errors import RuleError
from kagoflow.core.memberfilters import MemberFilter, parse_member_filters
from kagoflow.core.segments import occurrence
from kagoflow.core.shoptime import at_local_time, local_date
from kagoflow.core.variants import Measurement, parse_measurement

DateField = Literal["birthday", "registered_at"]
Since = Literal["last_purchase", "last_access"]
MAX_DAYS_BEFORE = 30
DAY_MS = 86_400_000
MIN_INACTIVE_MS = DAY_MS
MAX_INACTIVE_MS = 730 * DAY_MS
_ELAPSED = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?\Z")
_COMMON = ("id", "kind", "send", "filters", "template", "split", "holdout", "sender_name", "coupon", "enabled")
_DATE_KEYS = (*_COMMON, "date")
_INACTIVE_KEYS = (*_COMMON, "since")


@dataclass(frozen=True, slots=True, kw_only=True)
class CustomerRule:
    """What date and inactive rules share: a member-level mail without products."""

    id: str
    at: tuple[int, int]
    measurement: Measurement
    filters: tuple[MemberFilter, ...] = ()
    coupon: CouponSpec | None = None
    sender_name: str | None = None
    enabled: bool = True
    file: str = ""

    @property
    def template(self) -> str:
        return self.measurement.templates[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class DateRule(CustomerRule):
    date: DateField
    days_before: int
    kind: Literal["date"] = "date"

    def due(self, member_date: dt.date, year: int, tz: ZoneInfo) -> int:
        """Due of the occurrence in ``year``: its shop-local date minus ``days_before``, at ``at``."""
        day = occurrence(member_date, year) - timedelta(days=self.days_before)
        return at_local_time(day, self.at, tz)

    def next_due(self, member_date: dt.date, known_ms: int, done_year: int | None,
                 tz: ZoneInfo) -> tuple[int, int]:
        """(occurrence year, due ms) of the next decision: the first year after ``done_year`` whose due is not
        before ``known_ms`` (the date became known then; a missed occurrence waits a year). A registration
        anniversary starts the year after registration."""
        year = local_date(known_ms, tz).year - 1
        if done_year is not None:
            year = max(year, done_year + 1)
        if self.date == "registered_at":
            year = max(year, member_date.year + 1)
        while True:
            due = self.due(member_date, year, tz)
            if due >= known_ms:
                return year, due
            year += 1

    def describe(self) -> str:
        what = "birthday" if self.date == "birthday" else "registration anniversary"
        before = f"{self.days_before} days before " if self.days_before else "on the "
        return _describe(self, f"{self.id}: date, {before}{what} at {self.at[0]:02d}:{self.at[1]:02d}")


@dataclass(frozen=True, slots=True, kw_only=True)
class InactiveRule(CustomerRule):
    since: Since
    after_ms: int
    kind: Literal["inactive"] = "inactive"

    def due(self, since_ms: int, made_ms: int, tz: ZoneInfo) -> int:
        """The first ``at`` at or after since + ``after``; when that is already past at ``made_ms`` (the record
        that made it), the first ``at`` at or after ``made_ms``."""
        return first_at_or_after(max(since_ms + self.after_ms, made_ms), self.at, tz)

    def describe(self) -> str:
        days, rest = divmod(self.after_ms, DAY_MS)
        after = f"{days}d" + (f"+{rest // 1000}s" if rest else "")
        since = "last purchase" if self.since == "last_purchase" else "last access"
        return _describe(self, f"{self.id}: inactive, {after} after {since}, at {self.at[0]:02d}:{self.at[1]:02d}")


def _describe(rule: CustomerRule, head: str) -> str:
    parts = [head]
    filters = [f.describe() for f in rule.filters]
    parts.append("filters: " + " ".join(filters) if filters else "no filters")
    parts.append(rule.measurement.describe())
    if rule.coupon is not None:
        parts.append(rule.coupon.describe())
    if rule.sender_name:
        parts.append(f"sender {rule.sender_name}")
    line = "; ".join(parts)
    return line if rule.enabled else line + " (disabled)"


@lru_cache(maxsize=65_536)
def first_at_or_after(ms: int, hhmm: tuple[int, int], tz: ZoneInfo) -> int:
    """The first shop-local ``hh:mm`` at or after ``ms`` (cached: the inactive program's ``next_due`` asks for
    the same member's due after each of its records)."""
    day = local_date(ms, tz)
    candidate = at_local_time(day, hhmm, tz)
    return candidate if candidate >= ms else at_local_time(day + timedelta(days=1), hhmm, tz)


def parse_elapsed(value: object, *, file: str, key: str) -> int:
    """``[Nd][Nh][Nm][Ns]`` elapsed time (1d = 24 h) → ms."""
    match = _ELAPSED.match(value) if isinstance(value, str) and value else None
    if match is None or match.groups() == (None, None, None, None):
        raise RuleError(file, key, value, "must be a duration like 60d, 1d12h or 90m")
    days, hours, minutes, seconds = (int(group or 0) for group in match.groups())
    return (((days * 24 + hours) * 60 + minutes) * 60 + seconds) * 1000


# -- parsing ----------------------------------------------------------------------------------------------
def parse_date_rule(data: Mapping[str, Any], *, file: str, templates_dir: Path | None = None,
                    rules_dir: Path | None = None) -> DateRule:
    common = _common(data, _DATE_KEYS, ("id", "kind", "date", "send"), file=file, templates_dir=templates_dir,
                     rules_dir=rules_dir, default_template="birthday")
    field_ = data["date"]
    if field_ not in ("birthday", "registered_at"):
        raise RuleError(file, "date", field_, "must be birthday or registered_at")
    send = _send_mapping(data["send"], ("days_before", "at"), file=file,
                         example='{days_before: 0, at: "11:00"}')
    days_before = send.get("days_before", 0)
    if not isinstance(days_before, int) or isinstance(days_before, bool) or not 0 <= days_before <= MAX_DAYS_BEFORE:
        raise RuleError(file, "send.days_before", days_before, f"must be a whole number of days, 0..{MAX_DAYS_BEFORE}")
    if "at" not in send:
        raise RuleError(file, "send.at", None, "missing required key")
    return DateRule(date=field_, days_before=days_before, at=parse_hhmm(send["at"], file=file, key="send.at"),
                    **common)


def parse_inactive_rule(data: Mapping[str, Any], *, file: str, templates_dir: Path | None = None,
                        rules_dir: Path | None = None, min_delay_seconds: int = 900) -> InactiveRule:
    common = _common(data, _INACTIVE_KEYS, ("id", "kind", "since", "send"), file=file,
                     templates_dir=templates_dir, rules_dir=rules_dir, default_template="winback")
    since = data["since"]
    if since not in ("last_purchase", "last_access"):
        raise RuleError(file, "since", since, "must be last_purchase or last_access")
    send = _send_mapping(data["send"], ("after", "at"), file=file, example='{after: 60d, at: "10:00"}')
    for key in ("after", "at"):
        if key not in send:
            raise RuleError(file, f"send.{key}", None, "missing required key")
    after_ms = parse_elapsed(send["after"], file=file, key="send.after")
    floor = MIN_INACTIVE_MS if min_delay_seconds >= 900 else min_delay_seconds * 1000
    if not floor <= after_ms <= MAX_INACTIVE_MS:
        raise RuleError(file, "send.after", send["after"], "must be 1d..730d")
    return InactiveRule(since=since, after_ms=after_ms, at=parse_hhmm(send["at"], file=file, key="send.at"),
                        **common)


def _send_mapping(value: object, keys: tuple[str, ...], *, file: str, example: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not value:
        raise RuleError(file, "send", value, f"must be {example}")
    for key, item in value.items():
        if key not in keys:
            raise RuleError(file, f"send.{key}", item, f"unknown key (allowed: {', '.join(keys)})")
    return value


def _common(data: Mapping[str, Any], allowed: tuple[str, ...], required: tuple[str, ...], *, file: str,
            templates_dir: Path | None, rules_dir: Path | None, default_template: str) -> dict[str, Any]:
    for key in data:
        if key not in allowed:
            raise RuleError(file, str(key), data[key], f"unknown key (allowed: {', '.join(allowed)})")
    for key in required:
        if key not in data:
            raise RuleError(file, key, None, "missing required key")
    rule_id = data["id"]
    if not isinstance(rule_id, str) or not RULE_ID.match(rule_id):
        raise RuleError(file, "id", rule_id, "must match [a-z0-9-] (lower-case letters, digits, '-')")
    sender = data.get("sender_name")
    if sender is not None and (not isinstance(sender, str) or not sender.strip()):
        raise RuleError(file, "sender_name", sender, "must be a non-empty string")
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RuleError(file, "enabled", enabled, "must be true or false")
    coupon = None
    if data.get("coupon") is not None:
        coupon = parse_coupon(data["coupon"], file=file, rules_dir=rules_dir)
    return {
        "id": rule_id,
        "measurement": parse_measurement(data, file=file, templates_dir=templates_dir,
                                         default_template=default_template),
        "filters": parse_member_filters(data.get("filters"), file=file),
        "coupon": coupon,
        "sender_name": sender,
        "enabled": enabled,
        "file": file,
    }
