"""Issue 11, defect 1, against the real worker and Kafka: no record kills anything or is lost.

One worker (a subprocess on private topics, member engine process on) serves the module. The focused tests
produce what used to kill it — a ~1 MB record on ``beacons`` / ``members`` / ``orders`` (its dead letter
exceeded the producer's request size), a 500 KB ``catalog`` record, tombstones, records keyed by another
id — then a good record behind each, on the same partition. The fuzz test produces thousands of
malformed, oversized, null and wrongly keyed records to all four input topics while good records flow.

What must hold: the worker process never exits, no Faust agent crashes, every bad record is in its
``<topic>.dlq`` (found by partition and offset) with a reason naming the field, every good record is applied,
and the worker's consumer group commits every input offset (so nothing waits to be replayed).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from kagoflow.core.errors import ContractError
from kagoflow.settings import Settings
from kagoflow.streams.contract import parse_any
from tests.agents.support import get_json, member_doc, now_ms, products_of, wait_until
from tests.agents.worker_proc import WorkerProcess

pytestmark = pytest.mark.integration

INPUTS = ("beacons", "members", "catalog", "orders")
ID_FIELD = {"beacons": "member_id", "members": "member_id", "orders": "member_id", "catalog": "product_id"}


@pytest.fixture(scope="module")
def worker(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    tmp = tmp_path_factory.mktemp("fuzz")
    rules = tmp / "rules"
    rules.mkdir()
    (rules / "shop.yaml").write_text("timezone: Asia/Tokyo\n")  # no rules: this module is about intake
    # no archiver: it reads the same records on its own (tests/archive); here it would only add ClickHouse time
    with WorkerProcess.running(stack, tmp, rules_dir=rules, archive_enabled=False) as proc:
        yield proc


@dataclass
class Sent:
    topic: str
    key: bytes | None
    value: bytes | None
    expect: str | None
    """Prefix of the dead-letter reason (None: a good record, must be applied)."""
    partition: int = -1
    offset: int = -1


async def _produce(settings: Settings, records: list[Sent]) -> None:
    """Produce in order (one topic's records keep their order per partition); fills partition and offset."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, max_request_size=2 << 20,
                                linger_ms=5, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(settings.topic_prefix + r.topic, key=r.key, value=r.value) for r in records]
        for record, future in zip(records, futures, strict=True):
            meta = await future
            record.partition, record.offset = meta.partition, meta.offset
    finally:
        await producer.stop()


async def _read_letters(settings: Settings, kind: str, wanted: set[tuple[int, int]], *,
                        timeout: float) -> dict[tuple[int, int], dict[str, Any]]:
    """The envelopes on ``<prefix><kind>.dlq`` by the (partition, offset) of their record, read until every
    ``wanted`` one is there (or ``timeout``)."""
    consumer = AIOKafkaConsumer(f"{settings.topic_prefix}{kind}.dlq", bootstrap_servers=settings.kafka_bootstrap,
                                group_id=None, auto_offset_reset="earliest", enable_auto_commit=False,
                                max_partition_fetch_bytes=2 << 20, fetch_max_bytes=16 << 20)
    await consumer.start()
    found: dict[tuple[int, int], dict[str, Any]] = {}
    try:
        deadline = time.monotonic() + timeout
        while not wanted <= set(found) and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for message in (m for messages in batches.values() for m in messages):
                letter = orjson.loads(message.value or b"null")
                assert letter["topic"] == settings.topic_prefix + kind, letter
                found[(letter["partition"], letter["offset"])] = letter
    finally:
        await consumer.stop()
    return found


async def _lag(settings: Settings, topics: tuple[str, ...]) -> dict[str, int]:
    """Records not yet committed by the worker's group, per input topic."""
    tps = [TopicPartition(settings.topic_prefix + kind, p) for kind in topics for p in range(settings.partitions)]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(settings.app_id, partitions=tps)
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
        await admin.close()
    lag = dict.fromkeys(topics, 0)
    for tp in tps:
        done = committed.get(tp)
        start = done.offset if done is not None and done.offset >= 0 else 0
        lag[tp.topic[len(settings.topic_prefix):]] += ends[tp] - start
    return lag


