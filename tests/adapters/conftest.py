"""The Redis adapters' integration tests run twice: on the stack's single Redis and on a 3-master Redis
Cluster (``infra/stack up redis-cluster``), which refuses a script whose keys span hash slots (CROSSSLOT)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio

from kagoflow.adapters.redis_store import RedisStore
from kagoflow.settings import Settings
from tests.conftest import run_stack


@pytest.fixture(scope="session")
def redis_cluster_url(stack: Settings) -> Iterator[str]:
    """``redis+cluster://`` URL of the stack's Redis Cluster (started for the session when it was not up)."""
    env = dict(os.environ)
    was_up = _cluster_status(env)["state"] == "up"
    run_stack("up", "redis-cluster", env=env)
    port = _cluster_status(env)["port"]
    yield f"redis+cluster://127.0.0.1:{port}"
    if not was_up and env.get("KAGOFLOW_STACK_KEEP", "") in {"", "0"}:
        run_stack("down", "redis-cluster", env=env, check=False, timeout=120)


def _cluster_status(env: dict[str, str]) -> dict[str, Any]:
    out = run_stack("status", "--json", "redis-cluster", env=env, check=False, timeout=60).stdout
    return dict(json.loads(out)[0])


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
