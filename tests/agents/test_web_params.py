"""Access-log time bounds: what operators type is accepted, anything else is a BadParameter naming it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from kagoflow.agents.web import BadParameter, _ms

TZ = ZoneInfo("Asia/Tokyo")


def _request(**query: str) -> Any:
    return SimpleNamespace(query=query)


def test_accepted_forms() -> None:
    assert _ms(_request(), "from", tz=TZ) is None
    assert _ms(_request(**{"from": ""}), "from", tz=TZ) is None
    assert _ms(_request(**{"from": "1700000000000"}), "from", tz=TZ) == 1_700_000_000_000
    assert _ms(_request(**{"from": "2023-11-14T22:13:20+00:00"}), "from", tz=TZ) == 1_700_000_000_000
    day = _ms(_request(to="2026-01-01"), "to", tz=TZ, end_of_day=True)
    assert day == _ms(_request(**{"from": "2026-01-02T00:00:00+09:00"}), "from", tz=TZ)


@pytest.mark.parametrize("raw", ["9" * 5000, "²³", "١٢٣", "9999-12-31", "0001-01-01", "2026-02-30", "yesterday",
                                 "2026-01-01T00:00:00", "99999999999999999999", "-5", "1e10", " 1", "\x00"])
def test_refused_forms_name_the_parameter(raw: str) -> None:
    with pytest.raises(BadParameter, match=r"^to: expected epoch ms, ISO-8601 with offset or a date YYYY-MM-DD"):
        _ms(_request(to=raw), "to", tz=TZ, end_of_day=True)