def _check_alive(worker: WorkerProcess) -> None:
    assert worker.proc is not None and worker.proc.poll() is None, f"worker exited\n{worker.tail(80)}"
    log = worker.log_path.read_text(errors="replace")
    for sign in ("Crashed reason", "member engine process exited", "MessageSizeTooLarge"):
        assert sign not in log, f"{sign!r} in the worker log\n{worker.tail(80)}"


def _settle(worker: WorkerProcess, sent: list[Sent], *, timeout: float) -> None:
    """Every bad record in its DLQ (by partition and offset) with the expected reason; every offset committed."""
    settings = worker.settings
    for kind in INPUTS:
        bad = {(r.partition, r.offset): r for r in sent if r.topic == kind and r.expect is not None}
        if not bad:
            continue
        found = asyncio.run(_read_letters(settings, kind, set(bad), timeout=timeout))
        missing = [(r.partition, r.offset, r.expect) for place, r in bad.items() if place not in found]
        assert not missing, f"{len(missing)} of {len(bad)} bad {kind} records not in the DLQ: {missing[:5]}"
        good = {(r.partition, r.offset) for r in sent if r.topic == kind and r.expect is None}
        assert not good & set(found), f"good {kind} records in the DLQ: {good & set(found)}"
        for place, record in bad.items():
            letter = found[place]
            assert record.expect is not None and letter["reason"].startswith(record.expect), (record, letter)
            assert letter["size"] == (None if record.value is None else len(record.value))
            if record.value is not None:
                assert letter["sha256"] == hashlib.sha256(record.value).hexdigest()
    wait_until(lambda: not any(asyncio.run(_lag(settings, INPUTS)).values()) or None, timeout=timeout,
               interval=1.0, what="every input offset committed", worker=worker)
    _check_alive(worker)


# -- focused: what used to crash -------------------------------------------------------------------------------
def _beacon(member: str, n: int, product: str, ts: int, **extra: Any) -> bytes:
    return orjson.dumps({"event_id": f"{member}-e{n}", "member_id": member, "type": "view", "product_id": product,
                         "ts": ts, **extra})


def test_a_megabyte_record_on_each_topic_is_parked_and_the_worker_lives(worker: WorkerProcess, tag: str) -> None:
    m, p, t0 = f"big-{tag}", f"bigp-{tag}", now_ms()
    pad = "x" * 1_000_000
    sent = [
        Sent("beacons", m.encode(), _beacon(m, 1, "huge", t0, padding=pad), "record: larger than"),
        Sent("members", m.encode(), orjson.dumps({"member_id": m, "email": "a@b.jp", "opt_in": True, "x": pad}),
             "record: larger than"),
        Sent("orders", m.encode(), orjson.dumps({"order_id": "o", "member_id": m, "status": "ordered",
                                                 "ordered_at": t0, "x": pad}), "record: larger than"),
        Sent("catalog", p.encode(), orjson.dumps({"product_id": p, "price": 1, "stock": 1, "x": pad[:500_000]}),
             "record: larger than"),
        Sent("beacons", m.encode(), _beacon(m, 2, "after", t0 + 1), None),
        Sent("members", m.encode(), orjson.dumps({"member_id": m, "email": f"{m}@fuzz.test", "opt_in": True}), None),
        Sent("catalog", p.encode(), orjson.dumps({"product_id": p, "price": 10, "stock": 2}), None),
    ]
    asyncio.run(_produce(worker.settings, sent))
    _settle(worker, sent, timeout=60)
    doc = member_doc(worker, m)
    assert set(products_of(doc)) == {"after"} and doc is not None and doc["profile"]["email"] == f"{m}@fuzz.test"


