"""Issue 11: ids and names refuse characters that hide or reorder text; undecodable bytes are located; null
values and mismatched keys have reasons of their own."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from kagoflow.core.errors import ContractError
from kagoflow.streams.contract import check_key, parse_any, parse_beacon, parse_catalog, parse_member, parse_order

TS = 1_704_067_200_000
BEACON: dict[str, Any] = {"event_id": "e1", "member_id": "m1", "type": "cart_add", "ts": TS, "product_id": "p1"}
MEMBER: dict[str, Any] = {"member_id": "m1", "email": "taro@example.jp", "opt_in": True, "name": "山田\u3000太郎"}
PRODUCT: dict[str, Any] = {"product_id": "p1", "price": 100, "stock": 1, "name": "Tシャツ"}
ORDER: dict[str, Any] = {"order_id": "o1", "member_id": "m1", "status": "ordered", "ordered_at": TS,
                         "items": [{"product_id": "p1", "price": 100}]}


def reason_of(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ContractError) as info:
        call(*args, **kwargs)
    return info.value.reason


def _with(base: dict[str, Any], field: str, value: str) -> bytes:
    record = dict(base)
    if field == "items[0].product_id":
        record["items"] = [{"product_id": value, "price": 100}]
    else:
        record[field] = value
    return orjson.dumps(record)


_CASES = [
    ("\u202e", "format character U+202E"),  # RIGHT-TO-LEFT OVERRIDE
    ("\u200b", "format character U+200B"),  # ZERO WIDTH SPACE
    ("\u200d", "format character U+200D"),  # ZERO WIDTH JOINER
    ("\u2066", "format character U+2066"),  # LEFT-TO-RIGHT ISOLATE
    ("\ufeff", "format character U+FEFF"),  # ZERO WIDTH NO-BREAK SPACE (BOM)
    ("\u00ad", "format character U+00AD"),  # SOFT HYPHEN
    ("\u0085", "control character U+0085"),  # C1: NEXT LINE
    ("\u009b", "control character U+009B"),  # C1: CONTROL SEQUENCE INTRODUCER
    ("\x1b", "control character U+001B"),  # C0: ESCAPE
    ("\x00", "control character U+0000"),
    ("\x7f", "control character U+007F"),
    ("\u2028", "line separator U+2028"),
]
_FIELDS = [
    (parse_beacon, BEACON, "member_id"), (parse_beacon, BEACON, "event_id"), (parse_beacon, BEACON, "product_id"),
    (parse_beacon, BEACON, "shop_id"), (parse_member, MEMBER, "member_id"), (parse_member, MEMBER, "name"),
    (parse_catalog, PRODUCT, "product_id"), (parse_catalog, PRODUCT, "name"), (parse_order, ORDER, "order_id"),
    (parse_order, ORDER, "member_id"), (parse_order, ORDER, "items[0].product_id"),
]


@pytest.mark.parametrize(("char", "what"), _CASES)
@pytest.mark.parametrize(("parse", "base", "field"), _FIELDS)
def test_hidden_and_control_characters_are_rejected_naming_field_and_position(
        parse: Any, base: dict[str, Any], field: str, char: str, what: str) -> None:
    record = _with(base, field, "ab" + char + "c")
    reason = reason_of(parse_any, {parse_beacon: "beacons", parse_member: "members", parse_catalog: "catalog",
                                   parse_order: "orders"}[parse], record, default_ts=TS)
    assert reason == f"{field}: contains {what} at position 2"


def test_visible_text_in_any_script_stays_valid() -> None:
    for name in ("山田\u3000太郎", "Zoë 🎉", "Ἀθῆναι", "محمد", "ज़ोया", "👍🏽"):
        assert parse_member(orjson.dumps({**MEMBER, "name": name}), default_ts=TS).name == name
        assert parse_catalog(orjson.dumps({**PRODUCT, "name": name}), default_ts=TS).name == name


def test_invalid_utf8_names_the_field_and_byte_position() -> None:
    record = b'{"event_id": "e1", "member_id": "ab\xffc", "type": "view", "ts": 1, "product_id": "p"}'
    position = record.index(b"\xff")
    assert reason_of(parse_beacon, record) == f"member_id: not valid UTF-8 at byte {position}"
    escaped = b'{"member_id": "m1", "name": "say \\"hi\\", ok", "email": "a\xc3@b.jp", "opt_in": true}'
    position = escaped.index(b"\xc3")
    assert reason_of(parse_member, escaped, default_ts=TS) == f"email: not valid UTF-8 at byte {position}"


@pytest.mark.parametrize("record", [
    b"\xff\xfe binary junk",  # no field around it
    b'{"memb\xe9r_id": "m1"}',  # inside a field name
    b'{"product_ids": ["a", "b\x80"]}',  # inside a list
])
def test_invalid_utf8_outside_a_field_value_names_the_record(record: bytes) -> None:
    position = next(i for i, byte in enumerate(record) if byte >= 0x80 and byte in b"\xff\xe9\x80")
    assert reason_of(parse_beacon, record) == f"record: not valid JSON: invalid UTF-8 at byte {position}"


@pytest.mark.parametrize("topic", ["beacons", "members", "catalog", "orders"])
def test_null_value_is_a_contract_error(topic: str) -> None:
    assert reason_of(parse_any, topic, None, default_ts=TS).startswith("record: null value")


def test_key_must_be_the_record_id() -> None:
    check_key(b"m1", "m1", "member_id")
    check_key("山田".encode(), "山田", "member_id")
    assert reason_of(check_key, None, "m1", "member_id") == "key: missing (must be the member_id 'm1')"
    assert reason_of(check_key, b"m2", "m1", "member_id") == "key: b'm2' is not the member_id 'm1'"
    assert reason_of(check_key, b"\xff" * 500, "p1", "product_id").startswith("key: b'\\xff")
