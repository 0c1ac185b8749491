"""Redis clients and Lua scripts that work the same on one Redis and on a Redis Cluster.

``KAGOFLOW_REDIS_URL`` names a single Redis (``redis://host:port/db``, ``rediss://`` for TLS) or a Redis
Cluster (``redis+cluster://host:port`` or ``rediss+cluster://``: any one node; the client discovers the
others and follows slot moves). Callers keep every key of one script call in one hash slot (``{tag}``), so
the same code runs on both.

Scripts go by EVALSHA (the body is not sent with every call); a server that does not know a script (it
restarted, failed over, or was flushed) answers NOSCRIPT, and ``execute`` loads the body on every primary
and runs just those commands again — NOSCRIPT means the script did not run, so running it again is safe.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

RedisClient = aioredis.Redis | RedisCluster
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def connect(url: str, **options: Any) -> RedisClient:
    """A client for ``url`` (see the module docstring); ``options`` go to the redis-py client."""
    parts = urlsplit(url)
    if parts.scheme in CLUSTER_SCHEMES:
        plain = urlunsplit((CLUSTER_SCHEMES[parts.scheme], parts.netloc, "", parts.query, ""))
        if parts.path.strip("/") not in {"", "0"}:
            raise ValueError(f"KAGOFLOW_REDIS_URL={url!r}: a Redis Cluster has only database 0")
        return RedisCluster.from_url(plain, **options)
    return aioredis.Redis.from_url(url, **options)


def slot_groups(client: RedisClient, keys: Sequence[str]) -> list[list[int]]:
    """Indexes of ``keys`` grouped so that each group may go into one script call: everything together on a
    single Redis, one group per hash slot on a cluster (in first-seen order)."""
    if not isinstance(client, RedisCluster):
        return [list(range(len(keys)))] if keys else []
    groups: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key_slot(key.encode()), []).append(i)
    return list(groups.values())


@dataclass(frozen=True, slots=True)
class Lua:
    """A Lua script known by its SHA1 (what EVALSHA names)."""

    body: str

    @property
    def sha(self) -> str:
        return _sha(self.body)

    def command(self, keys: Sequence[str], args: Sequence[Any]) -> tuple[Any, ...]:
        """The EVALSHA command for one call, to give to ``execute``."""
        _BODIES[self.sha] = self.body
        return ("EVALSHA", self.sha, len(keys), *keys, *args)


_BODIES: dict[str, str] = {}


def _sha(body: str) -> str:
    return hashlib.sha1(body.encode()).hexdigest()  # the name Redis gives a script


async def execute(client: RedisClient, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Run ``commands`` as one pipeline (one round trip per node); each keeps its own result or exception.
    EVALSHA commands a server does not know are loaded and run again once."""
    results = await _pipeline(client, commands)
    missing = [i for i, result in enumerate(results) if isinstance(result, redis.exceptions.NoScriptError)]
    if not missing:
        return results
    for sha in {commands[i][1] for i in missing}:
        await client.script_load(_BODIES[sha])  # on a cluster: on every primary
    for i, result in zip(missing, await _pipeline(client, [commands[i] for i in missing]), strict=True):
        results[i] = result
    return results


async def _pipeline(client: RedisClient, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    async with client.pipeline(transaction=False) as pipe:
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute(raise_on_error=False))
