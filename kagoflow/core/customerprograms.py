"""The ``date`` and ``inactive`` programs of the engine (SPEC §13; ``kagoflow.core.program.Program``).

Both keep one value per (member, rule) in ``CustomerData.turns`` — the occurrence year already decided
(date), or [since-time, time the record made it current, decided, the last decided since-time]
(inactive) — and compute their due from it and the member's facts, so a restart or a replay yields the
same dues and decisions. Both are evaluated
like abandonment rules at the due (filters → consent → sent; the engine's finishing step adds variant and
holdout) and are exempt from caps. Their decisions list no products.
"""

from __future__ import annotations

from datetime import date

from kagoflow.core import customer
from kagoflow.core.behaviour import MemberState, consent_reason
from kagoflow.core.catalog import CatalogLookup
from kagoflow.core.daterules import CustomerRule, DateRule, InactiveRule
from kagoflow.core.decisions import Decision, DecisionKind, DecisionStatus
from kagoflow.core.events import Beacon, MemberRecord, MemberUpdate, OrderUpdate
from kagoflow.core.memberfilters import first_failing
from kagoflow.core.rules import ShopConfig
from kagoflow.core.shoptime import local_date


def _decide(state: MemberState, rule: CustomerRule, kind: DecisionKind, *, due_ms: int, now_ms: int,
            episode: str, shop: ShopConfig) -> Decision:
    status: DecisionStatus = "sent"
    reason = ""
    failed = None
    if rule.filters:
        failed = first_failing(rule.filters, customer.facts(state), now_ms, shop.timezone, shop.segments)
    if failed is not None:
        status, reason = "skipped", f"filter:{failed}"
    else:
        refusal = consent_reason(state)
        if refusal is not None:
            status, reason = "suppressed", refusal
    return Decision(member_id=state.member_id, rule_id=rule.id, kind=kind, status=status, reason=reason,
                    products=(), due_ms=due_ms, at_ms=now_ms, episode=episode, template=rule.template,
                    sender_name=rule.sender_name or shop.sender_name, cap_exempt=True)


class DateProgram:
    """Birthday and registration-anniversary mails: one decision per (member, rule, occurrence year)."""

    name = "date"

    def __init__(self, rules: list[DateRule], shop: ShopConfig) -> None:
        self.rules = rules
        self.shop = shop
        self.horizon_ms: int | None = None
        """Set by the worker (``kagoflow.worker.datescan``): dues beyond it are not reported by ``next_due``
        (a daily scan of the month-day index schedules them when they come near); None = no limit."""

    def _member_date(self, state: MemberState, rule: DateRule) -> tuple[date, int] | None:
        data = state.cust
        if data is None:
            return None
        known = data.known.get(rule.date)
        if known is None:
            return None
        if rule.date == "birthday":
            day = data.birthday_date()
        else:
            day = None if data.registered_at is None else local_date(data.registered_at, self.shop.timezone)
        return None if day is None else (day, known)

    def _due(self, state: MemberState, rule: DateRule) -> tuple[int, int] | None:
        found = self._member_date(state, rule)
        if found is None:
            return None
        assert state.cust is not None
        done = state.cust.turns.get(rule.id)
        return rule.next_due(found[0], found[1], done, self.shop.timezone)

    def reacts_to(self, record_type: type, beacon_type: str | None) -> bool:
        return record_type is MemberUpdate

    def on_record(self, state: MemberState, record: MemberRecord, *, catalog: CatalogLookup) -> list[Decision]:
        if type(record) is not MemberUpdate:
            return []
        due = self.next_due(state)
        return self.fire_due(state, record.ts, catalog=catalog) if due is not None and due <= record.ts else []

    def next_due(self, state: MemberState) -> int | None:
        if state.cust is None or not state.cust.known:
            return None
        best: int | None = None
        horizon = self.horizon_ms
        for rule in self.rules:
            found = self._due(state, rule)
            if found is not None and (best is None or found[1] < best) and (horizon is None or found[1] <= horizon):
                best = found[1]
        return best

    def fire_due(self, state: MemberState, now_ms: int, *, catalog: CatalogLookup) -> list[Decision]:
        out = []
        for rule in self.rules:
            found = self._due(state, rule)
            if found is None or found[1] > now_ms:
                continue
            year, due = found
            assert state.cust is not None
            state.cust.turns[rule.id] = year
            out.append(_decide(state, rule, "date", due_ms=due, now_ms=now_ms, episode=str(year), shop=self.shop))
        out.sort(key=lambda d: d.due_ms)
        return out


class InactiveProgram:
    """Win-back mails: one decision per inactivity period (identified by its since-time)."""

    name = "inactive"

    def __init__(self, rules: list[InactiveRule], shop: ShopConfig) -> None:
        self.rules = rules
        self.shop = shop
        self._by_access = any(rule.since == "last_access" for rule in rules)

    @staticmethod
    def _since(state: MemberState, rule: InactiveRule) -> int | None:
        if rule.since == "last_access":
            return state.last_access
        data = state.cust
        return None if data is None else data.agg.facts()[2]

    def reacts_to(self, record_type: type, beacon_type: str | None) -> bool:
        return record_type is OrderUpdate or record_type is MemberUpdate or (
            record_type is Beacon and (self._by_access or beacon_type == "purchase"))  # as on_record's check

    def on_record(self, state: MemberState, record: MemberRecord, *, catalog: CatalogLookup) -> list[Decision]:
        kind = type(record)
        if kind is not OrderUpdate and kind is not MemberUpdate and not (kind is Beacon and (
                self._by_access or record.type == "purchase")):  # type: ignore[union-attr]
            return []
        turns = None
        for rule in self.rules:
            since = self._since(state, rule)
            if since is None:
                continue
            if turns is None:
                turns = customer.customer(state).turns
            turn = turns.get(rule.id)
            if turn is None:
                turns[rule.id] = [since, record.ts, False, None]
            elif since != turn[0]:
                # a newer purchase / access opens the next period (a cancelled one reopens the earlier one,
                # unless that period was already decided)
                decided = turn[0] if turn[2] else turn[3]
                turns[rule.id] = [since, record.ts, since == decided, decided]
        due = self.next_due(state)
        return self.fire_due(state, record.ts, catalog=catalog) if due is not None and due <= record.ts else []

    def _due(self, state: MemberState, rule: InactiveRule) -> int | None:
        data = state.cust
        turn = None if data is None else data.turns.get(rule.id)
        if turn is None or turn[2]:
            return None
        return rule.due(turn[0], turn[1], self.shop.timezone)

    def next_due(self, state: MemberState) -> int | None:
        data = state.cust
        if data is None or not data.turns:
            return None
        turns = data.turns
        tz = self.shop.timezone
        best: int | None = None
        for rule in self.rules:  # ``_due`` inlined: this runs after every record of a member with a turn
            turn = turns.get(rule.id)
            if turn is None or turn[2]:
                continue
            due = rule.due(turn[0], turn[1], tz)
            if best is None or due < best:
                best = due
        return best

    def fire_due(self, state: MemberState, now_ms: int, *, catalog: CatalogLookup) -> list[Decision]:
        out = []
        for rule in self.rules:
            due = self._due(state, rule)
            if due is None or due > now_ms:
                continue
            assert state.cust is not None
            turn = state.cust.turns[rule.id]
            turn[2] = True
            out.append(_decide(state, rule, "inactive", due_ms=due, now_ms=now_ms, episode=str(turn[0]),
                               shop=self.shop))
        out.sort(key=lambda d: d.due_ms)
        return out
