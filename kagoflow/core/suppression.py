"""Suppression by e-mail address across member ids (SPEC §11 "unsubscribed"; issue 11 defects 5 and 7).

A member's own unsubscribe or bounce lives in its changelogged state (``MemberState.unsubscribed`` /
``bounced``) and makes the core decide ``suppressed`` itself. Another member id with the same address lives
in another partition, perhaps in another process, so the core of that member cannot read it. The address
list is kept beside the core like the cap counters: ``AddressBook`` (Redis with AOF in the worker, a dict in
the backtest), written whenever an unsubscribe or bounce reaches a member's state and re-asserted from the
member states at every partition assignment — the durable source is the changelog, the list is a fast path
that heals itself after a Redis loss. ``apply_address_suppression`` then turns ``sent`` decisions to a
listed address into ``suppressed`` (``unsubscribed`` / ``bounced``), like ``caps.apply_caps`` turns them
into ``capped``: after the core, in the worker and in the backtest alike.

Reading: this after-the-core step does not end a scenario run (the core did not see it); each later step of
that run is likewise suppressed while the address stays listed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from kagoflow.core.behaviour import MemberState
from kagoflow.core.decisions import Decision


def normalize(email: str) -> str:
    return email.strip().lower()


def address_reason(state: MemberState) -> str | None:
    """Why the member's address must be listed (its own unsubscribe or bounce), else None."""
    if state.email is None:
        return None
    if state.unsubscribed:
        return "unsubscribed"
    if state.bounced:
        return "bounced"
    return None


class AddressBook(Protocol):
    async def list_addresses(self, entries: Sequence[tuple[str, str]], *, now_ms: int) -> None:
        """Record (email, reason) pairs."""
        ...

    async def address_reasons(self, emails: Sequence[str]) -> list[str | None]:
        """The reason each address is listed for (``unsubscribed`` / ``bounced``), else None."""
        ...


class InMemoryAddressBook:
    """The backtest's and the unit tests' address list."""

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}

    async def list_addresses(self, entries: Sequence[tuple[str, str]], *, now_ms: int) -> None:
        for email, reason in entries:
            self.reasons.setdefault(normalize(email), reason)

    async def address_reasons(self, emails: Sequence[str]) -> list[str | None]:
        return [self.reasons.get(normalize(email)) for email in emails]


def decision_reason(listed: str) -> str:
    """A list entry's reason as a decision reason (delivery lists hard bounces as ``bounce: ...``)."""
    return "bounced" if listed.startswith("bounce") else "unsubscribed"


async def apply_address_suppression(
    decisions: Iterable[Decision], book: AddressBook, email_of: Callable[[str], str | None]
) -> list[Decision]:
    """``sent`` decisions whose member's address is listed become ``suppressed``; others pass unchanged."""
    out = list(decisions)
    wanted: list[tuple[int, str]] = []
    for index, decision in enumerate(out):
        if decision.status == "sent":
            email = email_of(decision.member_id)
            if email:
                wanted.append((index, email))
    if not wanted:
        return out
    reasons = await book.address_reasons([email for _, email in wanted])
    for (index, _), listed in zip(wanted, reasons, strict=True):
        if listed is not None:
            out[index] = out[index].with_status("suppressed", decision_reason(listed))
    return out
