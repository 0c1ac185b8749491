"""Coupon pools in Redis: one queue per pool file, shared by every rule and worker naming it (SPEC §13).

Exactly once per decision key: one Lua script looks the key up in the pool's ``given`` hash and, only when
absent, pops the next code (file order) and records key → code, atomically. A worker that crashes after the
script and before the send gets the same code when the decision is replayed; two workers deciding at once
never pop the same code. Codes are loaded from the pool file once, and codes appended to the file later are
added on the next load (the file is append-only by contract: a removed or reordered line is refused).
Keys use a ``{pool}`` hash tag so a pool's keys live in one Redis Cluster slot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import partial
from typing import Any

from kagoflow.adapters.redis_calls import guard
from kagoflow.adapters.redis_conn import RedisClient

_TAKE = """
local code = redis.call('HGET', KEYS[1], ARGV[1])
if code then return {code, -1} end
code = redis.call('LPOP', KEYS[2])
if not code then return {false, 0} end
redis.call('HSET', KEYS[1], ARGV[1], code)
return {code, redis.call('LLEN', KEYS[2])}
"""
"""KEYS: given hash, codes list; ARGV: decision key → {code or false, codes left (-1 = replay)}."""

_TAKE_MANY = """
local out = {}
for i = 1, #ARGV do
  local code = redis.call('HGET', KEYS[1], ARGV[i])
  if not code then
    code = redis.call('LPOP', KEYS[2])
    if code then redis.call('HSET', KEYS[1], ARGV[i], code) end
  end
  out[i] = code or ''
end
return out
"""
"""The same for many decision keys in one round trip, in the given order ('' = pool empty)."""

_LOAD = """
local loaded = tonumber(redis.call('HGET', KEYS[1], 'count') or '0')
if tonumber(ARGV[3]) ~= loaded then return loaded end
local digest = redis.call('HGET', KEYS[1], 'digest')
if loaded > 0 and digest ~= ARGV[1] then return -1 end
local n = #ARGV - 3
for i = 1, n do redis.call('RPUSH', KEYS[2], ARGV[i + 3]) end
redis.call('HSET', KEYS[1], 'count', loaded + n, 'digest', ARGV[2])
return loaded + n
"""
"""KEYS: meta hash, codes list; ARGV: digest of the loaded prefix, digest after this chunk, loaded count so
far, codes... → the new loaded count (or the current one when another loader was first; -1 = file changed)."""

CHUNK = 5000


class PoolFileChanged(RuntimeError):
    """Codes already loaded into Redis are no longer the start of the pool file."""


class RedisCouponPool:
    """``kagoflow.core.coupons.CouponPool`` on Redis."""

    def __init__(self, client: RedisClient, *, prefix: str = "kf:") -> None:
        self._client = client
        self._prefix = prefix
        self._take = client.register_script(_TAKE)
        self._take_many = client.register_script(_TAKE_MANY)
        self._load = client.register_script(_LOAD)

    def _keys(self, pool: str) -> tuple[str, str, str]:
        base = f"{self._prefix}coupon:{{{pool}}}:"
        return base + "given", base + "codes", base + "meta"

    async def load(self, pool: str, codes: list[str]) -> int:
        """Make Redis hold ``codes`` (the pool file, in order); returns how many codes the pool has had in
        total. Idempotent and safe to run from several workers at once."""
        _, queue, meta = self._keys(pool)
        stored = await guard(lambda: self._client.hget(meta, "count"))
        loaded = int(stored or 0)
        while True:
            prefix_digest = _digest(codes[:loaded])
            chunk = codes[loaded:loaded + CHUNK]
            if not chunk:
                current = await guard(lambda: self._client.hget(meta, "digest"))
                if loaded and _text(current) != prefix_digest:
                    raise PoolFileChanged(f"coupon pool {pool}: the codes already handed out are no longer "
                                          f"the start of the pool file")
                return loaded
            after = _digest(codes[:loaded + len(chunk)])
            args: list[Any] = [prefix_digest, after, loaded, *chunk]
            result = int(await guard(partial(self._load, keys=[meta, queue], args=args)))
            if result < 0:
                raise PoolFileChanged(f"coupon pool {pool}: the codes already handed out are no longer "
                                      f"the start of the pool file")
            loaded = result

    async def load_all(self, pools: Mapping[str, list[str]]) -> None:
        for name, codes in pools.items():
            await self.load(name, codes)

    async def take(self, pool: str, decision_key: str) -> str | None:
        code, _ = await self.take_with_left(pool, decision_key)
        return code

    async def take_many(self, pool: str, decision_keys: list[str]) -> list[str | None]:
        """``take`` for each key, in order, atomically and in one round trip."""
        if not decision_keys:
            return []
        given, queue, _ = self._keys(pool)
        codes = await guard(partial(self._take_many, keys=[given, queue], args=decision_keys))
        return [_text(code) or None for code in codes]

    async def take_with_left(self, pool: str, decision_key: str) -> tuple[str | None, int]:
        """(code or None when empty, codes left after it; -1 when the key already had its code)."""
        given, queue, _ = self._keys(pool)
        code, left = await guard(lambda: self._take(keys=[given, queue], args=[decision_key]))
        return (None if code is None else _text(code)), int(left)

    async def remaining(self, pool: str) -> tuple[int, int]:
        _, queue, meta = self._keys(pool)
        left = await guard(lambda: self._client.llen(queue))
        total = await guard(lambda: self._client.hget(meta, "count"))
        return int(left), int(total or 0)

    async def given(self, pool: str) -> dict[str, str]:
        """Every decision key → code handed out so far (operators, tests)."""
        raw = await guard(lambda: self._client.hgetall(self._keys(pool)[0]))
        return {_text(k): _text(v) for k, v in raw.items()}


def _digest(codes: list[str]) -> str:
    return hashlib.sha256("\n".join(codes).encode()).hexdigest()


def _text(raw: str | bytes | None) -> str:
    if raw is None:
        return ""
    return raw.decode() if isinstance(raw, bytes) else raw
