"""The idempotent send ledger and the suppression list on Redis (with the cap store of ``redis_caps``).

Every multi-step operation is one Lua script, so it is atomic and costs one round trip. Any Redis failure
surfaces as ``StoreUnavailable``: callers wait and retry — a mail is never sent uncapped or unrecorded
because Redis was away.

Redis Cluster (``redis_conn``): every script call keeps its keys in one hash slot — a member's cap counters
and cap answers carry the ``{member}`` tag, a ledger entry the ``{decision key}`` tag — and the suppression
list is one key per member and per address (read before the ledger script and handed to it), never one
global hash that a script would have to reach into from another slot.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from kagoflow.adapters.redis_calls import Batcher, Coalescer, StoreUnavailable, guard
from kagoflow.adapters.redis_caps import ANSWER_TTL_S, RedisCapStore
from kagoflow.adapters.redis_conn import Lua, RedisClient, connect, execute, slot_groups

__all__ = ["LEDGER_STATES", "LedgerEntry", "LedgerState", "LostReservation", "RedisCapStore", "RedisStore",
           "Reservation", "StoreUnavailable"]

LedgerState = Literal["reserved", "transmitting", "sent", "failed"]
"""``reserved``: this decision's mail is being sent and its end of DATA is not written yet — nothing can
have been delivered, so after a crash the mail is sent again. ``transmitting``: written just before the end
of DATA (the only moment SMTP leaves the outcome unknown) — after a crash it is ``uncertain``, never resent.
``sent`` / ``failed``: final. ``reserved`` and ``transmitting`` carry the reserving attempt's owner token."""
LEDGER_STATES: frozenset[str] = frozenset(("reserved", "transmitting", "sent", "failed"))


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


_RESERVE_LUA = Lua("""
-- KEYS[i]: ledger key of reservation i. ARGV[1]: TTL; ARGV[2i], ARGV[2i + 1]: the suppression reason read
-- just before ('' = none), 'reserved' entry of reservation i.
-- Per reservation, in order: an existing ledger entry wins (a 'reserved' one is taken over: its mail
-- never reached the end of DATA), then the suppression list, else reserve.
local out = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local existing = redis.call('GET', key)
  if existing and string.sub(existing, 1, 9) == 'reserved|' then
    redis.call('SET', key, ARGV[2 * i + 1], 'EX', ARGV[1])
    out[2 * i - 1], out[2 * i] = 'resumed', existing
  elseif existing then
    out[2 * i - 1], out[2 * i] = 'exists', existing
  elseif ARGV[2 * i] ~= '' then
    out[2 * i - 1], out[2 * i] = 'suppressed', ARGV[2 * i]
  else
    redis.call('SET', key, ARGV[2 * i + 1], 'EX', ARGV[1])
    out[2 * i - 1], out[2 * i] = 'reserved', ''
  end
end
return out
""")
_CONFIRM_LUA = Lua("""
-- KEYS[i]: ledger key; ARGV[1]: TTL; ARGV[i + 1]: its final entry.
for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ARGV[1]) end
return #KEYS
""")


_TRANSMIT_LUA = Lua("""
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
""")


