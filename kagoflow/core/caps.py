"""Per-member send caps (SPEC §4): day / ISO week / month in the shop time zone.

The core only says *which* counters a mail would touch; the atomic check-and-count lives behind
``CapStore`` (Redis in the worker, ``InMemoryCapStore`` in the backtest and unit tests). The call is keyed
by the decision's idempotency key so a replayed decision is answered from the first call, never counted twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol
from zoneinfo import ZoneInfo

from kagoflow.core.decisions import Decision
from kagoflow.core.shoptime import cap_periods


@dataclass(frozen=True, slots=True)
class CapLimits:
    """Mails per member per period; ``None`` = no limit."""

    day: int | None = None
    week: int | None = None
    month: int | None = None

    @property
    def unlimited(self) -> bool:
        return self.day is None and self.week is None and self.month is None


@dataclass(frozen=True, slots=True)
class CapRequest:
    """One check-and-count: the counters of (member, period) that must all stay within their limit."""

    member_id: str
    key: str
    """Idempotency key of the decision (``Decision.key``)."""
    counters: tuple[tuple[str, int], ...]
    """(counter name, limit) pairs, e.g. ('cap:m1:d:2026-11-24', 1)."""


def cap_request(*, member_id: str, key: str, at_ms: int, limits: CapLimits, tz: ZoneInfo) -> CapRequest:
    day, week, month = cap_periods(at_ms, tz)
    counters = tuple(
        (f"cap:{member_id}:{tag}:{period}", limit)
        for tag, period, limit in (("d", day, limits.day), ("w", week, limits.week), ("m", month, limits.month))
        if limit is not None
    )
    return CapRequest(member_id=member_id, key=key, counters=counters)


class CapStore(Protocol):
    """Atomic check-and-count, keyed by the decision's idempotency key."""

    async def acquire(self, request: CapRequest) -> bool:
        """True when the mail may go (and has been counted); a known key gets its first answer, uncounted."""
        ...

    async def check(self, request: CapRequest) -> bool:
        """The answer ``acquire`` would give, counting nothing: a known key's answer, else whether every
        counter is below its limit (a held-out mail, and a pool-coupon mail before it has its code)."""
        ...


class InMemoryCapStore:
    """Deterministic cap store for the backtest and unit tests (same semantics as the Redis script)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.answers: dict[str, bool] = {}

    async def acquire(self, request: CapRequest) -> bool:
        if request.key in self.answers:
            return self.answers[request.key]
        allowed = all(self.counts.get(name, 0) < limit for name, limit in request.counters)
        if allowed:
            for name, _ in request.counters:
                self.counts[name] = self.counts.get(name, 0) + 1
        self.answers[request.key] = allowed
        return allowed

    async def check(self, request: CapRequest) -> bool:
        if request.key in self.answers:
            return self.answers[request.key]
        return all(self.counts.get(name, 0) < limit for name, limit in request.counters)


def _capped_kind(decision: Decision, limits: CapLimits) -> bool:
    """Whether caps look at the decision: a ``sent`` or ``held_out`` one of a rule that is not exempt."""
    return (decision.status == "sent" or decision.status == "held_out") and not decision.cap_exempt \
        and not limits.unlimited


def cap_batches(decisions: list[Decision], deferred: Callable[[Decision], bool], *, limits: CapLimits
                ) -> list[list[Decision]]:
    """Cut ``decisions`` (in order) where a member with a deferred (uncounted, see ``apply_caps``) mail in
    the current part has another mail caps look at: that mail may only be decided once the deferred one
    is counted or not. Normally (one such mail per member and batch) this is the whole batch."""
    parts: list[list[Decision]] = []
    current: list[Decision] = []
    waiting: set[str] = set()
    for decision in decisions:
        if _capped_kind(decision, limits):
            if decision.member_id in waiting:
                parts.append(current)
                current, waiting = [], set()
            if decision.status == "sent" and deferred(decision):
                waiting.add(decision.member_id)
        current.append(decision)
    if current or not parts:
        parts.append(current)
    return parts


async def apply_caps(
    decisions: Iterable[Decision], store: CapStore, *, limits: CapLimits, tz: ZoneInfo,
    deferred: Callable[[Decision], bool] | None = None,
) -> list[Decision]:
    """Turn ``sent`` abandonment decisions into ``capped`` where a cap is full; others pass unchanged.

    A ``sent`` decision for which ``deferred`` is true (a pool coupon still to be taken) is only checked,
    like a ``held_out`` one: only ``sent`` counts (SPEC §11), so it is counted by ``acquire_caps`` once
    its code is taken. The store calls are made together (one Redis round trip), in decision order.
    """
    out = list(decisions)
    calls: list[tuple[int, Awaitable[bool]]] = []
    for index, decision in enumerate(out):
        if not _capped_kind(decision, limits):
            continue
        request = cap_request(member_id=decision.member_id, key=decision.key, at_ms=decision.at_ms,
                              limits=limits, tz=tz)
        counted = decision.status == "sent" and (deferred is None or not deferred(decision))
        # SPEC §14: held out where it would have been sent, after caps — checked, never counted
        calls.append((index, store.acquire(request) if counted else store.check(request)))
    if not calls:
        return out
    answers = [await calls[0][1]] if len(calls) == 1 else await asyncio.gather(*(call for _, call in calls))
    for (index, _), allowed in zip(calls, answers, strict=True):
        if not allowed:
            out[index] = out[index].with_status("capped", "capped")
    return out


async def acquire_caps(decisions: Iterable[Decision], store: CapStore, *, limits: CapLimits, tz: ZoneInfo
                       ) -> set[str]:
    """Count the caps of ``sent`` decisions ``apply_caps`` deferred (together, in order); the keys refused.

    A refusal here means another worker counted the member's cap between the check and now (a rebalance
    race): the mail becomes ``capped`` and the pool code taken for it stays assigned to its key (a replay
    of the decision finds it again), never to another mail."""
    wanted = [decision for decision in decisions if _capped_kind(decision, limits) and decision.status == "sent"]
    answers = await asyncio.gather(*(store.acquire(cap_request(
        member_id=d.member_id, key=d.key, at_ms=d.at_ms, limits=limits, tz=tz)) for d in wanted))
    return {decision.key for decision, allowed in zip(wanted, answers, strict=True) if not allowed}
