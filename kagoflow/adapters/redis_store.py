"""All Redis access: send caps (check-and-count), the idempotent send ledger and the suppression list.

Every multi-step operation is one Lua script, so it is atomic and costs one round trip. Any Redis failure
surfaces as ``StoreUnavailable``: callers wait and retry — a mail is never sent uncapped or unrecorded
because Redis was away.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import redis.asyncio as aioredis
import redis.exceptions

from kagoflow.core.caps import CapRequest

T = TypeVar("T")
ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")
DAY_S = 86_400
COUNTER_TTL_S = 40 * DAY_S
"""Cap counters outlive the longest period (a month) they count."""
ANSWER_TTL_S = 60 * DAY_S
"""Cap answers and ledger entries outlive any replay of a decision."""

LedgerState = Literal["reserved", "transmitting", "sent", "failed"]
"""``reserved``: this decision's mail is being sent and its end of DATA is not written yet — nothing can
have been delivered, so after a crash the mail is sent again. ``transmitting``: written just before the end
of DATA (the only moment SMTP leaves the outcome unknown) — after a crash it is ``uncertain``, never resent.
``sent`` / ``failed``: final. ``reserved`` and ``transmitting`` carry the reserving attempt's owner token."""
LEDGER_STATES: frozenset[str] = frozenset(("reserved", "transmitting", "sent", "failed"))


class StoreUnavailable(RuntimeError):
    """Redis could not be reached or answered with an error; retry later."""


