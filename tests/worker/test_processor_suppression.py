"""The worker's member path suppresses an address twin (another member id with the address of a member who
unsubscribed) as the backtest does, with the stack's Redis as cap store and address book: ``suppressed``
before caps (no cap used up) and a twin's scenario run ended at the due moment (SPEC §11, §12, §14 order)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from kagoflow.adapters.redis_store import RedisStore
from kagoflow.core.decisions import Decision
from kagoflow.core.events import Record
from kagoflow.core.rules import RuleSet
from kagoflow.settings import Settings
from kagoflow.streams import contract
from kagoflow.worker.engine import RecordingTable
from kagoflow.worker.processor import make_processor
from tests.core.abandon_helpers import jst, local
from tests.core.test_address_suppression import CART_1H, CART_3H, SHARED, STEP_1, follow, step
from tests.core.test_customer_rules import replay, rules_dir
from tests.worker.test_engine_link import Outbox

pytestmark = pytest.mark.integration

class Event:
    def ack(self) -> bool:
        return True


def _inputs() -> list[tuple[str, dict[str, Any]]]:
    def profile(member: str, email: str, at: str) -> tuple[str, dict[str, Any]]:
        return "members", {"member_id": member, "email": email, "opt_in": True, "ts": jst(at)}

    return [
        profile("m1", SHARED, "2026-11-01 00:00"), profile("m2", SHARED.upper(), "2026-11-01 00:00"),
        profile("m3", SHARED, "2026-11-01 00:00"),
        # m3's run: step 1 before m1 unsubscribes, step 2 after it
        ("orders", {"order_id": "o1", "member_id": "m3", "status": "ordered", "ordered_at": jst("2026-11-19 10:00"),
                    "items": [{"product_id": "A", "quantity": 1, "price": 1000}], "ts": jst("2026-11-19 10:00")}),
        ("engagement", {"member_id": "m1", "event": "unsubscribe", "ts": jst("2026-11-20 10:00")}),
        # m2's first mail of the day is suppressed; its second, to an address of its own, is sent, not capped
        ("beacons", {"event_id": "e1", "member_id": "m2", "type": "cart_add", "product_id": "A",
                     "ts": jst("2026-11-24 10:00")}),
        profile("m2", "jiro@example.com", "2026-11-24 11:30"),
    ]


def _parse(topic: str, value: dict[str, Any]) -> Record:
    parsed = {"members": contract.parse_member, "orders": contract.parse_order,
              "engagement": contract.parse_engagement, "beacons": contract.parse_beacon}[topic](orjson.dumps(value))
    assert parsed is not None
    return parsed


def _brief(rows: list[tuple[str, str, str, str, int, int]]) -> list[tuple[str, str, str, str, int, str]]:
    return [(m, r, s, why, k, local(at)) for m, r, s, why, k, at in rows]


def _of(decisions: list[Decision]) -> list[tuple[str, str, str, str, int, int]]:
    return [(d.member_id, d.rule_id, d.status, d.reason, d.step, d.at_ms) for d in decisions]


async def _worker(rules: RuleSet, inputs: list[tuple[str, dict[str, Any]]], redis_url: str, prefix: str,
                  ticks_from: str, days: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The worker's decisions on ``inputs`` (wall clock = each record's ``_arrives``, else its ts; ticks every 15
    minutes, after the records of the same moment) with the stack's Redis, and its day cap counters."""
    store = RedisStore.from_url(redis_url, prefix=prefix)
    try:
        outbox = Outbox()
        clock = [jst("2026-11-01 00:00")]
        processor = make_processor(Settings(state_flush_seconds=1.0, state_buckets=8), rules,
                                   table=RecordingTable(), catalog={}, caps=store.caps, outbox=outbox,
                                   addresses=store)
        processor.clock = lambda: clock[0]
        processor.assign({0})
        ticks = [("kagoflow-ticks", {"ts": jst(ticks_from) + minute * 60_000})
                 for minute in range(0, days * 24 * 60, 15)]
        timeline = sorted(inputs + ticks, key=lambda item: (item[1].get("_arrives", item[1]["ts"]),
                                                            item[0] == "kagoflow-ticks"))
        for offset, (topic, value) in enumerate(timeline):
            value = dict(value)
            clock[0] = value.pop("_arrives", value["ts"])  # the wall clock when the worker gets the record
            member = value.get("member_id")
            await processor.on_event(topic=topic, partition=0, key=member.encode() if member else None,
                                     value=orjson.dumps(value), timestamp_ms=value["ts"], offset=offset,
                                     event=Event())
        counters = {str(key): int(await store.client.get(key))
                    async for key in store.client.scan_iter(match=store.prefix + "*:cap:*:d:*")}
        return [orjson.loads(v) for t, v in outbox.records if t == processor.names.mail_decisions], counters
    finally:
        keys = [key async for key in store.client.scan_iter(match=store.prefix + "*", count=1000)]
        if keys:
            await store.client.delete(*keys)
        await store.close()


