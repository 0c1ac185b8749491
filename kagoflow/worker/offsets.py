"""Every record of a member partition reaches the member processor, in offset order, once per assignment.

Why: measured in the multi-worker test (3 workers, partitions moving every ~10 s), Faust sometimes hands the
agent a record fetched before a rebalance *after* it has seeked the partition back to its committed offset.
Faust then records that record's offset as read: the records between the committed offset and it are dropped
when they are fetched again ("DROPPED MESSAGE ROFF"), and its gap bookkeeping counts them as acknowledged, so
the next commit skips them. Their carts, orders and profile updates were lost (mails never decided).

So the member agent checks each record against the next offset it expects per topic-partition (the committed
offset when the partition was assigned): the expected one is processed; an older one was processed already
and is skipped; a newer one means records are missing: the agent seeks back to the expected offset (the caller
does it) and skips the newer records until the expected one comes. Offsets that do not exist (a compacted
topic, transaction markers) show up as a newer record still arriving ``grace_ms`` after the seek: then the
gap is accepted (and logged), so the partition never stalls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Verdict = Literal["process", "skip", "rewind"]
GRACE_MS = 3_000
"""How long after a seek back newer records are taken for ones fetched before it (they are already in memory
and come within milliseconds; the re-fetched expected record comes within a fetch round trip)."""


@dataclass(slots=True)
class OffsetGuard:
    """Next expected offset per (topic, partition); see the module docstring."""

    grace_ms: int = GRACE_MS
    _next: dict[tuple[str, int], int] = field(default_factory=dict)
    _rewinding: dict[tuple[str, int], int] = field(default_factory=dict)
    """(topic, partition) → when the seek back to its expected offset was asked for."""
    gaps_accepted: int = 0
    rewinds: int = 0

    def expect(self, topic: str, partition: int, offset: int) -> None:
        """The partition was (re)assigned: its records start at ``offset`` (the committed one)."""
        self._next[(topic, partition)] = offset
        self._rewinding.pop((topic, partition), None)

    def forget(self, partitions: set[int]) -> None:
        """Revoked partitions: no expectation until they are assigned again."""
        for key in [key for key in self._next if key[1] in partitions]:
            del self._next[key]
            self._rewinding.pop(key, None)

    def expected(self, topic: str, partition: int) -> int | None:
        return self._next.get((topic, partition))

    def check(self, topic: str, partition: int, offset: int, *, now_ms: int) -> Verdict:
        """What to do with a record; ``rewind``: seek ``(topic, partition)`` to ``expected`` and drop it."""
        key = (topic, partition)
        expected = self._next.get(key)
        if expected is None or offset == expected:
            self._next[key] = offset + 1
            self._rewinding.pop(key, None)
            return "process"
        if offset < expected:
            return "skip"
        since = self._rewinding.get(key)
        if since is None:
            self._rewinding[key] = now_ms
            self.rewinds += 1
            return "rewind"
        if now_ms - since < self.grace_ms:
            return "skip"
        # Still newer records long after the seek: offsets expected..offset-1 do not exist.
        self.gaps_accepted += 1
        self._next[key] = offset + 1
        del self._rewinding[key]
        return "process"
