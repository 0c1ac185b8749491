"""Every record of a member partition reaches the member processor, in offset order, once per assignment.

Why: measured in the multi-worker test (3 workers, partitions moving every ~10 s), Faust sometimes hands the
agent a record fetched before a rebalance *after* it has seeked the partition back to its committed offset.
Faust then records that record's offset as read: the records between the committed offset and it are dropped
when they are fetched again ("DROPPED MESSAGE ROFF"), and its gap bookkeeping counts them as acknowledged, so
the next commit skips them. Their carts, orders and profile updates were lost (mails never decided). Seeking
back does not help: more records of the old fetch follow and move Faust's read offset forward again.

So the member agent checks each record against the next offset it expects per topic-partition (the committed
offset when the partition was assigned): the expected one is processed; an older one was handed over already
and is skipped; a newer one means records are missing: the agent reads them straight from Kafka (``fill``)
and hands them over first, in order. They are processed before the newer record, so the flush that
acknowledges it (and lets Faust commit past them) has stored their effects too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Verdict = Literal["process", "skip", "fill"]


@dataclass(slots=True)
class OffsetGuard:
    """Next expected offset per (topic, partition); see the module docstring."""

    _next: dict[tuple[str, int], int] = field(default_factory=dict)
    fills: int = 0
    """Gaps found (each filled from Kafka before the record after it)."""

    def expect(self, topic: str, partition: int, offset: int) -> None:
        """The partition was (re)assigned: its records start at ``offset`` (the committed one)."""
        self._next[(topic, partition)] = offset

    def forget(self, partitions: set[int]) -> None:
        """Revoked partitions: no expectation until they are assigned again."""
        for key in [key for key in self._next if key[1] in partitions]:
            del self._next[key]

    def expected(self, topic: str, partition: int) -> int | None:
        return self._next.get((topic, partition))

    def check(self, topic: str, partition: int, offset: int) -> tuple[Verdict, int]:
        """What to do with a record: ``("fill", start)`` — first hand over the records ``start..offset-1``
        (read from Kafka), then this one."""
        key = (topic, partition)
        expected = self._next.get(key)
        if expected is not None and offset < expected:
            return "skip", offset
        self._next[key] = offset + 1
        if expected is None or offset == expected:
            return "process", offset
        self.fills += 1
        return "fill", expected
