"""Dead-letter envelopes always fit a Kafka record, keep what identifies the original, and are delivered
whatever Kafka answers (issue 11, defect 1: a 1 MB record's envelope used to kill the worker)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError

from kagoflow.streams import deadletter
from kagoflow.streams.deadletter import MAX_COPY_BYTES, MAX_ENVELOPE_BYTES, envelope

TS = 1_704_067_200_000
PRODUCER_MAX_REQUEST = 1_048_576
"""aiokafka's default ``max_request_size``: an envelope must stay under it (and under the broker's limit)."""


def test_small_record_is_kept_whole_with_key_hash_and_size() -> None:
    original = b'{"member_id": "m1", "type": "clickk"}'
    doc = orjson.loads(envelope("beacons", 3, 1234, b"m1", original, "type: unknown 'clickk'", at_ms=TS))
    assert doc == {
        "contract": 1, "topic": "beacons", "partition": 3, "offset": 1234, "reason": "type: unknown 'clickk'",
        "at": "2024-01-01T00:00:00.000+00:00", "size": len(original),
        "sha256": hashlib.sha256(original).hexdigest(),
        "raw_base64": base64.b64encode(original).decode(), "raw_text": original.decode(), "raw_truncated": False,
        "key_base64": base64.b64encode(b"m1").decode(), "key_text": "m1", "key_truncated": False,
    }


def test_binary_record_has_only_the_base64_copy() -> None:
    doc = orjson.loads(envelope("members", 0, 1, None, b"\xff\x00", "record: not valid JSON"))
    assert (base64.b64decode(doc["raw_base64"]), doc["raw_text"]) == (b"\xff\x00", None)
    assert (doc["key_base64"], doc["key_text"]) == (None, None)


def test_tombstone_envelope_says_there_was_no_value() -> None:
    doc = orjson.loads(envelope("orders", 2, 9, b"m1", None, "record: null value", at_ms=TS))
    assert (doc["size"], doc["sha256"], doc["raw_base64"], doc["raw_text"]) == (None, None, None, None)
    assert doc["key_text"] == "m1"


@pytest.mark.parametrize("value", [
    b'{"member_id": "m1", "padding": "' + b"x" * 1_000_000 + b'"}',  # the ~1 MB record of the issue
    b"\x01" * 1_000_000,  # text that JSON escapes six-fold
    "あ".encode() * 350_000,  # multi-byte text cut inside a character
    bytes(range(256)) * 4000,
])
def test_huge_record_envelope_fits_and_says_it_is_cut(value: bytes) -> None:
    out = envelope("beacons", 0, 7, b"k" * 1_000_000, value, "record: larger than 65536 bytes " + "r" * 10**6)
    assert len(out) <= MAX_ENVELOPE_BYTES < PRODUCER_MAX_REQUEST
    doc = orjson.loads(out)
    assert doc["size"] == len(value)
    assert doc["sha256"] == hashlib.sha256(value).hexdigest()
    assert doc["raw_truncated"] is True and doc["key_truncated"] is True
    assert base64.b64decode(doc["raw_base64"]) == value[:MAX_COPY_BYTES]
    if doc["raw_text"] is not None:
        assert value.startswith(doc["raw_text"].encode()) and len(doc["raw_text"].encode()) > MAX_COPY_BYTES - 4
    assert len(doc["reason"]) <= deadletter.MAX_REASON_CHARS and doc["reason"].endswith("...")


def test_record_within_the_contract_size_is_kept_whole() -> None:
    value = b"{" + b"y" * (MAX_COPY_BYTES - 2) + b"}"
    doc = orjson.loads(envelope("orders", 0, 0, b"m", value, "record: not valid JSON"))
    assert base64.b64decode(doc["raw_base64"]) == value and doc["raw_truncated"] is False


class FlakyProducer:
    """Fails as scripted (at ``send`` or when the delivery future is awaited), then stores."""

    def __init__(self, failures: list[BaseException | None], *, max_bytes: int = PRODUCER_MAX_REQUEST,
                 fail_on_delivery: bool = False) -> None:
        self.failures = failures
        self.max_bytes = max_bytes
        self.fail_on_delivery = fail_on_delivery
        self.stored: list[tuple[str, bytes]] = []
        self.attempts = 0

    async def send(self, topic: str, *, key: bytes | None, value: bytes, partition: int | None = None) -> Any:
        self.attempts += 1
        if len(value) > self.max_bytes:  # what aiokafka raises for a record over max_request_size
            raise MessageSizeTooLargeError(f"{len(value)} bytes")
        failure = self.failures.pop(0) if self.failures else None
        if failure is not None and not self.fail_on_delivery:
            raise failure
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if failure is not None:
            future.set_exception(failure)
        else:
            self.stored.append((topic, value))
            future.set_result(None)
        return future


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deadletter, "RETRY_FIRST_S", 0.001)
    monkeypatch.setattr(deadletter, "RETRY_MAX_S", 0.002)


@pytest.mark.parametrize("fail_on_delivery", [False, True])
def test_transient_failures_are_retried_until_kafka_has_the_dead_letter(fail_on_delivery: bool) -> None:
    producer = FlakyProducer([KafkaConnectionError(), KafkaTimeoutError(), None],
                             fail_on_delivery=fail_on_delivery)
    retries: list[BaseException] = []
    asyncio.run(deadletter.park(producer, "t-beacons", 1, 5, b"m1", b"{}", "member_id: missing",
                                on_retry=retries.append))
    assert [topic for topic, _ in producer.stored] == ["t-beacons.dlq"]
    doc = orjson.loads(producer.stored[0][1])
    assert (doc["raw_text"], doc["reason"], doc["offset"]) == ("{}", "member_id: missing", 5)
    assert len(retries) == 2


def test_a_refused_envelope_is_sent_without_the_copy() -> None:
    producer = FlakyProducer([], max_bytes=2000)  # a broker with a tiny message size
    retries: list[BaseException] = []
    value = b'{"x": "' + b"z" * 50_000 + b'"}'
    asyncio.run(deadletter.park(producer, "members", 0, 1, b"m1", value, "record: not valid JSON",
                                on_retry=retries.append))
    doc = orjson.loads(producer.stored[0][1])
    assert doc["raw_base64"] is None and doc["size"] == len(value)
    assert doc["sha256"] == hashlib.sha256(value).hexdigest() and doc["reason"] == "record: not valid JSON"
    assert [type(exc) for exc in retries] == [MessageSizeTooLargeError]