def _rows(got: list[dict[str, Any]]) -> list[tuple[str, str, str, str, int, int]]:
    return [(d["member_id"], d["rule"], d["status"], d["reason"], d.get("step", 0), d["at_ms"]) for d in got]


def test_worker_and_backtest_suppress_an_address_twin_alike(tmp_path: Path, stack: Settings,
                                                             unique_name: Callable[[str], str]) -> None:
    rules = rules_dir(tmp_path, CART_1H, CART_3H, follow(STEP_1, step("2d"), step("1d")),
                      shop={"caps": {"day": 1}})
    inputs = _inputs()
    expected, _ = replay(rules, [_parse(topic, value) for topic, value in inputs])
    got, counters = asyncio.run(_worker(rules, inputs, stack.redis_url, unique_name("suppress") + ":",
                                        "2026-11-19 00:00", 6))
    worker = _rows(got)
    assert sorted(worker) == sorted(_of(expected))
    assert _brief(sorted(worker)) == [
        ("m2", "cart-1h", "suppressed", "unsubscribed", 0, "2026-11-24 11:00"),
        ("m2", "cart-3h", "sent", "", 0, "2026-11-24 13:00"),
        ("m3", "follow", "ended", "suppressed", 0, "2026-11-21 10:00"),
        ("m3", "follow", "sent", "", 1, "2026-11-19 10:00"),
        ("m3", "follow", "started", "", 0, "2026-11-19 10:00"),
        ("m3", "follow", "suppressed", "unsubscribed", 2, "2026-11-21 10:00"),
    ]
    assert list(counters.values()) == [1], f"only the sent mail counts against the day cap: {counters}"


def test_a_twins_mail_due_at_the_unsubscribe_ts_is_still_sent(tmp_path: Path, stack: Settings,
                                                              unique_name: Callable[[str], str]) -> None:
    """SPEC §11: a due equal to a record's ts fires before that record — also when the record (m1's
    unsubscribe) and the twin's due are handled in the same worker event."""
    rules = rules_dir(tmp_path, CART_1H)
    inputs: list[tuple[str, dict[str, Any]]] = [
        ("members", {"member_id": m, "email": SHARED, "opt_in": True, "ts": jst("2026-11-01 00:00")})
        for m in ("m1", "m2")]
    inputs += [("beacons", {"event_id": "e1", "member_id": "m2", "type": "cart_add", "product_id": "A",
                            "ts": jst("2026-11-24 10:00")}),
               ("engagement", {"member_id": "m1", "event": "unsubscribe", "ts": jst("2026-11-24 11:00")})]
    expected, _ = replay(rules, [_parse(topic, value) for topic, value in inputs])
    got, _ = asyncio.run(_worker(rules, inputs, stack.redis_url, unique_name("suppress") + ":",
                                 "2026-11-24 00:00", 1))
    assert _rows(got) == _of(expected)
    assert _brief(_rows(got)) == [("m2", "cart-1h", "sent", "", 0, "2026-11-24 11:00")]


def test_a_late_unsubscribe_lets_what_was_due_before_it_go_and_suppresses_what_was_due_after(
        tmp_path: Path, stack: Settings, unique_name: Callable[[str], str]) -> None:
    """The unsubscribe of 11:00 reaches the worker at 11:05, before any tick after 10:52: m2's mail due 10:58
    is sent, m3's due 11:03 is suppressed, as in the backtest (event time decides, not the handling moment)."""
    rules = rules_dir(tmp_path, CART_1H)
    inputs: list[tuple[str, dict[str, Any]]] = [
        ("members", {"member_id": m, "email": SHARED, "opt_in": True, "ts": jst("2026-11-01 00:00")})
        for m in ("m1", "m2", "m3")]
    inputs += [("beacons", {"event_id": f"e-{m}", "member_id": m, "type": "cart_add", "product_id": "A",
                            "ts": jst(at)}) for m, at in (("m2", "2026-11-24 09:58"), ("m3", "2026-11-24 10:03"))]
    inputs.append(("engagement", {"member_id": "m1", "event": "unsubscribe", "ts": jst("2026-11-24 11:00"),
                                  "_arrives": jst("2026-11-24 11:05")}))
    expected, _ = replay(rules, [_parse(topic, {k: v for k, v in value.items() if k != "_arrives"})
                                 for topic, value in inputs])
    got, _ = asyncio.run(_worker(rules, inputs, stack.redis_url, unique_name("suppress") + ":",
                                 "2026-11-24 00:07", 1))
    statuses = sorted((m, s, why) for m, _, s, why, _, _ in _rows(got))
    assert statuses == sorted((m, s, why) for m, _, s, why, _, _ in _of(expected))
    assert statuses == [("m2", "sent", ""), ("m3", "suppressed", "unsubscribed")]
