"""The worker's member path decides caps and pool coupons as the backtest does (SPEC §11 "Only `sent` counts"):
a mail skipped for an empty pool leaves the member's day cap free for the next mail of the day."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from kagoflow.core.caps import InMemoryCapStore
from kagoflow.core.coupons import MemoryCouponPool
from kagoflow.settings import Settings
from kagoflow.worker.engine import RecordingTable
from kagoflow.worker.processor import make_processor
from tests.core.abandon_helpers import jst
from tests.core.test_caps import PLAIN, POOLED, SHOP, _records
from tests.core.test_customer_rules import replay, rules_dir
from tests.worker.test_engine_link import Outbox


class Event:
    def ack(self) -> bool:
        return True


def test_the_worker_leaves_the_cap_free_after_an_empty_pool_like_the_backtest(tmp_path: Path) -> None:
    rules = rules_dir(tmp_path, POOLED, PLAIN, shop=SHOP, pools={"spring": ["S1"]})
    expected, _ = replay(rules, _records())

    async def run() -> list[dict[str, Any]]:
        outbox = Outbox()
        clock = [jst("2026-01-01 00:00")]
        processor = make_processor(Settings(state_flush_seconds=1.0, state_buckets=8), rules,
                                   table=RecordingTable(), catalog={}, caps=InMemoryCapStore(), outbox=outbox,
                                   coupons=MemoryCouponPool(rules.coupon_pools))
        processor.clock = lambda: clock[0]
        processor.assign({0})
        inputs = [("members", {"member_id": m, "email": f"{m}@example.com", "opt_in": True,
                               "ts": jst("2026-01-01 00:00")}) for m in ("a", "m1")]
        inputs += [("beacons", {"event_id": f"e-{m}", "member_id": m, "type": "cart_add", "product_id": "A",
                                "ts": jst(at)}) for m, at in (("a", "2026-01-05 08:00"), ("m1", "2026-01-05 10:00"))]
        for offset, (topic, value) in enumerate(inputs):
            clock[0] = value["ts"]
            await processor.on_event(topic=topic, partition=0, key=value["member_id"].encode(),
                                     value=orjson.dumps(value), timestamp_ms=value["ts"], offset=offset,
                                     event=Event())
        for minute in range(0, 8 * 60, 15):  # ticks through the day fire what is due
            clock[0] = jst("2026-01-05 08:00") + minute * 60_000
            await processor.on_event(topic="kagoflow-ticks", partition=0, key=None, value=b"{}",
                                     timestamp_ms=clock[0], offset=0, event=Event())
        return [orjson.loads(v) for t, v in outbox.records if t == processor.names.mail_decisions]

    got = asyncio.run(run())
    brief = [(d["member_id"], d["rule"], d["status"], d.get("coupon")) for d in got]
    assert brief == [(d.member_id, d.rule_id, d.status, d.coupon) for d in expected]
    assert brief == [("a", "cart-1h", "sent", "S1"), ("a", "cart-3h", "capped", None),
                     ("m1", "cart-1h", "skipped", None), ("m1", "cart-3h", "sent", None)]
