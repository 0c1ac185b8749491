"""The last pure step of every decision (SPEC §13/§14): member filters of price/stock rules, the A/B
template, and the holdout.

Programs decide ``sent`` / ``suppressed`` / ``skipped`` on their own terms; this step, run by the engine on
everything they return, adds what is the same for every kind:

- price_drop / restock ``filters`` come before consent (§14 fine points), so a ``sent`` or ``suppressed``
  price decision whose member fails a filter becomes ``skipped`` (``filter:<name>``);
- a rule with two templates picks the member's variant (H of §12 with step 0); a send-time test only labels
  the decision with the variant its timing came from (the timing itself is the program's);
- a held-out member's ``sent`` becomes ``held_out`` — after filters and consent, at the same moment, with
  the program's state already advanced exactly as after a send. Caps check a held-out abandonment decision
  without counting it (``caps.apply_caps``: a full cap still makes it ``capped``), and it gets no coupon
  (the coupon step only serves ``sent``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from kagoflow.core import customer
from kagoflow.core.behaviour import MemberState
from kagoflow.core.decisions import Decision
from kagoflow.core.memberfilters import MemberFilter, first_failing
from kagoflow.core.variants import Measurement, is_held_out, variant_of

_FILTERED_HERE = ("price_drop", "restock")


def measured_rules(rules: Iterable[Any]) -> dict[str, Any]:
    """The rules this step has work for (the engine skips it entirely when there are none)."""
    out = {}
    for rule in rules:
        measurement: Measurement | None = getattr(rule, "measurement", None)
        filters = getattr(rule, "filters", None)
        if (measurement is not None and (measurement.is_ab or measurement.holdout)) or getattr(
                rule, "send_b", None) is not None or (getattr(rule, "kind", "") in _FILTERED_HERE and filters) \
                or getattr(rule, "holdout", 0):
            out[rule.id] = rule
    return out


def finish(state: MemberState, decisions: list[Decision], rules: Mapping[str, Any], *, tz: Any,
           segments: Any) -> list[Decision]:
    """Apply filters (price kinds), variant and holdout to ``decisions`` of ``state``'s member."""
    if not rules:
        return decisions
    out = []
    for decision in decisions:
        rule = rules.get(decision.rule_id)
        if rule is not None:
            decision = _finish_one(state, decision, rule, tz=tz, segments=segments)
        out.append(decision)
    return out


def _finish_one(state: MemberState, decision: Decision, rule: Any, *, tz: Any, segments: Any) -> Decision:
    status = decision.status
    if decision.kind in _FILTERED_HERE and status in ("sent", "suppressed"):
        filters: tuple[MemberFilter, ...] = getattr(rule, "filters", ()) or ()
        failed = first_failing(filters, customer.facts(state), decision.at_ms, tz, segments) if filters else None
        if failed is not None:
            return decision.with_status("skipped", f"filter:{failed}")
    if status != "sent":
        return decision
    member = decision.member_id
    if decision.kind == "scenario":  # scenarios pick their step's variant themselves; the run went on as sent
        if is_held_out(member, decision.rule_id, getattr(rule, "holdout", 0)):
            decision = replace(decision, status="held_out", cap_exempt=True, coupon=None)
        return decision
    measurement: Measurement | None = getattr(rule, "measurement", None)
    if measurement is None:
        return decision
    if measurement.is_ab:
        template, variant = measurement.pick(member, decision.rule_id)
        decision = replace(decision, template=template, variant=variant)
    elif getattr(rule, "send_b", None) is not None:
        decision = replace(decision, variant=variant_of(member, decision.rule_id, measurement.split))
    if is_held_out(member, decision.rule_id, measurement.holdout):
        # caps still check an abandonment held_out without counting it (``caps.apply_caps``)
        decision = replace(decision, status="held_out")
    return decision

