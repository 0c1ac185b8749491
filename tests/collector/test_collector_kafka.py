"""The collector against real Kafka: partitions, rejections, SIGTERM under load, a Kafka outage.

The outage test stops and restarts a PRIVATE broker (``infra/stack`` in a temporary folder, other ports);
the shared one is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from kagoflow.collector.server import serve
from kagoflow.settings import PROJECT_ROOT, Settings
from kagoflow.streams.contract import key_partition
from tests.conftest import run_stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]
T0 = 1_709_255_700_000
PARTITIONS = 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def beacon(event_id: str, member: str, **extra: Any) -> dict[str, Any]:
    return {"event_id": event_id, "member_id": member, "type": "cart_add", "product_id": "p1", "ts": T0,
            **extra}


async def create_topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=PARTITIONS, replication_factor=1)])
    finally:
        await admin.close()


async def delete_topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([name])
    finally:
        await admin.close()


async def read_all(bootstrap: str, topic: str, *, expect: int, timeout: float = 60) -> list[tuple[int, bytes | None,
                                                                                                  dict[str, Any]]]:
    """(partition, record key, beacon) of every beacon in the topic's batch records, once ``expect`` are there
    (or the timeout passed)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    out: list[tuple[int, bytes | None, dict[str, Any]]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(out) < expect and time.monotonic() < deadline:
            for tp, messages in (await consumer.getmany(timeout_ms=1000)).items():
                for message in messages:
                    for item in orjson.loads(message.value)["batch"]:
                        out.append((tp.partition, message.key, item))
    finally:
        await consumer.stop()
    return out


@pytest.fixture
async def topic_prefix(stack: Settings, unique_name: Callable[[str], str]) -> AsyncIterator[str]:
    prefix = unique_name("coll") + "-"
    await create_topic(stack.kafka_bootstrap, f"{prefix}beacons")
    yield prefix
    await delete_topic(stack.kafka_bootstrap, f"{prefix}beacons")


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[str]:
    """The collector in this process; yields its URL, stops it (gracefully) at the end."""
    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.ensure_future(serve(settings, stop=stop, on_ready=lambda partitions: ready.set()))
    waiter = asyncio.ensure_future(ready.wait())
    await asyncio.wait([task, waiter], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raises the start-up error
    assert ready.is_set(), "collector did not start"
    try:
        yield f"http://127.0.0.1:{settings.collector_port}/beacons"
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


def collector_settings(stack: Settings, prefix: str, **changes: Any) -> Settings:
    return replace(stack, topic_prefix=prefix, collector_port=free_port(), collector_rate_per_ip=0.0,
                   partitions=PARTITIONS, **changes)


async def test_arrays_become_records_on_the_partitions_of_their_members(stack: Settings, topic_prefix: str) -> None:
    settings = collector_settings(stack, topic_prefix)
    members = [f"member-{i}" for i in range(30)]
    async with running(settings) as url, aiohttp.ClientSession() as http:
        bodies = [[beacon(f"e{r}-{i}", member) for i, member in enumerate(members)] for r in range(3)]
        bodies[1][7] = beacon("bad-1", members[7], type="clickk")
        bodies[1][9] = beacon("bad-2", members[9], ts="2024-03-01T10:15:00")
        bodies[2] += [beacon(f"o{i}", "ordered-member") for i in range(5)]
        answers = await asyncio.gather(*(http.post(url, data=orjson.dumps(body),
                                                   headers={"Content-Type": "text/plain"}) for body in bodies))
        documents = [await answer.json() for answer in answers]
    assert [answer.status for answer in answers] == [200, 200, 200]
    assert documents[0] == {"accepted": 30, "rejected": []}
    assert documents[2] == {"accepted": 35, "rejected": []}
    assert documents[1] == {"accepted": 28, "rejected": [
        {"index": 7, "reason": "type: unknown 'clickk'"},
        {"index": 9, "reason": "ts: ISO-8601 without UTC offset: '2024-03-01T10:15:00'"}]}
    stored = await read_all(settings.kafka_bootstrap, f"{topic_prefix}beacons", expect=93)
    assert sorted(item["event_id"] for _, _, item in stored) == sorted(
        b["event_id"] for body in bodies for b in body if not b["event_id"].startswith("bad"))
    for partition, key, item in stored:
        assert partition == key_partition(item["member_id"].encode(), PARTITIONS)
        assert key is not None and key_partition(key, PARTITIONS) == partition
    assert [item["event_id"] for _, _, item in stored if item["member_id"] == "ordered-member"] == [
        f"o{i}" for i in range(5)]


async def test_a_missing_topic_is_a_clear_error(stack: Settings, unique_name: Callable[[str], str]) -> None:
    env = {**os.environ, "KAGOFLOW_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
           "KAGOFLOW_TOPIC_PREFIX": unique_name("none") + "-", "KAGOFLOW_COLLECTOR_PORT": str(free_port())}
    result = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "kagoflow.cli", "collect"], env=env,
                                     cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    assert "beacons' does not exist" in result.stderr and "Traceback" not in result.stderr


class Load:
    """Clients posting arrays of fresh beacons as fast as answers come; remembers what was accepted."""

    def __init__(self, url: str, *, clients: int = 6, size: int = 20) -> None:
        self.url, self.clients, self.size = url, clients, size
        self.accepted: set[str] = set()
        self.statuses: dict[int, int] = {}
        self.errors = 0
        self.running = True
        self._ids = itertools.count()

    async def client(self, http: aiohttp.ClientSession, n: int) -> None:
        while self.running:
            body = [beacon(f"c{n}-{next(self._ids)}", f"member-{next(self._ids) % 97}") for _ in range(self.size)]
            try:
                async with http.post(self.url, data=orjson.dumps(body)) as answer:
                    self.statuses[answer.status] = self.statuses.get(answer.status, 0) + 1
                    if answer.status == 200:
                        assert (await answer.json())["accepted"] == len(body)
                        self.accepted.update(b["event_id"] for b in body)
            except aiohttp.ClientError:
                self.errors += 1
                await asyncio.sleep(0.05)

    async def run(self, until: Callable[[], Awaitable[None]]) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            tasks = [asyncio.ensure_future(self.client(http, n)) for n in range(self.clients)]
            try:
                await until()
            finally:
                self.running = False
                await asyncio.gather(*tasks)


async def wait_health(url: str, *, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url.replace("/beacons", "/health")) as answer:
                    if answer.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise AssertionError("collector did not come up")


async def test_sigterm_under_load_loses_no_accepted_beacon(stack: Settings, topic_prefix: str) -> None:
    port = free_port()
    env = {**os.environ, "KAGOFLOW_KAFKA_BOOTSTRAP": stack.kafka_bootstrap, "KAGOFLOW_TOPIC_PREFIX": topic_prefix,
           "KAGOFLOW_COLLECTOR_PORT": str(port), "KAGOFLOW_COLLECTOR_RATE_PER_IP": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "kagoflow.cli", "collect"], env=env, cwd=PROJECT_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/beacons"
    try:
        await wait_health(url)
        load = Load(url)

        async def terminate_under_load() -> None:
            deadline = time.monotonic() + 30
            while len(load.accepted) < 2000 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(asyncio.to_thread(proc.wait), 60)

        await load.run(terminate_under_load)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""
    assert len(load.accepted) >= 2000, load.statuses
    stored = await read_all(stack.kafka_bootstrap, f"{topic_prefix}beacons", expect=len(load.accepted))
    missing = load.accepted - {item["event_id"] for _, _, item in stored}
    assert not missing, f"{len(missing)} accepted beacons are not in Kafka ({load.statuses})"


# -- a private broker, stopped and started again ---------------------------------------------------


@pytest.fixture
def private_kafka(tmp_path: Path, unique_name: Callable[[str], str]) -> Iterator[dict[str, str]]:
    env = {**os.environ, "KAGOFLOW_STACK_DIR": str(tmp_path / "stack"),
           "KAGOFLOW_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
           "KAGOFLOW_STACK_KAFKA_CONTROLLER_PORT": str(free_port()),
           "KAGOFLOW_TOPIC_PREFIX": unique_name("coll") + "-", "KAGOFLOW_PARTITIONS": str(PARTITIONS)}
    run_stack("up", "kafka", env=env)
    try:
        yield env
    finally:
        run_stack("down", "kafka", env=env, check=False)


async def test_kafka_stopped_is_503_with_retry_after_and_loses_nothing_accepted(
        stack: Settings, private_kafka: dict[str, str]) -> None:
    settings = replace(Settings.from_env(private_kafka), collector_port=free_port(), collector_rate_per_ip=0.0,
                       collector_ack_timeout_seconds=2.0, collector_retry_after_seconds=3)
    topic = f"{settings.topic_prefix}beacons"
    async with running(settings) as url:
        load = Load(url, clients=3, size=10)
        refused: list[str] = []

        async def outage() -> None:
            while len(load.accepted) < 300:
                await asyncio.sleep(0.1)
            await asyncio.to_thread(run_stack, "down", "kafka", env=private_kafka)
            async with aiohttp.ClientSession() as http:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    async with http.post(url, data=orjson.dumps([beacon("probe", "m1")])) as answer:
                        if answer.status == 503:
                            refused.append(answer.headers.get("Retry-After", ""))
                            break
            before = len(load.accepted)
            await asyncio.to_thread(run_stack, "up", "kafka", env=private_kafka)
            deadline = time.monotonic() + 120
            while len(load.accepted) < before + 300 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)

        await load.run(outage)
    assert refused == ["3"], load.statuses
    assert load.statuses.get(503, 0) >= 1
    stored = await read_all(settings.kafka_bootstrap, topic, expect=len(load.accepted))
    missing = load.accepted - {item["event_id"] for _, _, item in stored}
    assert not missing, f"{len(missing)} of {len(load.accepted)} accepted beacons lost ({load.statuses})"
    assert len(load.accepted) >= 600, load.statuses