async def _guard(call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise StoreUnavailable(f"redis unavailable: {exc}") from exc
    except redis.exceptions.ResponseError as exc:
        raise StoreUnavailable(f"redis error: {exc}") from exc


class _Coalescer(Generic[ItemT, ResultT]):
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


class _Batcher:
    """Commands of one event-loop turn go to Redis as one pipeline (each keeps its own result or error)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._coalescer: _Coalescer[tuple[Any, ...], Any] = _Coalescer(self._pipeline)

    async def call(self, *command: Any) -> Any:
        return await self._coalescer.call(command)

    async def _pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute(raise_on_error=False))


_CAP_LUA = """
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
"""


class RedisCapStore:
    """``kagoflow.core.caps.CapStore`` on Redis: one script checks every counter, counts all or none, and
    remembers the answer under the decision's key so a replayed decision gets the same answer uncounted."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = "kf:", batcher: _Batcher | None = None) -> None:
        self._client = client
        self._prefix = prefix
        self._batcher = batcher or _Batcher(client)

    async def acquire(self, request: CapRequest) -> bool:
        keys = [f"{self._prefix}capanswer:{request.key}"]
        keys += [self._prefix + name for name, _ in request.counters]
        args = [limit for _, limit in request.counters] + [COUNTER_TTL_S, ANSWER_TTL_S]
        answer = await _guard(lambda: self._batcher.call("EVAL", _CAP_LUA, len(keys), *keys, *args))
        return bool(int(answer))

    async def check(self, request: CapRequest) -> bool:
        """``acquire``'s answer without counting (a held-out mail, a pool-coupon mail before its code): the
        key's stored answer (a replay), else whether every counter is below its limit. Checks of one
        event-loop turn share one pipeline with the turn's ``acquire`` calls, in call order."""
        names = [f"{self._prefix}capanswer:{request.key}"] + [self._prefix + name for name, _ in request.counters]
        answer, *values = await _guard(lambda: self._batcher.call("MGET", *names))
        if answer is not None:
            return bool(int(answer))
        return all(int(value or 0) < limit for value, (_, limit) in zip(values, request.counters, strict=True))

    async def count(self, counter: str) -> int:
        """Current value of one cap counter (for tests and operators)."""
        value = await _guard(lambda: self._client.get(self._prefix + counter))
        return int(value or 0)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    state: LedgerState
    at_ms: int
    detail: str = ""

    def encode(self) -> str:
        return f"{self.state}|{self.at_ms}|{self.detail}"

    @classmethod
    def decode(cls, raw: str | bytes) -> LedgerEntry:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        state, at_ms, detail = text.split("|", 2)
        if state not in LEDGER_STATES:
            raise ValueError(f"bad ledger entry {text!r}")
        return cls(state=state, at_ms=int(at_ms), detail=detail)  # type: ignore[arg-type]


class LostReservation(RuntimeError):
    """Another attempt took the reservation over (a rebalance moved the decision): do not transmit."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """Answer of ``RedisStore.reserve``: exactly one of the three outcomes."""

    reserved: bool = False
    """The caller now owns the send of this decision (``token`` proves it to ``mark_transmitting``)."""
    token: str = ""
    resumed: LedgerEntry | None = None
    """When reserved: the earlier ``reserved`` entry taken over (a crash before its end of DATA)."""
    existing: LedgerEntry | None = None
    """The decision was transmitted or finished before (by this or an earlier process)."""
    suppressed: str | None = None
    """The member or address is on the suppression list: the reason."""


_RESERVE_LUA = """
-- KEYS[1], KEYS[2]: suppressed members / addresses; KEYS[2 + i]: ledger key of reservation i.
-- ARGV[1]: TTL; ARGV[3i - 1], ARGV[3i], ARGV[3i + 1]: member, address, 'reserved' entry of reservation i.
-- Per reservation, in order: an existing ledger entry wins (a 'reserved' one is taken over: its mail
-- never reached the end of DATA), then the suppression list, else reserve.
local out = {}
for i = 1, #KEYS - 2 do
  local key = KEYS[i + 2]
  local existing = redis.call('GET', key)
  if existing and string.sub(existing, 1, 9) == 'reserved|' then
    redis.call('SET', key, ARGV[3 * i + 1], 'EX', ARGV[1])
    out[2 * i - 1], out[2 * i] = 'resumed', existing
  elseif existing then
    out[2 * i - 1], out[2 * i] = 'exists', existing
  else
    local reason = redis.call('HGET', KEYS[1], ARGV[3 * i - 1])
    if not reason and ARGV[3 * i] ~= '' then reason = redis.call('HGET', KEYS[2], ARGV[3 * i]) end
    if reason then
      out[2 * i - 1], out[2 * i] = 'suppressed', reason
    else
      redis.call('SET', key, ARGV[3 * i + 1], 'EX', ARGV[1])
      out[2 * i - 1], out[2 * i] = 'reserved', ''
    end
  end
end
return out
"""
_CONFIRM_LUA = """
-- KEYS[i]: ledger key; ARGV[1]: TTL; ARGV[i + 1]: its final entry.
for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ARGV[1]) end
return #KEYS
"""


_TRANSMIT_LUA = """
-- KEYS[i]: ledger key; ARGV[1]: TTL; ARGV[2i], ARGV[2i + 1]: owner token, 'transmitting' entry.
-- Marked only while the entry is still this owner's (reserved, or transmitting after a 4xx); else 0.
local out = {}
for i = 1, #KEYS do
  local current = redis.call('GET', KEYS[i]) or ''
  local state, _, owner = string.match(current, '^([^|]*)|([^|]*)|(.*)$')
  if (state == 'reserved' or state == 'transmitting') and owner == ARGV[2 * i] then
    redis.call('SET', KEYS[i], ARGV[2 * i + 1], 'EX', ARGV[1])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""


