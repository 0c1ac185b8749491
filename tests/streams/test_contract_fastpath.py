"""The beacon fast path is an optimisation only: whatever it accepts, the checked path accepts identically.

``beacon_fields`` tries ``_plain_beacon`` (inline checks, no reasons) before ``_checked_beacon_fields``
(field by field, names the first problem). If the fast path ever accepted a beacon the checked path
rejects, or built different values, the contract would depend on which path ran.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kagoflow.core.errors import ContractError
from kagoflow.core.events import Beacon, new_beacon
from kagoflow.streams.contract import _checked_beacon_fields, _plain_beacon, beacon_fields

_IDS = ["e1", "sku 9", " x", "", "  ", "\u3000", "a\nb", "a\x7fb", "x" * 128, "x" * 129, 7, None]
_EDGES: dict[str, list[Any]] = {
    # per field: the values at every edge of its check
    "event_id": _IDS,
    "member_id": _IDS,
    "product_id": _IDS,
    "shop_id": ["tokyo", "y" * 64, "y" * 65, "", " ", "a\tb", 3, None],
    "order_id": ["o1", "", None, 1],
    "product_ids": [["a", "b"], [], None, "a", ["a", 1]],
    "type": ["view", "cart_add", "page_view", "purchase", "click", "", 1, None],
    "device": ["pc", "smartphone", "mobile", "tablet", "", 1, None],
    "ts": [0, -1, 4_102_444_799_999, 4_102_444_800_000, 1.7e12, True, "2024-01-01T09:00:00+09:00",
           "2024-01-01T00:00:00", "2024-01-01T00:00:00.123Z", "1969-12-31T23:59:59Z", "2100-01-01T00:00:00Z",
           "2099-12-31T23:59:59.999+00:00", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "20240101",
           "2024-01-01T00:00:00+0900", "x" * 65, None],
    "price": [0, 0.0, -0.0, -1, -0.5, 10**12, 10**12 + 1, 1e12, 1.0000001e12, math.inf, math.nan, True,
              "1", None],
    "quantity": [1, 0, -1, 1_000_000, 1_000_001, 1.0, True, "2", None],
}
_ABSENT = object()
_FIELDS = tuple(_EDGES)
_TYPES = st.sampled_from(["view", "cart_add", "cart_remove", "favorite_add", "favorite_remove", "purchase",
                          "page_view"])
_odd = st.one_of(st.text(max_size=4), st.integers(), st.floats(), st.just(_ABSENT))


@st.composite
def beacon_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A valid beacon with up to two fields set to an edge value, an arbitrary value, or dropped."""
    data: dict[str, Any] = {"event_id": "e1", "member_id": "m1", "type": draw(_TYPES),
                            "ts": 1_704_067_200_000, "product_id": "sku-1", "price": 1280, "quantity": 2,
                            "device": "pc"}
    if data["type"] in ("purchase", "page_view"):
        del data["product_id"], data["price"], data["quantity"]
    if data["type"] == "purchase":
        data["order_id"] = "o1"
    for field in draw(st.lists(st.sampled_from(_FIELDS), max_size=2, unique=True)):
        value = draw(st.one_of(st.sampled_from(_EDGES[field]), _odd))
        if value is _ABSENT:
            data.pop(field, None)
        else:
            data[field] = value
    return data


@settings(max_examples=800, deadline=None)
@given(beacon_dicts())
def test_fast_path_accepts_only_what_the_checked_path_accepts_identically(data: dict[str, Any]) -> None:
    fast = _plain_beacon(data)
    try:
        checked = _checked_beacon_fields(data)
    except ContractError:
        assert fast is None
        return
    if fast is not None:
        assert fast == checked
        assert [type(v) for v in fast] == [type(v) for v in checked]
    assert beacon_fields(data) == checked


def test_fast_path_takes_the_common_shapes() -> None:
    """Guards the optimisation itself: the common beacons must not all fall back to the slow path."""
    base = {"event_id": "e1", "member_id": "m1", "ts": 1_704_067_200_000, "device": "pc"}
    assert _plain_beacon({**base, "type": "view", "product_id": "p1", "price": 1200}) is not None
    assert _plain_beacon({**base, "type": "cart_add", "product_id": "p1", "quantity": 1}) is not None
    assert _plain_beacon({**base, "type": "page_view"}) is not None
    iso = {**base, "ts": "2024-01-01T09:00:00.250+09:00"}
    assert _plain_beacon({**iso, "type": "view", "product_id": "p1"}) == _checked_beacon_fields(
        {**iso, "type": "view", "product_id": "p1"})


def test_new_beacon_is_a_frozen_beacon_equal_to_the_constructor() -> None:
    fields = ("e1", "m1", "cart_add", 5, "p1", 1.0, 2, "pc", "default", (), None)
    beacon = new_beacon(*fields)  # type: ignore[arg-type]
    assert type(beacon) is Beacon
    assert beacon == Beacon(*fields)  # type: ignore[arg-type]
    assert hash(beacon) == hash(Beacon(*fields))  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        beacon.ts = 6  # type: ignore[misc]
