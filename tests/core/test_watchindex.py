"""WatchIndex: product → members by state, filtered by a rule's watch set."""

from __future__ import annotations

import types

import pytest

from kagoflow.core.watchindex import WatchIndex


def members(index: WatchIndex, product: str, *states: str) -> set[str]:
    return set(index.members(product, states or ("cart", "favorite", "view")))


def test_members_filtered_by_state() -> None:
    index = WatchIndex()
    index.update("m1", "P", "cart")
    index.update("m2", "P", "favorite")
    index.update("m3", "P", "view")
    index.update("m4", "Q", "cart")
    assert members(index, "P") == {"m1", "m2", "m3"}
    assert members(index, "P", "cart", "favorite") == {"m1", "m2"}
    assert members(index, "P", "view") == {"m3"}
    assert members(index, "Q", "view") == set()
    assert members(index, "unknown") == set()
    assert (len(index), index.count("P"), index.count("P", ("cart",))) == (4, 3, 1)


def test_state_change_moves_member_and_none_removes() -> None:
    index = WatchIndex()
    index.update("m1", "P", "view")
    index.update("m1", "P", "cart")
    assert members(index, "P", "view") == set() and members(index, "P", "cart") == {"m1"}
    assert index.state_of("m1", "P") == "cart"
    index.update("m1", "P", "cart")  # idempotent
    assert len(index) == 1
    index.update("m1", "P", None)
    assert members(index, "P") == set() and len(index) == 0 and index.state_of("m1", "P") is None
    index.update("m1", "P", None)  # removing twice is harmless
    assert len(index) == 0


def test_many_members_then_shrink_back() -> None:
    index = WatchIndex()
    ids = [f"m{i}" for i in range(100)]
    for member in ids:
        index.update(member, "P", "favorite")
    assert members(index, "P", "favorite") == set(ids) and index.count("P") == 100
    for member in ids[:-1]:
        index.update(member, "P", None)
    assert members(index, "P") == {"m99"} and len(index) == 1
    index.update("m99", "P", "cart")
    assert members(index, "P", "favorite") == set() and members(index, "P", "cart") == {"m99"}


def test_members_is_lazy_and_yields_each_member_once() -> None:
    index = WatchIndex()
    for i in range(10):
        index.update(f"m{i}", "P", ("cart", "favorite", "view")[i % 3])
    gen = index.members("P", {"cart", "favorite", "view"})
    assert isinstance(gen, types.GeneratorType)
    listed = list(gen)
    assert sorted(listed) == sorted(f"m{i}" for i in range(10))


def test_unknown_state_is_rejected() -> None:
    with pytest.raises(ValueError, match="purchase"):
        WatchIndex().update("m1", "P", "purchase")
