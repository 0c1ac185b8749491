"""Month-day index of member dates, per partition: the daily birthday scan reads only the day's members.

A date rule due on shop-local day D concerns the members whose date falls on D + ``days_before``; the index
maps (month, day) → member ids, so a scan is a few dict lookups plus the members it names — never a pass
over the partition. 29 February members are also found on 28 February of a non-leap year (§13).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from datetime import timedelta

MonthDay = tuple[int, int]


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def month_days_on(day: dt.date) -> tuple[MonthDay, ...]:
    """The stored month-days whose occurrence in ``day.year`` is ``day``."""
    if day.month == 2 and day.day == 28 and not _is_leap(day.year):
        return (2, 28), (2, 29)
    return ((day.month, day.day),)


class DateIndex:
    """(month, day) → member ids, for one date field of one partition. Mutable; rebuilt on assignment."""

    __slots__ = ("_by_day", "_of")

    def __init__(self) -> None:
        self._by_day: dict[MonthDay, set[str]] = {}
        self._of: dict[str, MonthDay] = {}

    def __len__(self) -> int:
        return len(self._of)

    def put(self, member_id: str, value: dt.date | None) -> None:
        """Index (or re-index, or with None drop) the member's date."""
        old = self._of.get(member_id)
        new = None if value is None else (value.month, value.day)
        if old == new:
            return
        if old is not None:
            members = self._by_day[old]
            members.discard(member_id)
            if not members:
                del self._by_day[old]
        if new is None:
            self._of.pop(member_id, None)
        else:
            self._of[member_id] = new
            self._by_day.setdefault(new, set()).add(member_id)

    def drop(self, member_id: str) -> None:
        self.put(member_id, None)

    def on(self, day: dt.date) -> Iterator[str]:
        """Members whose date occurs on ``day`` (in ``day``'s year)."""
        for month_day in month_days_on(day):
            members = self._by_day.get(month_day)
            if members:
                yield from members

    def due_on(self, day: dt.date, days_before: Iterable[int]) -> set[str]:
        """Members a date rule with one of ``days_before`` concerns on shop-local ``day``."""
        out: set[str] = set()
        for before in set(days_before):
            out.update(self.on(day + timedelta(days=before)))
        return out
