"""Per-member send caps (SPEC §4): day / ISO week / month in the shop time zone.

The core only says *which* counters a mail would touch; the atomic check-and-count lives behind
``CapStore`` (Redis in the worker, ``InMemoryCapStore`` in the backtest and unit tests). The call is keyed
by the decision's idempotency key so a replayed decision is answered from the first call, never counted twice.
"""

from __future__ import annotations

from collections.abc import Iterable
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
    """Atomic check-and-count. Returns True when the mail may go (and has been counted)."""

    async def acquire(self, request: CapRequest) -> bool: ...


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
        """Whether every counter is below its limit, counting nothing (a held-out mail)."""
        return all(self.counts.get(name, 0) < limit for name, limit in request.counters)


async def apply_caps(
    decisions: Iterable[Decision], store: CapStore, *, limits: CapLimits, tz: ZoneInfo
) -> list[Decision]:
    """Turn ``sent`` abandonment decisions into ``capped`` where a cap is full; others pass unchanged."""
    out: list[Decision] = []
    for decision in decisions:
        if decision.status == "sent" and not decision.cap_exempt and not limits.unlimited:
            request = cap_request(
                member_id=decision.member_id, key=decision.key, at_ms=decision.at_ms, limits=limits, tz=tz
            )
            if not await store.acquire(request):
                decision = decision.with_status("capped", "capped")
        elif decision.status == "held_out" and not decision.cap_exempt and not limits.unlimited:
            # SPEC §14: held out where it would have been sent, after caps — checked, never counted
            check = getattr(store, "check", None)
            request = cap_request(
                member_id=decision.member_id, key=decision.key, at_ms=decision.at_ms, limits=limits, tz=tz
            )
            if check is not None and not await check(request):
                decision = decision.with_status("capped", "capped")
        out.append(decision)
    return out
