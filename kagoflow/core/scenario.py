"""Step and follow scenarios (SPEC §12 and its fine points): the scenario program of the engine.

Everything lives in ``MemberState.runs`` (JSON-able, serialized with the member state, so a restart or a
rebalance resumes every run)::

    {"a": <the active run, if any>,
     "h": ["<scenario>|<order_id>", ...],        # (scenario, order) pairs that ever started (bounded)
     "o": {order_id: [ordered_at, shipped_at, delivered_at, [[pid, qty, price], ...], coupon, total,
                      status]}}                   # orders merged over their records (bounded)

A run is ``{"s": scenario, "o": order_id, "t": start ms, "k": current step (1-based), "j": sends of step
k so far, "p": time of the run's latest sent mail (None before the first), "st": send times of step k,
"op"/"cl"/"cu": a human open / click of step k, a coupon of the scenario used since step k's first send,
"b": products purchased since the start, "ba": any purchase since the start, "pr": the order's products,
"c": [next due, rules tag] — a cache of ``next_due``, dropped whenever the run or its order changes}``.

The run is always *settled* at rest: after every record and every send, a step whose ``repeat`` condition
no longer holds (or that has no repeat and was sent) is finished and the next one becomes current
(``_settle``); what is due next is then a function of the run and the order's dates (``_next``).
Readings where §12 leaves room: a run whose rule is gone or disabled ends (``ended``, ``rule_removed``) at
the member's next record; scenarios have no per-due filters. ``start.filters`` (§13) are checked at the
start; holdouts and coupons are applied to the step sends by ``kagoflow.core.measure`` / ``couponing``
(an empty pool ends the run through ``end_for_coupon``).
"""

from __future__ import annotations

import hashlib
from typing import Any, cast
from zoneinfo import ZoneInfo

from kagoflow.core import customer
from kagoflow.core.behaviour import MemberState, consent_reason
from kagoflow.core.catalog import CatalogLookup
from kagoflow.core.decisions import Decision, DecisionStatus
from kagoflow.core.events import Beacon, Engagement, MemberRecord, OrderUpdate
from kagoflow.core.memberfilters import first_failing
from kagoflow.core.rules import ShopConfig
from kagoflow.core.scenariorule import Repeat, ScenarioRule, Step
from kagoflow.core.shoptime import days_later_at, local_date, next_local_time_after

DEFAULT_CANCELLED = frozenset({"cancelled", "canceled", "returned"})
"""shop.yaml ``cancelled_statuses`` default (SPEC §13)."""
DELIVERED_FALLBACK_MS = 48 * 3_600_000
MAX_ORDERS = 50
"""Orders remembered per member (the active run's order is never forgotten)."""
MAX_HISTORY = 200
MAX_STEPS_PER_FIRE = 64
"""Bound of one ``fire_due`` loop (each turn sends or ends; 7 steps × 10 sends is the most a run has)."""

Run = dict[str, Any]


def variant_of(member_id: str, rule_id: str, step: int, split: int) -> str:
    """SPEC §12 A/B: A when H < split, where H = first 8 bytes of sha256("member|rule|step") mod 100."""
    digest = hashlib.sha256(f"{member_id}|{rule_id}|{step}".encode()).digest()
    return "A" if int.from_bytes(digest[:8], "big") % 100 < split else "B"


