"""The §1 input contract: every rule, with the reason an operator would read on the DLQ."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kagoflow.core.errors import ContractError
from kagoflow.core.events import Beacon, CatalogUpdate, MemberUpdate, OrderItem, OrderUpdate
from kagoflow.streams.contract import (
    MAX_RECORD_BYTES,
    batch_item,
    beacon_record,
    dlq_topic,
    parse_any,
    parse_beacon,
    parse_catalog,
    parse_member,
    parse_order,
    parse_ts,
)

TS = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def raw(**fields: Any) -> bytes:
    return orjson.dumps({k: v for k, v in fields.items() if v is not ...})


def beacon(**overrides: Any) -> bytes:
    base: dict[str, Any] = {"event_id": "e1", "member_id": "m1", "type": "cart_add", "ts": TS,
                            "product_id": "sku-1"}
    base.update(overrides)
    return raw(**base)


def reason_of(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ContractError) as info:
        call(*args, **kwargs)
    return info.value.reason


# -- time ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("2024-01-01T09:00:00+09:00", TS),
    ("2024-01-01T00:00:00Z", TS),
    ("2024-01-01T00:00:00.123+00:00", TS + 123),
    ("2023-12-31T19:00:00-05:00", TS),
    (TS, TS),
    (0, 0),
])
def test_ts_accepts_iso_with_offset_and_epoch_ms(value: object, expected: int) -> None:
    assert parse_ts(value) == expected


@pytest.mark.parametrize(("value", "reason"), [
    ("2024-13-01", "ts: not ISO-8601 with offset or epoch ms: '2024-13-01'"),
    ("2024-01-01T00:00:00", "ts: ISO-8601 without UTC offset: '2024-01-01T00:00:00'"),
    ("2024-01-01", "ts: ISO-8601 without UTC offset: '2024-01-01'"),
    ("yesterday", "ts: not ISO-8601 with offset or epoch ms: 'yesterday'"),
    (1.5e12, "ts: not ISO-8601 with offset or epoch ms: 1500000000000.0"),
    (True, "ts: not ISO-8601 with offset or epoch ms: True"),
    (-1, "ts: out of range 1970..2099: -1"),
    (4_102_444_800_000, "ts: out of range 1970..2099: 4102444800000"),
    ("0001-01-01T00:00:00+01:00", "ts: out of range 1970..2099: '0001-01-01T00:00:00+01:00'"),
    ([TS], "ts: not ISO-8601 with offset or epoch ms: [1704067200000]"),
])
def test_ts_rejections_name_field_and_value(value: object, reason: str) -> None:
    assert reason_of(parse_ts, value) == reason


# -- beacons ------------------------------------------------------------------------------------


def test_beacon_full_product_action() -> None:
    b = parse_beacon(beacon(ts="2024-01-01T09:00:00+09:00", price=1280, quantity=2, device="smartphone",
                            shop_id="tokyo", extra_field="ignored"))
    assert b == Beacon(event_id="e1", member_id="m1", type="cart_add", ts=TS, product_id="sku-1",
                       price=1280.0, quantity=2, device="smartphone", shop_id="tokyo")


def test_beacon_defaults_and_nulls_mean_absent() -> None:
    b = parse_beacon(beacon(type="view", price=None, device=None, shop_id=None))
    assert (b.shop_id, b.price, b.device, b.quantity) == ("default", None, None, None)


def test_purchase_with_product_ids_or_order_id() -> None:
    b = parse_beacon(beacon(type="purchase", product_id=..., product_ids=["a", "b", "a"]))
    assert (b.type, b.product_ids, b.order_id) == ("purchase", ("a", "b"), None)
    b = parse_beacon(beacon(type="purchase", product_id=..., order_id="o-9"))
    assert (b.product_ids, b.order_id) == ((), "o-9")


def test_page_view_has_no_product() -> None:
    b = parse_beacon(beacon(type="page_view", product_id=...))
    assert (b.type, b.product_id) == ("page_view", None)


@pytest.mark.parametrize(("record", "reason"), [
    (beacon(member_id=...), "member_id: missing"),
    (beacon(member_id=None), "member_id: must not be null"),
    (beacon(member_id=""), "member_id: must not be empty"),
    (beacon(member_id="   "), "member_id: must not be empty"),
    (beacon(member_id=42), "member_id: must be a string"),
    (beacon(member_id="m" * 129), "member_id: longer than 128 characters"),
    (beacon(member_id="m\n1"), "member_id: contains control character U+000A at position 1"),
    (beacon(event_id=...), "event_id: missing"),
    (beacon(type="clickk"), "type: unknown 'clickk'"),
    (beacon(type=...), "type: missing"),
    (beacon(type=1), "type: unknown 1"),
    (beacon(ts=...), "ts: missing"),
    (beacon(ts="2024-13-01"), "ts: not ISO-8601 with offset or epoch ms: '2024-13-01'"),
    (beacon(product_id=...), "product_id: required for cart_add"),
    (beacon(type="view", product_id=None), "product_id: required for view"),
    (beacon(type="cart_remove", product_id=""), "product_id: must not be empty"),
    (beacon(price=-1), "price: must be a number >= 0"),
    (beacon(price="100"), "price: must be a number >= 0"),
    (beacon(price=True), "price: must be a number >= 0"),
    (beacon(quantity=0), "quantity: must be an integer >= 1"),
    (beacon(quantity=1.0), "quantity: must be an integer >= 1"),
    (beacon(quantity=False), "quantity: must be an integer >= 1"),
    (beacon(device="tablet"), "device: unknown 'tablet' (pc | smartphone | mobile)"),
    (beacon(shop_id="s" * 65), "shop_id: longer than 64 characters"),
    (beacon(order_id="o1"), "order_id: not allowed for cart_add"),
    (beacon(product_ids=["a"]), "product_ids: not allowed for cart_add"),
    (beacon(type="page_view"), "product_id: not allowed for page_view"),
    (beacon(type="page_view", product_id=..., price=10), "price: not allowed for page_view"),
    (beacon(type="page_view", product_id=..., order_id="o"), "order_id: not allowed for page_view"),
    (beacon(type="purchase", product_id=...), "product_ids: purchase needs product_ids or order_id"),
    (beacon(type="purchase", product_id=..., product_ids=[]),
     "product_ids: purchase needs product_ids or order_id"),
    (beacon(type="purchase"), "product_id: not allowed for purchase"),
    (beacon(type="purchase", product_id=..., product_ids="a"),
     "product_ids: must be a list of at most 1000 strings"),
    (beacon(type="purchase", product_id=..., product_ids=["a", 3]), "product_ids[1]: must be a string"),
    (beacon(type="purchase", product_id=..., product_ids=["a"] * 1001),
     "product_ids: must be a list of at most 1000 strings"),
])
def test_beacon_rejections(record: bytes, reason: str) -> None:
    assert reason_of(parse_beacon, record) == reason


@pytest.mark.parametrize(("record", "reason"), [
    (b"", "record: not valid JSON"),
    (b"{", "record: not valid JSON"),
    (b"\xff\xfe", "record: not valid JSON"),
    (b"[1, 2]", "record: not a JSON object"),
    (b"null", "record: not a JSON object"),
    (b"1e400", "record: not"),
])
def test_undecodable_records(record: bytes, reason: str) -> None:
    assert reason_of(parse_beacon, record).startswith(reason)


def test_oversized_record_is_rejected_before_decoding() -> None:
    big = beacon(padding="x" * MAX_RECORD_BYTES)
    assert reason_of(parse_beacon, big) == f"record: larger than {MAX_RECORD_BYTES} bytes"


# -- members ------------------------------------------------------------------------------------


def member(**overrides: Any) -> bytes:
    base: dict[str, Any] = {"member_id": "m1", "email": "taro@example.jp", "opt_in": True}
    base.update(overrides)
    return raw(**base)


def test_member_full_and_default_ts() -> None:
    m = parse_member(member(name="山田 太郎", device="pc", locale="ja-JP", purchase_count=3), default_ts=TS)
    assert m == MemberUpdate(member_id="m1", ts=TS, email="taro@example.jp", opt_in=True, name="山田 太郎",
                             device="pc", locale="ja-JP", purchase_count=3)
    assert parse_member(member(ts="2024-01-01T00:00:01Z"), default_ts=TS).ts == TS + 1000


@pytest.mark.parametrize(("record", "reason"), [
    (member(email=...), "email: missing"),
    (member(email="not-an-address"), "email: not an e-mail address: 'not-an-address'"),
    (member(email="a@b.jp\r\nBcc: x@y.z"), "email: contains control character U+000D at position 6"),
    (member(email="a@b.jp, c@d.jp"), "email: not an e-mail address: 'a@b.jp, c@d.jp'"),
    (member(opt_in=...), "opt_in: missing"),
    (member(opt_in="yes"), "opt_in: must be true or false"),
    (member(opt_in=1), "opt_in: must be true or false"),
    (member(purchase_count=-1), "purchase_count: must be an integer >= 0"),
    (member(locale="日本"), "locale: not a language tag: '日本'"),
    (member(device="tv"), "device: unknown 'tv' (pc | smartphone | mobile)"),
    (member(name="n" * 257), "name: longer than 256 characters"),
])
def test_member_rejections(record: bytes, reason: str) -> None:
    assert reason_of(parse_member, record, default_ts=TS) == reason


def test_member_without_ts_needs_a_default() -> None:
    assert reason_of(parse_member, member()) == "ts: missing"
    assert reason_of(parse_catalog, product()) == "ts: missing"


# -- catalog ------------------------------------------------------------------------------------


def product(**overrides: Any) -> bytes:
    base: dict[str, Any] = {"product_id": "sku-1", "price": 2980, "stock": 5}
    base.update(overrides)
    return raw(**base)


def test_catalog_full() -> None:
    c = parse_catalog(product(name="Tee", url="https://shop.example.com/p/1", image_url="http://img/1.png",
                              on_sale=False, ts=TS))
    assert c == CatalogUpdate(product_id="sku-1", ts=TS, price=2980.0, stock=5, name="Tee",
                              url="https://shop.example.com/p/1", image_url="http://img/1.png", on_sale=False)
    assert parse_catalog(product(), default_ts=TS + 5).ts == TS + 5


@pytest.mark.parametrize(("record", "reason"), [
    (product(price=...), "price: missing"),
    (product(price=-5), "price: must be a number >= 0"),
    (product(stock=...), "stock: missing"),
    (product(stock=-1), "stock: must be an integer >= 0"),
    (product(stock=2.5), "stock: must be an integer >= 0"),
    (product(url="javascript:alert(1)"), "url: must be an http(s) URL"),
    (product(on_sale="no"), "on_sale: must be true or false"),
    (product(product_id=...), "product_id: missing"),
])
def test_catalog_rejections(record: bytes, reason: str) -> None:
    assert reason_of(parse_catalog, record, default_ts=TS) == reason


# -- orders -------------------------------------------------------------------------------------


def order(**overrides: Any) -> bytes:
    base: dict[str, Any] = {"order_id": "o1", "member_id": "m1", "status": "ordered", "ordered_at": TS}
    base.update(overrides)
    return raw(**base)


def test_order_ts_defaults_to_latest_status_time() -> None:
    o = parse_order(order(status="delivered", shipped_at=TS + 10, delivered_at="2024-01-03T00:00:00Z",
                          items=[{"product_id": "a", "quantity": 2, "price": 100},
                                 {"product_id": "b", "price": 50.5}],
                          coupon="FOLLOW5", total=250.5))
    assert o == OrderUpdate(order_id="o1", member_id="m1", status="delivered", ts=TS + 2 * 86_400_000,
                            ordered_at=TS, shipped_at=TS + 10, delivered_at=TS + 2 * 86_400_000,
                            items=(OrderItem("a", 2, 100.0), OrderItem("b", 1, 50.5)), coupon="FOLLOW5",
                            total=250.5)
    assert parse_order(order()).ts == TS
    assert parse_order(order(ts=TS + 7)).ts == TS + 7


@pytest.mark.parametrize(("record", "reason"), [
    (order(ordered_at=...), "ordered_at: missing"),
    (order(ordered_at="2024-01-01 10:00"), "ordered_at: ISO-8601 without UTC offset: '2024-01-01 10:00'"),
    (order(shipped_at="soon"), "shipped_at: not ISO-8601 with offset or epoch ms: 'soon'"),
    (order(status=...), "status: missing"),
    (order(items={"product_id": "a"}), "items: must be a list of at most 1000 objects"),
    (order(items=["a"]), "items[0]: must be an object"),
    (order(items=[{"product_id": "a", "price": 1}, {"price": 1}]), "items[1].product_id: missing"),
    (order(items=[{"product_id": "a", "price": -1}]), "items[0].price: must be a number >= 0"),
    (order(items=[{"product_id": "a", "price": 1, "quantity": 0}]),
     "items[0].quantity: must be an integer >= 1"),
    (order(total="1000"), "total: must be a number >= 0"),
])
def test_order_rejections(record: bytes, reason: str) -> None:
    assert reason_of(parse_order, record) == reason


# -- dispatch and DLQ ---------------------------------------------------------------------------


def test_parse_any_dispatches_by_topic() -> None:
    assert isinstance(parse_any("beacons", beacon(), default_ts=None), Beacon)
    assert isinstance(parse_any("members", member(), default_ts=TS), MemberUpdate)
    assert isinstance(parse_any("catalog", product(), default_ts=TS), CatalogUpdate)
    assert isinstance(parse_any("orders", order(), default_ts=TS), OrderUpdate)
    assert reason_of(parse_any, "clicks", beacon(), default_ts=None) == "topic: unknown 'clicks'"


def test_dlq_topic_name() -> None:
    assert dlq_topic("orders") == "orders.dlq"


# -- fuzz ---------------------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_field_names = st.sampled_from(["event_id", "member_id", "type", "ts", "product_id", "price", "quantity",
                                "device", "shop_id", "product_ids", "order_id", "email", "opt_in", "stock",
                                "status", "ordered_at", "items", "total", "url", "on_sale", "locale"])
_plausible = st.sampled_from(["view", "purchase", "page_view", "cart_add", "pc", TS, "2024-01-01T00:00:00Z",
                              "a@b.c", True])
_records = st.dictionaries(_field_names, _json_values | _plausible, max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_contract_error(data: bytes) -> None:
    for topic in ("beacons", "members", "catalog", "orders"):
        with contextlib.suppress(ContractError):
            parse_any(topic, data, default_ts=None)


@settings(max_examples=400, deadline=None)
@given(_records)
def test_arbitrary_json_objects_raise_only_contract_error(record: dict[str, Any]) -> None:
    data = json.dumps(record).encode()
    for topic in ("beacons", "members", "catalog", "orders"):
        try:
            parse_any(topic, data, default_ts=TS)
        except ContractError as exc:
            assert exc.reason.split(":")[0]  # names a field (or "record")


# -- the documented examples --------------------------------------------------------------------


def test_every_example_in_contract_md_is_valid() -> None:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "streams" / "CONTRACT.md").read_text(encoding="utf-8")
    checked = 0
    for section in re.split(r"\n## ", text):
        topic = re.match(r"`(\w+)`", section)
        if topic is None or topic.group(1) not in ("beacons", "members", "catalog", "orders"):
            continue
        for block in re.findall(r"```json\n(.*?)```", section, flags=re.DOTALL):
            if block.startswith('{"batch"'):  # the batch form of beacons: every beacon in it is valid
                items = beacon_record(block.encode())
                assert isinstance(items, list)
                for index in range(len(items)):
                    batch_item(items, index)
            else:
                parse_any(topic.group(1), block.encode(), default_ts=TS)
            checked += 1
    assert checked == 6
