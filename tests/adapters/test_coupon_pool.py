"""RedisCouponPool against the stack's Redis: file order, exactly once per key, shared pools under concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from kagoflow.adapters.coupon_pool import PoolFileChanged, RedisCouponPool
from kagoflow.adapters.redis_conn import RedisClient, connect
from kagoflow.core.coupons import CouponSpec, PoolEmpty, issue
from kagoflow.core.shoptime import UTC

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@pytest_asyncio.fixture(loop_scope="session")
async def pool_client(redis_url: str, unique_name: Callable[[str], str]) -> AsyncIterator[tuple[RedisClient, str]]:
    client = connect(redis_url)
    prefix = unique_name("coupontest") + ":"
    yield client, prefix
    keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_codes_in_file_order_once_per_key_and_empty(pool_client: tuple[RedisClient, str]) -> None:
    client, prefix = pool_client
    pool = RedisCouponPool(client, prefix=prefix)
    assert await pool.load("spring", ["S1", "S2", "S3"]) == 3
    assert await pool.load("spring", ["S1", "S2", "S3"]) == 3, "loading again adds nothing"
    assert await pool.take("spring", "m1|r|1") == "S1"
    assert await pool.take("spring", "m2|r|1") == "S2"
    assert await pool.take("spring", "m1|r|1") == "S1", "a replayed decision gets its code again"
    assert await pool.remaining("spring") == (1, 3)
    assert await pool.take("spring", "m3|r|1") == "S3"
    assert await pool.take("spring", "m4|r|1") is None
    assert await pool.take("spring", "m3|r|1") == "S3"
    spec = CouponSpec("pool", "spring", valid_days=3)
    with pytest.raises(PoolEmpty):
        await issue(spec, "m5|r|1", 0, tz=UTC, secret="s", pool=pool)
    # a batch in one round trip: replays keep their code, new keys get none once the pool is empty
    assert await pool.take_many("spring", ["m2|r|1", "m9|r|1", "m1|r|1"]) == ["S2", None, "S1"]
    # codes appended to the file later are added; a changed start of the file is refused
    assert await pool.load("spring", ["S1", "S2", "S3", "S4"]) == 4
    assert await pool.take("spring", "m4|r|1") == "S4"
    with pytest.raises(PoolFileChanged):
        await pool.load("spring", ["X1", "S2", "S3", "S4"])


async def test_a_pool_shared_by_two_rules_never_gives_one_code_twice(
        pool_client: tuple[RedisClient, str], redis_url: str) -> None:
    client, prefix = pool_client
    codes = [f"C{i:05d}" for i in range(3000)]
    # four workers' worth of clients, each loading the pool at the same time
    clients = [connect(redis_url) for _ in range(4)]
    pools = [RedisCouponPool(c, prefix=prefix) for c in clients]
    try:
        await asyncio.gather(*(p.load("shared", codes) for p in pools))
        keys = [f"m{i}|{rule}|{i}" for i in range(2000) for rule in ("cart-1h", "birthday")]

        async def worker(n: int) -> list[tuple[str, str | None]]:
            mine = keys[n::4]
            # every key is asked twice, by two different workers, as after a crash and replay
            again = keys[(n + 1) % 4::4][:200]
            out = []
            for key in mine[:500] + again:
                out.append((key, await pools[n].take("shared", key)))
            rest = mine[500:]
            for start in range(0, len(rest), 100):  # the worker's batched path, interleaved with the others
                batch = rest[start:start + 100]
                out.extend(zip(batch, await pools[n].take_many("shared", batch), strict=True))
            return out

        results = [pair for batch in await asyncio.gather(*(worker(n) for n in range(4))) for pair in batch]
    finally:
        for c in clients:
            await c.aclose()
    by_key: dict[str, str | None] = {}
    for key, code in results:
        assert by_key.setdefault(key, code) == code, f"key {key} got two codes"
    given = [code for code in by_key.values() if code is not None]
    assert len(given) == len(set(given)) == 3000, "each code to exactly one decision"
    assert sum(code is None for code in by_key.values()) == 1000
    assert sorted(given) == codes, "exactly the pool's codes"
    assert await RedisCouponPool(client, prefix=prefix).remaining("shared") == (0, 3000)