class RedisStore:
    """Send ledger and suppression list (and the cap store as ``caps``) under one key prefix."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = "kf:") -> None:
        self.client = client
        self.prefix = prefix
        self._batcher = _Batcher(client)
        self.caps = RedisCapStore(client, prefix=prefix, batcher=self._batcher)
        self._suppressed_members = f"{prefix}suppressed:member"
        self._suppressed_emails = f"{prefix}suppressed:email"
        self._uncertain = f"{prefix}ledger:uncertain"
        self._owner = secrets.token_hex(6)
        self._attempts = itertools.count()
        """Owner tokens of reservations: this store's random id and a counter (unique without a syscall)."""
        # Reservations and confirmations of one event-loop turn: one pipeline, one script call for each kind.
        self._ledger: _Coalescer[tuple[str, ...], Any] = _Coalescer(self._ledger_flush)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "kf:") -> RedisStore:
        client = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5)
        return cls(client, prefix=prefix)

    async def close(self) -> None:
        await self.client.aclose()

    async def ping(self) -> None:
        await _guard(lambda: self.client.ping())

    def _ledger_key(self, key: str) -> str:
        return f"{self.prefix}ledger:{key}"

    # -- send ledger -----------------------------------------------------------------------------------

    async def reserve(self, key: str, *, member_id: str, email: str, now_ms: int) -> Reservation:
        """Atomically: an existing ledger entry wins, then the suppression list, else reserve ``key``.

        Reservations asked for in the same event-loop turn go to Redis as one script call, in one write with
        the turn's confirmations (each reservation is still atomic, and answered on its own)."""
        token = f"{self._owner}{next(self._attempts):x}"
        item = (
            "reserve",
            self._ledger_key(key),
            member_id,
            _norm_email(email),
            LedgerEntry("reserved", now_ms, token).encode(),
        )
        kind, value = await _guard(lambda: self._ledger.call(item))
        if kind == "reserved":
            return Reservation(reserved=True, token=token)
        if kind == "resumed":
            return Reservation(reserved=True, token=token, resumed=LedgerEntry.decode(value))
        if kind == "exists":
            return Reservation(existing=LedgerEntry.decode(value))
        return Reservation(suppressed=_reason(value))

    async def confirm(self, key: str, *, state: LedgerState = "sent", now_ms: int, detail: str = "") -> None:
        entry = LedgerEntry(state, now_ms, detail.replace("|", "/")).encode()
        await _guard(lambda: self._ledger.call(("confirm", self._ledger_key(key), entry)))

    async def mark_transmitting(self, key: str, *, token: str, now_ms: int, undo: bool = False) -> None:
        """Record that the end of DATA is about to be written (call it before, never after, those bytes go
        out); ``undo``: back to ``reserved`` once the server certainly did not take the mail (4xx, or the
        connection lost before the end). Marks of one event-loop turn share one round trip with the turn's
        other ledger writes. Raises ``LostReservation`` when the entry is no longer this owner's."""
        entry = LedgerEntry("reserved" if undo else "transmitting", now_ms, token).encode()
        marked = await _guard(lambda: self._ledger.call(("transmit", self._ledger_key(key), token, entry)))
        if not marked:
            raise LostReservation(f"the reservation of {key} was taken over; not transmitting")

    async def _ledger_flush(self, ops: list[tuple[str, ...]]) -> list[Any]:
        """One write to Redis for the turn: the reservations (in order) as one script, then the
        transmission marks, then the confirmations."""
        reserves = [i for i, op in enumerate(ops) if op[0] == "reserve"]
        marks = [i for i, op in enumerate(ops) if op[0] == "transmit"]
        confirms = [i for i, op in enumerate(ops) if op[0] == "confirm"]
        async with self.client.pipeline(transaction=False) as pipe:
            if reserves:
                args: list[str | int] = [ANSWER_TTL_S]
                for i in reserves:
                    args += ops[i][2:5]
                keys = [self._suppressed_members, self._suppressed_emails, *(ops[i][1] for i in reserves)]
                pipe.execute_command("EVAL", _RESERVE_LUA, len(keys), *keys, *args)
            if marks:
                keys = [ops[i][1] for i in marks]
                args = [ANSWER_TTL_S]
                for i in marks:
                    args += ops[i][2:4]
                pipe.execute_command("EVAL", _TRANSMIT_LUA, len(keys), *keys, *args)
            if confirms:
                keys = [ops[i][1] for i in confirms]
                pipe.execute_command(
                    "EVAL", _CONFIRM_LUA, len(keys), *keys, ANSWER_TTL_S, *(ops[i][2] for i in confirms)
                )
            answers = iter(await pipe.execute(raise_on_error=False))
        results: list[Any] = [None] * len(ops)
        if reserves:
            answer = next(answers)
            flat = answer if isinstance(answer, Exception) else [_text(value) for value in answer]
            for n, i in enumerate(reserves):
                results[i] = flat if isinstance(flat, Exception) else (flat[2 * n], flat[2 * n + 1])
        if marks:
            answer = next(answers)
            for n, i in enumerate(marks):
                results[i] = answer if isinstance(answer, Exception) else bool(int(answer[n]))
        if confirms:
            answer = next(answers)
            for i in confirms:
                results[i] = answer if isinstance(answer, Exception) else None
        return results

    async def release(self, key: str) -> None:
        """Forget a reservation whose mail was certainly not sent, so a later replay may try again."""
        await _guard(lambda: self.client.delete(self._ledger_key(key)))

    async def state(self, key: str) -> LedgerEntry | None:
        raw = await _guard(lambda: self.client.get(self._ledger_key(key)))
        return None if raw is None else LedgerEntry.decode(raw)

    async def note_uncertain(self, key: str) -> None:
        await _guard(lambda: self.client.sadd(self._uncertain, key))

    async def count_uncertain(self) -> int:
        """Decisions whose end of DATA went out without a reply (a crash or lost connection in that window):
        the server may have accepted them, so they are not resent."""
        return int(await _guard(lambda: self.client.scard(self._uncertain)))

    async def uncertain_keys(self) -> list[str]:
        members = await _guard(lambda: self.client.smembers(self._uncertain))
        return sorted(m.decode() if isinstance(m, bytes) else m for m in members)

    # -- suppression list ------------------------------------------------------------------------------

    async def suppress(
        self, *, member_id: str | None = None, email: str | None = None, reason: str, now_ms: int
    ) -> None:
        """Stop all marketing mail to the member and/or the address (unsubscribe, hard bounce)."""
        value = f"{reason}|{now_ms}"
        async with self.client.pipeline(transaction=True) as pipe:
            if member_id:
                pipe.hset(self._suppressed_members, member_id, value)
            if email:
                pipe.hset(self._suppressed_emails, _norm_email(email), value)
            await _guard(pipe.execute)

    async def suppression_reason(self, *, member_id: str | None = None, email: str | None = None) -> str | None:
        if member_id:
            raw = await _guard(lambda: self.client.hget(self._suppressed_members, member_id))
            if raw is not None:
                return _reason(raw)
        if email:
            raw = await _guard(lambda: self.client.hget(self._suppressed_emails, _norm_email(email)))
            if raw is not None:
                return _reason(raw)
        return None

    async def list_addresses(self, entries: Sequence[tuple[str, str]], *, now_ms: int) -> None:
        """``kagoflow.core.suppression.AddressBook``: list (email, reason) pairs (an entry already there keeps
        its first reason and time)."""
        if not entries:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for email, reason in entries:
                pipe.hsetnx(self._suppressed_emails, _norm_email(email), f"{reason}|{now_ms}")
            await _guard(pipe.execute)

    async def address_reasons(self, emails: Sequence[str]) -> list[str | None]:
        """``AddressBook``: one HMGET for a batch of decisions."""
        if not emails:
            return []
        raw = await _guard(lambda: self.client.hmget(self._suppressed_emails, [_norm_email(e) for e in emails]))
        return [None if value is None else _reason(value) for value in raw]

    async def unsuppress(self, *, member_id: str | None = None, email: str | None = None) -> None:
        """Re-subscribe (an operator action, e.g. after a member opted in again)."""
        if member_id:
            await _guard(lambda: self.client.hdel(self._suppressed_members, member_id))
        if email:
            await _guard(lambda: self.client.hdel(self._suppressed_emails, _norm_email(email)))


def _norm_email(email: str) -> str:
    return email.strip().lower()


def _text(raw: str | bytes) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes) else raw


def _reason(raw: str | bytes) -> str:
    return _text(raw).rsplit("|", 1)[0]
