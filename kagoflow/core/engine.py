"""The decision engine: one member's records and clock ticks in, mail decisions out.

The ``Engine`` is a composition of programs (``kagoflow.core.program.Program``): abandonment, price/stock
watch, scenarios, ... Each keeps its pending work in the member's state; the engine applies records to the
shared behaviour state and asks every program what is due. The live worker and the backtest drive the
same ``Engine``; it knows nothing of Kafka or wall-clock time, only the epoch-ms times it is handed.
Returned ``sent`` abandonment decisions still pass through ``caps.apply_caps`` at the caller, which may
turn them into ``capped``.

Callers drop duplicate beacons *before* ``handle`` (``if state.seen_event(beacon.event_id): skip``);
``handle`` itself does not deduplicate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from kagoflow.core import measure, pricewatch
from kagoflow.core.abandonrule import AbandonmentRule
from kagoflow.core.behaviour import MemberState, apply_beacon, apply_engagement, apply_member, apply_order
from kagoflow.core.catalog import CatalogLookup, PriceTrigger
from kagoflow.core.customerprograms import DateProgram, InactiveProgram
from kagoflow.core.daterules import DateRule, InactiveRule
from kagoflow.core.decisions import Decision
from kagoflow.core.events import Beacon, MemberRecord, MemberUpdate, OrderUpdate
from kagoflow.core.pricerules import PriceRule
from kagoflow.core.program import Program
from kagoflow.core.programs import AbandonmentProgram, PriceWatchProgram
from kagoflow.core.rules import PriceRuleLike, RuleSet
from kagoflow.core.scenario import ScenarioProgram


def default_programs(rules: RuleSet) -> list[Program]:
    """The programs a rule set needs, in the order their decisions are listed when due at the same time.
    A kind with no enabled rule gets no program (nothing to ask per record)."""
    programs: list[Program] = []
    abandonment_rules = [rule for rule in rules.abandonment if rule.enabled]
    if abandonment_rules:
        programs.append(AbandonmentProgram(abandonment_rules, rules.shop))
    price_rules = {rule.id: rule for rule in rules.price if rule.enabled}
    if price_rules:
        programs.append(PriceWatchProgram(cast(dict[str, PriceRule], price_rules)))
    if any(rule.enabled for rule in rules.scenarios):
        programs.append(ScenarioProgram(rules.scenarios, rules.shop))
    date_rules = [rule for rule in rules.customer if rule.enabled and isinstance(rule, DateRule)]
    if date_rules:
        programs.append(DateProgram(date_rules, rules.shop))
    inactive_rules = [rule for rule in rules.customer if rule.enabled and isinstance(rule, InactiveRule)]
    if inactive_rules:
        programs.append(InactiveProgram(inactive_rules, rules.shop))
    return programs


def _reacts(program: Program, record_type: type, beacon_type: str | None) -> bool:
    """Whether ``program.on_record`` may do anything for records of this class (and beacon type): a program
    may say so by a ``reacts_to(record_type, beacon_type)`` method (``Program``); without one it always may."""
    reacts_to = getattr(program, "reacts_to", None)
    return True if reacts_to is None else bool(reacts_to(record_type, beacon_type))


class Engine:
    """Applies records to a ``MemberState`` and fires what its programs have due, per SPEC §11–§13."""

    def __init__(self, rules: RuleSet, programs: Sequence[Program] | None = None) -> None:
        self.rules = rules
        self.shop = rules.shop
        self.abandonment: list[AbandonmentRule] = [rule for rule in rules.abandonment if rule.enabled]
        self.price_rules: dict[str, PriceRuleLike] = {rule.id: rule for rule in rules.price if rule.enabled}
        self.programs: tuple[Program, ...] = tuple(default_programs(rules) if programs is None else programs)
        self._measured = measure.measured_rules(rule for rule in rules.by_id.values() if rule.enabled)
        self._cancelled = rules.shop.segments.cancelled_statuses
        self._reacting: dict[tuple[type, str | None], tuple[tuple[Program, ...], tuple[bool, ...]]] = {}
        """(record class, beacon type) → the programs whose ``on_record`` may react to such a record (and the
        same as a mask over ``programs``)."""
        self._none = (False,) * len(self.programs)

    # -- public API --------------------------------------------------------------------------------------
    def handle(self, state: MemberState, record: MemberRecord, *, catalog: CatalogLookup) -> list[Decision]:
        """Fire what is due at or before ``record.ts`` (a due equal to ``ts`` fires first), apply the record,
        then let every program react at ``record.ts`` (e.g. fire what the record moved into the past)."""
        return self.handle_due(state, record, catalog=catalog)[0]

    def handle_due(self, state: MemberState, record: MemberRecord, *,
                   catalog: CatalogLookup) -> tuple[list[Decision], int | None]:
        """``handle``, and then ``next_due`` of the state, in one pass: a program the record cannot concern
        (``Program.reacts_to``) and that had nothing to fire keeps the due it had before the record, so only
        the others are asked again (the worker and the backtest schedule every member after each record)."""
        if record.member_id != state.member_id:
            raise ValueError(f"record of member {record.member_id!r} handed to state of {state.member_id!r}")
        record_type = type(record)
        beacon_type = cast(Beacon, record).type if record_type is Beacon else None
        found = self._reacting.get((record_type, beacon_type))
        if found is None:
            found = self._reacting[record_type, beacon_type] = _reacting(self.programs, record_type, beacon_type)
        reacting, mask = found
        # made at ts: the record is "now"
        decisions, due, again = self._fire(state, record.ts, catalog, mask)
        if record_type is Beacon:
            apply_beacon(state, cast(Beacon, record))
        elif record_type is MemberUpdate:
            apply_member(state, cast(MemberUpdate, record))
        elif record_type is OrderUpdate:
            # orders are no beacons: neither access nor reset
            apply_order(state, cast(OrderUpdate, record), self._cancelled)
        else:
            apply_engagement(state, cast(Any, record))
        for program in reacting:
            made = program.on_record(state, record, catalog=catalog)
            if made:
                decisions.extend(made)
        for program in (*reacting, *again) if again else reacting:
            at = program.next_due(state)
            if at is not None and (due is None or at < due):
                due = at
        return (self.finish(state, decisions) if decisions else decisions), due

    def tick(self, state: MemberState, now_ms: int, *, catalog: CatalogLookup) -> list[Decision]:
        """Fire everything due at or before ``now_ms``. Decisions are made at ``now_ms`` (``at_ms``; caps
        count in its period) and keep their ``due_ms``; the backtest ticks exactly at due times."""
        return self.tick_due(state, now_ms, catalog=catalog)[0]

    def tick_due(self, state: MemberState, now_ms: int, *,
                 catalog: CatalogLookup) -> tuple[list[Decision], int | None]:
        """``tick``, and then ``next_due``: only the programs that fired are asked again."""
        decisions, due, again = self._fire(state, now_ms, catalog, self._none)
        for program in again:
            at = program.next_due(state)
            if at is not None and (due is None or at < due):
                due = at
        return (self.finish(state, decisions) if decisions else decisions), due

    def finish(self, state: MemberState, decisions: list[Decision]) -> list[Decision]:
        """Price/stock filters, A/B template and holdout (``kagoflow.core.measure``) of a member's decisions;
        callers that decide outside ``handle``/``tick`` (immediate price sends) pass theirs through it."""
        return measure.finish(state, decisions, self._measured, tz=self.shop.timezone,
                              segments=self.shop.segments)

    def coupon_pool_empty(self, state: MemberState, decision: Decision) -> list[Decision]:
        """What follows a ``coupon_pool_empty`` skip (SPEC §14 fine points): an abandonment episode stays open
        (evaluated again at a later due made by a new anchor), a scenario run ends (its ``ended`` record is
        returned), a date / inactive turn is used up (nothing to do)."""
        if decision.kind == "abandonment":
            state.episodes[decision.rule_id] = (int(decision.episode), decision.due_ms)
            state.due_cache = False
            return []
        if decision.kind == "scenario":
            for program in self.programs:
                end = getattr(program, "end_for_coupon", None)
                if end is not None:
                    return cast(list[Decision], end(state, decision))
        return []

    def next_due(self, state: MemberState) -> int | None:
        """Earliest pending due time of the member over all programs, or None."""
        due: int | None = None
        for program in self.programs:
            at = program.next_due(state)
            if at is not None and (due is None or at < due):
                due = at
        return due

    def on_price_trigger(self, state: MemberState, trigger: PriceTrigger) -> bool:
        """Hand a catalog trigger to the member's pending price/stock mails (False if it does not apply)."""
        rule = self.price_rules.get(trigger.rule_id)
        if rule is None:
            return False
        return pricewatch.on_trigger(state, trigger, cast(PriceRule, rule))

    # -- internals ---------------------------------------------------------------------------------------
    def _fire(self, state: MemberState, now_ms: int, catalog: CatalogLookup,
              asked: tuple[bool, ...]) -> tuple[list[Decision], int | None, list[Program]]:
        """Fire every program's due at or before ``now_ms``. Also returns the earliest due, after this, of the
        programs that did not fire and that ``asked`` leaves out (the caller asks those it marks again), and the
        programs that fired and are not marked (to be asked again as well)."""
        decisions: list[Decision] = []
        fired_programs = 0
        kept: int | None = None
        again: list[Program] = []
        for program, ask in zip(self.programs, asked, strict=True):
            due = program.next_due(state)
            if due is None:
                continue
            if due <= now_ms:
                fired = program.fire_due(state, now_ms, catalog=catalog)
                if fired:
                    decisions.extend(fired)
                    fired_programs += 1
                if not ask:
                    again.append(program)
            elif not ask and (kept is None or due < kept):
                kept = due
        if fired_programs > 1:
            decisions.sort(key=lambda decision: decision.due_ms)
        return decisions, kept, again


def _reacting(programs: tuple[Program, ...], record_type: type,
              beacon_type: str | None) -> tuple[tuple[Program, ...], tuple[bool, ...]]:
    """The programs a record of this class (and beacon type) is handed to, and the same as a mask."""
    mask = tuple(_reacts(program, record_type, beacon_type) for program in programs)
    return tuple(program for program, reacts in zip(programs, mask, strict=True) if reacts), mask
