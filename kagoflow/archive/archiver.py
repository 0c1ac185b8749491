"""The archive consumer: every record of the archived topics into ClickHouse, in batches, loss-free.

A plain aiokafka consumer group (``<app_id>-archive``), deliberately not a Faust agent: a ClickHouse outage
must pause the archive only, never the mail decisions (faust.md). Offsets are committed manually and only
after a batch is stored; while ClickHouse is down the same batch is retried with capped exponential backoff
and the partitions stay paused, so the backlog waits in Kafka rather than in memory. A crash or a rebalance
between insert and commit replays rows, which the ReplacingMergeTree tables collapse (schema.sql).

Owners call ``start()``, run ``run()`` as a task, and ``stop()`` at shutdown (flushes what is pending).
Cancelling the ``run()`` task is a crash as far as the archive is concerned: nothing uncommitted is lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from kagoflow.adapters.clickhouse import ArchiveError, ArchiveRowError, ClickHouseArchive
from kagoflow.archive.batch import Batch
from kagoflow.archive.rows import ARCHIVE_TOPICS, COLUMNS, MAPPERS, Mapper, Row
from kagoflow.core.errors import ContractError
from kagoflow.settings import Settings

log = logging.getLogger("kagoflow.archive")

FIRST_BACKOFF_SECONDS = 0.2
MAX_POLL_WAIT_MS = 500


@dataclass(slots=True)
class ArchiverMetrics:
    rows_inserted: dict[str, int] = field(default_factory=dict)
    """Per table."""
    records_skipped: dict[str, int] = field(default_factory=dict)
    """Per topic: records the contract rejects (the Faust worker puts input records on the DLQ)."""
    rows_rejected: dict[str, int] = field(default_factory=dict)
    """Per table: rows the driver could not encode (isolated one by one and left out; logged)."""
    batches: int = 0
    insert_seconds: float = 0.0
    """Wall time spent in successful ClickHouse inserts (the rest is Kafka fetch + parsing)."""
    retries: int = 0
    commits: int = 0
    commit_failures: int = 0
    last_error: str | None = None
    last_error_at_ms: int | None = None
    last_skip_reason: str | None = None
    last_flush_at_ms: int | None = None

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy (for the worker's metrics endpoint and logs)."""
        return {
            "rows_inserted": dict(self.rows_inserted),
            "rows_inserted_total": sum(self.rows_inserted.values()),
            "records_skipped": dict(self.records_skipped),
            "rows_rejected": dict(self.rows_rejected),
            "batches": self.batches,
            "insert_seconds": round(self.insert_seconds, 3),
            "retries": self.retries,
            "commits": self.commits,
            "commit_failures": self.commit_failures,
            "last_error": self.last_error,
            "last_error_at_ms": self.last_error_at_ms,
            "last_skip_reason": self.last_skip_reason,
            "last_flush_at_ms": self.last_flush_at_ms,
        }


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Archiver:
    """Archive consumer for ``topics``: a mapping Kafka topic name → archived kind (one of
    ``ARCHIVE_TOPICS``), or names each archived as itself; default: every kind under
    ``settings.topic_prefix`` + kind."""

    def __init__(
        self,
        settings: Settings,
        *,
        archive: ClickHouseArchive | None = None,
        topics: Sequence[str] | Mapping[str, str] | None = None,
        group_id: str | None = None,
        max_backoff_seconds: float = 5.0,
        stop_flush_seconds: float = 30.0,
    ) -> None:
        if topics is None:
            topics = {f"{settings.topic_prefix}{kind}": kind for kind in ARCHIVE_TOPICS}
        kinds = dict(topics) if isinstance(topics, Mapping) else {t: t for t in topics}
        unknown = sorted(k for k in kinds.values() if k not in MAPPERS)
        if unknown:
            raise ValueError(f"archive topics: no row mapping for {unknown}")
        self.settings = settings
        self._owns_archive = archive is None
        self.archive = archive or ClickHouseArchive.from_settings(settings)
        self.topics = tuple(kinds)
        self._routes: dict[str, tuple[str, Mapper]] = {name: MAPPERS[kind] for name, kind in kinds.items()}
        self.group_id = group_id or f"{settings.app_id}-archive"
        self.metrics = ArchiverMetrics()
        self._max_backoff = max_backoff_seconds
        self._stop_flush_seconds = stop_flush_seconds
        self._batch = Batch()
        self._consumer: AIOKafkaConsumer | None = None
        self._flush_lock = asyncio.Lock()
        self._generation = 0
        """Bumped when partitions are revoked: a batch being retried for the old assignment is abandoned."""
        self._stopping = False
        self._give_up_at: float | None = None
        self._running = False
        self._run_done = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Apply the schema (best effort: an unreachable ClickHouse is retried at the first insert)
        and join the consumer group."""
        if self._consumer is not None:
            return
        try:
            await self.archive.ensure_schema_async()
        except ArchiveError as exc:
            self._error(exc)
            log.warning("archive: schema not applied yet: %s", exc)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=self.group_id,
            client_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=10_000,
        )
        consumer.subscribe(list(self.topics), listener=_RebalanceListener(self))
        await consumer.start()
        self._consumer = consumer

    async def run(self) -> None:
        """Consume, batch, store, commit — until ``stop()``."""
        await self.start()
        consumer = self._require_consumer()
        self._running = True
        self._run_done.clear()
        try:
            while not self._stopping:
                room = max(1, self.settings.archive_batch_rows - self._batch.row_count)
                records = await consumer.getmany(timeout_ms=self._poll_wait_ms(), max_records=room)
                for tp, messages in records.items():
                    self._add(tp, messages)
                if self._batch.is_due(now=time.monotonic(), max_rows=self.settings.archive_batch_rows,
                                      max_seconds=self.settings.archive_batch_seconds):
                    await self._flush(retry=True)
        finally:
            self._running = False
            self._run_done.set()

    async def stop(self, *, flush: bool = True) -> None:
        """Stop consuming; with ``flush`` store and commit what is pending (retrying for at most
        ``stop_flush_seconds``), without it drop it uncommitted (it is re-read on the next start)."""
        self._stopping = True
        self._give_up_at = time.monotonic() + (self._stop_flush_seconds if flush else 0.0)
        if self._running:
            await self._run_done.wait()
        if flush:
            await self._flush(retry=True)
        else:
            self._batch.clear()
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            self._batch.clear()  # a revocation during stop() must not store an abandoned batch
            await consumer.stop()
        if self._owns_archive:
            await asyncio.to_thread(self.archive.close)

    @property
    def pending_rows(self) -> int:
        return self._batch.row_count

    # -- consuming -------------------------------------------------------------------------------

    def _require_consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("archiver not started")
        return self._consumer

    def _poll_wait_ms(self) -> int:
        if self._batch.empty:
            return MAX_POLL_WAIT_MS
        left = self.settings.archive_batch_seconds - self._batch.age(time.monotonic())
        return max(0, min(MAX_POLL_WAIT_MS, int(left * 1000)))

    def _add(self, tp: TopicPartition, messages: list[ConsumerRecord[bytes, bytes]]) -> None:
        table, mapper = self._routes[tp.topic]
        batch = self._batch
        rows = batch.rows.setdefault(table, [])
        before = len(rows)
        partition = tp.partition
        for msg in messages:
            try:
                if msg.value is None:
                    raise ContractError("record: empty value")
                row = mapper(msg.value, partition, msg.offset, msg.timestamp)
                if isinstance(row, list):  # a batch record's beacons
                    rows.extend(row)
                else:
                    rows.append(row)
            except ContractError as exc:
                self.metrics.records_skipped[tp.topic] = self.metrics.records_skipped.get(tp.topic, 0) + 1
                self.metrics.last_skip_reason = f"{tp.topic}[{partition}]@{msg.offset}: {exc.reason}"
        batch.row_count += len(rows) - before
        if messages:
            batch.mark(tp, messages[-1].offset)

    # -- storing ---------------------------------------------------------------------------------

    async def _flush(self, *, retry: bool) -> bool:
        """Store the batch and commit its offsets. Returns False if it was given up (not committed:
        it will be consumed again)."""
        async with self._flush_lock:
            batch = self._batch
            if batch.empty:
                return True
            generation = self._generation
            pending = list(batch.rows.items())
            attempt = 0
            paused = False
            try:
                while pending:
                    table, rows = pending[0]
                    try:
                        await self._insert(table, rows)
                        pending.pop(0)
                        continue
                    except ArchiveError as exc:
                        self._error(exc)
                        if not retry or self._given_up() or generation != self._generation:
                            log.warning("archive: batch of %d rows left uncommitted: %s",
                                        batch.row_count, exc)
                            return False
                        if exc.missing_object:
                            await self._try_ensure_schema()
                    delay = min(self._max_backoff, FIRST_BACKOFF_SECONDS * 2**attempt)
                    attempt += 1
                    self.metrics.retries += 1
                    log.warning("archive: ClickHouse insert failed (%s); retry %d in %.1fs",
                                self.metrics.last_error, attempt, delay)
                    paused = True
                    await self._idle(delay)
                    if generation != self._generation:
                        return False
                await self._commit(batch.offsets)
                batch.clear()
                self.metrics.batches += 1
                self.metrics.last_flush_at_ms = _now_ms()
                return True
            finally:
                if paused and self._consumer is not None:
                    self._consumer.resume(*self._consumer.assignment())

    async def _insert(self, table: str, rows: list[Row]) -> None:
        if not rows:
            return
        started = time.monotonic()
        try:
            count = await self.archive.insert_async(table, COLUMNS[table], rows)
        except ArchiveRowError:
            count = await self._insert_isolating(table, rows)
        self.metrics.insert_seconds += time.monotonic() - started
        self.metrics.rows_inserted[table] = self.metrics.rows_inserted.get(table, 0) + count

    async def _insert_isolating(self, table: str, rows: list[Row]) -> int:
        """Bisect a batch the driver cannot encode: store every good row, leave out (and log) the bad."""
        try:
            return await self.archive.insert_async(table, COLUMNS[table], rows)
        except ArchiveRowError as exc:
            if len(rows) == 1:
                self.metrics.rows_rejected[table] = self.metrics.rows_rejected.get(table, 0) + 1
                log.error("archive: %s row rejected: %s: %r", table, exc, rows[0])
                return 0
        middle = len(rows) // 2
        first = await self._insert_isolating(table, rows[:middle])
        return first + await self._insert_isolating(table, rows[middle:])

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        assigned = consumer.assignment()
        payload = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if not payload:
            return
        try:
            await consumer.commit(payload)
            self.metrics.commits += 1
        except KafkaError as exc:
            # The rows are stored; whoever consumes these partitions next re-reads them, the tables collapse.
            self.metrics.commit_failures += 1
            log.warning("archive: offset commit failed (rows are stored, replay is harmless): %r", exc)

    async def _idle(self, seconds: float) -> None:
        """Wait while keeping the group membership alive: poll with every partition paused (a consumer
        that stops polling for max_poll_interval_ms is expelled from the group)."""
        consumer = self._consumer
        if consumer is None:
            await asyncio.sleep(seconds)
            return
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            consumer.pause(*consumer.assignment())
            records = await consumer.getmany(timeout_ms=max(1, int(min(left, 1.0) * 1000)))
            for tp, messages in records.items():  # fetched before the pause took effect: read them later
                consumer.seek(tp, messages[0].offset)
            if not records:
                await asyncio.sleep(max(0.0, min(deadline - time.monotonic(), 0.05)))

    async def _try_ensure_schema(self) -> None:
        try:
            await self.archive.ensure_schema_async()
        except ArchiveError as exc:
            self._error(exc)

    def _given_up(self) -> bool:
        return self._give_up_at is not None and time.monotonic() >= self._give_up_at

    def _error(self, exc: Exception) -> None:
        self.metrics.last_error = str(exc)
        self.metrics.last_error_at_ms = _now_ms()

    async def _on_revoked(self) -> None:
        """Before partitions move: store and commit the batch once; if that fails, drop it uncommitted
        (the next owner of each partition re-reads it from the last commit)."""
        self._generation += 1
        if not self._batch.empty:
            stored = await self._flush(retry=False)
            if not stored:
                self._batch.clear()


class _RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, archiver: Archiver) -> None:
        self._archiver = archiver

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._archiver._on_revoked()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("archive: assigned %d partitions", len(assigned))
