"""The worker's two processes live and die together, and neither death loses state.

The member engine runs beside the Faust process (``KAGOFLOW_ENGINE_PROCESS``, default on). If the engine
dies, the worker must exit (not carry on forwarding records nobody handles) with its own exit code; a
restart resumes from stored state plus the replay of unacked records. If the worker is killed, the engine
must not outlive it.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kagoflow.settings import Settings
from kagoflow.worker.engine_link import ENGINE_DIED_EXIT
from tests.agents.support import member_doc, now_ms, products_of, wait_member
from tests.agents.worker_proc import WorkerProcess, produce_sync

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    tmp = tmp_path_factory.mktemp("engine")
    rules = tmp / "rules"
    rules.mkdir()
    (rules / "shop.yaml").write_text("timezone: Asia/Tokyo\n")
    with WorkerProcess.running(stack, tmp, rules_dir=rules) as proc:
        yield proc


def engine_pids(worker_pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == worker_pid and b"kagoflow.worker.engine" in cmdline:
            found.append(int(stat.parent.name))
    return found


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or "Z" in _state(pid):
            return True
        time.sleep(0.2)
    return False


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def beacon(member: str, n: int, product: str, ts: int) -> tuple[str, str, dict[str, object]]:
    return ("beacons", member, {"event_id": f"{member}-{n}", "member_id": member, "type": "view",
                                "product_id": product, "ts": ts})


def test_engine_death_stops_the_worker_and_a_restart_resumes_with_state(worker: WorkerProcess) -> None:
    member, t0 = f"eng-{uuid.uuid4().hex[:8]}", now_ms() - 10_000
    assert worker.proc is not None
    (engine,) = engine_pids(worker.proc.pid)
    produce_sync(worker.settings, [beacon(member, 1, "before", t0)])
    wait_member(worker, member, lambda d: "before" in products_of(d), what="first beacon")
    time.sleep(1.5)  # > flush interval + a tick: stored and acked

    os.kill(engine, signal.SIGKILL)
    assert worker.proc.wait(timeout=30) == ENGINE_DIED_EXIT
    assert "member engine process exited" in worker.tail(200)

    produce_sync(worker.settings, [beacon(member, 2, "while-down", t0 + 1)])
    worker.start()
    worker.wait_ready()
    doc = wait_member(worker, member, lambda d: "while-down" in products_of(d), timeout=30,
                      what="beacon produced while the worker was down")
    assert set(products_of(doc)) == {"before", "while-down"}
    assert engine_pids(worker.proc.pid) and engine not in engine_pids(worker.proc.pid)


def test_engine_does_not_outlive_a_killed_worker(worker: WorkerProcess) -> None:
    assert worker.proc is not None
    (engine,) = engine_pids(worker.proc.pid)
    worker.kill()
    assert wait_gone(engine, 20), "the member engine outlived its SIGKILLed worker"
    worker.start()
    worker.wait_ready()
    assert member_doc(worker, "nobody-" + uuid.uuid4().hex) is None


def test_one_process_mode_still_handles_records(stack: Settings, tmp_path: Path) -> None:
    """``KAGOFLOW_ENGINE_PROCESS=false``: the member processor runs in the Faust process, no child."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "shop.yaml").write_text("timezone: Asia/Tokyo\n")
    member = f"solo-{uuid.uuid4().hex[:8]}"
    with WorkerProcess.running(stack, tmp_path, rules_dir=rules, engine_process=False) as worker:
        assert worker.proc is not None and engine_pids(worker.proc.pid) == []
        produce_sync(worker.settings, [beacon(member, 1, "p1", now_ms() - 1000)])
        doc = wait_member(worker, member, lambda d: "p1" in products_of(d), what="beacon in one-process mode")
        assert products_of(doc)["p1"]["state"] == "view"
        assert worker.metrics()["members"]["events"] >= 1