class RedisStore:
    """Send ledger and suppression list (and the cap store as ``caps``) under one key prefix."""

    def __init__(self, client: RedisClient, *, prefix: str = "kf:") -> None:
        self.client = client
        self.prefix = prefix
        self._batcher = Batcher(client)
        self.caps = RedisCapStore(client, prefix=prefix, batcher=self._batcher)
        self._uncertain = f"{prefix}ledger:uncertain"
        self._owner = secrets.token_hex(6)
        self._attempts = itertools.count()
        """Owner tokens of reservations: this store's random id and a counter (unique without a syscall)."""
        # Ledger calls of one event-loop turn go together: the marks and confirmations in one pipeline, the
        # reservations (which read the suppression list first) in their own two.
        self._ledger: Coalescer[tuple[str, ...], Any] = Coalescer(self._ledger_flush)
        self._reserves: Coalescer[tuple[str, ...], Any] = Coalescer(self._reserve_flush)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "kf:") -> RedisStore:
        """``url``: a single Redis or a Redis Cluster (``redis+cluster://``, see ``redis_conn``)."""
        client = connect(url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5)
        return cls(client, prefix=prefix)

    async def close(self) -> None:
        await self.client.aclose()

    async def ping(self) -> None:
        await guard(lambda: self.client.ping())

    def _ledger_key(self, key: str) -> str:
        return f"{self.prefix}ledger:{{{key}}}"

    def _member_key(self, member_id: str) -> str:
        return f"{self.prefix}suppressed:member:{member_id}"

    def _email_key(self, email: str) -> str:
        return f"{self.prefix}suppressed:email:{_norm_email(email)}"

    # -- send ledger -----------------------------------------------------------------------------------

    async def reserve(self, key: str, *, member_id: str, email: str, now_ms: int) -> Reservation:
        """Atomically per decision: an existing ledger entry wins, then the suppression list (read just
        before, one key per member and per address), else reserve ``key``.

        Reservations asked for in the same event-loop turn share the turn's writes (each reservation is
        still atomic, and answered on its own)."""
        token = f"{self._owner}{next(self._attempts):x}"
        item = (
            "reserve",
            self._ledger_key(key),
            self._member_key(member_id),
            self._email_key(email) if email.strip() else "",
            LedgerEntry("reserved", now_ms, token).encode(),
        )
        kind, value = await guard(lambda: self._reserves.call(item))
        if kind == "reserved":
            return Reservation(reserved=True, token=token)
        if kind == "resumed":
            return Reservation(reserved=True, token=token, resumed=LedgerEntry.decode(value))
        if kind == "exists":
            return Reservation(existing=LedgerEntry.decode(value))
        return Reservation(suppressed=_reason(value))

    async def confirm(self, key: str, *, state: LedgerState = "sent", now_ms: int, detail: str = "") -> None:
        entry = LedgerEntry(state, now_ms, detail.replace("|", "/")).encode()
        await guard(lambda: self._ledger.call(("confirm", self._ledger_key(key), entry)))

    async def mark_transmitting(self, key: str, *, token: str, now_ms: int, undo: bool = False) -> None:
        """Record that the end of DATA is about to be written (call it before, never after, those bytes go
        out); ``undo``: back to ``reserved`` once the server certainly did not take the mail (4xx, or the
        connection lost before the end). Marks of one event-loop turn share one round trip with the turn's
        other ledger writes. Raises ``LostReservation`` when the entry is no longer this owner's."""
        entry = LedgerEntry("reserved" if undo else "transmitting", now_ms, token).encode()
        marked = await guard(lambda: self._ledger.call(("transmit", self._ledger_key(key), token, entry)))
        if not marked:
            raise LostReservation(f"the reservation of {key} was taken over; not transmitting")

    async def _ledger_flush(self, ops: list[tuple[str, ...]]) -> list[Any]:
        """The turn's transmission marks and confirmations in one round trip (a mark is answered as soon as
        it is written: the end of DATA waits for it). Script calls are grouped by hash slot (one call per
        kind on a single Redis)."""
        calls = self._script_calls(_TRANSMIT_LUA, ops, "transmit", lambda i: ops[i][2:4])
        calls += self._script_calls(_CONFIRM_LUA, ops, "confirm", lambda i: ops[i][2:3])
        results: list[Any] = [None] * len(ops)
        for (_, group), answer in zip(calls, await execute(self.client, [c for c, _ in calls]), strict=True):
            for n, i in enumerate(group):
                if isinstance(answer, Exception):
                    results[i] = answer
                elif ops[i][0] == "transmit":
                    results[i] = bool(int(answer[n]))
        return results

    async def _reserve_flush(self, ops: list[tuple[str, ...]]) -> list[Any]:
        """The turn's reservations in two round trips: the suppression keys of their members and addresses
        are read, then one script per hash slot reserves (or answers) each in order."""
        commands: list[tuple[Any, ...]] = []
        reads: list[tuple[int, int]] = []  # (op index, command index): member first, then address
        for i, op in enumerate(ops):
            for read_key in op[2:4]:
                if read_key:
                    reads.append((i, len(commands)))
                    commands.append(("GET", read_key))
        answers = await execute(self.client, commands)
        results: list[Any] = [None] * len(ops)
        reasons: list[str | Exception] = [""] * len(ops)
        for i, at in reads:
            read = answers[at]
            if isinstance(read, Exception):
                reasons[i] = read
            elif read is not None and reasons[i] == "":
                reasons[i] = _text(read)
        for i, reason in enumerate(reasons):
            if isinstance(reason, Exception):
                results[i] = reason
                ops[i] = ("failed",)
        calls = self._script_calls(_RESERVE_LUA, ops, "reserve", lambda i: (reasons[i], ops[i][4]))
        for (_, group), answer in zip(calls, await execute(self.client, [c for c, _ in calls]), strict=True):
            flat = answer if isinstance(answer, Exception) else [_text(value) for value in answer]
            for n, i in enumerate(group):
                results[i] = flat if isinstance(flat, Exception) else (flat[2 * n], flat[2 * n + 1])
        return results

    def _script_calls(
        self, lua: Lua, ops: list[tuple[str, ...]], kind: str, args_of: Callable[[int], Sequence[Any]]
    ) -> list[tuple[tuple[Any, ...], list[int]]]:
        """One EVALSHA per hash slot over the ``kind`` ops (their ledger keys), with the op indexes each
        call answers for, in order."""
        indexes = [i for i, op in enumerate(ops) if op[0] == kind]
        calls = []
        for group in slot_groups(self.client, [ops[i][1] for i in indexes]):
            members = [indexes[g] for g in group]
            args: list[Any] = [ANSWER_TTL_S]
            for i in members:
                args += args_of(i)
            calls.append((lua.command([ops[i][1] for i in members], args), members))
        return calls

    async def release(self, key: str) -> None:
        """Forget a reservation whose mail was certainly not sent, so a later replay may try again."""
        await guard(lambda: self.client.delete(self._ledger_key(key)))

    async def state(self, key: str) -> LedgerEntry | None:
        raw = await guard(lambda: self.client.get(self._ledger_key(key)))
        return None if raw is None else LedgerEntry.decode(raw)

    async def note_uncertain(self, key: str) -> None:
        await guard(lambda: self.client.sadd(self._uncertain, key))

    async def count_uncertain(self) -> int:
        """Decisions whose end of DATA went out without a reply (a crash or lost connection in that window):
        the server may have accepted them, so they are not resent."""
        return int(await guard(lambda: self.client.scard(self._uncertain)))

    async def uncertain_keys(self) -> list[str]:
        members = await guard(lambda: self.client.smembers(self._uncertain))
        return sorted(m.decode() if isinstance(m, bytes) else m for m in members)

    # -- suppression list: one key per member and per address ------------------------------------------

    async def _run(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """A pipeline whose first error is raised (as ``StoreUnavailable``)."""
        answers = await guard(lambda: execute(self.client, commands))
        for answer in answers:
            if isinstance(answer, Exception):
                raise StoreUnavailable(f"redis error: {answer}") from answer
        return answers

    async def suppress(
        self, *, member_id: str | None = None, email: str | None = None, reason: str, now_ms: int
    ) -> None:
        """Stop all marketing mail to the member and/or the address (unsubscribe, hard bounce)."""
        value = f"{reason}|{now_ms}"
        commands: list[tuple[Any, ...]] = []
        if member_id:
            commands.append(("SET", self._member_key(member_id), value))
        if email:
            commands.append(("SET", self._email_key(email), value))
        await self._run(commands)

    async def suppression_reason(self, *, member_id: str | None = None, email: str | None = None) -> str | None:
        keys = ([self._member_key(member_id)] if member_id else []) + ([self._email_key(email)] if email else [])
        for raw in await self._run([("GET", key) for key in keys]):
            if raw is not None:
                return _reason(raw)
        return None

    async def list_addresses(self, entries: Sequence[tuple[str, str]], *, now_ms: int) -> None:
        """``kagoflow.core.suppression.AddressBook``: list (email, reason) pairs (an entry already there keeps
        its first reason and time)."""
        await self._run([("SET", self._email_key(email), f"{reason}|{now_ms}", "NX") for email, reason in entries])

    async def address_reasons(self, emails: Sequence[str]) -> list[str | None]:
        """``AddressBook``: one pipeline of reads for a batch of decisions."""
        raw = await self._run([("GET", self._email_key(email)) for email in emails])
        return [None if value is None else _reason(value) for value in raw]

    async def unsuppress(self, *, member_id: str | None = None, email: str | None = None) -> None:
        """Re-subscribe (an operator action, e.g. after a member opted in again)."""
        keys = ([self._member_key(member_id)] if member_id else []) + ([self._email_key(email)] if email else [])
        await self._run([("DEL", key) for key in keys])

    async def migrate_suppression_hashes(self) -> int:
        """Move a suppression list kept by an earlier version (two global hashes) to one key per member and
        address (an entry already there wins). Idempotent; returns how many entries were moved."""
        moved = 0
        for kind in ("member", "email"):
            legacy = f"{self.prefix}suppressed:{kind}"
            if await guard(lambda: self.client.type(legacy)) != "hash":  # noqa: B023
                continue
            entries = await guard(lambda: self.client.hgetall(legacy))  # noqa: B023
            await self._run([("SET", f"{legacy}:{_text(field)}", value, "NX") for field, value in entries.items()])
            await guard(lambda: self.client.delete(legacy))  # noqa: B023
            moved += len(entries)
        return moved


def _norm_email(email: str) -> str:
    return email.strip().lower()


def _text(raw: str | bytes) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes) else raw


def _reason(raw: str | bytes) -> str:
    return _text(raw).rsplit("|", 1)[0]
