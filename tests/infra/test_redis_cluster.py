"""``infra/stack up redis-cluster``: three masters sharing every slot, found by a second checkout, and stopped
(all three nodes) by PID."""

from __future__ import annotations

import json
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import run_stack

pytestmark = pytest.mark.integration


def _free_base_port() -> int:
    """A port p with p, p+1, p+2 free (the three masters) and their cluster bus ports (+10000) too; Redis
    refuses a port above 55535 (its bus port would not exist)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 45_000)
        if all(_free(base + i) and _free(base + 10_000 + i) for i in range(3)):
            return base
    raise RuntimeError("no three consecutive free ports")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _status(env: dict[str, str]) -> dict[str, Any]:
    return dict(json.loads(run_stack("status", "--json", "redis-cluster", env=env, check=False).stdout)[0])


def _node_pids(stack_dir: Path) -> list[int]:
    """redis-server processes whose working directory is below this stack's redis-cluster folder."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(stack_dir / "redis-cluster") in os.readlink(proc / "cwd") and \
                        b"redis-server" in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


@pytest.fixture
def cluster_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {**os.environ, "KAGOFLOW_STACK_DIR": str(tmp_path / "stack"),
           "KAGOFLOW_STACK_REDIS_CLUSTER_PORT": str(_free_base_port())}
    yield env
    run_stack("down", "redis-cluster", env=env, check=False)


def test_three_masters_serve_every_slot_and_stop_together(cluster_env: dict[str, str], tmp_path: Path) -> None:
    run_stack("up", "redis-cluster", env=cluster_env)
    row = _status(cluster_env)
    assert row["state"] == "up"
    base = int(cluster_env["KAGOFLOW_STACK_REDIS_CLUSTER_PORT"])
    client = redis.RedisCluster(host="127.0.0.1", port=base)
    try:
        assert len(client.get_primaries()) == 3
        for i in range(30):  # keys on all three masters
            client.set(f"k{i}", i)
        assert {client.get_node_from_key(f"k{i}").port for i in range(30)} == {base, base + 1, base + 2}
        assert client.get("k7") == b"7"
    finally:
        client.close()
    second = {**cluster_env, "KAGOFLOW_STACK_DIR": str(tmp_path / "second-checkout")}
    run_stack("up", "redis-cluster", env=second)  # another checkout uses it rather than clash on the ports
    assert _status(second)["pid"] == row["pid"]
    stack_dir = Path(cluster_env["KAGOFLOW_STACK_DIR"])
    assert len(_node_pids(stack_dir)) == 3

    run_stack("down", "redis-cluster", env=cluster_env)
    assert _status(cluster_env)["state"] == "down"
    assert _node_pids(stack_dir) == []
