"""Per-partition bookkeeping of the member agent.

Why this exists: a Faust table write is only legal while an event *of the same partition* is being
processed (the store and the changelog partition come from the current event). So the worker keeps
changed member state in memory, and writes each changed member once per flush interval, at a moment
when it handles an event (a beacon or a tick) of that member's partition. Offsets of the events that
produced the change are acknowledged only after that write, so a crash replays them.

Due times live in a heap per partition. Heap entries can be stale (a due time moved); the caller checks
the member's current ``next_due`` when popping, so no entry has to be removed eagerly.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

S = TypeVar("S")
E = TypeVar("E")


@dataclass(slots=True)
class PartitionBook(Generic[S, E]):
    """What one partition owes: dirty members to write, events to ack, due times to fire.

    ``scheduled`` holds, per member, the time of its live heap entry: at or before its current due time.
    The heap may also hold superseded entries (a due time that moved earlier, or was dropped), which are
    skipped when popped and compacted away when they outnumber the live ones, so memory stays
    O(members with a due time).
    """

    partition: int
    dirty: set[str] = field(default_factory=set)
    pending_acks: list[E] = field(default_factory=list)
    due: list[tuple[int, str]] = field(default_factory=list)
    scheduled: dict[str, int] = field(default_factory=dict)
    last_flush_ms: int = 0
    in_flight: list[Any] = field(default_factory=list)
    """Futures of records produced on behalf of this partition's unacked events."""
    flushing: list[tuple[int, list[str]]] | None = None
    """(bucket, members) of the flush under way, written a few buckets per event so a flush never stalls
    the stream."""
    flushing_acks: list[E] = field(default_factory=list)
    flushing_futures: list[Any] = field(default_factory=list)
    staged: dict[bytes, bytes] = field(default_factory=dict)
    """Bucket values the flush under way has encoded, stored only once Kafka has every record produced
    before them: a stored state with a fired timer whose decision never reached Kafka would lose the mail
    (a restart does not decide it again)."""

    def schedule(self, due_ms: int | None, member_id: str) -> None:
        """Make sure the member is looked at no later than ``due_ms`` (None: not at all).

        A due time that moved later keeps the earlier heap entry: when it pops, the caller finds the member
        not yet due and schedules it again. The ``last_access`` clock moves a member's due time with every
        beacon, so this saves a heap push per beacon at the cost of one extra pop per session.
        """
        if due_ms is None:
            self.scheduled.pop(member_id, None)
            return
        queued = self.scheduled.get(member_id)
        if queued is not None and queued <= due_ms:
            return
        self.scheduled[member_id] = due_ms
        heapq.heappush(self.due, (due_ms, member_id))
        if len(self.due) > 2 * len(self.scheduled) + 1024:
            self.due = [(due, member) for member, due in self.scheduled.items()]
            heapq.heapify(self.due)

    def pop_due(self, now_ms: int) -> Iterator[str]:
        """Member ids queued at or before ``now_ms`` (each once; unscheduled on pop). A member may not be
        due yet (its due time moved later): the caller checks and schedules it again."""
        while self.due and self.due[0][0] <= now_ms:
            due_ms, member_id = heapq.heappop(self.due)
            if self.scheduled.get(member_id) == due_ms:
                del self.scheduled[member_id]
                yield member_id

    def next_due_ms(self) -> int | None:
        while self.due and self.scheduled.get(self.due[0][1]) != self.due[0][0]:
            heapq.heappop(self.due)
        return self.due[0][0] if self.due else None

    def clear_due(self) -> None:
        self.due.clear()
        self.scheduled.clear()

    def flush_due(self, now_ms: int, interval_ms: int) -> bool:
        return (
            self.flushing is None
            and bool(self.dirty or self.pending_acks)
            and now_ms - self.last_flush_ms >= interval_ms
        )

    def start_flush(self, now_ms: int, *, bucket_of: Callable[[str], int]) -> None:
        """Snapshot what the flush covers: the members changed so far, grouped by storage bucket, and the
        events that changed them."""
        groups: dict[int, list[str]] = {}
        for member_id in self.dirty:
            bucket = bucket_of(member_id)
            members = groups.get(bucket)
            if members is None:
                groups[bucket] = [member_id]
            else:
                members.append(member_id)
        self.flushing = list(groups.items())
        self.dirty = set()
        self.flushing_acks, self.pending_acks = self.pending_acks, []
        self.flushing_futures, self.in_flight = self.in_flight, []
        self.last_flush_ms = now_ms

    def next_bucket(self) -> tuple[int, list[str]] | None:
        """The next (bucket, members) to write, None when the flush has written them all."""
        assert self.flushing is not None
        return self.flushing.pop() if self.flushing else None

    def finish_flush(self) -> tuple[list[E], list[Any], dict[bytes, bytes]]:
        """The events to ack, the futures to await and the bucket values to store once every snapshotted
        bucket is encoded. The futures include the records produced during the flush (``in_flight``, kept
        for the next flush too): the staged values may already reflect them."""
        acks, futures, staged = self.flushing_acks, self.flushing_futures + self.in_flight, self.staged
        self.flushing, self.flushing_acks, self.flushing_futures, self.staged = None, [], [], {}
        return acks, futures, staged


class StateCache(Generic[S]):
    """Decoded member states: pinned (changed, not yet written) ones, plus a bounded LRU of clean ones.

    Pinned states live apart from the LRU so eviction is O(1) and never has to skip them; ``load``
    decodes from the table on a miss (``None`` = a new member).
    """

    def __init__(self, *, capacity: int, load: Callable[[str], S | None], new: Callable[[str], S]) -> None:
        self._capacity = capacity
        self._load = load
        self._new = new
        self._clean: OrderedDict[str, S] = OrderedDict()
        self._pinned: dict[str, S] = {}

    def get(self, member_id: str) -> S:
        state = self._pinned.get(member_id)
        if state is not None:
            return state
        state = self._clean.get(member_id)
        if state is not None:
            self._clean.move_to_end(member_id)
            return state
        loaded = self._load(member_id)
        state = loaded if loaded is not None else self._new(member_id)
        self._clean[member_id] = state
        self._evict()
        return state

    def peek(self, member_id: str) -> S | None:
        """The cached or stored state, without creating a new one."""
        state = self.peek_cached(member_id)
        return state if state is not None else self._load(member_id)

    def peek_cached(self, member_id: str) -> S | None:
        """The cached state (changed or clean), without loading or creating one."""
        state = self._pinned.get(member_id)
        return state if state is not None else self._clean.get(member_id)

    def pin(self, member_id: str) -> None:
        """Keep a changed state in memory until it is written (it may not be evicted before)."""
        state = self._clean.pop(member_id, None)
        if state is not None:
            self._pinned[member_id] = state

    def unpin(self, member_id: str) -> None:
        state = self._pinned.pop(member_id, None)
        if state is not None:
            self._clean[member_id] = state
            self._evict()

    def drop_where(self, predicate: Callable[[S], bool]) -> None:
        """Forget (also pinned) states matching ``predicate`` — used for revoked partitions."""
        for states in (self._clean, self._pinned):
            for member_id in [m for m, state in states.items() if predicate(state)]:
                del states[member_id]

    def _evict(self) -> None:
        while len(self._clean) > self._capacity:
            self._clean.popitem(last=False)

    def __len__(self) -> int:
        return len(self._clean) + len(self._pinned)
