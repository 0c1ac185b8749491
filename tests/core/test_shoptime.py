"""Shop-local calendar arithmetic: the cached forms agree with plain ``datetime`` arithmetic."""

from __future__ import annotations

import random
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from kagoflow.core.shoptime import QUARTER_MS, at_local_time, local_date

ZONES = ["Asia/Tokyo", "Asia/Kathmandu", "America/St_Johns", "Europe/Berlin", "Australia/Lord_Howe", "UTC"]


@pytest.mark.parametrize("zone", ZONES)
def test_local_date_per_quarter_hour_equals_the_exact_date(zone: str) -> None:
    tz = ZoneInfo(zone)
    rng = random.Random(zone)
    start, end = 1_700_000_000_000, 1_900_000_000_000
    moments = [rng.randrange(start, end) for _ in range(3000)]
    # the moments just around every local midnight of a few weeks (DST changes included)
    for day in range(0, 400, 7):
        midnight = at_local_time(local_date(start + day * 86_400_000, tz), (0, 0), tz)
        moments += [midnight - 1, midnight, midnight + 1, midnight + QUARTER_MS - 1]
    for ms in moments:
        assert local_date(ms, tz) == datetime.fromtimestamp(ms / 1000, tz).date(), ms


def test_at_local_time_is_the_local_wall_clock() -> None:
    tz = ZoneInfo("Europe/Berlin")
    day = datetime(2026, 3, 29).date()  # DST starts at 02:00
    assert at_local_time(day, (10, 30), tz) == int(datetime(2026, 3, 29, 10, 30, tzinfo=tz).timestamp() * 1000)
