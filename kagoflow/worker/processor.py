"""The member partitions' event handling: one stream over every member-keyed topic of a partition.

Faust-free runtime: it runs in the member engine process (or in the Faust process with
``KAGOFLOW_ENGINE_PROCESS=false``); ``agents/`` keeps only the Faust shells around it.

Beacons, profile updates, orders, ticks and catalog triggers of partition ``p`` arrive in one stream, so
member state is read and written only while an event of its own partition is current (Faust's rule for
table writes), and due mails fire from inside stream processing (tables cannot be written from timers).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import orjson

from kagoflow.core import pricewatch
from kagoflow.core.behaviour import MemberState
from kagoflow.core.caps import CapStore
from kagoflow.core.catalog import CatalogLookup, PriceTrigger
from kagoflow.core.couponing import CouponStep, IssuedCoupon
from kagoflow.core.coupons import CouponPool
from kagoflow.core.decisions import Decision
from kagoflow.core.engine import Engine
from kagoflow.core.errors import ContractError
from kagoflow.core.events import Beacon, Engagement, MemberRecord, MemberUpdate, new_beacon
from kagoflow.core.rules import RuleSet
from kagoflow.core.scenario import order_snapshot
from kagoflow.core.sending import finish_decisions
from kagoflow.core.shoptime import QUARTER_MS
from kagoflow.core.suppression import AddressBook, address_reason
from kagoflow.core.watchindex import WatchIndex
from kagoflow.settings import Settings
from kagoflow.streams import contract, deadletter
from kagoflow.streams.topics import Topics
from kagoflow.worker import buckets
from kagoflow.worker.book import PartitionBook, StateCache
from kagoflow.worker.datescan import DateScan

log = logging.getLogger(__name__)

Clock = Callable[[], int]
FLUSH_BUDGET_S = 0.003
"""Time spent writing buckets per handled event while a flush is under way (at least one bucket) ..."""
IDLE_FLUSH_BUDGET_S = 0.05
"""... and per tick, which arrives when the partition is quiet (once a second)."""
EMIT_CHUNK = 5000
"""Decisions of one price/stock fan-out produced at a time."""


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def profile_snapshot(state: MemberState) -> dict[str, Any] | None:
    """The profile a mail needs, carried on the decision so delivery never reads another partition's state."""
    if state.email is None:
        return None
    return {
        "email": state.email,
        "name": state.name,
        "opt_in": state.opt_in,
        "device": state.device,
        "locale": state.locale,
        "purchase_count": state.purchase_count,
    }


class StateTable(Protocol):
    """The slice of a Faust table the agent uses (raw bytes in, raw bytes out)."""

    def get(self, key: bytes) -> bytes | None: ...

    def __setitem__(self, key: bytes, value: bytes) -> None: ...


class Outbox(Protocol):
    """Where the agent sends records; returns an awaitable that completes when Kafka has them."""

    async def send(
        self, topic: str, *, key: bytes | None, value: bytes, partition: int | None = None
    ) -> Awaitable[Any]: ...

    async def send_many(self, topic: str, records: Sequence[tuple[bytes | None, bytes]], *,
                        partition: int | None = None) -> list[Any]: ...


class Ackable(Protocol):
    def ack(self) -> bool: ...


@dataclass
class Metrics:
    events: int = 0
    """Records handled (a batch record counts once) ..."""
    batched_beacons: int = 0
    """... and the beacons that came in batch records (``{"batch": […]}``)."""
    duplicates: int = 0
    dead_letters: int = 0
    dead_letter_failures: int = 0
    """Failed attempts to produce a dead letter (each is retried until Kafka has it)."""
    decisions: dict[str, int] = field(default_factory=dict)
    flushes: int = 0
    states_written: int = 0
    buckets_written: int = 0
    fire_lag_ms: deque[int] = field(default_factory=lambda: deque(maxlen=10_000))
    """The latest fire lags (decision time minus due time), for ``/metrics``."""
    coupons_issued: int = 0
    coupon_pool_empty: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "batched_beacons": self.batched_beacons,
            "duplicates": self.duplicates,
            "dead_letters": self.dead_letters,
            "dead_letter_failures": self.dead_letter_failures,
            "decisions": dict(self.decisions),
            "flushes": self.flushes,
            "states_written": self.states_written,
            "buckets_written": self.buckets_written,
            "fire_lag_ms": _lag_summary(self.fire_lag_ms),
            "coupons_issued": self.coupons_issued,
            "coupon_pool_empty": self.coupon_pool_empty,
        }


