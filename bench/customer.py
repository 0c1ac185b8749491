"""Customer-data costs of SPEC §13 (goals of issue 13): filters per decision, the birthday scan, coupon pools.

    .venv/bin/python bench/customer.py filters [--members 20000] [--orders 5]
    .venv/bin/python bench/customer.py birthday [--members 1000000] [--days 30]
    .venv/bin/python bench/customer.py pool [--codes 200000] [--workers 4] [--inflight 8] [--batch 100]

``filters``: the abandonment filter check of one member at the due moment, with no filters vs. every §13
filter on (amounts, tenure, dormancy, registered days, age, gender, locales, CPM, RFM), members with
``--orders`` orders each; prints µs per member for both and the difference (goal ≤ 20 µs added).

``birthday``: one partition holding ``--members`` members with random birthdays in a month-day
``DateIndex``; each shop-local day the members a birthday rule concerns are looked up and their due
computed (``DateRule.next_due``) — the work of a daily scan. Prints CPU seconds per partition-day (goal ≤ 1 s)
and what a scan over every member would cost instead.

``pool``: ``--workers`` processes, each with its own Redis connection pool and ``--inflight`` concurrent
batches of ``--batch`` decisions (``take_many``, as the worker's coupon step does per emitted batch), take
codes from one shared pool of ``--codes`` codes through ``RedisCouponPool`` (the Lua script) on the
stack's Redis; checks that no code went to two keys and prints codes/s (goal ≥ 20k/s).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import sys
import time
import uuid
from datetime import date, timedelta

from kagoflow.core.abandonment import failing_filter
from kagoflow.core.abandonrule import parse_abandonment_rule
from kagoflow.core.behaviour import MemberState, apply_member, apply_order
from kagoflow.core.dateindex import DateIndex
from kagoflow.core.daterules import parse_date_rule
from kagoflow.core.events import MemberUpdate, OrderItem, OrderUpdate
from kagoflow.core.rules import ShopConfig

DAY = 86_400_000
T0 = 1_790_000_000_000
ALL_FILTERS = {
    "total_amount": {"min": 1000}, "max_order_amount": {"max": 10_000_000}, "tenure_days": {"min": 0},
    "dormancy_days": {"max": 10000}, "registered_days": {"min": 0}, "age": {"min": 0, "max": 200},
    "gender": ["female", "male", "other"], "locales": ["ja", "en"],
    "cpm": ["first_active", "toddler_active", "steady_active", "trendy_active", "loyal_active", "first_lapsed",
            "toddler_lapsed", "steady_lapsed", "trendy_lapsed", "loyal_lapsed"],
    "rfm": {"r": {"min": 0}, "f": {"min": 0}, "m": {"min": 0}},
}


def _members(count: int, orders: int) -> list[MemberState]:
    rng = random.Random(1)
    states = []
    for i in range(count):
        state = MemberState(f"m{i}")
        apply_member(state, MemberUpdate(member_id=state.member_id, ts=T0, email="a@example.com", opt_in=True,
                                         locale="ja-JP", birthday=f"19{rng.randint(50, 99)}-0{rng.randint(1, 9)}-1"
                                         f"{rng.randint(0, 9)}", gender="female", registered_at=T0 - 400 * DAY))
        for k in range(orders):
            at = T0 + k * 30 * DAY
            apply_order(state, OrderUpdate(order_id=f"o{i}-{k}", member_id=state.member_id, status="ordered",
                                           ts=at, ordered_at=at, items=(OrderItem("A", 1, 3000.0),), total=3000.0))
        states.append(state)
    return states


def bench_filters(args: argparse.Namespace) -> None:
    base = {"id": "r", "kind": "abandonment", "trigger": "cart", "send": {"after": "1h"}}
    plain = parse_abandonment_rule(base, file="bench")
    full = parse_abandonment_rule({**base, "filters": ALL_FILTERS}, file="bench")
    shop = ShopConfig()
    states = _members(args.members, args.orders)
    now = T0 + 365 * DAY
    results = {}
    for name, rule in (("none", plain), ("all §13", full)):
        for state in states[:200]:  # warm caches (zone conversions)
            failing_filter(state, rule, catalog={}, now_ms=now, shop=shop)
        best = float("inf")
        for _ in range(args.rounds):
            start = time.process_time()  # CPU time: the machine is shared, wall time is not ours alone
            for state in states:
                assert failing_filter(state, rule, catalog={}, now_ms=now, shop=shop) is None
            best = min(best, time.process_time() - start)
        results[name] = best / len(states) * 1e6
        print(f"filters {name:8}: {results[name]:6.2f} µs CPU per member (best of {args.rounds} rounds)")
    print(f"added by every §13 filter: {results['all §13'] - results['none']:.2f} µs per member "
          f"({args.members} members, {args.orders} orders each)")


def bench_birthday(args: argparse.Namespace) -> None:
    rule = parse_date_rule({"id": "birthday", "kind": "date", "date": "birthday",
                            "send": {"days_before": 0, "at": "11:00"}, "template": "birthday"}, file="bench")
    tz = ShopConfig().timezone
    rng = random.Random(2)
    index = DateIndex()
    birthdays: dict[str, date] = {}
    start = time.process_time()
    for i in range(args.members):
        born = date(1950, 1, 1) + timedelta(days=rng.randrange(365 * 50))
        birthdays[f"m{i}"] = born
        index.put(f"m{i}", born)
    print(f"index of {args.members} members built in {time.process_time() - start:.2f} s CPU")
    day = date(2026, 1, 1)
    known = T0 - 400 * DAY
    worst = total = 0.0
    found = 0
    for offset in range(args.days):
        today = day + timedelta(days=offset)
        start = time.process_time()
        members = index.due_on(today, [rule.days_before])
        for member in members:
            year, _due = rule.next_due(birthdays[member], known, today.year - 1, tz)
            assert year == today.year
        spent = time.process_time() - start
        found += len(members)
        worst, total = max(worst, spent), total + spent
    print(f"daily scan: {total / args.days * 1000:.1f} ms CPU per partition-day on average, worst "
          f"{worst * 1000:.1f} ms ({found / args.days:.0f} members a day, {args.days} days)")
    start = time.process_time()
    sample = list(birthdays.items())[: args.members // 10]
    for _member, born in sample:
        rule.next_due(born, known, 2025, tz)
    full = (time.process_time() - start) * 10
    print(f"for comparison, computing every member's due: {full:.2f} s CPU per pass")


def _pool_worker(url: str, prefix: str, keys: list[str], inflight: int, batch_size: int,
                 out: multiprocessing.Queue) -> None:
    import redis.asyncio as aioredis

    from kagoflow.adapters.coupon_pool import RedisCouponPool

    async def run() -> None:
        client = aioredis.Redis.from_url(url, max_connections=inflight)
        pool = RedisCouponPool(client, prefix=prefix)
        queue = iter(keys)
        got: list[tuple[str, str | None]] = []

        async def lane() -> None:
            while True:
                batch = [key for _, key in zip(range(batch_size), queue, strict=False)]
                if not batch:
                    return
                got.extend(zip(batch, await pool.take_many("bench", batch), strict=True))

        start = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(inflight)))
        out.put((time.perf_counter() - start, got))
        await client.aclose()

    asyncio.run(run())


def bench_pool(args: argparse.Namespace) -> None:
    import redis

    from kagoflow.adapters.coupon_pool import RedisCouponPool
    from kagoflow.settings import Settings

    url = Settings.from_env().redis_url
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    codes = [f"C{i:07d}" for i in range(args.codes)]

    async def load() -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(url)
        await RedisCouponPool(client, prefix=prefix).load("bench", codes)
        await client.aclose()

    asyncio.run(load())
    keys = [f"m{i}|r|{i}" for i in range(args.codes)]
    queue: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_pool_worker,
                                     args=(url, prefix, keys[n::args.workers], args.inflight, args.batch, queue))
             for n in range(args.workers)]
    start = time.perf_counter()
    for proc in procs:
        proc.start()
    results = [queue.get() for _ in procs]
    wall = time.perf_counter() - start
    for proc in procs:
        proc.join()
    given = [code for _, got in results for _, code in got]
    assert None not in given and len(set(given)) == len(given) == args.codes, "a code went to two keys"
    slowest = max(seconds for seconds, _ in results)
    print(f"pool: {args.codes} codes to {args.codes} keys by {args.workers} workers x {args.inflight} in flight, "
          f"batches of {args.batch}: "
          f"{args.codes / slowest:,.0f} codes/s (slowest worker {slowest:.2f} s; wall incl. start {wall:.2f} s); "
          f"no code twice")
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    f = sub.add_parser("filters")
    f.add_argument("--members", type=int, default=20_000)
    f.add_argument("--orders", type=int, default=5)
    f.add_argument("--rounds", type=int, default=5)
    b = sub.add_parser("birthday")
    b.add_argument("--members", type=int, default=1_000_000)
    b.add_argument("--days", type=int, default=30)
    p = sub.add_parser("pool")
    p.add_argument("--codes", type=int, default=200_000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--inflight", type=int, default=8)
    p.add_argument("--batch", type=int, default=100, help="decisions per take_many (one emit batch)")
    args = parser.parse_args(argv)
    {"filters": bench_filters, "birthday": bench_birthday, "pool": bench_pool}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
