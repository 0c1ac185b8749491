"""Backtest (SPEC §9): recorded JSONL inputs through the very same decision core, on a virtual clock.

``Replay`` is the clock-driven loop (also used by the core's scenario tests): before each record the clock
advances to the record's ``ts``, firing every member's due at or before it in due order (a due equal to
``ts`` fires first); then the record is handled; after the last record the clock runs on until nothing is
pending. Caps and coupons go through ``core.sending`` with an ``InMemoryCapStore`` exactly as the worker uses Redis.

``run_backtest`` merges the input files in ``ts`` order (ties: members, catalog, orders, engagement, beacons,
then input order) as a stream: files that are already in ``ts`` order (the normal case) are never held in
memory; a file that is not is sorted in memory first.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast

import orjson

from kagoflow.core.behaviour import MemberState
from kagoflow.core.caps import InMemoryCapStore
from kagoflow.core.catalog import ProductInfo, apply_catalog
from kagoflow.core.couponing import CouponStep, IssuedCoupon
from kagoflow.core.coupons import MemoryCouponPool
from kagoflow.core.decisions import Decision
from kagoflow.core.engine import Engine
from kagoflow.core.errors import ContractError
from kagoflow.core.events import Beacon, CatalogUpdate, Engagement, MemberRecord, MemberUpdate, Record
from kagoflow.core.rules import RuleSet, load_rules
from kagoflow.core.sending import finish_decisions
from kagoflow.core.suppression import InMemoryAddressBook, address_reason
from kagoflow.core.watchindex import WatchIndex

if TYPE_CHECKING:
    from kagoflow.settings import Settings

STATUSES = ("sent", "capped", "suppressed", "skipped")
"""Summary columns; ``held_out`` gets a column when it occurs."""
LIFE_STATUSES = ("started", "ended", "converted")
"""Summary columns added when the rules hold scenarios."""
RUN_ON_DAYS = 400
"""SPEC §13: after the last record the clock runs on until nothing is pending or for at most 400 days."""
PROGRESS_EVERY = 20_000
"""Records between progress updates (on a terminal: one redrawn line; otherwise: one line per 20 updates)."""
GC_THRESHOLDS = (50_000, 20, 20)
"""The garbage collector's thresholds during a backtest (the worker's)."""


class Replay:
    """Virtual-clock driver of ``Engine`` over a merged record stream; holds all member states in memory."""

    def __init__(self, rules: RuleSet, *, secret: str = "backtest") -> None:
        self.engine = Engine(rules)
        self.shop = rules.shop
        self.coupons = CouponStep(rules.by_id.values(), pool=MemoryCouponPool(rules.coupon_pools),
                                  secret=secret, tz=rules.shop.timezone, on_empty=self.engine.coupon_pool_empty)
        self.issued: list[IssuedCoupon] = []
        self.states: dict[str, MemberState] = {}
        self.catalog: dict[str, ProductInfo] = {}
        self.caps = InMemoryCapStore()
        self.addresses = InMemoryAddressBook()
        """Unsubscribed / bounced addresses: suppress other member ids with them, as the worker does."""
        self.index = WatchIndex() if self.engine.price_rules else None
        self.clock: int | None = None
        self._heap: list[tuple[int, int, str]] = []
        self._scheduled: dict[str, int] = {}
        self._seq = 0

    async def feed(self, record: Record) -> list[Decision]:
        """Advance the clock to ``record.ts`` (firing what is due), then handle the record."""
        ts = record.ts
        out = await self.advance(ts) if self._heap and self._heap[0][0] <= ts else []
        if self.clock is None or ts > self.clock:
            self.clock = ts
        record_type = type(record)  # the record classes are final: ``is`` instead of ``isinstance``
        if record_type is CatalogUpdate:
            self._apply_catalog(cast(CatalogUpdate, record))
            return out
        member_record = cast(MemberRecord, record)
        state = self.states.get(member_record.member_id)
        if state is None:
            state = self.states[member_record.member_id] = MemberState(member_record.member_id)
        if record_type is Beacon and state.seen_event(cast(Beacon, record).event_id):
            return out
        decisions, due = self.engine.handle_due(state, member_record, catalog=self.catalog)
        if (record_type is Engagement or record_type is MemberUpdate) and (
                reason := address_reason(state)) is not None:
            await self.addresses.list_addresses([(cast(str, state.email), reason)], now_ms=ts)
        if self.index is not None and state.touched:
            for product_id in state.touched:
                self.index.update(state.member_id, product_id, state.product_state(product_id))
        self._schedule(state, due)
        if decisions:
            out.extend(await self._caps(decisions))
        return out

    async def advance(self, until_ms: int | None = None) -> list[Decision]:
        """Fire every member's due at or before ``until_ms`` (None: until nothing is pending, at most
        ``RUN_ON_DAYS`` after the clock — date rules are always pending)."""
        out: list[Decision] = []
        heap = self._heap
        if until_ms is None and self.clock is not None:
            until_ms = self.clock + RUN_ON_DAYS * 86_400_000
        while heap and (until_ms is None or heap[0][0] <= until_ms):
            due, _, member_id = heapq.heappop(heap)
            if self._scheduled.get(member_id) != due:
                continue  # superseded by a later schedule of the same member
            del self._scheduled[member_id]
            if self.clock is None or due > self.clock:
                self.clock = due
            state = self.states[member_id]
            decisions, after = self.engine.tick_due(state, due, catalog=self.catalog)
            self._schedule(state, after)
            if decisions:
                out.extend(await self._caps(decisions))
        return out

    def _schedule(self, state: MemberState, due: int | bool | None = False) -> None:
        """(Re)schedule the member at its next due (``due``: as the engine returned it; False = ask)."""
        if due is False:
            due = self.engine.next_due(state)
        member_id = state.member_id
        if due is None:
            self._scheduled.pop(member_id, None)
        elif self._scheduled.get(member_id) != due:
            self._scheduled[member_id] = due
            self._seq += 1
            heapq.heappush(self._heap, (due, self._seq, member_id))

    async def _caps(self, decisions: list[Decision]) -> list[Decision]:
        """Address suppression, caps, then coupons (SPEC §14 fine points: consent → caps → holdout → coupon),
        exactly as the worker does them (``kagoflow.core.sending``)."""
        final, issued = await finish_decisions(
            decisions, caps=self.caps, limits=self.shop.caps, tz=self.shop.timezone, coupons=self.coupons,
            state_of=self.states.get, addresses=self.addresses, email_of=self._email_of)
        if issued:
            self.issued.extend(issued)
        for decision in final:
            if decision.reason == "coupon_pool_empty" or (decision.status == "ended"
                                                           and decision.reason == "suppressed"):
                self._schedule(self.states[decision.member_id])  # a reopened episode, an ended run
        return final

    def _email_of(self, member_id: str) -> str | None:
        state = self.states.get(member_id)
        return None if state is None else state.email

    def _apply_catalog(self, update: CatalogUpdate) -> None:
        prev = self.catalog.get(update.product_id)
        rules = list(self.engine.price_rules.values())
        info, triggers = apply_catalog(prev, update, rules=rules, tz=self.shop.timezone)
        self.catalog[update.product_id] = info
        if self.index is None:
            return
        for trigger in triggers:
            rule = self.engine.price_rules.get(trigger.rule_id)
            if rule is None:
                continue
            watch: frozenset[str] = getattr(rule, "watch", frozenset())
            for member_id in list(self.index.members(trigger.product_id, watch)):
                state = self.states[member_id]
                if self.engine.on_price_trigger(state, trigger):
                    self._schedule(state)


# -- input files ------------------------------------------------------------------------------------------
_KIND_ORDER = {"members": 0, "catalog": 1, "orders": 2, "engagement": 3, "beacons": 4}
_TS = re.compile(rb'"ts"\s*:\s*(?:"([^"]*)"|(-?\d+))')


def _parser(kind: str) -> Callable[[bytes], Record | None]:
    from kagoflow.streams import contract

    if kind == "engagement":
        return contract.parse_engagement
    if kind == "beacons":
        return contract.parse_beacon
    if kind == "members":
        return contract.parse_member
    if kind == "catalog":
        return contract.parse_catalog
    return contract.parse_order


def _records(path: Path, kind: str) -> Iterator[tuple[int, int, int, Record]]:
    """(ts, kind order, line number, record) of every non-blank line; errors name file, line and field."""
    parse = _parser(kind)
    rank = _KIND_ORDER[kind]
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = parse(line)
            except ContractError as exc:
                raise ContractError(f"{path}:{number}: {exc.reason}") from None
            if record is None:  # an engagement line that changes no member state (a delivery result)
                continue
            yield record.ts, rank, number, record


def _scan(path: Path) -> tuple[int, bool]:
    """(line count, whether ``ts`` never decreases) — a cheap pre-pass that decides stream vs. sort."""
    from kagoflow.streams.contract import parse_ts

    count = 0
    last = -(2**63)
    ordered = True
    with path.open("rb") as lines:
        for line in lines:
            count += 1
            if not ordered:
                continue
            match = _TS.search(line)
            if match is None:
                ordered = False  # no plain ts field (e.g. orders timed by ordered_at): sort to be safe
                continue
            try:
                ts = parse_ts(match.group(1).decode() if match.group(1) is not None else int(match.group(2)))
            except (ContractError, ValueError):
                continue  # the real pass reports it with its line number
            if ts < last:
                ordered = False
            last = ts
    return count, ordered


def merged_records(files: dict[str, Path]) -> tuple[Iterator[tuple[int, int, int, Record]], int]:
    """All records of ``files`` (kind → path) in SPEC §11 order, and the total line count."""
    streams: list[Iterator[tuple[int, int, int, Record]]] = []
    total = 0
    for kind, path in files.items():
        if not path.is_file():
            raise FileNotFoundError(2, "No such file", str(path))
        count, ordered = _scan(path)
        total += count
        records = _records(path, kind)
        streams.append(records if ordered else iter(sorted(records, key=lambda r: (r[0], r[2]))))
    # No key function: the tuples compare by (ts, kind order, line number), which no two records share, so the
    # records themselves are never compared (a key would build a tuple per record).
    return heapq.merge(*streams), total


# -- command ----------------------------------------------------------------------------------------------
def run_backtest(
    *,
    rules_dir: Path,
    beacons: Path,
    members: Path | None = None,
    catalog: Path | None = None,
    orders: Path | None = None,
    engagement: Path | None = None,
    out: Path | None = None,
    progress: bool = True,
    settings: Settings | None = None,
) -> int:
    """``kagoflow backtest``: write one JSON line per decision to ``out`` (stdout), a summary to stderr."""
    if settings is None:
        from kagoflow.settings import Settings

        settings = Settings.from_env()
    rules = load_rules(rules_dir, min_delay_seconds=settings.min_delay_seconds)
    files = {kind: path for kind, path in (("members", members), ("catalog", catalog), ("orders", orders),
                                            ("engagement", engagement), ("beacons", beacons)) if path is not None}
    records, total = merged_records(files)
    counts: Counter[tuple[str, str]] = Counter()
    secret = settings.tracking_secret
    thresholds = gc.get_threshold()
    # As the worker: every member state stays in memory, so the default thresholds would have the collector
    # traverse millions of long-lived objects again and again (measured: ~13 % of a backtest's CPU time).
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        if out is None:
            stats = asyncio.run(_run(rules, records, sys.stdout.buffer, counts, total=total, progress=progress,
                                     secret=secret))
        else:
            with out.open("wb") as sink:
                stats = asyncio.run(_run(rules, records, sink, counts, total=total, progress=progress,
                                         secret=secret))
    finally:
        gc.set_threshold(*thresholds)
    _summary(rules, counts, records=stats)
    return 0


async def _run(
    rules: RuleSet,
    records: Iterator[tuple[int, int, int, Record]],
    sink: IO[bytes],
    counts: Counter[tuple[str, str]],
    *,
    total: int,
    progress: bool,
    secret: str = "backtest",
) -> int:
    replay = Replay(rules, secret=secret)
    bar = _Progress(total) if progress and total >= PROGRESS_EVERY else None
    dumps = orjson.dumps
    newline = orjson.OPT_APPEND_NEWLINE
    seen = 0

    def emit(decisions: list[Decision]) -> None:
        for decision in decisions:
            counts[decision.rule_id, decision.status] += 1
            sink.write(dumps(decision.to_json(), option=newline))

    for ts, _, _, record in records:
        if replay.clock is not None and ts < replay.clock:  # only if the cheap pre-pass misjudged the order
            raise ContractError(f"record at ts {ts} is earlier than the clock {replay.clock}: sort the input")
        decisions = await replay.feed(record)
        if decisions:
            emit(decisions)
        seen += 1
        if bar is not None and seen % PROGRESS_EVERY == 0:
            bar.update(seen)
    emit(await replay.advance(None))
    if bar is not None:
        bar.done(seen)
    sink.flush()
    return seen


def _summary(rules: RuleSet, counts: Counter[tuple[str, str]], *, records: int) -> None:
    ids = list(rules.by_id) + sorted({rule for rule, _ in counts} - set(rules.by_id))
    width = max([len("rule"), *map(len, ids)])
    shown: tuple[str, ...] = STATUSES + LIFE_STATUSES if rules.scenarios else STATUSES
    statuses = shown + tuple(sorted({status for _, status in counts} - set(shown)))
    lines = [f"backtest: {records} records", f"{'rule':<{width}}  " + "  ".join(f"{s:>10}" for s in statuses)]
    for rule_id in ids:
        lines.append(f"{rule_id:<{width}}  " + "  ".join(f"{counts[rule_id, s]:>10}" for s in statuses))
    print("\n".join(lines), file=sys.stderr)


class _Progress:
    """A one-line progress bar on a terminal; occasional plain lines otherwise (logs, CI)."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.tty = sys.stderr.isatty()
        self.updates = 0

    def update(self, seen: int) -> None:
        self.updates += 1
        share = min(seen / self.total, 1.0)
        if self.tty:
            filled = int(share * 30)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {share:6.1%} {seen}/{self.total}")
            sys.stderr.flush()
        elif self.updates % 20 == 0:
            print(f"backtest: {seen}/{self.total} records ({share:.0%})", file=sys.stderr)

    def done(self, seen: int) -> None:
        if self.tty:
            sys.stderr.write(f"\r[{'#' * 30}] 100.0% {seen}/{self.total}\n")
