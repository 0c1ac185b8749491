"""Benchmark: one catalog change fanned out to 200k watchers THROUGH THE WORKER (issue 6), not only the core.

    .venv/bin/python bench/price_fanout_worker.py [--watchers 200000] [--others 0] [--no-archive]

Starts a real ``kagoflow worker`` process on private topics (``KAGOFLOW_TOPIC_PREFIX``) with one rule
``price_drop``, ``send: {immediately: true}``, ``watch: [cart, favorite, view]``, ``drop_percent: 10``. It
pre-loads product P at 10,000 yen, then one beacon (view / favourite / cart of P) for each of ``--watchers``
members and one view of another product for each of ``--others`` members, and waits until the worker has
processed them and flushed its state. Then it produces ONE catalog record: P at 8,000 yen. Measured:

- ``decide s``: from producing that record to the worker's ``/metrics`` counting all decisions (the catalog
  agent's trigger, its broadcast to every member partition, the watch-index lookup, each member's pending
  mail, the due fire, the decisions produced to ``mail_decisions``);
- decisions/s = watchers / ``decide s`` (goal ≥ 50k/s);
- the worker's RSS before and after, and its peak: the fan-out's memory is what it adds.

Members get no profile records, so every decision is ``suppressed``/``no_profile`` and the worker's delivery
agent (same process) passes them over instead of sending 200k mails through SMTP during the measurement.
Every topic, group and data directory of the run carries one tag and is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
from ingest import (  # bench/ is sys.path[0] when run as a script
    _member_topics,
    _metrics,
    _rss_mb,
    _start_worker,
    _stop,
    _wait_caught_up,
    delete_topics_tagged,
    end_offsets,
    kagoflow_settings,
    produce,
)

from kagoflow.settings import PROJECT_ROOT
from kagoflow.streams.topics import Topics

PRODUCT = "SKU-FANOUT"
RULE = """id: fanout-drop
kind: price_drop
watch: [cart, favorite, view]
when: {drop_percent: 10}
send: {immediately: true}
template: price_drop
"""
ACTIONS = ("view", "favorite_add", "cart_add")


def beacons(*, watchers: int, others: int, now_ms: int) -> Iterator[dict[str, Any]]:
    for n in range(watchers):
        yield {"event_id": f"w{n}", "member_id": f"w{n:07d}", "type": ACTIONS[n % 3], "product_id": PRODUCT,
               "ts": now_ms - 60_000 + n % 60_000, "device": "pc"}
    for n in range(others):
        yield {"event_id": f"o{n}", "member_id": f"o{n:07d}", "type": "view", "product_id": f"SKU-{n % 5000}",
               "ts": now_ms - 60_000 + n % 60_000, "device": "pc"}


async def produce_catalog(bootstrap: str, topic: str, price: int, ts_ms: int) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1)
    await producer.start()
    try:
        record = {"product_id": PRODUCT, "price": price, "stock": 50, "name": "ベンチマーク商品",
                  "url": "https://shop.example.com/p/fanout", "ts": ts_ms}
        await producer.send_and_wait(topic, orjson.dumps(record), key=PRODUCT.encode())
    finally:
        await producer.stop()


def decided(metrics: dict[str, Any] | None) -> int:
    return sum(metrics["members"]["decisions"].values()) if metrics else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--watchers", type=int, default=200_000)
    parser.add_argument("--others", type=int, default=0, help="members watching other products")
    parser.add_argument("--no-archive", action="store_true")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    args = parser.parse_args(argv)
    tag = f"kfpw-{time.strftime('%m%d%H%M%S')}"
    workdir = Path(tempfile.mkdtemp(prefix=f"{tag}-"))
    rules = workdir / "rules"
    rules.mkdir()
    shutil.copy(PROJECT_ROOT / "rules" / "demo" / "shop.yaml", rules / "shop.yaml")
    (rules / "fanout-drop.yaml").write_text(RULE)
    settings = replace(kagoflow_settings(tag=tag, prefix=f"{tag}-", workdir=workdir, bootstrap=args.bootstrap,
                                         archive=not args.no_archive), rules_dir=rules)
    names = Topics(settings.topic_prefix)
    log = settings.data_dir / "worker.log"

    async def run() -> dict[str, float]:
        now_ms = int(time.time() * 1000)
        out: dict[str, float] = {}
        baseline = await end_offsets(settings.kafka_bootstrap, _member_topics(settings), earliest=True)
        proc, started = _start_worker(settings, log)
        try:
            while _metrics(settings.operator_port) is None:  # topics created, web up
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited; see {log}")
                await asyncio.sleep(0.2)
            # the reference of a day is the last price before it: P costs 10,000 yen since yesterday
            await produce_catalog(settings.kafka_bootstrap, names.catalog, 10_000, now_ms - 86_400_000)
            began = time.time()
            out["preloaded"] = await produce(settings.kafka_bootstrap, names.beacons,
                                             beacons(watchers=args.watchers, others=args.others, now_ms=now_ms))
            await _wait_caught_up(proc, settings, baseline=baseline, started=started, timeout_s=args.timeout,
                                  log=log)
            out["preload_s"] = time.time() - began
            await asyncio.sleep(2 * settings.state_flush_seconds + 2)  # the preload's state is flushed
            out["rss_before_mb"] = _rss_mb(proc.pid)[0]
            before = decided(_metrics(settings.operator_port))
            t0 = time.time()
            await produce_catalog(settings.kafka_bootstrap, names.catalog, 8_000, int(t0 * 1000))
            while (done := decided(_metrics(settings.operator_port)) - before) < args.watchers:
                if time.time() - t0 > args.timeout:
                    raise TimeoutError(f"{done} of {args.watchers} decisions after {args.timeout:.0f}s; see {log}")
                await asyncio.sleep(0.05)
            out["decide_s"] = time.time() - t0
            out["decisions"] = done
            out["rss_after_mb"], out["peak_rss_mb"] = _rss_mb(proc.pid)
            await asyncio.sleep(2 * settings.state_flush_seconds + 2)
            out["rss_settled_mb"] = _rss_mb(proc.pid)[0]
        finally:
            _stop(proc, grace_s=60)
        return out

    try:
        out = asyncio.run(run())
    finally:
        asyncio.run(delete_topics_tagged(settings.kafka_bootstrap, tag))
        shutil.rmtree(workdir, ignore_errors=True)
    rate = out["decisions"] / out["decide_s"]
    print(f"{args.watchers} watchers + {args.others} other members (preload {out['preloaded']:.0f} beacons in "
          f"{out['preload_s']:.1f}s)")
    print(f"one catalog record -> {out['decisions']:.0f} decisions in {out['decide_s']:.2f}s = {rate:,.0f} "
          f"decisions/s (goal >= 50,000)")
    print(f"worker RSS: {out['rss_before_mb']:.0f} MiB before, {out['rss_after_mb']:.0f} MiB when decided "
          f"(peak {out['peak_rss_mb']:.0f}), {out['rss_settled_mb']:.0f} MiB after the next flush")
    return 0


if __name__ == "__main__":
    sys.exit(main())
