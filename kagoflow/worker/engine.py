"""The member engine process: the worker's member processing, beside the Faust process.

Why a process: Faust's per-record path (fetch, decode, conductor, stream iterator, ack) fills one core
with no work of ours; parsing, the behaviour state, timers and decisions on the same event loop made the
worker a third slower than Faust alone. Here they run on another core. The Faust process forwards every
record of the member topics in arrival order (``kagoflow.worker.engine_link``), stores the bucket values
this process hands back in its RocksDB table, and acks records once their effects are stored.

The ClickHouse archiver (``KAGOFLOW_ARCHIVE_ENABLED``) runs here too. Everything else is the in-process
design unchanged: ``MemberProcessor`` with its own Kafka producer
(decisions, dead letters), Redis cap store and catalog follower; its table is ``RecordingTable`` — the
stored buckets of the assigned partitions (sent by the worker on assignment) plus the writes not yet
handed back. A record's ack comes after the writes of the flush that covers it, in the same frame.

Run by the worker: ``python -m kagoflow.worker.engine --in-fd N --out-fd M --control-fd C`` (pipes it
created: events in, results out, revocations and queries in).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import orjson

from kagoflow.adapters.catalog_follower import CatalogFollower
from kagoflow.adapters.coupon_pool import RedisCouponPool
from kagoflow.adapters.decision_gate import DecisionGate
from kagoflow.adapters.kafka_outbox import KafkaOutbox
from kagoflow.adapters.redis_store import RedisStore
from kagoflow.loading import load_ruleset
from kagoflow.settings import Settings
from kagoflow.streams.topics import Topics
from kagoflow.worker import buckets, frames
from kagoflow.worker.processor import MemberProcessor, make_processor

log = logging.getLogger("kagoflow.engine")
EXIT_DEADLINE_S = 45.0
"""How long the clean-up after the worker closed the pipe may take (the archiver's final flush gives up
after 30 s)."""


def _exit_now() -> None:
    log.warning("member engine: clean-up still running after %.0f s; exiting now", EXIT_DEADLINE_S)
    logging.shutdown()
    os._exit(0)


def member_topics(names: Topics) -> list[str]:
    """The topics the member agent reads, in the order both processes index them (new topics go last).
    ``engagement`` is co-partitioned with the member topics (key = member id): unsubscribes, bounces, opens
    and clicks reach the member's state (SPEC §12)."""
    return [names.beacons, names.members, names.orders, names.ticks, names.catalog_events, names.engagement]


def metrics_document(processor: MemberProcessor, archiver: Any) -> dict[str, Any]:
    """``{"members": …, "archive": …}`` for the worker's ``/metrics`` (from whichever process runs them)."""
    return {"members": processor.metrics.as_dict(),
            "archive": archiver.metrics.snapshot() if archiver is not None else None}


class RecordingTable:
    """The engine's member table: stored buckets of its partitions, and the writes not yet handed back."""

    def __init__(self) -> None:
        self.values: dict[bytes, bytes] = {}
        self.writes: dict[bytes, bytes] = {}
        self.closed: set[int] = set()
        """Partitions revoked while a record of theirs is being handled: what that record writes is dropped."""

    def get(self, key: bytes) -> bytes | None:
        return self.values.get(key)

    def __setitem__(self, key: bytes, value: bytes) -> None:
        if self.closed and _partition_of(key) in self.closed:
            return
        self.values[key] = value
        self.writes[key] = value

    def items(self) -> Iterator[tuple[bytes, bytes | None]]:
        return iter(list(self.values.items()))

    def take_writes(self) -> list[tuple[bytes, bytes]]:
        writes, self.writes = list(self.writes.items()), {}
        return writes

    def close(self, partitions: set[int]) -> None:
        """Drop the partitions' writes not handed back yet, and refuse new ones (their values stay readable
        until ``drop_partitions``)."""
        self.closed |= partitions
        for key in [k for k in self.writes if _partition_of(k) in partitions]:
            del self.writes[key]

    def drop_partitions(self, partitions: set[int]) -> None:
        for table in (self.values, self.writes):
            for key in [k for k in table if _partition_of(k) in partitions]:
                del table[key]
        self.closed -= partitions


def _partition_of(key: bytes) -> int:
    return (buckets.parse_key(key) or (-1, 0))[0]