def test_tombstones_and_wrong_keys_on_every_topic_are_parked(worker: WorkerProcess, tag: str) -> None:
    m, other, p, t0 = f"tomb-{tag}", f"other-{tag}", f"tombp-{tag}", now_ms()
    profile = orjson.dumps({"member_id": m, "email": f"{m}@fuzz.test", "opt_in": True})
    order = orjson.dumps({"order_id": f"o-{tag}", "member_id": m, "status": "ordered", "ordered_at": t0})
    product = orjson.dumps({"product_id": p, "price": 10, "stock": 2})
    sent = [Sent(topic, m.encode(), None, "record: null value") for topic in INPUTS]
    sent += [
        Sent("beacons", other.encode(), _beacon(m, 1, "wrong", t0), f"key: b'{other}' is not the member_id"),
        Sent("beacons", None, _beacon(m, 2, "nokey", t0), "key: missing"),
        Sent("members", other.encode(), profile, "key: "),
        Sent("orders", other.encode(), order, "key: "),
        Sent("catalog", m.encode(), product, f"key: b'{m}' is not the product_id"),
        Sent("beacons", m.encode(), _beacon(m, 3, "good", t0 + 1), None),
        Sent("members", m.encode(), profile, None),
        Sent("orders", m.encode(), order, None),
        Sent("catalog", p.encode(), product, None),
    ]
    asyncio.run(_produce(worker.settings, sent))
    _settle(worker, sent, timeout=60)
    doc = member_doc(worker, m)
    assert doc is not None and set(products_of(doc)) == {"good"}
    assert doc["profile"]["email"] == f"{m}@fuzz.test" and doc["profile"]["purchase_count"] == 1
    assert member_doc(worker, other) is None


# -- fuzz ------------------------------------------------------------------------------------------------------
class Fuzz:
    """Good records for a set of members and products, and bad records of every kind between them."""

    def __init__(self, tag: str, rng: random.Random, *, members: int, products: int) -> None:
        self.rng = rng
        self.tag = tag
        self.members = [f"fz{tag}-m{i}" for i in range(members)]
        self.products = [f"fz{tag}-p{i}" for i in range(products)]
        self.t0 = now_ms() - 3_600_000
        self.n = 0
        self.expected: dict[str, set[str]] = {m: set() for m in self.members}
        self.orders: dict[str, int] = dict.fromkeys(self.members, 0)
        self.prices: dict[str, int] = {}

    def _next(self) -> int:
        self.n += 1
        return self.n

    def good_value(self, topic: str, owner: str) -> bytes:
        n = self._next()
        if topic == "beacons":
            product = f"g{n}"
            self.expected[owner].add(product)
            return _beacon(owner, n, product, self.t0 + n)
        if topic == "members":
            return orjson.dumps({"member_id": owner, "email": f"{owner}@fuzz.test", "opt_in": True,
                                 "name": self.rng.choice(["山田\u3000花子", "Zoë", None])})
        if topic == "orders":
            self.orders[owner] += 1
            return orjson.dumps({"order_id": f"o{n}", "member_id": owner, "status": "ordered",
                                 "ordered_at": self.t0 + n, "items": [{"product_id": "x", "price": 5}]})
        self.prices[owner] = self.rng.randint(1, 9999)
        return orjson.dumps({"product_id": owner, "price": self.prices[owner], "stock": self.rng.randint(0, 9),
                             "name": "商品", "url": f"https://shop.test/{owner}"})

    def good(self, topic: str) -> Sent:
        owner = self.rng.choice(self.products if topic == "catalog" else self.members)
        return Sent(topic, owner.encode(), self.good_value(topic, owner), None)

    def bad(self, topic: str) -> Sent:
        """A record the contract must refuse, with the start of its reason."""
        rng = self.rng
        owner = rng.choice(self.products if topic == "catalog" else self.members)
        key = owner.encode()
        field = ID_FIELD[topic]
        kind = rng.randrange(10)
        valid = orjson.loads(self._valid_shape(topic, owner))
        if kind == 0:
            return Sent(topic, key, None, "record: null value")
        if kind == 1:
            size = rng.choice([65_537, 200_000, 1_000_000]) if rng.random() < 0.1 else rng.randint(65_537, 90_000)
            value = orjson.dumps({**valid, "pad": "p" * size})
            return Sent(topic, key, value, "record: larger than 65536 bytes")
        if kind == 2:  # keyed by someone else, or not keyed
            wrong = rng.choice([None, f"x{rng.randrange(10**6)}".encode(), rng.randbytes(rng.randint(0, 40))])
            if wrong == key:
                wrong = None
            return Sent(topic, wrong, orjson.dumps(valid), "key: ")
        if kind == 3:  # a byte sequence that is not UTF-8 inside the id
            raw = orjson.dumps(valid)
            start = raw.index(f'"{field}":"'.encode()) + len(field) + 4
            bad = raw[:start] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"]) + raw[start:]
            return Sent(topic, key, bad, f"{field}: not valid UTF-8 at byte {start}")
        if kind == 4:  # a hidden character in the id
            char = rng.choice(["\u202e", "\u200b", "\u2066", "\ufeff", "\u0085", "\x1b", "\u2028", "\x00"])
            return Sent(topic, key, orjson.dumps({**valid, field: owner + char}), f"{field}: contains ")
        if kind == 5:  # a required field missing
            required = {"beacons": "type", "members": "email", "orders": "ordered_at", "catalog": "price"}[topic]
            del valid[required]
            return Sent(topic, key, orjson.dumps(valid), f"{required}: ")
        if kind == 6:  # a field of the wrong type
            valid[field] = rng.choice([1, 2.5, True, [owner], {"id": owner}])
            return Sent(topic, key, orjson.dumps(valid), f"{field}: ")
        if kind == 7:  # random bytes
            junk = rng.randbytes(rng.randint(0, 300))
            return Sent(topic, key, b"\x00" + junk, "record: not valid JSON")
        if kind == 8:  # cut short
            raw = orjson.dumps(valid)
            return Sent(topic, key, raw[:rng.randint(0, len(raw) - 1)], "record: not valid JSON")
        value = rng.choice([b"[]", b"null", b"1", b'"x"', b"true", b"[{}]"])
        return Sent(topic, key, value, "record: not a JSON object")

    def _valid_shape(self, topic: str, owner: str) -> bytes:
        """A valid record of ``owner`` whose content is never applied (it is made invalid before it is sent)."""
        n = self._next()
        if topic == "beacons":
            return _beacon(owner, n, f"bad{n}", self.t0 + n)
        if topic == "members":
            return orjson.dumps({"member_id": owner, "email": f"bad{n}@leak.test", "opt_in": False})
        if topic == "orders":
            return orjson.dumps({"order_id": f"bad{n}", "member_id": owner, "status": "ordered",
                                 "ordered_at": self.t0 + n})
        return orjson.dumps({"product_id": owner, "price": 1, "stock": 0})