def step_of_key(key: str, member_id: str, rule_id: str) -> int:
    """The step of a scenario mail's decision key ``member|scenario|order_id|step|send`` (0 otherwise): what
    the tracking endpoints put into engagement events."""
    prefix = f"{member_id}|{rule_id}|"
    if not key.startswith(prefix):
        return 0
    parts = key[len(prefix):].rsplit("|", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return int(parts[1])
    return 0


def order_snapshot(state: MemberState, order_id: str, tz: ZoneInfo) -> dict[str, Any]:
    """The run's order for the mail (number, shop-local dates, amount), carried on the ``sent`` decision."""
    order = state.runs.get("o", {}).get(order_id) if state.runs else None
    if order is None:
        return {"order_id": order_id}

    def day(ms: int | None) -> str:
        return "" if ms is None else local_date(ms, tz).isoformat()

    total = order[5] if order[5] is not None else sum(qty * price for _, qty, price in order[3])
    return {"order_id": order_id, "ordered_on": day(order[0]), "shipped_on": day(order[1]),
            "delivered_on": day(order[2]), "total": total}


class ScenarioProgram:
    """Scenario runs of one member, per SPEC §12 (``kagoflow.core.program.Program``)."""

    name = "scenario"

    def __init__(self, rules: list[ScenarioRule], shop: ShopConfig) -> None:
        self.rules = {rule.id: rule for rule in rules if rule.enabled}
        self.by_priority = sorted(self.rules.values(), key=lambda rule: (-rule.priority, rule.id))
        self.tz = shop.timezone
        self.segments = shop.segments
        self.cancelled = frozenset(getattr(shop, "cancelled_statuses", DEFAULT_CANCELLED))
        self.tag = hash((tuple(self.by_priority), self.tz.key, self.cancelled)) & 0xFFFFFFFF
        """Validity tag of the next-due cache kept in a run (``"c"``): a cache written under other rules (or
        by another process, whose string hashes differ) is recomputed."""

    # -- Program ----------------------------------------------------------------------------------------
    def reacts_to(self, record_type: type, beacon_type: str | None) -> bool:
        return record_type is not Beacon or beacon_type == "purchase"  # as the checks of on_record

    def on_record(self, state: MemberState, record: MemberRecord, *, catalog: CatalogLookup) -> list[Decision]:
        record_type = type(record)
        if record_type is OrderUpdate:
            self._remember(state, cast(OrderUpdate, record))
        elif not state.runs or "a" not in state.runs:
            return []
        elif record_type is Beacon and cast(Beacon, record).type != "purchase":
            return []  # only purchases concern a run; what was due at ts fired before the record
        out: list[Decision] = []
        ts = record.ts
        run = state.runs.get("a")
        if run is not None:
            run.pop("c", None)
            rule = self._rule(run)
            if rule is None:
                out.append(self._finish(state, run, None, "ended", "rule_removed", ts))
            else:
                self._observe(state, run, rule, record, out)
        if record_type is OrderUpdate:
            self._start(state, cast(OrderUpdate, record), out)
        out += self.fire_due(state, ts, catalog=catalog)
        return out

    def next_due(self, state: MemberState) -> int | None:
        runs = state.runs
        if not runs:
            return None
        run = runs.get("a")
        if run is None:
            return None
        cached = run.get("c")
        if cached is not None and cached[1] == self.tag:
            return cast("int | None", cached[0])
        rule = self._rule(run)
        if rule is None:
            return None
        due = self._next(state, run, rule)[0]
        run["c"] = [due, self.tag]
        return due

    def fire_due(self, state: MemberState, now_ms: int, *, catalog: CatalogLookup) -> list[Decision]:
        out: list[Decision] = []
        for _ in range(MAX_STEPS_PER_FIRE):
            run: Run | None = state.runs.get("a") if state.runs else None
            if run is None:
                break
            rule = self._rule(run)
            if rule is None:
                break
            self._settle(state, run, rule, now_ms, out)
            if "a" not in state.runs:  # completed
                break
            due, action = self._next(state, run, rule)
            if due is None or due > now_ms:
                break
            run.pop("c", None)
            self._act(state, run, rule, action, due, now_ms, out)
        return out

    def _rule(self, run: Run) -> ScenarioRule | None:
        """The run's rule, or None when it is gone, disabled or no longer has the run's step (rules reloaded):
        such a run ends (``rule_removed``) at the member's next record."""
        rule = self.rules.get(run["s"])
        return rule if rule is not None and run["k"] <= len(rule.steps) else None

    # -- timing -----------------------------------------------------------------------------------------
    def _anchor(self, state: MemberState, run: Run, anchor: str) -> int | None:
        if anchor == "previous":
            return cast(int, run["p"] if run["p"] is not None else run["t"])
        order = state.runs["o"].get(run["o"])
        if order is None:
            return None
        if anchor == "ordered":
            return cast(int, order[0])
        if anchor == "shipped":
            return cast("int | None", order[1])
        if order[2] is not None:
            return cast(int, order[2])
        return None if order[1] is None else order[1] + DELIVERED_FALLBACK_MS

    def _from(self, step: Step, anchor_ms: int) -> int:
        if step.after_ms is not None:
            return anchor_ms + step.after_ms
        assert step.days is not None and step.at is not None
        due = days_later_at(anchor_ms, step.days, step.at, self.tz)
        return due if due > anchor_ms else next_local_time_after(anchor_ms, step.at, self.tz)

    def _next(self, state: MemberState, run: Run, rule: ScenarioRule) -> tuple[int | None, str]:
        """(due, action) of the settled run: ``send`` (step k, send j+1), ``exhausted`` or ``anchor_missing``."""
        k, j = run["k"], run["j"]
        step = rule.steps[k - 1]
        if j and step.repeat is not None and j < step.repeat.times:
            return self._from(step, run["p"]), "send"
        if not j:
            upcoming = step
        elif k < len(rule.steps):
            upcoming = rule.steps[k]  # j == K with `then: end`: step k+1's due ends the run
        else:  # only after the rule lost steps: the settle before acting finishes the run
            return run["p"], "exhausted"
        anchor = self._anchor(state, run, upcoming.anchor)
        if anchor is None:
            return run["t"] + rule.anchor_wait_ms, "anchor_missing"
        return self._from(upcoming, anchor), "send" if not j else "exhausted"

    # -- progress ---------------------------------------------------------------------------------------
    def _act(self, state: MemberState, run: Run, rule: ScenarioRule, action: str, due: int, now: int,
             out: list[Decision]) -> None:
        if action == "anchor_missing":
            out.append(self._finish(state, run, rule, "ended", "anchor_missing", now))
            return
        if action == "exhausted":
            out.append(self._finish(state, run, rule, "ended", "repeat_exhausted", now))
            return
        k, send = run["k"], run["j"] + 1
        step = rule.steps[k - 1]
        if step.anchor != "previous" and now - due > rule.late_after_ms:
            out.append(self._mail(state, run, rule, "skipped", "late", due, now, k, send))
            out.append(self._finish(state, run, rule, "ended", "late", now))
            return
        reason = consent_reason(state)
        if reason is not None:
            out.append(self._mail(state, run, rule, "suppressed", reason, due, now, k, send))
            out.append(self._finish(state, run, rule, "ended", "suppressed", now))
            return
        out.append(self._mail(state, run, rule, "sent", "", due, now, k, send))
        run["j"] = send
        run["p"] = now
        run["st"].append(now)
        self._settle(state, run, rule, now, out)

    def _settle(self, state: MemberState, run: Run, rule: ScenarioRule, now: int, out: list[Decision]) -> None:
        """Finish the current step while it is done; end the run (``completed``) after the last step."""
        while run["j"]:
            k, j = run["k"], run["j"]
            repeat = rule.steps[k - 1].repeat
            if repeat is not None and self._holds(run, repeat) and (
                    j < repeat.times or (repeat.then == "end" and k < len(rule.steps))):
                return
            if k == len(rule.steps):
                out.append(self._finish(state, run, rule, "ended", "completed", now))
                return
            run.update(k=k + 1, j=0, st=[], op=False, cl=False, cu=False)

    @staticmethod
    def _holds(run: Run, repeat: Repeat) -> bool:
        condition = repeat.while_
        if condition == "always":
            return True
        if condition == "unopened":
            return not run["op"]
        if condition == "unclicked":
            return not run["cl"]
        if condition == "not_purchased":
            return not run["b"] if repeat.products is None else repeat.products.isdisjoint(run["b"])
        return not run["cu"]  # coupon_unused

    # -- records ----------------------------------------------------------------------------------------
    def _observe(self, state: MemberState, run: Run, rule: ScenarioRule, record: MemberRecord,
                 out: list[Decision]) -> None:
        """End, convert, or note what changes a ``while`` condition."""
        ts = record.ts
        record_type = type(record)
        if record_type is Engagement:
            event = cast(Engagement, record)
            if (event.event in ("open", "click") and not event.suspected_bot and event.rule == run["s"]
                    and event.step == run["k"] and any(at <= ts for at in run["st"])):
                run["op"] = True
                if event.event == "click":
                    run["cl"] = True
            return
        if record_type is OrderUpdate:
            order = cast(OrderUpdate, record)
            if order.order_id == run["o"]:
                if order.status in rule.end_status:
                    out.append(self._finish(state, run, rule, "ended", f"status:{order.status}", ts))
                return
            if order.status in rule.end_status or order.status in self.cancelled:
                return
            merged = state.runs["o"][order.order_id]
            if rule.coupon is not None and run["st"] and merged[0] >= run["st"][0] and merged[4] in (
                    customer.codes_of(state, f"{state.member_id}|{rule.id}|{run['o']}|{run['k']}|")):
                run["cu"] = True  # a code issued by a send of step k (SPEC §13)
            if merged[0] >= run["t"]:
                self._purchase(state, run, rule, [item[0] for item in merged[3]], ts, out)
            return
        if record_type is Beacon:
            beacon = cast(Beacon, record)
            if beacon.type != "purchase" or beacon.order_id == run["o"]:
                return
            known = state.runs["o"].get(beacon.order_id) if beacon.order_id is not None else None
            bought_at = known[0] if known is not None else beacon.ts
            if bought_at >= run["t"]:
                self._purchase(state, run, rule, list(state.touched), ts, out)

    def _purchase(self, state: MemberState, run: Run, rule: ScenarioRule, products: list[str], ts: int,
                  out: list[Decision]) -> None:
        run["ba"] = True
        bought = run["b"]
        bought.extend(pid for pid in products if pid not in bought)
        wanted = rule.end_purchased
        if wanted == "any" or (wanted is not None and not wanted.isdisjoint(products)):
            out.append(self._finish(state, run, rule, "converted", "", ts))

    def _remember(self, state: MemberState, order: OrderUpdate) -> None:
        """Merge the order's record into the remembered orders (a later non-null value wins)."""
        runs = state.runs
        if not runs:
            runs = state.runs = {}
        orders: dict[str, list[Any]] = runs.setdefault("o", {})
        items = [[item.product_id, item.quantity, item.price] for item in order.items]
        known = orders.get(order.order_id)
        if known is None:
            orders[order.order_id] = [order.ordered_at, order.shipped_at, order.delivered_at, items, order.coupon,
                                      order.total, order.status]
            if len(orders) > MAX_ORDERS:
                active = runs.get("a")
                keep = active["o"] if active is not None else None
                oldest = next(oid for oid in orders if oid != keep)
                del orders[oldest]
            return
        for index, value in ((0, order.ordered_at), (1, order.shipped_at), (2, order.delivered_at),
                             (4, order.coupon), (5, order.total), (6, order.status)):
            if value is not None:
                known[index] = value
        if items:
            known[3] = items

    def _start(self, state: MemberState, order: OrderUpdate, out: list[Decision]) -> None:
        runs = state.runs
        history: list[str] = runs.setdefault("h", [])
        merged = runs["o"][order.order_id]
        best = next((rule for rule in self.by_priority
                     if order.status in rule.start_status and f"{rule.id}|{order.order_id}" not in history
                     and self._meets(state, rule, order.order_id, merged)
                     and self._filters_hold(state, rule, order.ts)), None)
        if best is None:
            return
        active = runs.get("a")
        if active is not None:
            current = self.rules.get(active["s"])
            if active["p"] is not None or current is None or best.priority <= current.priority:
                return
            out.append(self._finish(state, active, current, "ended", "replaced", order.ts))
        history.append(f"{best.id}|{order.order_id}")
        if len(history) > MAX_HISTORY:
            del history[0]
        run: Run = {"s": best.id, "o": order.order_id, "t": order.ts, "k": 1, "j": 0, "p": None, "st": [],
                    "op": False, "cl": False, "cu": False, "b": [], "ba": False,
                    "pr": list(dict.fromkeys(item[0] for item in merged[3]))}
        runs["a"] = run
        out.append(self._life(state, run, best, "started", "", order.ts))

    def _filters_hold(self, state: MemberState, rule: ScenarioRule, ts: int) -> bool:
        """``start.filters`` (SPEC §13) at the start moment."""
        return not rule.start_filters or first_failing(
            rule.start_filters, customer.facts(state), ts, self.tz, self.segments) is None

    def _meets(self, state: MemberState, rule: ScenarioRule, order_id: str, merged: list[Any]) -> bool:
        products = {item[0] for item in merged[3]}
        if rule.include is not None and rule.include.isdisjoint(products):
            return False
        if not rule.exclude.isdisjoint(products):
            return False
        if rule.order_count is not None and not rule.order_count.contains(state.purchase_count):
            return False
        if rule.min_amount is not None:
            amount = merged[5] if merged[5] is not None else sum(qty * price for _, qty, price in merged[3])
            if amount < rule.min_amount:
                return False
        if rule.coupons is not None and merged[4] not in rule.coupons:
            return False
        if rule.product_purchase_count is not None:
            listed, count = rule.product_purchase_count
            remembered = state.runs["o"]
            others = sum(
                1 for oid, items in state.orders.items()
                if oid != order_id and not listed.isdisjoint(items)
                and (oid not in remembered or remembered[oid][6] not in self.cancelled)
            )
            if not count.contains(others):
                return False
        return True

    # -- decisions --------------------------------------------------------------------------------------
    def _mail(self, state: MemberState, run: Run, rule: ScenarioRule, status: DecisionStatus, reason: str,
              due: int, now: int, step_no: int, send: int) -> Decision:
        step = rule.steps[step_no - 1]
        variant = ""
        template = step.templates[0]
        if len(step.templates) == 2:
            variant = variant_of(state.member_id, rule.id, step_no, step.split)
            template = step.templates[0 if variant == "A" else 1]
        return Decision(
            member_id=state.member_id, rule_id=rule.id, kind="scenario", status=status, reason=reason,
            products=tuple(run["pr"]), due_ms=due, at_ms=now, episode=f"{run['o']}|{step_no}|{send}",
            template=template, sender_name=rule.sender_name, cap_exempt=True,
            step=step_no, variant=variant, send=send, order_id=run["o"],
        )

    def _life(self, state: MemberState, run: Run, rule: ScenarioRule | None, status: DecisionStatus, reason: str,
              at: int) -> Decision:
        return Decision(
            member_id=state.member_id, rule_id=run["s"], kind="scenario", status=status, reason=reason,
            products=tuple(run["pr"]), due_ms=at, at_ms=at, episode=f"{run['o']}|0|0", template="",
            sender_name=None if rule is None else rule.sender_name, cap_exempt=True, order_id=run["o"],
        )

    def end_for_coupon(self, state: MemberState, decision: Decision) -> list[Decision]:
        """SPEC §14: a send whose coupon pool was empty ends its run (``ended``, ``coupon_pool_empty``)."""
        run = state.runs.get("a")
        if run is None or run["s"] != decision.rule_id or run["o"] != decision.order_id:
            return []
        return [self._finish(state, run, self.rules.get(run["s"]), "ended", "coupon_pool_empty", decision.at_ms)]

    def _finish(self, state: MemberState, run: Run, rule: ScenarioRule | None, status: DecisionStatus,
                reason: str, at: int) -> Decision:
        """The run's one final record; the run is no longer active."""
        if state.runs.get("a") is run:
            del state.runs["a"]
        return self._life(state, run, rule, status, reason, at)
