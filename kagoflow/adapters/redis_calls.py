"""How kagoflow calls Redis: one error type for every failure, and calls of one event-loop turn sent together.

``StoreUnavailable`` is the only exception Redis adapters raise, so callers have one thing to wait and retry on;
``Coalescer`` / ``Batcher`` turn the many small calls of concurrent tasks (one per mail or decision) into one
pipeline per event-loop turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import redis.exceptions

from kagoflow.adapters.redis_conn import RedisClient, execute

T = TypeVar("T")
ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class StoreUnavailable(RuntimeError):
    """Redis could not be reached or answered with an error; retry later."""


async def guard(call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise StoreUnavailable(f"redis unavailable: {exc}") from exc
    except (redis.exceptions.ResponseError, redis.exceptions.RedisClusterException) as exc:
        raise StoreUnavailable(f"redis error: {exc}") from exc


class Coalescer(Generic[ItemT, ResultT]):
    """Calls made by concurrent tasks in the same event-loop turn are handed to ``flush`` together.

    Many mails are delivered concurrently; without this each pays a full Redis round trip (and redis-py's
    per-command overhead) for its ledger reservation and confirmation. Every caller still awaits its own
    item's result, so the semantics of each call are unchanged; an exception of ``flush`` goes to all callers.
    """

    def __init__(self, flush: Callable[[list[ItemT]], Awaitable[list[Any]]]) -> None:
        self._flush_items = flush
        self._queue: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, item: ItemT) -> ResultT:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ResultT] = loop.create_future()
        self._queue.append((item, future))
        if len(self._queue) == 1:
            loop.call_soon(self._start_flush)
        return await future

    def _start_flush(self) -> None:
        task = asyncio.get_running_loop().create_task(self._flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        queue, self._queue = self._queue, []
        try:
            results = await self._flush_items([item for item, _ in queue])
        except BaseException as exc:
            for _, future in queue:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(queue, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


class Batcher:
    """Commands of one event-loop turn go to Redis as one pipeline (each keeps its own result or error)."""

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self._coalescer: Coalescer[tuple[Any, ...], Any] = Coalescer(self._pipeline)

    async def call(self, *command: Any) -> Any:
        return await self._coalescer.call(command)

    async def _pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        return await execute(self._client, commands)
