"""The collector's HTTP contract with a stand-in producer (the real Kafka path: ``test_collector_kafka``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from kagoflow.collector.batcher import PartitionBatcher
from kagoflow.collector.server import Collector, collector_app
from kagoflow.settings import Settings
from kagoflow.streams.contract import key_partition

pytestmark = pytest.mark.asyncio(loop_scope="session")
T0 = 1_709_255_700_000
BASE = Settings(shop_domains=("shop.example.com",), collector_linger_ms=20, collector_ack_timeout_seconds=0.5)


def beacon(n: int, member: str = "m1", **extra: Any) -> dict[str, Any]:
    return {"event_id": f"e{n}", "member_id": member, "type": "view", "product_id": f"p{n}", "ts": T0 + n,
            **extra}


class FakeProducer:
    """Records what was sent; ``hold`` keeps acknowledgements back (a slow or absent Kafka)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, int | None]] = []
        self.hold = False
        self.waiting: list[asyncio.Future[None]] = []

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   partition: int | None = None) -> asyncio.Future[None]:
        self.sent.append((topic, key, value, partition))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.hold:
            self.waiting.append(future)
        else:
            future.set_result(None)
        return future


async def client_for(settings: Settings, producer: FakeProducer, partitions: int = 4) -> TestClient[Any, Any]:
    batcher = PartitionBatcher(producer, "beacons", linger_s=settings.collector_linger_ms / 1000,
                               max_bytes=settings.collector_batch_bytes, max_pending=settings.collector_max_pending)
    client: TestClient[Any, Any] = TestClient(TestServer(collector_app(Collector(settings, batcher,
                                                                                  partitions=partitions))))
    await client.start_server()
    return client


@pytest.fixture
async def producer() -> FakeProducer:
    return FakeProducer()


@pytest.fixture
async def client(producer: FakeProducer) -> AsyncIterator[TestClient[Any, Any]]:
    client = await client_for(BASE, producer)
    yield client
    await client.close()


async def test_valid_beacons_become_one_batch_record_per_partition(client: TestClient[Any, Any],
                                                                   producer: FakeProducer) -> None:
    members = [f"m{i}" for i in range(40)]
    body = [beacon(i, member) for i, member in enumerate(members)]
    response = await client.post("/beacons", data=orjson.dumps(body), headers={"Content-Type": "text/plain"})
    assert response.status == 200
    assert await response.json() == {"accepted": 40, "rejected": []}
    assert "Server" not in response.headers
    by_partition = {p: [m for m in members if key_partition(m.encode(), 4) == p] for p in range(4)}
    assert len(producer.sent) == len([p for p in by_partition.values() if p])  # one record per partition
    for topic, key, value, partition in producer.sent:
        assert topic == "beacons" and value is not None and partition is not None
        items = orjson.loads(value)["batch"]
        assert [item["member_id"] for item in items] == by_partition[partition]
        assert key == items[0]["member_id"].encode()


async def test_bad_beacons_are_answered_by_index_and_never_produced(client: TestClient[Any, Any],
                                                                    producer: FakeProducer) -> None:
    body = [beacon(1), beacon(2, type="clickk"), "x", beacon(3, member_id=None), beacon(4)]
    response = await client.post("/beacons", data=orjson.dumps(body))
    assert response.status == 200
    assert await response.json() == {"accepted": 2, "rejected": [
        {"index": 1, "reason": "type: unknown 'clickk'"},
        {"index": 2, "reason": "record: not a JSON object"},
        {"index": 3, "reason": "member_id: must not be null"},
    ]}
    produced = [item["event_id"] for _, _, value, _ in producer.sent for item in orjson.loads(value or b"")["batch"]]
    assert produced == ["e1", "e4"]

    only_bad = await client.post("/beacons", data=orjson.dumps([beacon(5, ts="yesterday")]))
    assert only_bad.status == 400
    assert (await only_bad.json())["rejected"][0]["index"] == 0


@pytest.mark.parametrize("body", [b"{not json", b'"a string"', b"42"])
async def test_a_body_that_is_no_array_is_a_bare_400(client: TestClient[Any, Any], body: bytes) -> None:
    response = await client.post("/beacons", data=body)
    assert response.status == 400
    assert await response.text() == "bad request"
    assert "Server" not in response.headers


