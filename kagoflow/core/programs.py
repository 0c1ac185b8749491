"""The first two programs of the engine (``kagoflow.core.program.Program``): abandonment and price/stock watch.

Both are thin adapters over their modules (``abandonment``, ``pricewatch``), which keep the logic; the
adapters only say when each one runs and where its pending state lives in ``MemberState``.
"""

from __future__ import annotations

from collections.abc import Mapping

from kagoflow.core import abandonment, pricewatch
from kagoflow.core.abandonrule import AbandonmentRule
from kagoflow.core.behaviour import MemberState
from kagoflow.core.catalog import CatalogLookup
from kagoflow.core.decisions import Decision
from kagoflow.core.events import Beacon, MemberRecord
from kagoflow.core.pricerules import PriceRule
from kagoflow.core.rules import ShopConfig


class AbandonmentProgram:
    """Cart / favourite / browse abandonment (SPEC §3, §11): episodes in ``MemberState.episodes``.

    ``MemberState.due_cache`` (transient) holds the next abandonment due: ``False`` = unknown. Only beacons
    move anchors, so only they recompute it.
    """

    name = "abandonment"

    def __init__(self, rules: list[AbandonmentRule], shop: ShopConfig) -> None:
        self.rules = rules
        self.shop = shop
        self._by_action: dict[str, list[AbandonmentRule]] = {
            action: [rule for rule in rules if rule.trigger == trigger]
            for action, trigger in abandonment.ACTION_TRIGGER.items()
        }

    def reacts_to(self, record_type: type, beacon_type: str | None) -> bool:
        return record_type is Beacon  # no anchor depends on profiles, orders or engagement

    def on_record(self, state: MemberState, record: MemberRecord, *, catalog: CatalogLookup) -> list[Decision]:
        if type(record) is not Beacon:
            return []  # no anchor depends on profiles, orders or engagement
        ts = record.ts
        product_id = record.product_id
        if product_id is not None:
            rules = self._by_action.get(record.type)
            if rules:
                abandonment.open_episodes(state, rules, product_id, ts)
        if not state.episodes:
            state.due_cache = None
            return []
        # Anchors may have moved either way; a due now in the past fires at this record's time.
        moved, state.due_cache = abandonment.scan(state, self.rules, ts, at_ms=ts, catalog=catalog, shop=self.shop)
        return moved

    def next_due(self, state: MemberState) -> int | None:
        due = state.due_cache
        if due is False:
            due = state.due_cache = abandonment.next_due(state, self.rules, self.shop)
        assert due is not True
        return due

    def fire_due(self, state: MemberState, now_ms: int, *, catalog: CatalogLookup) -> list[Decision]:
        decisions, state.due_cache = abandonment.scan(
            state, self.rules, now_ms, at_ms=now_ms, catalog=catalog, shop=self.shop
        )
        return decisions


class PriceWatchProgram:
    """Pending price-drop / restock mails (SPEC §5, §11) in ``MemberState.price_watch``; catalog triggers
    enter through ``Engine.on_price_trigger``, not through member records."""

    name = "price_watch"

    def __init__(self, rules: Mapping[str, PriceRule]) -> None:
        self.rules = rules

    def reacts_to(self, record_type: type, beacon_type: str | None) -> bool:
        return False

    def on_record(self, state: MemberState, record: MemberRecord, *, catalog: CatalogLookup) -> list[Decision]:
        return []

    def next_due(self, state: MemberState) -> int | None:
        return pricewatch.next_due(state) if state.price_watch else None

    def fire_due(self, state: MemberState, now_ms: int, *, catalog: CatalogLookup) -> list[Decision]:
        if not state.price_watch:
            return []
        return pricewatch.fire_due(state, now_ms, rules=self.rules, catalog=catalog)
