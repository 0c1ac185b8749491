"""The decision engine: one member's records and clock ticks in, mail decisions out.

The live worker and the backtest drive the same ``Engine``; it knows nothing of Kafka or wall-clock time,
only the epoch-ms times it is handed. Returned ``sent`` abandonment decisions still pass through
``caps.apply_caps`` at the caller, which may turn them into ``capped``.

Callers drop duplicate beacons *before* ``handle`` (``if state.seen_event(beacon.event_id): skip``);
``handle`` itself does not deduplicate.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Protocol

from kagoflow.core import abandonment
from kagoflow.core.abandonrule import AbandonmentRule
from kagoflow.core.behaviour import MemberState, apply_beacon, apply_member, apply_order
from kagoflow.core.catalog import CatalogLookup, PriceTrigger
from kagoflow.core.decisions import Decision
from kagoflow.core.events import Beacon, MemberUpdate, OrderUpdate
from kagoflow.core.rules import PriceRuleLike, RuleSet


class _PriceWatch(Protocol):
    """``kagoflow.core.pricewatch`` as the engine uses it (module written by the price engineer)."""

    def on_trigger(self, state: MemberState, trigger: PriceTrigger, rule: Any, /) -> bool: ...
    def next_due(self, state: MemberState, /) -> int | None: ...
    def fire_due(
        self, state: MemberState, now_ms: int, /, *, rules: Mapping[str, Any], catalog: CatalogLookup
    ) -> list[Decision]: ...


def _load_pricewatch() -> _PriceWatch | None:
    try:
        module: _PriceWatch = importlib.import_module("kagoflow.core.pricewatch")
    except ImportError:
        return None
    return module


class Engine:
    """Applies records to a ``MemberState`` and fires what is due, per SPEC §11."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.shop = rules.shop
        self.abandonment: list[AbandonmentRule] = [rule for rule in rules.abandonment if rule.enabled]
        self.price_rules: dict[str, PriceRuleLike] = {rule.id: rule for rule in rules.price if rule.enabled}
        self._by_action: dict[str, list[AbandonmentRule]] = {
            action: [rule for rule in self.abandonment if rule.trigger == trigger]
            for action, trigger in abandonment.ACTION_TRIGGER.items()
        }
        self._pricewatch = _load_pricewatch() if self.price_rules else None

    # -- public API --------------------------------------------------------------------------------------
    def handle(
        self, state: MemberState, record: Beacon | MemberUpdate | OrderUpdate, *, catalog: CatalogLookup
    ) -> list[Decision]:
        """Fire what is due at or before ``record.ts`` (a due equal to ``ts`` fires first), apply the record,
        then fire, at ``record.ts``, whatever the record moved into the past."""
        if record.member_id != state.member_id:
            raise ValueError(f"record of member {record.member_id!r} handed to state of {state.member_id!r}")
        ts = record.ts
        decisions = self._fire(state, ts, catalog=catalog)  # made at ts: the record is "now"
        if isinstance(record, Beacon):
            apply_beacon(state, record)
            product_id = record.product_id
            if product_id is not None:
                rules = self._by_action.get(record.type)
                if rules:
                    abandonment.open_episodes(state, rules, product_id, ts)
            if state.episodes:
                # Anchors may have moved either way; a due now in the past fires at this record's time.
                moved, state.due_cache = abandonment.scan(
                    state, self.abandonment, ts, at_ms=ts, catalog=catalog, shop=self.shop
                )
                if moved:
                    decisions.extend(moved)
            else:
                state.due_cache = None
        elif isinstance(record, MemberUpdate):
            apply_member(state, record)  # no anchor depends on the profile
        else:
            apply_order(state, record)  # orders are no beacons: neither access nor reset
        return decisions

    def tick(self, state: MemberState, now_ms: int, *, catalog: CatalogLookup) -> list[Decision]:
        """Fire everything due at or before ``now_ms``. Decisions are made at ``now_ms`` (``at_ms``; caps
        count in its period) and keep their ``due_ms``; the backtest ticks exactly at due times."""
        return self._fire(state, now_ms, catalog=catalog)

    def next_due(self, state: MemberState) -> int | None:
        """Earliest pending due time of the member (abandonment and price/stock), or None."""
        due = state.due_cache
        if due is False:
            due = self._abandonment_due(state)
        if state.price_watch and self._pricewatch is not None:
            price_due = self._pricewatch.next_due(state)
            if price_due is not None and (due is None or price_due < due):
                due = price_due
        return due

    def on_price_trigger(self, state: MemberState, trigger: PriceTrigger) -> bool:
        """Hand a catalog trigger to the member's pending price/stock mails (False if it does not apply)."""
        rule = self.price_rules.get(trigger.rule_id)
        if rule is None or self._pricewatch is None:
            return False
        return self._pricewatch.on_trigger(state, trigger, rule)

    # -- internals ---------------------------------------------------------------------------------------
    def _abandonment_due(self, state: MemberState) -> int | None:
        due = state.due_cache
        if due is False:
            due = state.due_cache = abandonment.next_due(state, self.abandonment, self.shop)
        assert due is not True
        return due

    def _fire(self, state: MemberState, now_ms: int, *, catalog: CatalogLookup) -> list[Decision]:
        decisions: list[Decision] = []
        due = state.due_cache
        if due is False:
            due = self._abandonment_due(state)
        if due is not None and due <= now_ms:
            decisions, state.due_cache = abandonment.scan(
                state, self.abandonment, now_ms, at_ms=now_ms, catalog=catalog, shop=self.shop
            )
        if state.price_watch and self._pricewatch is not None:
            price_due = self._pricewatch.next_due(state)
            if price_due is not None and price_due <= now_ms:
                priced = self._pricewatch.fire_due(state, now_ms, rules=self.price_rules, catalog=catalog)
                if priced:
                    decisions.extend(priced)
                    decisions.sort(key=lambda decision: decision.due_ms)
        return decisions
