"""Price-drop and back-in-stock mails, member side (SPEC §5, §11 "Price drop and restock").

``kagoflow.core.catalog.apply_catalog`` turns a catalog change into ``PriceTrigger`` s (product side). Here a
trigger meets one member:

1. ``on_trigger`` — at the change: if the member's state on the product is in the rule's ``watch`` set and
   (rule, product, member) has not fired on the trigger's shop-local day, the product joins the member's
   pending decision for (rule, send time). Several products changing before the same send time share one
   pending decision, hence one mail listing them all.
2. ``fire_due`` — at the send time: each product is re-checked (``catalog.condition_holds`` against the
   reference it fired with, and the member's state must still be in ``watch``); dropped products are not
   mailed. Outcome: ``skipped``/``no_products`` when none remain (kept as a record so analysts see why an
   announced change produced no mail), ``suppressed``/<consent reason> without a profile, consent or after an
   unsubscribe, else ``sent``. Caps never apply (``cap_exempt=True``).

``fanout`` is the worker's loop over one trigger: ``WatchIndex.members`` → ``on_trigger``; it yields the
member states it changed so the caller can persist them and register their ``next_due``. A rule sent
``immediately`` has its send time at the change itself: ``decide_now`` skips the pending entry and decides
at once (same decision as ``on_trigger`` then ``fire_due`` at the send time), which is what lets one
catalog change reach 200k watchers in seconds — no pending entry, no due-heap round trip per member. ``reindex`` keeps a
``WatchIndex`` in step with member states (after each record, and to rebuild it on start-up). Each member
partition keeps the index of its own members, so every trigger must reach every member partition.

Everything lives in ``MemberState.price_watch`` (JSON-serialisable, survives ``to_bytes``/``from_bytes``),
in one flat dict::

    {"<rule id>@<send ms>": {product_id: reference, ...},     # a pending decision (value: dict)
     "<rule id>|<product_id>": "<shop-local day of change>"}   # a fired mark (value: str)

Entries are told apart by the type of their value (product ids may contain any character; rule ids are
``[a-z0-9-]``, so the rule and send time are parsed back from a pending key at its last ``@``). The
layout is deliberately flat: a fanout touches hundreds of thousands of members, and every container it
allocates per member costs time (allocation, and the cyclic GC walking it) and state bytes — scheduling a
member allocates one dict. Fired marks older than the day before a new trigger's day are pruned once a member
holds ``FIRED_PRUNE_AT`` of them (such marks can never match a later trigger), so they stay bounded however
long a member lives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import date, timedelta

from kagoflow.core.behaviour import MemberState, consent_reason
from kagoflow.core.catalog import CatalogLookup, PriceTrigger, condition_holds
from kagoflow.core.decisions import Decision, DecisionStatus
from kagoflow.core.pricerules import PriceRule
from kagoflow.core.watchindex import WatchIndex

FIRED_PRUNE_AT = 8
"""Prune stale fired-day marks once a member holds this many."""

Pending = dict[str, float]
"""product id → the reference its trigger fired with."""


def on_trigger(state: MemberState, trigger: PriceTrigger, rule: PriceRule) -> bool:
    """Schedule ``trigger`` for this member if it concerns them; True when ``state`` changed."""
    if not rule.enabled or rule.id != trigger.rule_id:
        return False
    return _schedule(state, trigger, rule, *_keys(trigger))


def _keys(trigger: PriceTrigger) -> tuple[str, str]:
    """(fired mark, pending slot) keys of a trigger; a fanout computes them once and shares the strings."""
    return f"{trigger.rule_id}|{trigger.product_id}", f"{trigger.rule_id}@{trigger.send_at_ms}"


def _schedule(state: MemberState, trigger: PriceTrigger, rule: PriceRule, mark: str, slot: str) -> bool:
    product_id = trigger.product_id
    if state.product_state(product_id) not in rule.watch:
        return False
    watch = state.price_watch
    if watch.get(mark) == trigger.day:
        return False
    if len(watch) >= FIRED_PRUNE_AT:
        _prune_fired(watch, trigger.day)
    watch[mark] = trigger.day
    products: Pending | None = watch.get(slot)
    if products is None:
        watch[slot] = {product_id: trigger.reference}
    else:
        products[product_id] = trigger.reference
    return True


def next_due(state: MemberState) -> int | None:
    """The earliest pending send time, or None."""
    due: int | None = None
    for key, value in state.price_watch.items():
        if type(value) is dict:
            at = _send_ms(key)
            if due is None or at < due:
                due = at
    return due


def fire_due(
    state: MemberState,
    now_ms: int,
    *,
    rules: Mapping[str, PriceRule],
    catalog: CatalogLookup,
) -> list[Decision]:
    """Decide every pending send due at ``now_ms`` (in send-time, then rule-id order) and forget it.

    A pending decision whose rule is gone or disabled is dropped without a decision (the operator switched it
    off).
    """
    watch = state.price_watch
    due: list[tuple[int, str, str]] = []
    for key, value in watch.items():
        if type(value) is dict:
            cut = key.rindex("@")
            at = int(key[cut + 1:])
            if at <= now_ms:
                due.append((at, key[:cut], key))
    if not due:
        return []
    if len(due) > 1:
        due.sort()
    decisions: list[Decision] = []
    for at, rule_id, slot in due:
        products: Pending = watch.pop(slot)
        rule = rules.get(rule_id)
        if rule is None or not rule.enabled:
            continue
        kept: list[str] = []
        for product_id, reference in products.items():
            if state.product_state(product_id) in rule.watch and condition_holds(
                rule, catalog.get(product_id), reference
            ):
                kept.append(product_id)
        status, reason = _outcome(state, bool(kept))
        decisions.append(
            Decision(
                member_id=state.member_id, rule_id=rule.id, kind=rule.kind, status=status, reason=reason,
                products=tuple(kept), due_ms=at, at_ms=now_ms, episode=str(at), template=rule.template,
                sender_name=rule.sender_name, cap_exempt=True,
            )
        )
    return decisions


def fanout(
    trigger: PriceTrigger, rule: PriceRule, index: WatchIndex, states: Callable[[str], MemberState | None]
) -> Iterator[MemberState]:
    """Offer ``trigger`` to every member the index lists for its product under ``rule.watch``.

    Yields each member state ``on_trigger`` changed (persist it, register ``next_due(state)``). Lazy on both
    ends: members come from the index one at a time and ``states`` loads one state at a time, so memory does
    not grow with the number of watchers (beyond what the caller keeps of the yielded states). The index may
    list a member whose state has moved on (it is a pre-filter); ``on_trigger`` checks the state itself.
    """
    if not rule.enabled or rule.id != trigger.rule_id:
        return
    mark, slot = _keys(trigger)
    for member_id in index.members(trigger.product_id, rule.watch):
        state = states(member_id)
        if state is not None and _schedule(state, trigger, rule, mark, slot):
            yield state


def _outcome(state: MemberState, has_products: bool) -> tuple[DecisionStatus, str]:
    """Status and reason of a price/stock decision: nothing left to mail, no consent, or sent."""
    if not has_products:
        return "skipped", "no_products"
    refusal = consent_reason(state)
    return ("sent", "") if refusal is None else ("suppressed", refusal)


def decide_now(
    trigger: PriceTrigger,
    rule: PriceRule,
    index: WatchIndex,
    states: Callable[[str], MemberState | None],
    *,
    catalog: CatalogLookup,
    now_ms: int,
) -> Iterator[tuple[MemberState, Decision]]:
    """Decide an immediate trigger for every watcher: (changed state, decision) pairs.

    The condition is re-checked once, against the catalog as it is now (the re-check ``fire_due`` would
    make at the send time). Each watcher gets the fired mark of the day, as with ``on_trigger``, so a second
    change of the product that day mails nobody.
    """
    if not rule.enabled or rule.id != trigger.rule_id:
        return
    holds = condition_holds(rule, catalog.get(trigger.product_id), trigger.reference)
    mark = _keys(trigger)[0]
    product_id, day, watch_states = trigger.product_id, trigger.day, rule.watch
    products = (product_id,) if holds else ()
    episode = str(trigger.send_at_ms)
    for member_id in index.members(product_id, watch_states):
        state = states(member_id)
        if state is None or state.product_state(product_id) not in watch_states:
            continue
        watch = state.price_watch
        if watch.get(mark) == day:
            continue
        if len(watch) >= FIRED_PRUNE_AT:
            _prune_fired(watch, day)
        watch[mark] = day
        status, reason = _outcome(state, holds)
        yield state, Decision(
            member_id=member_id, rule_id=rule.id, kind=rule.kind, status=status, reason=reason, products=products,
            due_ms=trigger.send_at_ms, at_ms=now_ms, episode=episode, template=rule.template,
            sender_name=rule.sender_name, cap_exempt=True,
        )


def reindex(index: WatchIndex, state: MemberState, product_ids: Iterable[str] | None = None) -> None:
    """Bring ``index`` up to date with ``state``: all its products (start-up rebuild), or just
    ``product_ids`` (after a record: ``state.touched``, which includes products a purchase removed)."""
    for product_id in state.products if product_ids is None else product_ids:
        index.update(state.member_id, product_id, state.product_state(product_id))


def pending_sends(state: MemberState) -> list[tuple[str, int, tuple[str, ...]]]:
    """(rule id, send ms, product ids) of every pending decision, for previews and operator views."""
    return sorted(
        (key.rpartition("@")[0], _send_ms(key), tuple(value))
        for key, value in state.price_watch.items()
        if type(value) is dict
    )


def fired_marks(state: MemberState) -> dict[str, str]:
    """``"<rule id>|<product id>"`` → shop-local day it last fired (for tests and operator views)."""
    return {key: value for key, value in state.price_watch.items() if type(value) is str}


def _send_ms(slot: str) -> int:
    return int(slot[slot.rindex("@") + 1:])


def _prune_fired(watch: dict[str, object], day: str) -> None:
    """Drop fired marks of days before ``day``'s previous day: no later trigger can carry such a day."""
    keep_from = (date.fromisoformat(day) - timedelta(days=1)).isoformat()
    for key in [key for key, value in watch.items() if type(value) is str and value < keep_from]:
        del watch[key]
