"""The local stack works end to end: real Kafka, Redis, ClickHouse and SMTP, and ``infra/stack`` behaves."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterator
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from clickhouse_driver import Client

from kagoflow.settings import Settings
from tests.conftest import Mailbox, run_stack, stack_status

pytestmark = pytest.mark.integration


async def test_kafka_produce_and_consume_with_a_group(stack: Settings, kafka_topic: Callable[..., str],
                                                     unique_name: Callable[[str], str]) -> None:
    topic = kafka_topic("roundtrip", partitions=4)
    sent = [(f"member-{i % 7}".encode(), f"event-{i}".encode()) for i in range(100)]
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in sent:
            await producer.send(topic, value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()

    group = unique_name("group")
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=stack.kafka_bootstrap, group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    received: list[tuple[bytes, bytes, int]] = []
    try:
        async with asyncio.timeout(30):
            while len(received) < len(sent):
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    received.extend((r.key, r.value, r.partition) for r in records)
        await consumer.commit()
        partitions = [TopicPartition(topic, p) for p in range(4)]
        committed = [await consumer.committed(tp) or 0 for tp in partitions]
    finally:
        await consumer.stop()

    assert sorted((k, v) for k, v, _ in received) == sorted(sent)
    # Keyed records: one key, one partition, and the key's records keep their produce order.
    for key in {k for k, _ in sent}:
        assert len({p for k, _, p in received if k == key}) == 1
        assert [v for k, v, _ in received if k == key] == [v for k, v in sent if k == key]
    assert sum(committed) == len(sent)
    assert len({p for _, _, p in received}) > 1


CAP_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if count > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return 0
end
return count
"""


async def test_redis_runs_a_lua_script(stack: Settings, unique_name: Callable[[str], str]) -> None:
    client = aioredis.from_url(stack.redis_url)
    key = unique_name("cap")
    try:
        script = client.register_script(CAP_SCRIPT)
        results = [await script(keys=[key], args=[2, 60]) for _ in range(4)]
        assert results == [1, 2, 0, 0]
        assert await client.get(key) == b"2"
        assert 0 < await client.ttl(key) <= 60
    finally:
        await client.delete(key)
        await client.aclose()


def test_clickhouse_mergetree_insert_and_select(stack: Settings, scratch_database: str) -> None:
    client = Client(host=stack.clickhouse_host, port=stack.clickhouse_port, database=scratch_database)
    try:
        client.execute(
            "CREATE TABLE beacons (ts DateTime, member_id String, type String, price Decimal(12, 2)) "
            "ENGINE = MergeTree PARTITION BY toYYYYMM(ts) ORDER BY (member_id, ts)"
        )
        rows = [
            (datetime(2025, 1, 1, 9, 0, i), f"m{i % 3}", "cart_add" if i % 2 else "view", i * 100)
            for i in range(30)
        ]
        rows.append((datetime(2025, 2, 1, 0, 0, 0), "会員-日本", "purchase", 1980))
        client.execute("INSERT INTO beacons (ts, member_id, type, price) VALUES", rows)
        got = client.execute(
            "SELECT member_id, count(), sum(price) FROM beacons GROUP BY member_id ORDER BY member_id"
        )
        expected: dict[str, tuple[int, int]] = {}
        for _, member, _, price in rows:
            count, total = expected.get(member, (0, 0))
            expected[member] = (count + 1, total + price)
        assert [(m, c, int(s)) for m, c, s in got] == sorted((m, c, s) for m, (c, s) in expected.items())
        parts = client.execute(
            "SELECT count(DISTINCT partition) FROM system.parts "
            "WHERE database = %(db)s AND table = 'beacons' AND active",
            {"db": scratch_database},
        )
        assert parts == [(2,)]
    finally:
        client.disconnect()


