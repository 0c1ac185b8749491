"""The real worker on partition-batched ``beacons`` records (``{"batch": […]}``), and the collector in front.

One worker (a subprocess on private topics, member engine process on) serves the module. A batch record goes
through the worker as one record (one frame event, one ack); its beacons reach their members' states like
single records, a bad one lands in ``beacons.dlq`` with its index, and a replay applies nothing twice.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator

import orjson
import pytest

from kagoflow.settings import PROJECT_ROOT, Settings
from kagoflow.streams.contract import encode_batch, key_partition
from tests.agents.support import products_of, read_dead_letters, wait_member, wait_until
from tests.agents.worker_proc import WorkerProcess, free_port, produce_sync

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    tmp = tmp_path_factory.mktemp("batched")
    rules = tmp / "rules"
    rules.mkdir()
    (rules / "shop.yaml").write_text("timezone: Asia/Tokyo\n")
    with WorkerProcess.running(stack, tmp, rules_dir=rules) as proc:
        yield proc


def members_on(partition: int, partitions: int, count: int, tag: str) -> list[str]:
    found = (f"{tag}-{i}" for i in range(100 * count))
    return [m for m in found if key_partition(m.encode(), partitions) == partition][:count]


def view(member: str, n: int, ts: int) -> bytes:
    return orjson.dumps({"event_id": f"{member}-{n}", "member_id": member, "type": "view",
                         "product_id": f"p{n}", "ts": ts})


def test_batch_records_reach_every_member_and_a_bad_beacon_is_parked_with_its_index(worker: WorkerProcess) -> None:
    partitions = worker.settings.partitions
    tag = uuid.uuid4().hex[:6]
    members = members_on(1, partitions, 5, tag)
    t0 = time.time_ns() // 1_000_000 - 60_000
    items = [view(m, n, t0 + n) for n in range(3) for m in members]
    bad_index = len(items)
    items.append(orjson.dumps({"event_id": "bad", "member_id": members[0], "type": "clickk", "ts": t0}))
    items.append(view(members[0], 9, t0 + 9))
    batch = encode_batch(items)
    produce_sync(worker.settings, [("beacons", members[0], batch)])
    for member in members:
        expected = {"p0", "p1", "p2"} | ({"p9"} if member == members[0] else set())
        wait_member(worker, member, lambda d, e=expected: set(products_of(d)) == e, what=f"batched beacons of {member}")
    (letter,) = read_dead_letters(worker.settings, "beacons", expect=1)
    assert letter["reason"] == f"batch[{bad_index}].type: unknown 'clickk'"
    assert letter["raw_text"] == items[bad_index].decode() and letter["key_text"] == members[0]

    before = worker.metrics()["members"]["duplicates"]
    produce_sync(worker.settings, [("beacons", members[0], batch)])  # the same record again: nothing twice
    wait_until(lambda: worker.metrics()["members"]["duplicates"] >= before + len(items) - 1, timeout=60,
               what="the replayed batch dropped beacon by beacon", worker=worker)


def test_beacons_posted_to_the_collector_reach_the_worker(worker: WorkerProcess) -> None:
    port = free_port()
    env = {**os.environ, **worker.env, "KAGOFLOW_COLLECTOR_PORT": str(port)}
    log = (worker.workdir / "collector.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "kagoflow.cli", "collect"], cwd=PROJECT_ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/beacons"
        wait_until(lambda: _health(url), timeout=60, what="collector up")
        tag = uuid.uuid4().hex[:6]
        members = [f"{tag}-c{i}" for i in range(20)]
        t0 = time.time_ns() // 1_000_000 - 60_000
        body = b"[" + b",".join(view(m, n, t0 + n) for n in range(2) for m in members) + b"]"
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200
            assert orjson.loads(answer.read()) == {"accepted": 40, "rejected": []}
        for member in members:
            wait_member(worker, member, lambda d: set(products_of(d)) == {"p0", "p1"}, what=f"{member} via collector")
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.replace("/beacons", "/health"), timeout=5) as answer:
            return answer.status == 200
    except OSError:
        return False
