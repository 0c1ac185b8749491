"""Benchmark: one catalog change fanned out to every member watching the product (SPEC §5, §11).

For each total member count (default 200k and 1M, of which the same 200k watch product P in state cart,
favorite or view), build the member states and the ``WatchIndex`` of all (member, product) pairs, then for one
catalog update of P that fires a price-drop rule:
  1. fanout — ``pricewatch.fanout`` offers the trigger to every watcher (``on_trigger``),
  2. fire — at the send time ``pricewatch.fire_due`` decides every watcher's mail.
It reports time and decisions/s (goal >= 50k/s), and, in a second pass with another rule under
``tracemalloc``, the peak memory of fanout + fire split into what stays (the pending/fired entries written
into the member states, proportional to the watchers) and what is transient (the fanout machinery itself).
Equal numbers for both totals show the fanout's memory does not depend on the total member count.

``--store bytes`` keeps member states serialised (as the worker's table does) and decodes/encodes each
member touched; ``--store objects`` (default) keeps live ``MemberState`` objects.

    .venv/bin/python bench/price_fanout.py --totals 200000,1000000 --watchers 200000 --seed 7
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kagoflow.core.behaviour import MemberState, apply_beacon, apply_member
from kagoflow.core.catalog import PriceTrigger, ProductInfo, apply_catalog
from kagoflow.core.events import Beacon, CatalogUpdate, MemberUpdate
from kagoflow.core.pricerules import PriceRule, parse_price_rule
from kagoflow.core.pricewatch import fanout, fire_due, reindex
from kagoflow.core.watchindex import WatchIndex

TOKYO = ZoneInfo("Asia/Tokyo")
ACTIONS = {"cart": "cart_add", "favorite": "favorite_add", "view": "view"}


def jst(day: int, hour: int) -> int:
    return int(datetime(2026, 3, day, hour, tzinfo=TOKYO).timestamp() * 1000)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def make_rule(rule_id: str) -> PriceRule:
    return parse_price_rule(
        {"id": rule_id, "kind": "price_drop", "watch": ["cart", "favorite", "view"],
         "when": {"drop_percent": 10}, "send": {"at": "10:00"}, "template": "price_drop"},
        file="bench",
    )


class World:
    """N members (the first ``watchers`` watch P), their states and the watch index."""

    def __init__(self, *, total: int, watchers: int, products: int, per_member: int, store: str,
                 rng: random.Random) -> None:
        self.index = WatchIndex()
        self.objects: dict[str, MemberState] = {}
        self.blobs: dict[str, bytes] = {}
        self.store = store
        self.watcher_ids: list[str] = []
        ts = jst(1, 12)
        for i in range(total):
            member_id = f"m{i:07d}"
            state = MemberState(member_id)
            apply_member(state, MemberUpdate(member_id, ts, email=f"{member_id}@example.com", opt_in=True))
            if i < watchers:
                self._act(state, rng.choice(("cart", "favorite", "view")), "P", ts)
                self.watcher_ids.append(member_id)
            for _ in range(per_member):
                self._act(state, rng.choice(("cart", "favorite", "view")), f"p{rng.randrange(products)}", ts)
            reindex(self.index, state)
            state.recent_events.clear()  # the dedup window is not what this measures
            if store == "bytes":
                self.save(state)
            else:
                self.objects[member_id] = state

    @staticmethod
    def _act(state: MemberState, how: str, product: str, ts: int) -> None:
        beacon = Beacon(f"{state.member_id}:{product}", state.member_id, ACTIONS[how], ts,  # type: ignore[arg-type]
                        product_id=product)
        apply_beacon(state, beacon)

    def load(self, member_id: str) -> MemberState | None:
        if self.store == "bytes":
            blob = self.blobs.get(member_id)
            return None if blob is None else MemberState.from_bytes(blob)
        return self.objects.get(member_id)

    def forget_price_watch(self) -> None:
        """Back to fresh states, so each pass measures a member's first price trigger."""
        for member_id in self.watcher_ids:
            state = self.load(member_id)
            if state is not None:
                state.price_watch = {}
                self.save(state)

    def save(self, state: MemberState) -> None:
        if self.store == "bytes":
            # orjson.dumps returns bytes backed by a 4 KiB allocation; a table (RocksDB) keeps a copy of the
            # value, so keep an exact-size copy too or the memory figures measure orjson's buffers.
            self.blobs[state.member_id] = bytes(memoryview(state.to_bytes()))


