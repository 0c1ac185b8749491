"""Date-rule dues without a heap entry per member: a month-day index per partition and a daily scan.

A birthday is due once a year, so scheduling every member's next birthday in the partition's due heap would
hold one entry per member for months (~130 MB per million members). Instead the engine is given a horizon
(``DateProgram.horizon_ms``): a date due beyond it is not reported by ``next_due``, and once per shop-local
day each partition looks up in its ``DateIndex`` the members whose date falls on today or tomorrow (plus
each rule's ``days_before``) and schedules just those. Decisions are unchanged — the due time is the same;
only when the member enters the heap differs (the backtest runs without a horizon).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta

from kagoflow.core.behaviour import MemberState
from kagoflow.core.customerprograms import DateProgram
from kagoflow.core.dateindex import DateIndex
from kagoflow.core.engine import Engine
from kagoflow.core.segments import local_day
from kagoflow.core.shoptime import QUARTER_MS

HORIZON_MS = 2 * 86_400_000
"""Dues up to two days ahead go into the heap; the daily scan covers today and tomorrow."""


class DateScan:
    """Per-partition month-day indexes of the date fields the enabled date rules use."""

    def __init__(self, engine: Engine) -> None:
        self.programs = [p for p in engine.programs if isinstance(p, DateProgram)]
        self.tz = engine.shop.timezone
        self.fields: list[str] = sorted({rule.date for p in self.programs for rule in p.rules})
        self.before: dict[str, list[int]] = {
            f: sorted({r.days_before for p in self.programs for r in p.rules if r.date == f}) for f in self.fields}
        self.indexes: dict[int, dict[str, DateIndex]] = {}
        self.scanned: dict[int, date] = {}
        self.active = bool(self.programs)
        """Whether any date rule is enabled (the programs are fixed for the engine's life)."""
        self.checked_quarter: dict[int, int] = {}
        """Per partition, the UTC quarter hour of the last ``due_members`` check: every UTC offset is a
        multiple of 15 minutes, so the shop-local date cannot change within one (``shoptime.local_date``);
        the worker reads it to skip the call on most events."""

    def set_now(self, now_ms: int) -> None:
        """The engine reports date dues up to ``now_ms`` + the horizon."""
        for program in self.programs:
            program.horizon_ms = now_ms + HORIZON_MS

    def index(self, partition: int, state: MemberState) -> None:
        """Keep the member's dates in the partition's index (after every change and on rebuild)."""
        data = state.cust
        if data is None or not data.known:
            return
        indexes = self.indexes.get(partition)
        if indexes is None:
            indexes = self.indexes[partition] = {f: DateIndex() for f in self.fields}
        for field, index in indexes.items():
            if field == "birthday":
                index.put(state.member_id, data.birthday_date())
            elif data.registered_at is not None:
                index.put(state.member_id, local_day(data.registered_at, self.tz))

    def due_members(self, partition: int, now_ms: int) -> list[str]:
        """Once per shop-local day and partition: the members a date rule concerns today or tomorrow."""
        quarter = now_ms // QUARTER_MS
        if self.checked_quarter.get(partition) == quarter and partition in self.scanned:
            return []  # checked within this quarter hour: the same day, already scanned
        self.checked_quarter[partition] = quarter
        today = local_day(now_ms, self.tz)
        if self.scanned.get(partition) == today:
            return []
        self.scanned[partition] = today
        indexes = self.indexes.get(partition)
        if not indexes:
            return []
        found: set[str] = set()
        for field, index in indexes.items():
            for offset in (0, 1):
                found |= index.due_on(today + timedelta(days=offset), self.before[field])
        return sorted(found)

    def schedule_due(self, partition: int, now_ms: int, state_of: Callable[[str], MemberState],
                     schedule: Callable[[int | None, str], None], next_due: Callable[[MemberState], int | None]
                     ) -> int:
        members = self.due_members(partition, now_ms)
        for member_id in members:
            schedule(next_due(state_of(member_id)), member_id)
        return len(members)

    def drop(self, partitions: set[int]) -> None:
        for partition in partitions:
            self.indexes.pop(partition, None)
            self.scanned.pop(partition, None)
            self.checked_quarter.pop(partition, None)

    def reset(self, partition: int) -> None:
        """A partition (re)assigned: its index is rebuilt from the scan of its states."""
        self.indexes.pop(partition, None)
        self.scanned.pop(partition, None)
        self.checked_quarter.pop(partition, None)