def test_fuzz_thousands_of_bad_records_among_good_ones(worker: WorkerProcess, tag: str) -> None:
    rng = random.Random(int(tag, 16))
    fuzz = Fuzz(tag, rng, members=40, products=20)
    sent: list[Sent] = []
    for member in fuzz.members:  # profiles first: they must hold the e-mail the test checks at the end
        sent.append(Sent("members", member.encode(), fuzz.good_value("members", member), None))
    for _ in range(3000):
        topic = rng.choice(INPUTS)
        sent.append(fuzz.good(topic) if rng.random() < 0.2 else fuzz.bad(topic))
    for record in sent:  # the oracle: the contract refuses every bad record (or its key does not match)
        if record.expect is not None and not record.expect.startswith("key"):
            with pytest.raises(ContractError):
                parse_any(record.topic, record.value, default_ts=0)
    bad = sum(1 for record in sent if record.expect is not None)
    assert bad >= 2000 and {r.topic for r in sent if r.expect} == set(INPUTS)

    started = time.monotonic()
    asyncio.run(_produce(worker.settings, sent))
    _settle(worker, sent, timeout=90)

    for member in fuzz.members:
        doc = member_doc(worker, member)
        assert doc is not None, member
        assert set(products_of(doc)) == fuzz.expected[member], member  # nothing from a bad record leaked in
        assert doc["profile"]["email"] == f"{member}@fuzz.test"
        assert doc["profile"]["purchase_count"] == fuzz.orders[member]
    for product, price in fuzz.prices.items():  # the last good catalog record of each product is in force
        status, body = get_json(worker, f"/api/products/{product}")
        assert status == 200 and body["price"] == price, (product, status, body)
    print(f"fuzz: {len(sent)} records ({bad} bad) produced and settled in {time.monotonic() - started:.1f}s")
    metrics = worker.metrics()["members"]
    assert metrics["dead_letter_failures"] == 0

