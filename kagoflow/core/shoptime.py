"""Shop-local calendar arithmetic on epoch milliseconds (days, times of day, cap periods)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

UTC = ZoneInfo("UTC")
DEFAULT_TZ = ZoneInfo("Asia/Tokyo")


def to_local(ms: int, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz)


def from_local(local: datetime) -> int:
    """Aware datetime → epoch ms."""
    return int(local.timestamp() * 1000)


QUARTER_MS = 15 * 60 * 1000


def local_date(ms: int, tz: ZoneInfo) -> date:
    """The shop-local date of ``ms``. Every UTC offset in use (and every DST change) is a multiple of 15 minutes,
    so the local date is constant within each UTC quarter hour: cached per quarter, as due times of the member
    programs ask for it hundreds of thousands of times."""
    return _quarter_date(ms // QUARTER_MS, tz)


@lru_cache(maxsize=4096)
def _quarter_date(quarter: int, tz: ZoneInfo) -> date:
    return to_local(quarter * QUARTER_MS, tz).date()


@lru_cache(maxsize=4096)
def at_local_time(day: date, hhmm: tuple[int, int], tz: ZoneInfo) -> int:
    """Epoch ms of ``day`` at ``hh:mm`` shop-local time (cached: a few days and times of day recur)."""
    return from_local(datetime.combine(day, time(hhmm[0], hhmm[1]), tz))


def start_of_local_day(ms: int, tz: ZoneInfo) -> int:
    return at_local_time(local_date(ms, tz), (0, 0), tz)


def days_later_at(anchor_ms: int, days: int, hhmm: tuple[int, int], tz: ZoneInfo) -> int:
    """The shop-local date of ``anchor_ms`` plus ``days``, at ``hh:mm``."""
    return at_local_time(local_date(anchor_ms, tz) + timedelta(days=days), hhmm, tz)


def next_local_time_after(ms: int, hhmm: tuple[int, int], tz: ZoneInfo) -> int:
    """The first shop-local ``hh:mm`` strictly after ``ms``."""
    day = local_date(ms, tz)
    candidate = at_local_time(day, hhmm, tz)
    if candidate <= ms:
        candidate = at_local_time(day + timedelta(days=1), hhmm, tz)
    return candidate


def cap_periods(ms: int, tz: ZoneInfo) -> tuple[str, str, str]:
    """(day, ISO week, month) keys of ``ms`` in the shop time zone, e.g. ('2026-11-24', '2026-W48', '2026-11')."""
    d = local_date(ms, tz)
    iso = d.isocalendar()
    return d.isoformat(), f"{iso.year}-W{iso.week:02d}", f"{d.year}-{d.month:02d}"


@lru_cache(maxsize=1024)
def iso(ms: int, tz: ZoneInfo = UTC) -> str:
    """ISO-8601 with offset, second precision unless the ms part is non-zero.

    Cached: the decisions of one catalog change (up to hundreds of thousands) share their two times."""
    dt = to_local(ms, tz)
    spec = "milliseconds" if ms % 1000 else "seconds"
    return dt.isoformat(timespec=spec)