async def test_body_and_item_limits(producer: FakeProducer) -> None:
    client = await client_for(replace(BASE, collector_max_body_bytes=2000, collector_max_beacons=3), producer)
    try:
        big = await client.post("/beacons", data=orjson.dumps([beacon(1, pad="x" * 3000)]))
        assert (big.status, await big.text()) == (413, "too large")
        many = await client.post("/beacons", data=orjson.dumps([beacon(i) for i in range(4)]))
        assert many.status == 413
        assert producer.sent == []
    finally:
        await client.close()


async def test_a_large_body_in_many_chunks_is_read_whole(client: TestClient[Any, Any],
                                                         producer: FakeProducer) -> None:
    body = orjson.dumps([beacon(i, f"m{i}", pad="y" * 400) for i in range(400)])  # ~200 KB
    response = await client.post("/beacons", data=chunked(body))  # chunked transfer encoding, no length
    assert response.status == 200
    assert (await response.json())["accepted"] == 400
    over = await client.post("/beacons", data=chunked(body + b" " * 70_000))  # over 256 KiB
    assert (over.status, await over.text()) == (413, "too large")
    assert len(producer.sent) == 4  # one record per partition, the oversized body produced nothing


async def chunked(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 7000):
        yield data[start:start + 7000]
        await asyncio.sleep(0)


async def test_cors_admits_the_shop_origins_only(client: TestClient[Any, Any], producer: FakeProducer) -> None:
    shop = "https://shop.example.com"
    preflight = await client.options("/beacons", headers={"Origin": shop, "Access-Control-Request-Method": "POST"})
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == shop
    assert "Content-Type" in preflight.headers["Access-Control-Allow-Headers"]
    ok = await client.post("/beacons", data=orjson.dumps([beacon(1)]), headers={"Origin": shop})
    assert ok.status == 200 and ok.headers["Access-Control-Allow-Origin"] == shop
    for origin in ("https://evil.example", "http://shop.example.com", "https://shop.example.com.evil.example",
                   "null"):
        refused = await client.post("/beacons", data=orjson.dumps([beacon(2)]), headers={"Origin": origin})
        assert (refused.status, await refused.text()) == (403, "forbidden"), origin
        assert "Access-Control-Allow-Origin" not in refused.headers
        pre = await client.options("/beacons", headers={"Origin": origin})
        assert pre.status == 403
    assert len(producer.sent) == 1


async def test_unknown_paths_are_a_bare_404(client: TestClient[Any, Any]) -> None:
    for method, path in (("GET", "/beacons"), ("GET", "/metrics"), ("POST", "/admin")):
        response = await client.request(method, path)
        assert (response.status, await response.text()) == (404, "not found")
        assert "Server" not in response.headers


async def test_over_the_per_ip_rate_is_429(producer: FakeProducer) -> None:
    client = await client_for(replace(BASE, collector_rate_per_ip=1.0, collector_rate_burst=2), producer)
    try:
        statuses = [(await client.post("/beacons", data=orjson.dumps([beacon(i)]))).status for i in range(4)]
        assert statuses == [200, 200, 429, 429]
        refused = await client.post("/beacons", data=b"[]")
        assert refused.headers["Retry-After"] == "1"
    finally:
        await client.close()


async def test_a_slow_kafka_gets_503_with_retry_after(client: TestClient[Any, Any], producer: FakeProducer) -> None:
    producer.hold = True
    response = await client.post("/beacons", data=orjson.dumps([beacon(1)]))
    assert response.status == 503
    assert response.headers["Retry-After"] == str(BASE.collector_retry_after_seconds)
    # while that record waits for its acknowledgement, new requests are refused at once, and never produced
    sent = len(producer.sent)
    again = await client.post("/beacons", data=orjson.dumps([beacon(2)]))
    assert again.status == 503
    assert len(producer.sent) == sent
    for future in producer.waiting:
        future.set_result(None)
    producer.hold = False
    await asyncio.sleep(0.05)
    assert (await client.post("/beacons", data=orjson.dumps([beacon(3)]))).status == 200

