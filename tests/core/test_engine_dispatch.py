"""The engine skips ``on_record`` of programs whose ``reacts_to`` says the record cannot concern them: such a
call must do nothing at all, and skipping it must not change any decision. ``handle_due`` / ``tick_due``
reuse the dues of programs that neither fired nor got the record: they must equal ``next_due`` afterwards."""

from __future__ import annotations

import random
from typing import Any

from kagoflow.core.behaviour import MemberState
from kagoflow.core.catalog import CatalogLookup
from kagoflow.core.customerprograms import InactiveProgram
from kagoflow.core.daterules import parse_inactive_rule
from kagoflow.core.decisions import Decision
from kagoflow.core.engine import Engine
from kagoflow.core.events import Beacon, Engagement, MemberRecord, MemberUpdate, OrderItem, OrderUpdate
from kagoflow.core.program import Program
from kagoflow.core.rules import load_rules
from kagoflow.settings import PROJECT_ROOT

START = 1_795_000_000_000
TYPES = ("view", "view", "page_view", "cart_add", "cart_remove", "favorite_add", "favorite_remove", "purchase")


class Checked:
    """A program without ``reacts_to`` (so the engine hands it every record) that checks the inner program's
    ``reacts_to``: where it says no, ``on_record`` returns nothing and leaves the state as it was."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.skipped = 0

    def on_record(self, state: MemberState, record: MemberRecord, *, catalog: CatalogLookup) -> list[Decision]:
        record_type = type(record)
        reacts = self.inner.reacts_to(record_type, record.type if isinstance(record, Beacon) else None)
        before = state.to_bytes()
        made: list[Decision] = self.inner.on_record(state, record, catalog=catalog)
        if not reacts:
            self.skipped += 1
            assert made == [], (self.name, record)
            assert state.to_bytes() == before, (self.name, record)
        return made

    def next_due(self, state: MemberState) -> int | None:
        return self.inner.next_due(state)  # type: ignore[no-any-return]

    def fire_due(self, state: MemberState, now_ms: int, *, catalog: CatalogLookup) -> list[Decision]:
        return self.inner.fire_due(state, now_ms, catalog=catalog)  # type: ignore[no-any-return]


def records(seed: int, count: int) -> list[MemberRecord]:
    rng = random.Random(seed)
    out: list[MemberRecord] = []
    ts = START
    for n in range(count):
        ts += rng.choice((1_000, 60_000, 3_600_000, 20 * 3_600_000, 9 * 86_400_000))
        member = f"m{rng.randrange(4)}"
        roll = rng.random()
        if roll < 0.6:
            kind = rng.choice(TYPES)
            product = rng.choice(("p1", "p2", "salt-sample"))
            if kind == "page_view":
                out.append(Beacon(event_id=f"e{n}", member_id=member, type=kind, ts=ts))
            elif kind == "purchase":
                out.append(Beacon(event_id=f"e{n}", member_id=member, type=kind, ts=ts, product_ids=(product,),
                                  order_id=f"o{n}"))
            else:
                out.append(Beacon(event_id=f"e{n}", member_id=member, type=kind, ts=ts,  # type: ignore[arg-type]
                                  product_id=product, price=1200.0 if kind == "cart_add" else None))
        elif roll < 0.8:
            order_id = f"ord{rng.randrange(6)}"
            out.append(OrderUpdate(order_id=order_id, member_id=member, ts=ts, ordered_at=ts - 60_000,
                                   status=rng.choice(("ordered", "shipped", "delivered", "cancelled")),
                                   items=(OrderItem(product_id=rng.choice(("p1", "salt-sample")), quantity=1,
                                                    price=500.0),)))
        elif roll < 0.9:
            out.append(MemberUpdate(member_id=member, ts=ts, email=f"{member}@example.com",
                                    opt_in=rng.random() < 0.8, purchase_count=rng.choice((None, 0, 3)),
                                    birthday=rng.choice((None, "1990-12-01"))))
        else:
            out.append(Engagement(member_id=member, ts=ts, event=rng.choice(("open", "click", "unsubscribe")),
                                  rule=rng.choice(("follow", "salt-sample")), step=1))
    return out


def replay(engine: Engine, stream: list[MemberRecord], *, with_due: bool = False) -> list[Decision]:
    states: dict[str, MemberState] = {}
    out: list[Decision] = []
    for record in stream:
        for state in states.values():  # what fell due before the record, member by member
            due = engine.next_due(state)
            if due is not None and due < record.ts:
                if with_due:
                    fired, after = engine.tick_due(state, due, catalog={})
                    assert after == engine.next_due(state)
                    out += fired
                else:
                    out += engine.tick(state, due, catalog={})
        state = states.setdefault(record.member_id, MemberState(record.member_id))
        if with_due:
            made, after = engine.handle_due(state, record, catalog={})
            assert after == engine.next_due(state), record
            out += made
        else:
            out += engine.handle(state, record, catalog={})
    return out


def test_skipped_on_record_calls_change_nothing() -> None:
    rules = load_rules(PROJECT_ROOT / "rules")
    by_access = parse_inactive_rule({"id": "away", "kind": "inactive", "since": "last_access",
                                     "send": {"after": "1d", "at": "10:00"}, "template": "winback"},
                                    file="away.yaml", min_delay_seconds=0)
    programs: list[Program] = [*Engine(rules).programs, InactiveProgram([by_access], rules.shop)]
    assert {program.name for program in programs} >= {"abandonment", "price_watch", "scenario", "date",
                                                       "inactive"}
    for seed in range(3):
        stream = records(seed, 1500)
        checked = [Checked(program) for program in programs]
        every_call = replay(Engine(rules, programs=checked), stream)
        skipping = replay(Engine(rules, programs=programs), stream)
        assert skipping == every_call
        assert replay(Engine(rules, programs=programs), stream, with_due=True) == every_call
        assert len(every_call) > 50
        assert all(spy.skipped for spy in checked)