def _lag_summary(lags: deque[int]) -> dict[str, int] | None:
    if not lags:
        return None
    ordered = sorted(lags)
    return {"p50": ordered[len(ordered) // 2], "p99": ordered[(len(ordered) * 99) // 100], "max": ordered[-1]}


class MemberProcessor:
    """Feeds one partition-interleaved stream into the engine and carries out its decisions."""

    def __init__(
        self,
        *,
        engine: Engine,
        ruleset: RuleSet,
        table: StateTable,
        catalog: CatalogLookup,
        caps: CapStore,
        outbox: Outbox,
        flush_interval_ms: int,
        buckets_per_partition: int = 256,
        bucket_cache_bytes: int = 256 * 1024 * 1024,
        cache_capacity: int = 200_000,
        clock: Clock = wall_clock_ms,
        profile_of: Callable[[MemberState], dict[str, Any] | None],
        scan: Callable[[set[int]], Iterable[MemberState]],
        names: Topics,
        addresses: AddressBook | None = None,
        coupons: CouponPool | None = None,
        coupon_secret: str = "",
        partitions: int = 0,
    ) -> None:
        self.engine = engine
        self.partitions = partitions
        """Partition count of the member topics: a batch record's beacons must hash to its partition (0 = not
        checked)."""
        self.addresses = addresses
        """Cross-member suppression by e-mail address (``kagoflow.core.suppression``); None = off."""
        self._to_list: list[tuple[str, str]] = []
        """(email, reason) of unsubscribed / bounced members not yet written to ``addresses``."""
        self._listed_at: int | None = None
        """ts of the record whose unsubscribe / bounce this event lists: what is due at or before it fires
        before the listing (SPEC §11, as in the backtest)."""
        self.ruleset = ruleset
        self.table = table
        self.catalog = catalog
        self.caps = caps
        self.outbox = outbox
        self.flush_interval_ms = flush_interval_ms
        self.clock = clock
        self.profile_of = profile_of
        self.scan = scan
        self.names = names
        self.cache: StateCache[MemberState] = StateCache(
            capacity=cache_capacity, load=self._load, new=MemberState
        )
        self.buckets = buckets.BucketCache(buckets=buckets_per_partition, capacity_bytes=bucket_cache_bytes,
                                           load=self._load_bucket)
        self._kinds: dict[str, str] = {}
        """Topic → unprefixed kind, so the hot path does not slice strings per event."""
        self._partition = 0
        """Partition of the event being handled: the one whose members ``cache`` loads."""
        self.books: dict[int, PartitionBook[MemberState, Ackable]] = {}
        self.indexes: dict[int, WatchIndex] = {}
        self.unindexed: set[int] = set()
        self.metrics = Metrics()
        self.dates = DateScan(engine)
        self.coupon_step = CouponStep(ruleset.by_id.values(), pool=coupons, secret=coupon_secret,
                                      tz=ruleset.shop.timezone, on_empty=engine.coupon_pool_empty)

    # -- table access ----------------------------------------------------------------------------
    def _load_bucket(self, partition: int, bucket: int) -> bytes | None:
        key = buckets.bucket_key(partition, bucket)
        book = self.books.get(partition)
        staged = book.staged.get(key) if book is not None else None
        return staged if staged is not None else self.table.get(key)

    def _load(self, member_id: str) -> MemberState | None:
        raw = self.buckets.get(self._partition, member_id)
        return MemberState.from_bytes(raw) if raw is not None else None

    def _bucket_of(self, member_id: str) -> int:
        return buckets.bucket_of(member_id, self.buckets.buckets)

    def member_state(self, member_id: str) -> MemberState | None:
        """A member's state for the web views (outside stream processing): cached, else from any owned
        partition's bucket (the member is in at most one of them)."""
        state = self.cache.peek_cached(member_id)
        if state is not None:
            return state
        for partition in sorted(self.books):
            raw = self.buckets.get(partition, member_id)
            if raw is not None:
                return MemberState.from_bytes(raw)
        return None

    def book(self, partition: int) -> PartitionBook[MemberState, Ackable]:
        book = self.books.get(partition)
        if book is None:
            book = self.books[partition] = PartitionBook(partition=partition, last_flush_ms=self.clock())
        return book

    # -- entry point -------------------------------------------------------------------------------
    async def on_event(self, *, topic: str, partition: int, key: bytes | None, value: bytes | None,
                       timestamp_ms: int, offset: int, event: Ackable) -> None:
        """Handle one record; never raises on data (bad records go to ``<topic>.dlq``)."""
        book = self.books.get(partition) or self.book(partition)
        self._partition = partition
        if self.dates.active:
            self.dates.set_now(self.clock())
        if self.unindexed:
            self.rebuild()
        book.pending_acks.append(event)
        self.metrics.events += 1
        now = self.clock()
        decisions: list[Decision] = []
        budget = FLUSH_BUDGET_S
        try:
            kind = self._kinds.get(topic) or self._kinds.setdefault(topic, self.names.kind(topic))
            if kind == "beacons":
                data = contract.beacon_record(value)
                if type(data) is dict:
                    decisions = self._on_beacon(new_beacon(*contract.beacon_fields(data)), key, partition)
                else:
                    decisions = self._on_batch(book, topic, partition, offset, cast(list[Any], data))
            elif kind == "kagoflow-ticks":
                budget = IDLE_FLUSH_BUDGET_S
            elif kind == "kagoflow-catalog-events":
                await self._on_trigger(book, value, now)
            else:
                decisions = self._on_member_record(kind, key, value, timestamp_ms, partition, offset)
        except ContractError as exc:
            await self._dead_letter(book, topic, partition, offset, key, value, exc.reason)
        except Exception as exc:  # a bug must not kill the worker or lose the record: park it
            log.exception("unexpected error on %s[%d]@%d", topic, partition, offset)
            await self._dead_letter(book, topic, partition, offset, key, value,
                                    f"internal: {type(exc).__name__}: {exc}")
        # once per shop-local day: the partition's members with a date due soon (looked at once a quarter hour)
        dates = self.dates
        if dates.active and dates.checked_quarter.get(partition) != now // QUARTER_MS:
            dates.schedule_due(partition, now, self.cache.get, book.schedule, self.engine.next_due)
        if self._to_list:  # an unsubscribe / bounce reached a member's state: list its address, but first decide
            listed_at, self._listed_at = self._listed_at, None  # what was due at or before the record (§11)
            if listed_at is not None and book.due and book.due[0][0] <= min(listed_at, now):
                decisions += self._fire_due(partition, min(listed_at, now))
            if decisions:
                await self._emit(book, decisions)
                decisions = []
            await self._list_addresses(now)
        if book.due and book.due[0][0] <= now:
            decisions += self._fire_due(partition, now)
        if decisions:
            await self._emit(book, decisions)
        interval = self.flush_interval_ms  # the interval test first: no method call on most events
        if book.flushing is not None or (now - book.last_flush_ms >= interval and book.flush_due(now, interval)):
            await self._flush_step(book, now, budget_s=budget)

    # -- record kinds ------------------------------------------------------------------------------
    def _on_member_record(
        self, kind: str, key: bytes | None, value: bytes | None, timestamp_ms: int, partition: int, offset: int
    ) -> list[Decision]:
        record: MemberRecord | None
        if kind == "members":
            record = contract.parse_member(value, default_ts=timestamp_ms)
        elif kind == "orders":
            record = contract.parse_order(value, default_ts=timestamp_ms)
        elif kind == "engagement":
            record = contract.parse_engagement(value)
            if record is None:  # a delivery result that changes nothing in the member's state
                return []
        else:
            raise ContractError(f"topic: not a member topic {kind!r}")
        if key != record.member_id.encode():  # the key chose the partition whose state holds the member
            contract.check_key(key, record.member_id, "member_id")
        # Profiles and orders carry no event id: their offset identifies them, so a record replayed after a
        # crash (state flushed, offset not yet committed) is not applied twice. "\x00" never occurs in an id.
        return self._apply(record, f"\x00{kind}@{offset}", partition)

    def _on_beacon(self, beacon: Beacon, key: bytes | None, partition: int) -> list[Decision]:
        if key != beacon.member_id.encode():
            contract.check_key(key, beacon.member_id, "member_id")
        return self._apply(beacon, beacon.event_id, partition)

    def _on_batch(self, book: PartitionBook[MemberState, Ackable], topic: str, partition: int, offset: int,
                  items: list[Any]) -> list[Decision]:
        """A batch record (``{"batch": [beacon, …]}``, the collector's): each beacon as if it came alone, in
        order — deduplicated by its ``event_id``, and a bad one parked alone in ``<topic>.dlq`` (reason
        ``batch[i]. …``, its own bytes, its member as key) while the others go on. The record is acked
        once, like any record: after the flush that stores every beacon's effect."""
        decisions: list[Decision] = []
        partitions = self.partitions
        self.metrics.batched_beacons += len(items)
        for index in range(len(items)):
            try:
                beacon = new_beacon(*contract.batch_item(items, index))
                if partitions and contract.key_partition(beacon.member_id.encode(), partitions) != partition:
                    raise ContractError(f"batch[{index}].member_id: {beacon.member_id!r} belongs to partition "
                                        f"{contract.key_partition(beacon.member_id.encode(), partitions)}, "
                                        f"not {partition}")
                decisions += self._apply(beacon, beacon.event_id, partition)
            except Exception as exc:  # bad data (or a bug): park this beacon, carry on with the others
                reason = exc.reason if isinstance(exc, ContractError) else (
                    f"batch[{index}]: internal: {type(exc).__name__}: {exc}")
                if not isinstance(exc, ContractError):
                    log.exception("unexpected error on %s[%d]@%d batch[%d]", topic, partition, offset, index)
                item = items[index]
                member = item.get("member_id") if type(item) is dict else None
                self._dead_letter_now(book, topic, partition, offset,
                                      member.encode() if type(member) is str else None, orjson.dumps(item), reason)
        return decisions

    def _apply(self, record: MemberRecord, replay_key: str, partition: int) -> list[Decision]:
        """Apply one parsed record of ``partition`` to its member's state, unless it was applied before."""
        state = self.cache.get(record.member_id)
        if state.seen_event(replay_key):
            self.metrics.duplicates += 1
            return []
        state.touched = ()
        decisions, due = self.engine.handle_due(state, record, catalog=self.catalog)
        self._after_change(partition, state, state.touched, due)
        record_type = type(record)
        if (record_type is Engagement or record_type is MemberUpdate) and self.addresses is not None:
            reason = address_reason(state)
            if reason is not None:
                self._to_list.append((cast(str, state.email), reason))
                self._listed_at = record.ts if self._listed_at is None else min(self._listed_at, record.ts)
        return decisions

    async def _on_trigger(self, book: PartitionBook[MemberState, Ackable], value: bytes | None, now: int) -> None:
        """A price/stock trigger for this partition's watchers of one product.

        Immediate rules are decided here and emitted in chunks (a trigger may concern 200k members: the
        chunks bound the memory a fan-out holds at once); timed ones become pending mails in the members'
        states and fire from the due heap.
        """
        if value is None:
            return  # not ours (the catalog agent produces every trigger with a value)
        trigger = PriceTrigger.from_json(orjson.loads(value))
        rule = self.ruleset.by_id.get(trigger.rule_id)
        if rule is None:
            return
        partition = book.partition
        index = self.indexes.setdefault(partition, WatchIndex())
        if trigger.send_at_ms > trigger.change_ms:
            for state in pricewatch.fanout(trigger, rule, index, self.cache.get):
                self._after_change(partition, state, ())
            return
        chunk: list[Decision] = []
        for state, decision in pricewatch.decide_now(
            trigger, rule, index, self.cache.get, catalog=self.catalog, now_ms=now
        ):
            book.dirty.add(state.member_id)  # the fired mark of the day must be stored
            self.cache.pin(state.member_id)
            chunk.extend(self.engine.finish(state, [decision]))
            if len(chunk) >= EMIT_CHUNK:
                await self._emit(book, chunk)
                chunk = []
        if chunk:
            await self._emit(book, chunk)

    def _after_change(self, partition: int, state: MemberState, touched: Iterable[str],
                      due: int | bool | None = False) -> None:
        """Mark the changed state for the next flush and schedule its next due (``due``: as the engine
        returned it with the change; False = ask the engine)."""
        state.partition = partition
        book = self.books[partition]
        book.dirty.add(state.member_id)
        self.cache.pin(state.member_id)
        book.schedule(self.engine.next_due(state) if due is False else due, state.member_id)
        if self.dates.active:
            self.dates.index(partition, state)
        if touched and self.engine.price_rules:  # the index only serves price and stock mails
            index = self.indexes.get(partition)
            if index is None:
                index = self.indexes[partition] = WatchIndex()
            for product_id in touched:
                index.update(state.member_id, product_id, state.product_state(product_id))

    def _fire_due(self, partition: int, now: int) -> list[Decision]:
        book = self.books[partition]
        decisions: list[Decision] = []
        for member_id in list(book.pop_due(now)):
            state = self.cache.get(member_id)
            due = self.engine.next_due(state)
            if due is None or due > now:
                book.schedule(due, member_id)
                continue
            fired, due = self.engine.tick_due(state, now, catalog=self.catalog)
            for decision in fired:
                self.metrics.fire_lag_ms.append(decision.at_ms - decision.due_ms)
            decisions += fired
            self._after_change(partition, state, (), due)
        return decisions

    # -- effects -----------------------------------------------------------------------------------
    async def _emit(self, book: PartitionBook[MemberState, Ackable], decisions: list[Decision]) -> None:
        shop = self.ruleset.shop
        delay = [0.2]

        async def wait(exc: Exception) -> None:  # Redis away: the mail waits; it is never sent uncapped
            log.warning("cap store unavailable (%s); %d decisions wait %.1fs", exc, len(decisions), delay[0])
            await asyncio.sleep(delay[0])
            delay[0] = min(delay[0] * 2, 5.0)

        final, issued = await finish_decisions(
            decisions, caps=self.caps, limits=shop.caps, tz=shop.timezone, coupons=self.coupon_step,
            state_of=self.cache.peek, addresses=self.addresses, email_of=self._email_of, wait=wait)
        counts = self.metrics.decisions
        records: list[tuple[bytes | None, bytes]] = []
        dumps = orjson.dumps
        for decision in final:
            counts[decision.status] = counts.get(decision.status, 0) + 1
            payload = decision.to_json()
            if decision.status == "sent":
                state = self.cache.peek(decision.member_id)
                profile = self.profile_of(state) if state is not None else None
                if profile is not None and state is not None and decision.order_id is not None:
                    profile["order"] = order_snapshot(state, decision.order_id, shop.timezone)
                payload["profile"] = profile
            records.append((decision.member_id.encode(), dumps(payload)))
        # mail_decisions is co-partitioned with the member topics: a member's decisions go to its partition
        book.in_flight += await self.outbox.send_many(self.names.mail_decisions, records, partition=book.partition)
        if issued or self.coupon_step.pool_empty != self.metrics.coupon_pool_empty:
            await self._coupons_issued(book, final, issued)
        for decision in final:  # a scenario run ended by address suppression (``core.suppression``)
            if decision.status == "ended" and decision.reason == "suppressed":
                self._changed_after_core(book, decision.member_id)

    def _changed_after_core(self, book: PartitionBook[MemberState, Ackable], member_id: str) -> None:
        """Store and reschedule a member whose state ``finish_decisions`` changed."""
        state = self.cache.peek(member_id)
        if state is not None:
            book.dirty.add(member_id)
            self.cache.pin(member_id)
            book.schedule(self.engine.next_due(state), member_id)

    async def _coupons_issued(self, book: PartitionBook[MemberState, Ackable], final: list[Decision],
                              issued: list[IssuedCoupon]) -> None:
        """Store what the coupon step changed in member states (issued codes, reopened episodes) and produce
        the issued codes to ``coupons_issued`` (key = code) for the shop's cart system."""
        self.metrics.coupon_pool_empty = self.coupon_step.pool_empty
        self.metrics.coupons_issued += len(issued)
        for decision in final:
            if decision.coupon is not None or decision.reason == "coupon_pool_empty":  # incl. an ended run
                self._changed_after_core(book, decision.member_id)
        if issued:
            records = [(coupon.code.encode(), coupon.to_bytes()) for coupon in issued]
            book.in_flight += await self.outbox.send_many(self.names.coupons_issued, records)

    def _email_of(self, member_id: str) -> str | None:
        state = self.cache.peek(member_id)
        return None if state is None else state.email

    async def _list_addresses(self, now: int) -> None:
        """Write the addresses of members whose unsubscribe / bounce reached their state; on a Redis outage
        keep them for the next event (their states stay the durable record; ``rebuild`` re-lists them)."""
        assert self.addresses is not None
        entries, self._to_list = self._to_list, []
        try:
            await self.addresses.list_addresses(entries, now_ms=now)
        except Exception as exc:
            log.warning("address suppression list unavailable (%s); %d addresses wait", exc, len(entries))
            self._to_list = entries[-100_000:] + self._to_list

    async def _dead_letter(
        self, book: PartitionBook[MemberState, Ackable], topic: str, partition: int, offset: int,
        key: bytes | None, value: bytes | None, reason: str,
    ) -> None:
        """Park the record in ``<topic>.dlq``; the partition's next acks wait until Kafka has it (a failed
        produce is retried, never raised: see ``kagoflow.streams.deadletter``)."""
        self._dead_letter_now(book, topic, partition, offset, key, value, reason)

    def _dead_letter_now(
        self, book: PartitionBook[MemberState, Ackable], topic: str, partition: int, offset: int,
        key: bytes | None, value: bytes | None, reason: str,
    ) -> None:
        self.metrics.dead_letters += 1
        book.in_flight.append(asyncio.ensure_future(deadletter.park(
            self.outbox, topic, partition, offset, key, value, reason, on_retry=self._dead_letter_failed)))

    def _dead_letter_failed(self, exc: BaseException) -> None:
        self.metrics.dead_letter_failures += 1

    async def _flush_step(self, book: PartitionBook[MemberState, Ackable], now: int, *, budget_s: float) -> None:
        """Advance the partition's flush by some buckets; once all are encoded, wait for Kafka to have the
        records produced so far, store the buckets and ack the flush's events.

        Encoding a whole interval's buckets at once would stall the stream (and every due timer).
        """
        if book.flush_due(now, self.flush_interval_ms):
            book.start_flush(now, bucket_of=self._bucket_of)
        if book.flushing is None:
            return
        deadline = time.perf_counter() + budget_s
        while (item := book.next_bucket()) is not None:
            self._write_bucket(book, *item)
            if time.perf_counter() >= deadline:
                break
        if not book.flushing:
            acks, futures, staged = book.finish_flush()
            for future in futures:
                await future
            for key, value in staged.items():
                self.table[key] = value
            for event in acks:
                event.ack()
            self.metrics.flushes += 1

    def _write_bucket(self, book: PartitionBook[MemberState, Ackable], bucket: int, members: list[str]) -> None:
        partition = book.partition
        entries = self.buckets.entries(partition, bucket)
        for member_id in members:
            state = self.cache.peek_cached(member_id)
            if state is not None:
                # A copy: orjson's output object keeps a 4 KiB allocation whatever its length, and the bucket
                # cache holds these for long (measured: 4 GB at 1M members without the copy).
                entries[member_id] = bytes(memoryview(state.to_bytes()))
            if member_id not in book.dirty:
                self.cache.unpin(member_id)
        value = buckets.encode(entries, buckets=self.buckets.buckets)
        book.staged[buckets.bucket_key(partition, bucket)] = value
        self.buckets.stored(partition, bucket, len(value))
        self.metrics.states_written += len(members)
        self.metrics.buckets_written += 1

    # -- rebalance ---------------------------------------------------------------------------------
    def assign(self, partitions: set[int]) -> None:
        """Newly assigned partitions get their due heaps and watch indexes rebuilt at the next event."""
        self.unindexed |= partitions

    def rebuild(self) -> None:
        """One scan of the stored states rebuilds the due heaps and watch indexes of new partitions."""
        partitions, self.unindexed = self.unindexed, set()
        started = time.monotonic()
        count = 0
        for partition in partitions:
            self.book(partition).clear_due()
            self.indexes[partition] = WatchIndex()
            self.dates.reset(partition)
        for state in self.scan(partitions):
            owner = state.partition
            if owner is None or owner not in partitions:
                continue
            count += 1
            self.books[owner].schedule(self.engine.next_due(state), state.member_id)
            if self.dates.active:
                self.dates.index(owner, state)
            if self.addresses is not None and (reason := address_reason(state)) is not None:
                self._to_list.append((cast(str, state.email), reason))
            if not self.engine.price_rules:
                continue
            index = self.indexes[owner]
            for product_id in state.products:
                index.update(state.member_id, product_id, state.product_state(product_id))
        log.info("rebuilt due heaps and watch indexes of partitions %s from %d members in %.2fs",
                 sorted(partitions), count, time.monotonic() - started)

    def revoke(self, partitions: set[int]) -> None:
        """Forget revoked partitions: their unacked events are replayed by the new owner."""
        for partition in partitions:
            self.books.pop(partition, None)
            self.indexes.pop(partition, None)
            self.unindexed.discard(partition)
        self.dates.drop(partitions)
        self.cache.drop_where(lambda state: state.partition in partitions)
        self.buckets.drop_partitions(partitions)


class ScannableTable(StateTable, Protocol):
    def items(self) -> Iterable[tuple[bytes, bytes | None]]: ...


def make_processor(settings: Settings, ruleset: RuleSet, *, table: ScannableTable, catalog: CatalogLookup,
                   caps: CapStore, outbox: Outbox, addresses: AddressBook | None = None,
                   coupons: CouponPool | None = None) -> MemberProcessor:
    """The member processor as the worker (or its engine process) runs it, reading ``table``'s buckets."""

    def scan(partitions: set[int]) -> Iterator[MemberState]:
        for partition, _, raw in buckets.scan(iter(table.items()), buckets=settings.state_buckets,
                                              partitions=partitions):
            state = MemberState.from_bytes(raw)
            state.partition = partition
            yield state

    return MemberProcessor(
        names=Topics(settings.topic_prefix),
        engine=Engine(ruleset),
        ruleset=ruleset,
        table=table,
        catalog=catalog,
        caps=caps,
        outbox=outbox,
        flush_interval_ms=int(settings.state_flush_seconds * 1000),
        buckets_per_partition=settings.state_buckets,
        bucket_cache_bytes=settings.state_cache_mb * 1024 * 1024,
        profile_of=profile_snapshot,
        scan=scan,
        addresses=addresses,
        coupons=coupons,
        coupon_secret=settings.tracking_secret,
        partitions=settings.partitions,
    )
