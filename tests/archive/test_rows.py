"""Kafka record → archive row mapping (pure; the integration tests store these rows for real)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition

from kagoflow.archive.batch import Batch
from kagoflow.archive.rows import ARCHIVE_TOPICS, COLUMNS, MAPPERS, parse_engagement
from kagoflow.core.decisions import Decision
from kagoflow.core.errors import ContractError
from kagoflow.streams.contract import encode_batch

TS = 1_709_222_400_000


def mapped(topic: str, record: dict[str, Any] | bytes, *, timestamp: int | None = TS) -> dict[str, Any]:
    table, mapper = MAPPERS[topic]
    value = record if isinstance(record, bytes) else orjson.dumps(record)
    row = mapper(value, 2, 41, timestamp)
    assert len(row) == len(COLUMNS[table])
    return dict(zip(COLUMNS[table], row, strict=True))


def test_every_archived_topic_has_a_table() -> None:
    assert set(ARCHIVE_TOPICS) == set(MAPPERS)
    assert {table for table, _ in MAPPERS.values()} == set(COLUMNS)


def test_beacon_row() -> None:
    row = mapped("beacons", {"event_id": "e1", "member_id": "m1", "type": "purchase", "ts": TS,
                             "product_ids": ["a", "b"], "device": "mobile"})
    assert row == {"ts_ms": TS, "event_id": "e1", "member_id": "m1", "type": "purchase", "product_id": "",
                   "product_ids": ["a", "b"], "order_id": "", "price": None, "quantity": None,
                   "device": "mobile", "shop_id": "default", "kafka_partition": 2, "kafka_offset": 41}


def test_a_batch_record_archives_its_valid_beacons() -> None:
    good = {"event_id": "e1", "member_id": "m1", "type": "view", "product_id": "p1", "ts": TS}
    batch = encode_batch([orjson.dumps(good), b'{"event_id": "e2"}', orjson.dumps({**good, "event_id": "e3"})])
    rows = MAPPERS["beacons"][1](batch, 2, 41, TS)
    assert isinstance(rows, list)
    assert [(row[1], row[-2], row[-1]) for row in rows] == [("e1", 2, 41), ("e3", 2, 41)]


def test_upsert_rows_take_the_kafka_timestamp_when_ts_is_absent() -> None:
    member = mapped("members", {"member_id": "m1", "email": "a@b.jp", "opt_in": False}, timestamp=TS + 5)
    assert (member["ts_ms"], member["opt_in"], member["name"]) == (TS + 5, 0, None)
    product = mapped("catalog", {"product_id": "p", "price": 10, "stock": 0, "on_sale": True})
    assert (product["ts_ms"], product["price"], product["stock"], product["on_sale"]) == (TS, 10.0, 0, 1)


def test_order_row_flattens_items_and_keeps_seconds() -> None:
    row = mapped("orders", {"order_id": "o1", "member_id": "m1", "status": "shipped", "ordered_at": TS + 999,
                            "shipped_at": TS + 86_400_000,
                            "items": [{"product_id": "a", "quantity": 2, "price": 5}]})
    assert row["ts_ms"] == TS + 86_400_000
    assert (row["ordered_at"], row["shipped_at"]) == (TS // 1000, TS // 1000 + 86_400)
    assert row["delivered_at"] is None
    assert (row["item_product_ids"], row["item_quantities"], row["item_prices"]) == (["a"], [2], [5.0])


def _decision(**overrides: Any) -> Decision:
    values: dict[str, Any] = {"member_id": "m1", "rule_id": "cart-1h", "kind": "abandonment",
                              "status": "sent", "reason": "", "products": ("p1",), "due_ms": TS,
                              "at_ms": TS + 5, "episode": "ep1", "template": "cart", "coupon": "CART10"}
    values.update(overrides)
    return Decision(**values)


def test_decision_row_from_the_wire_form() -> None:
    payload = _decision().to_json() | {"step": 2, "variant": "B"}
    row = mapped("mail_decisions", payload)
    assert row["decision_key"] == "m1|cart-1h|ep1"
    assert (row["status"], row["products"], row["at_ms"], row["due_ms"]) == ("sent", ["p1"], TS + 5, TS)
    assert (row["coupon"], row["sender_name"]) == ("CART10", "")
    assert (row["step"], row["variant"], row["cap_exempt"]) == (2, "B", 0)


@pytest.mark.parametrize(("payload", "reason"), [
    (b"nope", "record: not valid JSON"),
    (orjson.dumps(_decision().to_json() | {"status": "maybe"}), "status: unknown 'maybe'"),
    (orjson.dumps({k: v for k, v in _decision().to_json().items() if k != "episode"}), "decision: KeyError"),
    (orjson.dumps(_decision().to_json() | {"member_id": 7}), "member_id: must be a string"),
    (orjson.dumps(_decision().to_json() | {"products": [1]}), "products: must be a list of strings"),
    (orjson.dumps(_decision().to_json() | {"step": "2"}), "step/variant"),
])
def test_bad_decisions_are_rejected_before_they_reach_an_insert(payload: bytes, reason: str) -> None:
    with pytest.raises(ContractError) as info:
        MAPPERS["mail_decisions"][1](payload, 0, 0, TS)
    assert info.value.reason.startswith(reason)


def test_engagement_events_of_the_mail_side() -> None:
    from kagoflow.mail.engagement import engagement_event

    click = engagement_event("click", key="m1|cart-1h|ep1", member_id="m1", rule="cart-1h", at_ms=TS,
                             url="https://shop.example.com/p", suspected_bot=True)
    row = mapped("engagement", click)
    assert (row["event"], row["at_ms"], row["decision_key"]) == ("click", TS, "m1|cart-1h|ep1")
    assert row["rule_id"] == "cart-1h"
    assert (row["url"], row["suspected_bot"]) == ("https://shop.example.com/p", 1)
    delivery = engagement_event("delivery", key="m1|cart-1h|ep1", member_id="m1", rule="cart-1h", at_ms=TS,
                                status="failed", detail="550 no such user")
    row = mapped("engagement", delivery)
    assert (row["event"], row["detail"], row["suspected_bot"]) == ("failed", "550 no such user", 0)


def test_engagement_accepts_field_aliases() -> None:
    e = parse_engagement(orjson.dumps({"event": "open", "ts": "2024-03-01T01:00:00+09:00",
                                       "decision_key": "m1|cart-1h|ep1"}))
    assert (e.event, e.at_ms, e.member_id, e.decision_key) == ("open", TS, "m1", "m1|cart-1h|ep1")
    e = parse_engagement(orjson.dumps({"event": "bounced", "member_id": "m2", "reason": "550 no such user"}),
                         default_ts=TS)
    assert (e.at_ms, e.member_id, e.detail, e.decision_key) == (TS, "m2", "550 no such user", "")


@pytest.mark.parametrize(("payload", "reason"), [
    ({"event": "like", "member_id": "m", "at_ms": TS}, "type: unknown 'like'"),
    ({"type": "delivery", "member_id": "m", "at_ms": TS}, "status: unknown delivery result None"),
    ({"type": "open", "member_id": "m", "at_ms": TS, "suspected_bot": "yes"}, "suspected_bot: must be true"),
    ({"event": "open", "at_ms": TS}, "member_id: missing"),
    ({"event": "open", "member_id": "m"}, "at_ms: missing"),
    ({"event": "open", "member_id": "m", "at_ms": "later"}, "at_ms: not ISO-8601"),
    ({"event": "open", "member_id": ["m"], "at_ms": TS}, "member_id: must be a string"),
])
def test_bad_engagement_events(payload: dict[str, Any], reason: str) -> None:
    with pytest.raises(ContractError) as info:
        parse_engagement(orjson.dumps(payload))
    assert info.value.reason.startswith(reason)


def test_batch_is_due_by_rows_or_age_and_tracks_next_offsets() -> None:
    batch = Batch()
    assert batch.empty and not batch.is_due(now=1e9, max_rows=2, max_seconds=1.0)
    tp = TopicPartition("beacons", 1)
    batch.add("beacons", ("r1",))
    batch.mark(tp, 10)
    assert batch.started_at is not None
    start = batch.started_at
    assert not batch.is_due(now=start + 0.5, max_rows=2, max_seconds=1.0)
    assert batch.is_due(now=start + 1.0, max_rows=2, max_seconds=1.0)
    batch.add("beacons", ("r2",))
    batch.mark(tp, 11)
    assert batch.is_due(now=start, max_rows=2, max_seconds=1.0)
    assert batch.offsets == {tp: 12}
    batch.clear()
    assert batch.empty and batch.row_count == 0 and batch.rows == {}
    batch.mark(TopicPartition("members", 0), 3)  # skipped records alone still need a commit
    assert batch.started_at is not None
    assert batch.is_due(now=batch.started_at + 1.0, max_rows=2, max_seconds=1.0)