class _SeqAck:
    """Stands for one forwarded record: acking it records its sequence number for the worker."""

    __slots__ = ("acks", "partition", "seq")

    def __init__(self, acks: dict[int, int], partition: int, seq: int) -> None:
        self.acks, self.partition, self.seq = acks, partition, seq

    def ack(self) -> bool:
        if self.seq > self.acks.get(self.partition, -1):
            self.acks[self.partition] = self.seq
        return True


class EngineServer:
    """Reads frames from the worker, runs them through the processor, writes results back.

    Records, stored buckets and assignments come in order on the events pipe; revocations and queries on the
    control pipe, handled at once even while a record waits (a flush waits until Kafka has the records its
    events produced — up to the decision gate's lease for a decision a dead worker claimed): Faust's
    rebalance waits for the revocation's answer, and so would every worker of the group. A revocation drops
    the partitions' events sent before it and not yet handled (their next owner replays them) and forgets
    the partitions; if the record being handled is one of theirs, it finishes first — its decisions pass the
    decision gate like the next owner's, its writes are dropped — and the partition is forgotten after it.
    """

    def __init__(self, processor: MemberProcessor, table: RecordingTable, topics: list[str],
                 writer: asyncio.StreamWriter, *, archiver: Any = None) -> None:
        self.processor = processor
        self.archiver = archiver
        self.table = table
        self.topics = topics
        self.writer = writer
        self.seq = 0
        self.epoch = 0
        self.acks: dict[int, int] = {}
        self.skip_before: dict[int, int] = {}
        """Partition → sequence number of the first event sent after its latest revocation ..."""
        self.revoked_at: dict[int, int] = {}
        """... and the link epoch of that revocation."""
        self.current: int | None = None
        """Partition of the record being handled."""
        self.deferred: set[int] = set()
        """Revoked partitions forgotten once the record being handled is done."""

    async def run(self, reader: asyncio.StreamReader, control: asyncio.StreamReader) -> None:
        """Handle frames until the worker closes the streams."""
        events = asyncio.ensure_future(self._read(reader))
        controls = asyncio.ensure_future(self._read(control))
        try:
            done, _ = await asyncio.wait((events, controls), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a broken frame ends the engine (the worker exits and restarts it)
            await events
        finally:
            events.cancel()
            controls.cancel()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while (item := await frames.read_frame(reader)) is not None:
            await self.handle(*item)

    async def handle(self, kind: int, payload: memoryview) -> None:
        if kind == frames.EVENTS:
            await self._events(payload)
        elif kind == frames.BUCKETS:
            self.table.values.update(frames.decode_items(payload)[0])
        elif kind == frames.ASSIGN:
            self.epoch += 1
            link_epoch, partitions = frames.decode_assign(payload)
            stale = {p for p in partitions if link_epoch < self.revoked_at.get(p, -1)}  # revoked since
            self.table.drop_partitions(stale)  # the buckets sent with it
            self.processor.assign(partitions - stale)
        elif kind == frames.REVOKE:
            self._revoke(*frames.decode_revoke(payload))
        elif kind == frames.QUERY_T:
            self._query(payload)
        else:
            raise ValueError(f"unknown frame type {kind!r}")

    def _revoke(self, before_seq: int, link_epoch: int, partitions: set[int]) -> None:
        self.epoch += 1
        for partition in partitions:
            self.skip_before[partition] = before_seq
            self.revoked_at[partition] = link_epoch
        if self.current in partitions:
            self.deferred.add(self.current)
            self.table.close({self.current})
        self._forget(partitions - self.deferred)

    def _forget(self, partitions: set[int]) -> None:
        self.processor.revoke(partitions)
        self.table.drop_partitions(partitions)
        for partition in partitions:
            self.acks.pop(partition, None)

    async def _events(self, payload: memoryview) -> None:
        on_event, topics, acks, skip = self.processor.on_event, self.topics, self.acks, self.skip_before
        for topic, partition, offset, timestamp_ms, key, value in frames.decode_events(payload):
            if skip and self.seq < skip.get(partition, -1):  # revoked since it was sent: the next owner's
                self.seq += 1
                continue
            self.current = partition
            await on_event(topic=topics[topic], partition=partition, key=key, value=value,
                           timestamp_ms=timestamp_ms, offset=offset, event=_SeqAck(acks, partition, self.seq))
            self.current = None
            self.seq += 1
            if self.deferred:
                deferred, self.deferred = self.deferred, set()
                self._forget(deferred)
        writes = self.table.take_writes()
        if writes or acks:
            self.writer.write(frames.frame(frames.RESULTS, frames.encode_results(self.epoch, writes, acks)))
            acks.clear()
            await self.writer.drain()

    def _query(self, payload: memoryview) -> None:
        request_id, what = frames.QUERY.unpack_from(payload, 0)
        argument = bytes(payload[frames.QUERY.size:])
        reply = b""
        if what == ord("s"):
            state = self.processor.member_state(argument.decode())
            reply = state.to_bytes() if state is not None else b""
        elif what == ord("m"):
            reply = orjson.dumps(metrics_document(self.processor, self.archiver))
        self.writer.write(frames.frame(frames.REPLY_T, frames.REPLY.pack(request_id) + reply))


async def serve(settings: Settings, *, in_fd: int, out_fd: int, control_fd: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(in_fd, "rb", 0))
    control = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(control), os.fdopen(control_fd, "rb", 0))
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), os.fdopen(out_fd, "wb", 0))
    transport.set_write_buffer_limits(high=4 << 20)
    writer = asyncio.StreamWriter(transport, protocol, None, loop)

    ruleset = load_ruleset(settings)
    names = Topics(settings.topic_prefix)
    table = RecordingTable()
    catalog = CatalogFollower(bootstrap=settings.kafka_bootstrap, tz=ruleset.shop.timezone, topic=names.catalog)
    store = RedisStore.from_url(settings.redis_url, prefix=f"{settings.app_id}:")
    # Each decision reaches mail_decisions once across replays and partition handovers (decision_gate.py).
    outbox = DecisionGate(KafkaOutbox(bootstrap=settings.kafka_bootstrap, client_id=f"{settings.app_id}-engine"),
                          store.client, prefix=f"{settings.app_id}:", topic=names.mail_decisions)
    coupons = RedisCouponPool(store.client, prefix=f"{settings.app_id}:")
    await coupons.load_all(ruleset.coupon_pools)  # idempotent; every worker may do it
    await store.migrate_suppression_hashes()  # an earlier version's two global hashes; idempotent
    processor = make_processor(settings, ruleset, table=table, catalog=catalog, caps=store.caps, outbox=outbox,
                               addresses=store, coupons=coupons)
    await outbox.start()
    await catalog.start()
    archiver = None
    if settings.archive_enabled:  # here, not in the Faust process: its Kafka reads and inserts take CPU
        from kagoflow.archive.archiver import Archiver

        archiver = Archiver(settings)
        await archiver.start()
        archiving = asyncio.ensure_future(archiver.run())
    from kagoflow.worker.rules_reload import RulesReloader, swap_rules

    reloader = RulesReloader(settings.rules_dir, lambda: load_ruleset(settings),
                             lambda rules: swap_rules(processor, rules))
    reloading = asyncio.ensure_future(reloader.run())
    try:
        await catalog.caught_up.wait()
        engine = EngineServer(processor, table, member_topics(names), writer, archiver=archiver)
        log.info("member engine ready (pid %d)", os.getpid())
        await engine.run(reader, control)
        log.info("member engine: the worker closed the pipe after %d records; exiting", engine.seq)
    finally:
        # Its worker is gone: whatever the clean-up waits for (an archive flush to an unreachable ClickHouse,
        # a Kafka client leaving its group), the process ends — seen: engines idling for 30 min after their
        # worker was SIGKILLed, still members of the archive group.
        watchdog = threading.Timer(EXIT_DEADLINE_S, _exit_now)
        watchdog.daemon = True
        watchdog.start()
        reloading.cancel()
        if archiver is not None:
            await archiver.stop()  # flushes the pending batch and leaves the group at once
            await archiving
        await catalog.stop()
        await outbox.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kagoflow.worker.engine",
                                     description="member engine process (started by the worker)")
    parser.add_argument("--in-fd", type=int, required=True)
    parser.add_argument("--out-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] engine: %(message)s")
    import gc

    import uvloop

    gc.set_threshold(50_000, 20, 20)  # as the worker: many small long-lived states
    uvloop.run(serve(settings, in_fd=args.in_fd, out_fd=args.out_fd, control_fd=args.control_fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
