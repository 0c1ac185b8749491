"""The Redis adapters' integration tests run twice: on the stack's single Redis and on a 3-master Redis
Cluster (``infra/stack up redis-cluster``), which refuses a script whose keys span hash slots (CROSSSLOT)."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from kagoflow.adapters.redis_store import RedisStore
from kagoflow.settings import Settings
from tests.conftest import redis_cluster_status, run_stack

_CLUSTER_START_LOCK = Path(tempfile.gettempdir()) / "kagoflow-test-redis-cluster.lock"


@pytest.fixture(scope="session")
def redis_cluster_url(stack: Settings) -> Iterator[str]:
    """``redis+cluster://`` URL of the stack's Redis Cluster (started for the session when it was not up).

    Under xdist the controller stops it after every worker finished (``tests/conftest.py``): a worker that
    stopped it at its own session end broke the cluster tests still running in another worker."""
    env = dict(os.environ)
    was_up = redis_cluster_status(env)["state"] == "up"
    with _CLUSTER_START_LOCK.open("w") as lock:  # two xdist workers must not create the cluster at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        run_stack("up", "redis-cluster", env=env)
    port = redis_cluster_status(env)["port"]
    yield f"redis+cluster://127.0.0.1:{port}"
    if not was_up and "PYTEST_XDIST_WORKER" not in os.environ and env.get("KAGOFLOW_STACK_KEEP", "") in {"", "0"}:
        run_stack("down", "redis-cluster", env=env, check=False, timeout=120)


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest, stack: Settings) -> str:
    if request.param == "cluster":
        return str(request.getfixturevalue("redis_cluster_url"))
    return stack.redis_url


@pytest_asyncio.fixture(name="redis_store", loop_scope="session")
async def redis_store_fixture(redis_url: str, unique_name: Callable[[str], str]) -> AsyncIterator[RedisStore]:
    """A store under a key prefix no other test uses; its keys are deleted after."""
    store = RedisStore.from_url(redis_url, prefix=unique_name("adaptertest") + ":")
    yield store
    async for key in store.client.scan_iter(match=store.prefix + "*", count=1000):
        await store.client.delete(key)
    await store.close()
