"""Seeded, session-shaped storefront traffic (SPEC §1 records) for benchmarks, backtests and demos.

Real storefront traffic is not uniform: members browse in sessions — bursts of 5–40 actions over a few
minutes — interleaved with other members' sessions, mostly product views, some cart and favourite
actions, few purchases, and product popularity is heavily skewed (Zipf-like). The worker's cost depends on
that shape (a member's burst becomes one state write per flush), so benchmarks must not use uniform noise.

Everything is a pure function of its arguments (``seed`` included): the same call yields the same records.
Beacons are generated lazily: sessions start as a Poisson process in time order and are merged by a heap
on their next event time, so memory holds only the sessions in progress, not all events.

Ids: members ``m0000000``, products ``p00000``, orders ``o<seed>-<session>``, events ``e<seed>-<n>``.
``generate_members`` and ``generate_catalog`` describe the same ids (device and price agree with beacons).

CLI: ``python bench/traffic.py --members 100000 --events 500000 --out beacons.jsonl``
(``--members-out`` / ``--catalog-out`` write the matching profiles and catalog).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import random
import sys
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import orjson

JST = timezone(timedelta(hours=9))
DEVICES = ("pc", "smartphone", "mobile")
DEVICE_WEIGHTS = (0.35, 0.6, 0.05)
DEFAULT_PRODUCTS = 20_000
ZIPF_EXPONENT = 1.07
"""Product popularity ~ 1 / rank**s: the top 1 % of products get roughly 40 % of the views."""
SESSION_EVENTS = (5, 40)
MEAN_GAP_S = 12.0
"""Mean think time between two actions of a session: 5–40 actions span one to several minutes."""
TsFormat = Literal["iso", "ms", "mixed"]

Beacon = dict[str, Any]


def member_id(index: int) -> str:
    return f"m{index:07d}"


def product_id(index: int) -> str:
    return f"p{index:05d}"


def _mix(*parts: int) -> int:
    """A cheap deterministic 64-bit hash of small ints (per-id attributes without storing arrays)."""
    h = 0x9E3779B97F4A7C15
    for part in parts:
        h = ((h ^ part) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h


def member_device(index: int, seed: int) -> str:
    """The device a member mostly uses (beacons and profile agree)."""
    u = (_mix(seed, index, 1) % 10_000) / 10_000
    return DEVICES[0] if u < DEVICE_WEIGHTS[0] else DEVICES[1] if u < 0.95 else DEVICES[2]


def product_price(index: int, seed: int) -> int:
    """Yen, log-normal around ~3000, rounded to 10 yen."""
    u = ((_mix(seed, index, 2) % 1_000_000) + 0.5) / 1_000_000
    z = math.sqrt(2) * _erfinv(2 * u - 1)
    return max(100, int(round(math.exp(8.0 + 0.8 * z), -1)))


def _erfinv(y: float) -> float:
    """Inverse error function (Giles' approximation; plenty for a price distribution)."""
    w = -math.log((1.0 - y) * (1.0 + y))
    if w < 5.0:
        w -= 2.5
        p = 2.81022636e-08
        for c in (3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087, -0.00125372503,
                  -0.00417768164, 0.246640727, 1.50140941):
            p = c + p * w
    else:
        w = math.sqrt(w) - 3.0
        p = -0.000200214257
        for c in (0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773, -0.0076224613,
                  0.00943887047, 1.00167406, 2.83297682):
            p = c + p * w
    return p * y


@lru_cache(maxsize=8)
def _zipf_cumulative(products: int, exponent: float) -> tuple[float, ...]:
    return tuple(itertools.accumulate(1.0 / (rank ** exponent) for rank in range(1, products + 1)))


def format_ts(ms: int) -> str:
    """ISO-8601 in Japan time with milliseconds, e.g. ``2025-05-01T10:00:00.123+09:00``."""
    seconds, millis = divmod(ms, 1000)
    return (datetime.fromtimestamp(seconds, tz=JST) + timedelta(milliseconds=millis)).isoformat(
        timespec="milliseconds")


class _Session:
    """One member's visit: a lazily generated burst of actions with its own random stream."""

    def __init__(self, *, number: int, member: int, size: int, start_ms: int, seed: int,
                 cumulative: tuple[float, ...]) -> None:
        self.rng = random.Random(_mix(seed, number, 3))
        self.number = number
        self.member = member
        self.device = member_device(member, seed)
        self.remaining = size
        self.next_ms = start_ms
        self.seed = seed
        self.cumulative = cumulative
        self.viewed: list[int] = []
        self.carted: dict[int, int] = {}
        self.favorited: list[int] = []
        # A member who will buy this time shops with intent: more carts, a purchase at the end.
        self.buys = self.rng.random() < 0.08

    def _pick_product(self) -> int:
        total = self.cumulative[-1]
        # Zipf rank → product index through a seed-dependent shuffle so top products differ per seed.
        rank = bisect_left(self.cumulative, self.rng.random() * total)
        return (rank * 7919 + self.seed) % len(self.cumulative)

    def next_action(self) -> Beacon:
        """The next action (without ``event_id`` and ``ts``, which the merge adds)."""
        self.remaining -= 1
        rng = self.rng
        if self.remaining == 0 and self.buys and self.carted:
            products = sorted(self.carted)
            self.carted.clear()
            return {"type": "purchase", "product_ids": [product_id(p) for p in products],
                    "order_id": f"o{self.seed}-{self.number}"}
        u = rng.random()
        cart_bias = 0.12 if self.buys else 0.0
        if u < 0.20:
            return {"type": "page_view"}
        if u < 0.27 + cart_bias and self.viewed:
            product = rng.choice(self.viewed[-5:])
            quantity = 1 if rng.random() < 0.85 else rng.randint(2, 3)
            self.carted[product] = quantity
            return self._product_action("cart_add", product, quantity=quantity)
        if u < 0.32 + cart_bias and self.viewed:
            product = rng.choice(self.viewed[-5:])
            self.favorited.append(product)
            return self._product_action("favorite_add", product)
        if u < 0.34 + cart_bias and self.carted:
            product = rng.choice(sorted(self.carted))
            del self.carted[product]
            return self._product_action("cart_remove", product)
        if u < 0.35 + cart_bias and self.favorited:
            product = self.favorited.pop(rng.randrange(len(self.favorited)))
            return self._product_action("favorite_remove", product)
        product = self._pick_product()
        self.viewed.append(product)
        return self._product_action("view", product)

    def _product_action(self, kind: str, product: int, *, quantity: int | None = None) -> Beacon:
        action: Beacon = {"type": kind, "product_id": product_id(product),
                          "price": product_price(product, self.seed)}
        if quantity is not None:
            action["quantity"] = quantity
        return action

    def advance(self) -> None:
        self.next_ms += max(1_000, int(self.rng.expovariate(1.0 / MEAN_GAP_S) * 1000))


def generate_beacons(*, members: int, events: int, seed: int, start_ms: int, span_s: int,
                     products: int = DEFAULT_PRODUCTS, session_events: tuple[int, int] = SESSION_EVENTS,
                     cover_members: bool = False, ts_format: TsFormat = "mixed",
                     shop_id: str = "default") -> Iterator[Beacon]:
    """Yield ``events`` beacons in ``ts`` order (ties in generation order), sessions starting within
    ``[start_ms, start_ms + span_s)``; the last sessions may run a few minutes past the span.

    ``members`` is the pool sessions draw from (uniformly); how many distinct members appear depends on
    ``events`` / mean session size (~12 actions with the default ``session_events``).
    ``cover_members``: the first ``members`` sessions go to every member once (in a shuffled order), so
    all members appear when ``events`` allows it (RSS benchmarks); else sessions pick members at random.
    ``ts_format``: ``iso`` (``+09:00`` offset), ``ms`` (epoch ms) or ``mixed`` (each event either).
    """
    if members < 1 or events < 0 or span_s < 1 or products < 1:
        raise ValueError("members, span_s and products must be >= 1, events >= 0")
    low, high = session_events
    if not 1 <= low <= high:
        raise ValueError(f"session_events: need 1 <= low <= high, got {session_events}")
    cumulative = _zipf_cumulative(products, ZIPF_EXPONENT)
    rng = random.Random(seed)
    # Session sizes: low + exponential, capped at high (most visits are short, a few are long).
    mean_extra = max((high - low) / 5, 1e-9)
    expected_sessions = max(1.0, events / (low + mean_extra))
    mean_spacing_ms = span_s * 1000 / expected_sessions
    # Full-period LCG over member indexes: a shuffled cover order without a list of `members` ints.
    stride = _coprime_stride(members, seed)
    offset = seed % members

    def sessions() -> Iterator[_Session]:
        allotted = 0
        clock = float(start_ms)
        for number in itertools.count():
            if allotted >= events:
                return
            size = min(low + int(rng.expovariate(1.0 / mean_extra)), high, events - allotted)
            allotted += size
            member = (offset + number * stride) % members if cover_members and number < members \
                else rng.randrange(members)
            yield _Session(number=number, member=member, size=size, start_ms=int(clock), seed=seed,
                           cumulative=cumulative)
            clock += rng.expovariate(1.0) * mean_spacing_ms

    pending = sessions()
    upcoming = next(pending, None)
    heap: list[tuple[int, int, _Session]] = []
    for n in range(events):
        while upcoming is not None and (not heap or upcoming.next_ms <= heap[0][0]):
            heapq.heappush(heap, (upcoming.next_ms, upcoming.number, upcoming))
            upcoming = next(pending, None)
        ts_ms, number, session = heap[0]
        action = session.next_action()
        if session.remaining:
            session.advance()
            heapq.heapreplace(heap, (session.next_ms, number, session))
        else:
            heapq.heappop(heap)
        use_iso = ts_format == "iso" or (ts_format == "mixed" and session.rng.random() < 0.5)
        beacon: Beacon = {"event_id": f"e{seed}-{n}", "member_id": member_id(session.member),
                          "ts": format_ts(ts_ms) if use_iso else ts_ms}
        beacon.update(action)
        beacon["device"] = session.device
        beacon["shop_id"] = shop_id
        yield beacon


def _coprime_stride(n: int, seed: int) -> int:
    stride = (int(n * 0.6180339887) + seed) % n or 1
    while math.gcd(stride, n) != 1:
        stride += 1
    return stride


def beacon_ts_ms(beacon: Beacon) -> int:
    """The beacon's ``ts`` as epoch ms (both formats this module writes)."""
    ts = beacon["ts"]
    return ts if isinstance(ts, int) else int(datetime.fromisoformat(ts).timestamp() * 1000)


def generate_members(*, members: int, seed: int, ts_ms: int, opt_in_rate: float = 0.8) -> Iterator[Beacon]:
    """One profile per member id of ``generate_beacons`` (same ``seed`` → same devices)."""
    for index in range(members):
        h = _mix(seed, index, 4)
        mid = member_id(index)
        yield {"member_id": mid, "email": f"{mid}@example.com",
               "opt_in": (h % 1000) / 1000 < opt_in_rate, "name": f"会員 {index}",
               "device": member_device(index, seed), "locale": "ja-JP",
               "purchase_count": int(-math.log(((h >> 12) % 10_000 + 1) / 10_001) * 1.5), "ts": ts_ms}


def generate_catalog(*, products: int = DEFAULT_PRODUCTS, seed: int, ts_ms: int) -> Iterator[Beacon]:
    """One catalog record per product id of ``generate_beacons`` (same ``seed`` → same prices)."""
    for index in range(products):
        h = _mix(seed, index, 5)
        pid = product_id(index)
        yield {"product_id": pid, "price": product_price(index, seed), "stock": 0 if h % 20 == 0 else h % 200,
               "name": f"商品 {index}", "url": f"https://shop.example.com/products/{pid}",
               "image_url": f"https://shop.example.com/images/{pid}.jpg", "on_sale": h % 10 == 0,
               "ts": ts_ms}


def write_jsonl(path: Path | str, records: Iterable[Beacon]) -> int:
    """Write one JSON object per line (``-`` = standard output); returns the number of lines."""
    count = 0
    out = sys.stdout.buffer if str(path) == "-" else open(path, "wb")  # noqa: SIM115
    try:
        for record in records:
            out.write(orjson.dumps(record) + b"\n")
            count += 1
    finally:
        if out is not sys.stdout.buffer:
            out.close()
        else:
            out.flush()
    return count


def _parse_start(value: str) -> int:
    if value.lstrip("-").isdigit():
        return int(value)
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        raise argparse.ArgumentTypeError("--start needs a UTC offset, e.g. 2025-05-01T09:00:00+09:00")
    return int(dt.timestamp() * 1000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write session-shaped storefront beacons as JSONL.")
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--products", type=int, default=DEFAULT_PRODUCTS)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--start", type=_parse_start, default=None,
                        help="first session start: epoch ms or ISO-8601 with offset (default: now - span)")
    parser.add_argument("--span-s", type=int, default=3600, help="sessions start within this many seconds")
    parser.add_argument("--ts-format", choices=["iso", "ms", "mixed"], default="mixed")
    parser.add_argument("--cover-members", action="store_true", help="every member gets a session first")
    parser.add_argument("--out", default="-", help="beacons JSONL (default: standard output)")
    parser.add_argument("--members-out", help="also write matching member profiles here")
    parser.add_argument("--catalog-out", help="also write the matching catalog here")
    args = parser.parse_args(argv)
    start_ms = args.start if args.start is not None else int(time.time() * 1000) - args.span_s * 1000
    if args.catalog_out:
        write_jsonl(args.catalog_out, generate_catalog(products=args.products, seed=args.seed,
                                                       ts_ms=start_ms - 120_000))
    if args.members_out:
        write_jsonl(args.members_out, generate_members(members=args.members, seed=args.seed,
                                                       ts_ms=start_ms - 60_000))
    began = time.perf_counter()
    count = write_jsonl(args.out, generate_beacons(
        members=args.members, events=args.events, seed=args.seed, start_ms=start_ms, span_s=args.span_s,
        products=args.products, cover_members=args.cover_members, ts_format=args.ts_format))
    print(f"{count} beacons in {time.perf_counter() - began:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
