"""Backtest throughput on generated, session-shaped storefront traffic.

    .venv/bin/python bench/backtest_speed.py [--beacons 1000000] [--members 50000] [--orders 100000]
        [--seed 7] [--profile]

Generates (deterministically from the seed) members and beacons as real traffic looks: members come back
in sessions of a few to a few dozen beacons minutes apart — page views, product views with a popular head
of products, some favourites, carts, removals and purchases — over a week. Then times ``run_backtest``
with the example rules in ``rules/`` and prints records/s. Files go to a temporary directory (or --keep DIR).
With ``--orders N``: N orders (a quarter of them holding the salt sample of the ``salt-sample`` scenario), each
as its ``ordered``, ``shipped`` and ``delivered`` records, and engagement records (opens and clicks of the
scenario mails, a few unsubscribes) — the follow and sample series of ``rules/`` run over them.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import redirect_stderr
from pathlib import Path

import orjson

from kagoflow.backtest import run_backtest
from kagoflow.settings import PROJECT_ROOT, Settings

START_MS = 1_795_000_000_000  # 2026-11-18
WEEK_MS = 7 * 24 * 3600 * 1000


def sessions(
    rng: random.Random, *, members: int, products: int
) -> Iterator[list[tuple[int, dict[str, object]]]]:
    """Endless stream of sessions (lists of (ts, beacon)) with increasing start times."""
    serial = 0
    while True:
        member = f"m{int(rng.paretovariate(1.2) * 7) % members}"
        ts = START_MS + rng.randrange(WEEK_MS)
        device = rng.choice(("pc", "smartphone", "smartphone", "mobile"))
        carted: list[str] = []
        out: list[tuple[int, dict[str, object]]] = []
        for _ in range(rng.randint(3, 30)):
            ts += rng.randint(5_000, 180_000)
            serial += 1
            roll = rng.random()
            product = f"p{min(int(rng.paretovariate(1.1)) - 1, products - 1)}"
            beacon: dict[str, object] = {
                "event_id": f"e{serial}",
                "member_id": member,
                "ts": ts,
                "device": device,
            }
            if roll < 0.35:
                beacon["type"] = "page_view"
            elif roll < 0.80:
                beacon.update(type="view", product_id=product)
            elif roll < 0.86:
                beacon.update(type="favorite_add", product_id=product)
            elif roll < 0.95:
                beacon.update(
                    type="cart_add",
                    product_id=product,
                    price=rng.choice((480, 1200, 2980, 5400)),
                    quantity=rng.randint(1, 3),
                )
                carted.append(product)
            elif roll < 0.98 and carted:
                beacon.update(type="cart_remove", product_id=carted.pop())
            elif carted:
                beacon.update(type="purchase", product_ids=carted, order_id=f"o{serial}")
                carted = []
            else:
                beacon["type"] = "page_view"
            out.append((ts, beacon))
        yield out


def generate(directory: Path, *, beacons: int, members: int, seed: int) -> tuple[Path, Path]:
    rng = random.Random(seed)
    rows: list[tuple[int, bytes]] = []
    for session in sessions(rng, members=members, products=5000):
        rows.extend((ts, orjson.dumps(b)) for ts, b in session)
        if len(rows) >= beacons:
            break
    del rows[beacons:]
    rows.sort(key=lambda row: row[0])
    beacons_path = directory / "beacons.jsonl"
    with beacons_path.open("wb") as out:
        out.writelines(line + b"\n" for _, line in rows)
    members_path = directory / "members.jsonl"
    with members_path.open("wb") as out:
        for i in range(members):
            out.write(
                orjson.dumps(
                    {
                        "member_id": f"m{i}",
                        "email": f"m{i}@example.com",
                        "opt_in": rng.random() < 0.8,
                        "purchase_count": rng.randint(0, 5),
                        "ts": START_MS - 1,
                    }
                )
                + b"\n"
            )
    return beacons_path, members_path


def generate_orders(directory: Path, *, orders: int, members: int, seed: int) -> tuple[Path, Path]:
    """``orders`` orders over the week (3 records each) and engagement records for about half of them."""
    rng = random.Random(seed + 1)
    order_rows: list[tuple[int, bytes]] = []
    engagement_rows: list[tuple[int, bytes]] = []
    for n in range(orders):
        member = f"m{rng.randrange(members)}"
        ordered = START_MS + rng.randrange(WEEK_MS)
        shipped = ordered + rng.randint(6, 48) * 3_600_000
        delivered = shipped + rng.randint(18, 72) * 3_600_000
        sample = rng.random() < 0.25
        items = [{"product_id": "salt-sample" if sample else f"p{rng.randrange(5000)}", "quantity": 1,
                  "price": 500 if sample else rng.choice((1200, 2980, 5400))}]
        base = {"order_id": f"ord{n}", "member_id": member, "ordered_at": ordered, "items": items}
        for status, ts, extra in (("ordered", ordered, {}), ("shipped", shipped, {"shipped_at": shipped}),
                                  ("delivered", delivered, {"shipped_at": shipped, "delivered_at": delivered})):
            order_rows.append((ts, orjson.dumps({**base, "status": status, "ts": ts, **extra})))
        rule, step = ("salt-sample", 1) if sample else ("follow", 1)
        roll = rng.random()
        if roll < 0.5:
            at = (shipped + 5 * 86_400_000 + 3_600_000) if sample else ordered + 600_000
            event = "click" if roll < 0.1 else "open"
            engagement_rows.append((at, orjson.dumps({"member_id": member, "event": event, "rule": rule,
                                                       "step": step, "ts": at, "suspected_bot": roll < 0.05})))
        elif roll < 0.51:
            engagement_rows.append((ordered + 3_600_000, orjson.dumps({
                "member_id": member, "event": "unsubscribe", "rule": rule, "step": step, "ts": ordered + 3_600_000})))
    paths = []
    for name, rows in (("orders", order_rows), ("engagement", engagement_rows)):
        rows.sort(key=lambda row: row[0])
        path = directory / f"{name}.jsonl"
        with path.open("wb") as out:
            out.writelines(line + b"\n" for _, line in rows)
        paths.append(path)
    return paths[0], paths[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beacons", type=int, default=1_000_000)
    parser.add_argument("--members", type=int, default=50_000)
    parser.add_argument("--orders", type=int, default=0, help="orders (3 records each) plus engagement records")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", action="store_true", help="print the top functions by cumulative time")
    parser.add_argument("--keep", type=Path, help="write the generated files and decisions here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.keep or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        beacons, members = generate(directory, beacons=args.beacons, members=args.members, seed=args.seed)
        orders = engagement = None
        if args.orders:
            orders, engagement = generate_orders(directory, orders=args.orders, members=args.members,
                                                 seed=args.seed)
        print(
            f"generated {args.beacons} beacons, {args.members} members, {args.orders} orders"
            f" in {time.perf_counter() - started:.1f}s"
        )
        profiler = cProfile.Profile() if args.profile else None
        summary = io.StringIO()
        started = time.perf_counter()
        started_cpu = time.process_time()
        with redirect_stderr(summary):
            if profiler is not None:
                profiler.enable()
            run_backtest(
                rules_dir=PROJECT_ROOT / "rules",
                beacons=beacons,
                members=members,
                orders=orders,
                engagement=engagement,
                out=directory / "decisions.jsonl",
                progress=False,
                settings=Settings(),
            )
            if profiler is not None:
                profiler.disable()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - started_cpu
        records = sum(sum(1 for _ in path.open("rb")) for path in (beacons, members, orders, engagement)
                      if path is not None)
        decisions = sum(1 for _ in (directory / "decisions.jsonl").open("rb"))
        print(summary.getvalue(), end="")
        print(
            f"{records} records, {decisions} decisions in {elapsed:.1f}s: {records / elapsed:,.0f} records/s"
            f" (CPU {cpu:.1f}s: {records / cpu:,.0f} records/s of CPU)"
        )
        if profiler is not None:
            pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
