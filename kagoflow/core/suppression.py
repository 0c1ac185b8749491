"""Suppression by e-mail address across member ids (SPEC §11 "unsubscribed"; issue 11 defects 5 and 7).

A member's own unsubscribe or bounce lives in its changelogged state (``MemberState.unsubscribed`` /
``bounced``) and makes the core decide ``suppressed`` itself. Another member id with the same address (an
"address twin") lives in another partition, perhaps in another process, so the core of that member cannot
read it. The address list is kept beside the core like the cap counters: ``AddressBook`` (Redis with AOF in
the worker, a dict in the backtest), written whenever an unsubscribe or bounce reaches a member's state and
re-asserted from the member states at every partition assignment — the durable source is the changelog, the
list is a fast path that heals itself after a Redis loss.

``suppress_listed`` then decides a twin as the core decides a member who unsubscribed, in the worker and in
the backtest alike (``kagoflow.core.sending``), *before* caps and coupons (SPEC §14 fine points: consent →
caps → holdout → coupon): a ``sent`` or ``held_out`` decision to a listed address becomes ``suppressed``
(``unsubscribed`` / ``bounced``), so it consumes no cap and no coupon; a scenario mail so suppressed ends its
run at that moment (``ended``, ``suppressed``, SPEC §12 "At each due moment"), and what the core decided for
that run after it (a step due at the same moment, the run's ``completed``) never happened.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Protocol

from kagoflow.core.behaviour import MemberState
from kagoflow.core.decisions import Decision

_MAILS = ("sent", "held_out")
"""Statuses a listed address turns into ``suppressed`` (consent comes before caps and holdout)."""


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


async def listed_reasons(decisions: Sequence[Decision], book: AddressBook,
                         email_of: Callable[[str], str | None]) -> dict[int, str]:
    """Index → decision reason of each ``sent`` / ``held_out`` decision whose member's address is listed (one
    read of the book for the batch; nothing changes, so a failed read may simply be repeated)."""
    wanted: list[tuple[int, str]] = []
    for index, decision in enumerate(decisions):
        if decision.status in _MAILS:
            email = email_of(decision.member_id)
            if email:
                wanted.append((index, email))
    if not wanted:
        return {}
    reasons = await book.address_reasons([email for _, email in wanted])
    return {index: decision_reason(listed)
            for (index, _), listed in zip(wanted, reasons, strict=True) if listed is not None}


def suppress_listed(decisions: Sequence[Decision], listed: Mapping[int, str],
                    state_of: Callable[[str], MemberState | None]) -> list[Decision]:
    """The decisions with ``listed`` ones (see ``listed_reasons``) ``suppressed``; a suppressed scenario mail
    is followed by its run's final record and the run's later decisions of the batch are dropped."""
    if not listed:
        return list(decisions)
    out: list[Decision] = []
    ended: set[tuple[str, str, str | None]] = set()
    for index, decision in enumerate(decisions):
        run = (decision.member_id, decision.rule_id, decision.order_id)
        if decision.kind == "scenario" and run in ended:
            continue  # decided by the core after the moment the run ended
        reason = listed.get(index)
        if reason is None:
            out.append(decision)
            continue
        suppressed = decision.with_status("suppressed", reason)
        out.append(suppressed)
        if decision.kind == "scenario":
            ended.add(run)
            out.append(end_suppressed_run(state_of(decision.member_id), suppressed))
    return out


def end_suppressed_run(state: MemberState | None, mail: Decision) -> Decision:
    """The final record (``ended``, ``suppressed``) of the run of scenario ``mail``, suppressed after the core:
    the same record the core makes for a member who unsubscribed (``ScenarioProgram._finish``). The run, if
    still the member's active one (``MemberState.runs["a"]``, see ``kagoflow.core.scenario``), ends."""
    runs = state.runs if state is not None else None
    run = runs.get("a") if runs else None
    if runs and run is not None and run["s"] == mail.rule_id and run["o"] == mail.order_id:
        del runs["a"]
    return replace(mail, status="ended", reason="suppressed", due_ms=mail.at_ms, episode=f"{mail.order_id}|0|0",
                   template="", step=0, variant="", send=0, coupon=None, coupon_expires=None)

