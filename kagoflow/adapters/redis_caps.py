"""Send caps on Redis (``kagoflow.core.caps.CapStore``): check-and-count in one script per decision."""

from __future__ import annotations

from kagoflow.adapters.redis_calls import Batcher, StoreUnavailable, guard
from kagoflow.adapters.redis_conn import Lua, RedisClient
from kagoflow.core.caps import CapRequest

DAY_S = 86_400
COUNTER_TTL_S = 40 * DAY_S
"""Cap counters outlive the longest period (a month) they count."""
ANSWER_TTL_S = 60 * DAY_S
"""Cap answers and ledger entries outlive any replay of a decision."""


_CAP_LUA = Lua("""
local answer = redis.call('GET', KEYS[1])
if answer then return tonumber(answer) end
local n = #KEYS - 1
for i = 1, n do
  local count = tonumber(redis.call('GET', KEYS[i + 1]) or '0')
  if count >= tonumber(ARGV[i]) then
    redis.call('SET', KEYS[1], 0, 'EX', ARGV[n + 2])
    return 0
  end
end
for i = 1, n do
  redis.call('INCR', KEYS[i + 1])
  redis.call('EXPIRE', KEYS[i + 1], ARGV[n + 1])
end
redis.call('SET', KEYS[1], 1, 'EX', ARGV[n + 2])
return 1
""")


class RedisCapStore:
    """``kagoflow.core.caps.CapStore`` on Redis: one script checks every counter, counts all or none, and
    remembers the answer under the decision's key so a replayed decision gets the same answer uncounted."""

    def __init__(self, client: RedisClient, *, prefix: str = "kf:", batcher: Batcher | None = None) -> None:
        self._client = client
        self._prefix = prefix
        self._batcher = batcher or Batcher(client)

    def counter_key(self, member_id: str, counter: str) -> str:
        """A member's counters and cap answers share the ``{member}`` hash tag: one cluster slot."""
        return f"{self._prefix}{{{member_id}}}:{counter}"

    def answer_key(self, request: CapRequest) -> str:
        return f"{self._prefix}capanswer:{{{request.member_id}}}:{request.key}"

    async def acquire(self, request: CapRequest) -> bool:
        keys = [self.answer_key(request)]
        keys += [self.counter_key(request.member_id, name) for name, _ in request.counters]
        args = [limit for _, limit in request.counters] + [COUNTER_TTL_S, ANSWER_TTL_S]
        answer = await guard(lambda: self._batcher.call(*_CAP_LUA.command(keys, args)))
        if isinstance(answer, Exception):
            raise StoreUnavailable(f"redis error: {answer}") from answer
        return bool(int(answer))

    async def check(self, request: CapRequest) -> bool:
        """``acquire``'s answer without counting (a held-out mail, a pool-coupon mail before its code): the
        key's stored answer (a replay), else whether every counter is below its limit. Checks of one
        event-loop turn share one pipeline with the turn's ``acquire`` calls, in call order; the answer and the
        counters share the member's hash tag (one cluster slot)."""
        names = [self.answer_key(request)] + [self.counter_key(request.member_id, name) for name, _ in request.counters]
        reply = await guard(lambda: self._batcher.call("MGET", *names))
        if isinstance(reply, Exception):
            raise StoreUnavailable(f"redis error: {reply}") from reply
        answer, *values = reply
        if answer is not None:
            return bool(int(answer))
        return all(int(value or 0) < limit for value, (_, limit) in zip(values, request.counters, strict=True))

    async def count(self, counter: str, *, member_id: str) -> int:
        """Current value of one of a member's cap counters (for tests and operators)."""
        value = await guard(lambda: self._client.get(self.counter_key(member_id, counter)))
        return int(value or 0)