async def test_smtp_sink_stores_a_multipart_mail(stack: Settings, smtp_mailbox: Mailbox,
                                                unique_name: Callable[[str], str]) -> None:
    to = f"{unique_name('member')}@example.com"
    message = EmailMessage()
    message["From"] = stack.mail_from_address
    message["To"] = to
    message["Subject"] = "カートに商品が残っています"
    message.set_content("お買い忘れはありませんか？\nhttps://shop.example.com/cart\n")
    message.add_alternative("<p>お買い忘れはありませんか？ <a href='https://shop.example.com/cart'>カート</a></p>",
                            subtype="html")
    await aiosmtplib.send(message, hostname=stack.smtp_host, port=stack.smtp_port)

    [received] = smtp_mailbox.wait_for(1, match=lambda m: m["To"] == to)
    assert received["Subject"] == "カートに商品が残っています"
    assert received["X-Envelope-To"] == to
    assert received.get_content_type() == "multipart/alternative"
    text = received.get_body(preferencelist=("plain",))
    html = received.get_body(preferencelist=("html",))
    assert text is not None and "お買い忘れはありませんか？" in text.get_content()
    assert html is not None and "<a href='https://shop.example.com/cart'>" in html.get_content()
    assert not list((smtp_mailbox.path.parent / "tmp").glob("*.eml")), "no half-written mail is left behind"


def test_up_twice_is_harmless(stack: Settings) -> None:
    before = stack_status()
    run_stack("up")
    run_stack("up")
    after = stack_status()
    assert {name: row["state"] for name, row in after.items()} == dict.fromkeys(before, "up")
    assert {name: row["pid"] for name, row in after.items()} == {n: row["pid"] for n, row in before.items()}


# -- a private stack in a temporary folder, on other ports: does not touch the shared one -------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for init to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture
def private_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {
        **os.environ,
        "KAGOFLOW_STACK_DIR": str(tmp_path / "stack"),
        "KAGOFLOW_REDIS_URL": f"redis://127.0.0.1:{_free_port()}/0",
        "KAGOFLOW_SMTP_PORT": str(_free_port()),
    }
    yield env
    run_stack("down", env=env, check=False)


def test_port_in_use_is_a_clear_error(private_env: dict[str, str]) -> None:
    port = int(private_env["KAGOFLOW_REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        result = run_stack("up", "redis", env=private_env, check=False)
    assert result.returncode != 0
    assert f"port {port}" in result.stderr
    assert "redis" in result.stderr
    assert stack_status(private_env)["redis"]["state"] == "down"


def test_private_stack_down_leaves_no_process(private_env: dict[str, str]) -> None:
    run_stack("up", "redis", "smtp", env=private_env)
    status = stack_status(private_env)
    pids = [status[name]["pid"] for name in ("redis", "smtp")]
    assert all(isinstance(pid, int) and not _gone(pid) for pid in pids)

    run_stack("down", env=private_env)
    assert all(_gone(pid) for pid in pids)
    after = stack_status(private_env)
    assert after["redis"]["state"] == after["smtp"]["state"] == "down"
    assert not list((Path(private_env["KAGOFLOW_STACK_DIR"]) / "run").glob("*.pid"))
    run_stack("down", env=private_env)  # harmless when nothing runs


def test_a_second_checkout_uses_the_running_stack_and_never_stops_it(private_env: dict[str, str],
                                                                     tmp_path: Path) -> None:
    run_stack("up", "redis", env=private_env)
    owner_pid = stack_status(private_env)["redis"]["pid"]
    second = {**private_env, "KAGOFLOW_STACK_DIR": str(tmp_path / "second-checkout")}

    result = run_stack("up", "redis", env=second)
    assert private_env["KAGOFLOW_STACK_DIR"] in result.stderr
    row = stack_status(second)["redis"]
    assert (row["state"], row["pid"], row["stack"]) == ("up", owner_pid, private_env["KAGOFLOW_STACK_DIR"])

    run_stack("down", "redis", env=second)
    assert isinstance(owner_pid, int) and not _gone(owner_pid)
    assert stack_status(private_env)["redis"]["pid"] == owner_pid
