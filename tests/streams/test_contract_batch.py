"""The batch record form of ``beacons`` and the default partitioner's hash (``streams/CONTRACT.md``)."""

from __future__ import annotations

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from kagoflow.core.errors import ContractError
from kagoflow.streams.contract import (
    MAX_BATCH_BYTES,
    batch_item,
    beacon_record,
    encode_batch,
    key_partition,
    murmur2,
)

BEACON = {"event_id": "e1", "member_id": "m1", "type": "view", "product_id": "p1", "ts": 1_709_255_700_000}


@given(st.binary(max_size=200))
def test_murmur2_is_kafkas(data: bytes) -> None:
    assert murmur2(data) & 0x7FFFFFFF == aiokafka_murmur2(data) & 0x7FFFFFFF
    assert murmur2(data) & 0xFFFFFFFF == aiokafka_murmur2(data) & 0xFFFFFFFF


@given(st.text(min_size=1, max_size=60), st.integers(min_value=1, max_value=64))
def test_key_partition_is_the_default_partitioners(member: str, partitions: int) -> None:
    key = member.encode()
    every = list(range(partitions))
    assert key_partition(key, partitions) == DefaultPartitioner()(key, every, every)


def test_known_java_values() -> None:
    # org.apache.kafka.common.utils.Utils.murmur2 test vectors (UtilsTest.testMurmur2), as signed ints
    for text, expected in (("21", -973932308), ("foobar", -790332482), ("a-little-bit-long-string", -985981536),
                           ("a-little-bit-longer-string", -1486304829),
                           ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971), ("abc", 479470107)):
        assert murmur2(text.encode()) == expected & 0xFFFFFFFF, text


def test_a_single_beacon_and_a_batch_decode_apart() -> None:
    assert beacon_record(orjson.dumps(BEACON)) == BEACON
    items = beacon_record(encode_batch([orjson.dumps(BEACON), b"3"]))
    assert isinstance(items, list) and items[0] == BEACON
    assert batch_item(items, 0)[1] == "m1"
    with pytest.raises(ContractError, match=r"^batch\[1\]: not a JSON object$"):
        batch_item(items, 1)
    bad = beacon_record(encode_batch([orjson.dumps({**BEACON, "type": "clickk"})]))
    assert isinstance(bad, list)
    with pytest.raises(ContractError, match=r"^batch\[0\]\.type: unknown 'clickk'$"):
        batch_item(bad, 0)


@pytest.mark.parametrize(("raw", "reason"), [
    (b'{"batch": []}', "batch: must be a list of 1 to 10000 beacons"),
    (b'{"batch": {"a": 1}}', "batch: must be a list of 1 to 10000 beacons"),
    (encode_batch([orjson.dumps({**BEACON, "pad": "x" * 1000})] * 600), f"batch: larger than {MAX_BATCH_BYTES} bytes"),
    (orjson.dumps({**BEACON, "pad": "x" * 70_000}), "record: larger than 65536 bytes"),
    (b'{"batch": null, "pad": "' + b"x" * 70_000 + b'"}', "record: larger than 65536 bytes"),
    (None, "record: null value"),
])
def test_broken_batch_records(raw: bytes | None, reason: str) -> None:
    with pytest.raises(ContractError) as error:
        beacon_record(raw)
    assert error.value.reason.startswith(reason)


def test_a_big_batch_up_to_the_bound_is_one_record() -> None:
    items = beacon_record(encode_batch([orjson.dumps({**BEACON, "event_id": f"e{i}"}) for i in range(3000)]))
    assert isinstance(items, list) and len(items) == 3000