def run_pass(world: World, trigger: PriceTrigger, rule: PriceRule, catalog: dict[str, ProductInfo],
             between: Callable[[], None] = lambda: None) -> tuple[int, int, float, float, float]:
    """Fanout, ``between()``, then fire.

    (scheduled, sent decisions, fanout seconds, fire seconds, CPU seconds of both): the machine is shared,
    so CPU time is the steadier figure.
    """
    rules = {rule.id: rule}
    cpu = time.process_time()
    t0 = time.perf_counter()
    scheduled = 0
    for state in fanout(trigger, rule, world.index, world.load):
        world.save(state)
        scheduled += 1
    t1 = time.perf_counter()
    cpu = time.process_time() - cpu
    between()
    fire_start = time.perf_counter()
    fire_cpu = time.process_time()
    sent = 0
    for member_id in _due_members(world, trigger):
        due = world.load(member_id)
        if due is None:
            continue
        for decision in fire_due(due, trigger.send_at_ms, rules=rules, catalog=catalog):
            sent += decision.status == "sent"
        world.save(due)
    t2 = time.perf_counter()
    cpu += time.process_time() - fire_cpu
    return scheduled, sent, t1 - t0, t2 - fire_start, cpu


def _due_members(world: World, trigger: PriceTrigger) -> Iterator[str]:
    # The worker finds due members through its due index; the watchers of P are exactly them here.
    return world.index.members(trigger.product_id, ("cart", "favorite", "view"))


def one_total(args: argparse.Namespace, total: int, log: Callable[[str], None]) -> None:
    rng = random.Random(args.seed)
    gc.collect()
    rss0 = rss_mb()
    t0 = time.perf_counter()
    world = World(total=total, watchers=args.watchers, products=args.products, per_member=args.per_member,
                  store=args.store, rng=rng)
    build_s = time.perf_counter() - t0
    if args.gc_freeze:
        gc.collect()
        gc.freeze()  # what a worker holding many long-lived states should do after loading them
    log(f"total={total:,} watchers={args.watchers:,} pairs={len(world.index):,} store={args.store} "
        f"build {build_s:.1f}s, RSS +{rss_mb() - rss0:,.0f} MB")

    timed, measured = make_rule("bench-timed"), make_rule("bench-mem")
    catalog: dict[str, ProductInfo] = {}
    info, _ = apply_catalog(None, CatalogUpdate("P", jst(1, 9), 10000, 5), rules=[], tz=TOKYO)
    info, triggers = apply_catalog(info, CatalogUpdate("P", jst(2, 15), 8000, 5), rules=[timed, measured],
                                   tz=TOKYO)
    catalog["P"] = info
    by_rule = {t.rule_id: t for t in triggers}

    gc.collect()
    scheduled, sent, fan_s, fire_s, cpu_s = run_pass(world, by_rule[timed.id], timed, catalog)
    total_s = fan_s + fire_s
    log(f"  timed pass: fanout {scheduled:,} members in {fan_s:.2f}s ({scheduled / fan_s:,.0f}/s), "
        f"fire {sent:,} sent in {fire_s:.2f}s ({sent / fire_s:,.0f}/s); "
        f"end to end {sent / total_s:,.0f} decisions/s wall, {sent / cpu_s:,.0f} decisions/s per CPU second")

    world.forget_price_watch()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    after_fanout: list[tuple[int, int]] = []

    def probe() -> None:
        after_fanout.append(tracemalloc.get_traced_memory())
        tracemalloc.reset_peak()

    scheduled2, sent2, *_ = run_pass(world, by_rule[measured.id], measured, catalog, between=probe)
    current, fire_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    (fan_current, fan_peak), = after_fanout
    mb = 2**20
    log(f"  memory pass ({scheduled2:,} scheduled, {sent2:,} sent), tracemalloc: "
        f"fanout peak +{(fan_peak - base) / mb:.1f} MB of which retained by the member states written "
        f"+{(fan_current - base) / mb:.1f} MB ({(fan_current - base) / max(scheduled2, 1):.0f} B/member) and "
        f"transient {(fan_peak - fan_current) / mb:.2f} MB; fire transient "
        f"{(fire_peak - fan_current) / mb:.2f} MB above that; after fire +{(current - base) / mb:.1f} MB "
        "(fired-day marks)")
    del world
    gc.unfreeze()
    gc.collect()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--totals", default="200000,1000000", help="comma-separated total member counts")
    parser.add_argument("--watchers", type=int, default=200_000, help="members watching product P")
    parser.add_argument("--products", type=int, default=100_000, help="size of the other-products pool")
    parser.add_argument("--per-member", type=int, default=2, help="other products each member acted on")
    parser.add_argument("--store", choices=("objects", "bytes"), default="objects")
    parser.add_argument("--gc-freeze", action="store_true",
                        help="gc.freeze() after building (long-lived states leave the cyclic GC's scans)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    totals = [int(x) for x in args.totals.split(",")]
    if any(t < args.watchers for t in totals):
        parser.error("every total must be >= --watchers")
    for total in totals:
        one_total(args, total, lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
