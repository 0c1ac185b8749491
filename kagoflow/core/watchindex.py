"""Product → watching members, for fanning a price/stock change out to the members it concerns.

A catalog change names a product; the mail goes to members whose behaviour state on that product is one
of the rule's ``watch`` states. Scanning every member per change is out of the question, so each member
partition keeps this reverse index of its own members, updated whenever a member's state on a product
changes (``update(member, product, MemberState.product_state(product))``). It is derived data: rebuild it
from the member states on start-up instead of persisting it.

Memory is what matters here (millions of (member, product) pairs), so the layout is:
- one dict per state (cart / favorite / view) mapping product id → its members in that state, which makes a
  lookup filtered by a rule's watch set touch only the members that match;
- a product with a single member in a state stores the member id itself, not a one-element set (an empty
  ``set`` alone costs ~200 bytes; most products have few watchers);
- member and product ids are ``sys.intern``-ed, so each id string exists once however many products a
  member watches.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Iterator

WATCH_STATE_ORDER: tuple[str, ...] = ("cart", "favorite", "view")

_Entry = str | set[str]
_intern = sys.intern


class WatchIndex:
    """Reverse index product → {member id: state}; only states cart, favorite and view are kept."""

    __slots__ = ("_by_state", "_pairs")

    def __init__(self) -> None:
        # a literal, not a comprehension over WATCH_STATE_ORDER: the worker may build a spare one per event
        self._by_state: dict[str, dict[str, _Entry]] = {"cart": {}, "favorite": {}, "view": {}}
        self._pairs = 0

    def __len__(self) -> int:
        """Number of (member, product) pairs indexed."""
        return self._pairs

    def update(self, member_id: str, product_id: str, state: str | None) -> None:
        """Record ``member_id``'s current state on ``product_id`` (``None`` = no longer watching)."""
        by_state = self._by_state
        if state is not None:
            target = by_state.get(state)
            if target is None:
                raise ValueError(f"unknown watch state {state!r}")
            entry = target.get(product_id)
            if entry is not None and (entry == member_id if type(entry) is str else member_id in entry):
                return  # unchanged (the common case: another view of a viewed product); a member is
                # indexed under one state per product, so no other state can hold it
        member_id = _intern(member_id)
        for name, products in by_state.items():
            if name == state:
                continue
            entry = products.get(product_id)  # ``_discard``'s no-op cases inline: other members' entries
            if entry is None or (entry != member_id if type(entry) is str else member_id not in entry):
                continue
            if self._discard(products, product_id, member_id):
                self._pairs -= 1
        if state is not None and self._add(by_state[state], _intern(product_id), member_id):
            self._pairs += 1

    def state_of(self, member_id: str, product_id: str) -> str | None:
        for name, products in self._by_state.items():
            entry = products.get(product_id)
            if entry is not None and (entry == member_id if isinstance(entry, str) else member_id in entry):
                return name
        return None

    def members(self, product_id: str, states: Collection[str]) -> Iterator[str]:
        """Members whose state on ``product_id`` is in ``states`` (each once: a member has one state).

        A generator over the live index, so a fanout to 200k members allocates nothing per member. Do not
        ``update`` the same product while consuming it (Python forbids resizing a set during iteration);
        the worker consumes it synchronously within one trigger.
        """
        for name in WATCH_STATE_ORDER:
            if name not in states:
                continue
            entry = self._by_state[name].get(product_id)
            if entry is None:
                continue
            if isinstance(entry, str):
                yield entry
            else:
                yield from entry

    def count(self, product_id: str, states: Collection[str] = WATCH_STATE_ORDER) -> int:
        """How many members ``members(product_id, states)`` would yield."""
        total = 0
        for name in WATCH_STATE_ORDER:
            if name in states:
                entry = self._by_state[name].get(product_id)
                if entry is not None:
                    total += 1 if isinstance(entry, str) else len(entry)
        return total

    @staticmethod
    def _add(products: dict[str, _Entry], product_id: str, member_id: str) -> bool:
        entry = products.get(product_id)
        if entry is None:
            products[product_id] = member_id
            return True
        if isinstance(entry, str):
            if entry == member_id:
                return False
            products[product_id] = {entry, member_id}
            return True
        if member_id in entry:
            return False
        entry.add(member_id)
        return True

    @staticmethod
    def _discard(products: dict[str, _Entry], product_id: str, member_id: str) -> bool:
        entry = products.get(product_id)
        if entry is None:
            return False
        if isinstance(entry, str):
            if entry != member_id:
                return False
            del products[product_id]
            return True
        if member_id not in entry:
            return False
        entry.remove(member_id)
        if len(entry) == 1:
            products[product_id] = next(iter(entry))
        return True
