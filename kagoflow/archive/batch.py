"""An archive batch: rows per table plus the Kafka offsets they cover.

The offsets are committed only after every row of the batch is stored, so a crash between insert and
commit replays rows (which the ReplacingMergeTree tables collapse) but never loses one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from kagoflow.archive.rows import Row


@dataclass(slots=True)
class Batch:
    rows: dict[str, list[Row]] = field(default_factory=dict)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    """Next offset to consume per partition (last archived or skipped offset + 1): the commit payload."""
    row_count: int = 0
    started_at: float | None = None
    """``time.monotonic()`` when the first record (row or skipped) entered the batch."""

    def add(self, table: str, row: Row) -> None:
        rows = self.rows.get(table)
        if rows is None:
            rows = self.rows[table] = []
        rows.append(row)
        self.row_count += 1

    def mark(self, tp: TopicPartition, offset: int) -> None:
        """Record that ``offset`` of ``tp`` is covered (archived with this batch, or skipped)."""
        self.offsets[tp] = offset + 1
        if self.started_at is None:
            self.started_at = time.monotonic()

    @property
    def empty(self) -> bool:
        return not self.offsets

    def age(self, now: float) -> float:
        return 0.0 if self.started_at is None else now - self.started_at

    def is_due(self, *, now: float, max_rows: int, max_seconds: float) -> bool:
        return self.row_count >= max_rows or (not self.empty and self.age(now) >= max_seconds)

    def clear(self) -> None:
        self.rows = {}
        self.offsets = {}
        self.row_count = 0
        self.started_at = None
