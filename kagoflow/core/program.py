"""The one interface every mail program of the engine implements (abandonment, price/stock watch, scenarios,
and whatever kind comes next: date, inactive, ...).

``kagoflow.core.engine.Engine`` is a composition of programs. For each member record it

1. fires every program's due at or before the record's ``ts`` (``fire_due(state, ts)``: a due equal to
   ``ts`` fires before the record),
2. applies the record to the shared behaviour state (``kagoflow.core.behaviour``: products, profile,
   orders, unsubscribe — facts every program reads),
3. hands the record to every program (``on_record``), which updates its own part of the member state and
   returns what the record made due *now* (decisions made at ``record.ts``).

Between records the caller asks ``next_due`` (the minimum over programs) and calls ``tick`` at or after it.
A program keeps everything it must remember in ``MemberState`` (serialized by ``MemberState.to_bytes``), so
the worker's changelogged table, a restart or a rebalance resume it; it may keep transient caches in
slots that are not serialized. Programs never see Kafka, Redis or the wall clock: times are the epoch-ms
values they are handed, so the worker and the backtest drive them identically.

Contract (stable; other programs plug in the same way):
- ``on_record`` is called after the record was applied to the behaviour state, with ``record.member_id ==
  state.member_id``. Return decisions made at ``record.ts`` (possibly none).
- Optional: ``reacts_to(record_type, beacon_type)`` (the record's class, and the beacon's ``type`` for a
  ``Beacon``, else None) returns False for records on which ``on_record`` would do nothing at all (no state
  change, no decision), whatever the state; the engine then skips the call (it asks once per class and
  beacon type). A program without the method gets every record.
- ``next_due`` returns the earliest time at which ``fire_due`` would decide something, or None. It must be
  cheap when the program has nothing pending for the member (it runs after every record).
- ``fire_due(state, now_ms, ...)`` decides everything due at or before ``now_ms``, at ``now_ms``
  (``Decision.at_ms``), keeping each decision's own ``due_ms``; after it, ``next_due`` is later than
  ``now_ms`` or None.
- Decisions a program returns as ``sent`` may still be turned into ``capped`` by the caller
  (``caps.apply_caps``) unless they are ``cap_exempt``.
"""

from __future__ import annotations

from typing import Protocol

from kagoflow.core.behaviour import MemberState
from kagoflow.core.catalog import CatalogLookup
from kagoflow.core.decisions import Decision
from kagoflow.core.events import MemberRecord


class Program(Protocol):
    """One kind of mail, driven by a member's records and the clock."""

    name: str
    """Short name for logs and metrics (``abandonment``, ``price_watch``, ``scenario``, ...)."""

    def on_record(self, state: MemberState, record: MemberRecord, *, catalog: CatalogLookup) -> list[Decision]:
        """React to one record already applied to ``state``; decisions made at ``record.ts``."""
        ...

    def next_due(self, state: MemberState) -> int | None:
        """Earliest pending due time of this program for the member, or None."""
        ...

    def fire_due(self, state: MemberState, now_ms: int, *, catalog: CatalogLookup) -> list[Decision]:
        """Decide everything due at or before ``now_ms`` (decisions made at ``now_ms``)."""
        ...
