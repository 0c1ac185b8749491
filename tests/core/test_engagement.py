"""Engagement records reach the member's state (SPEC §11/§12; issue 11 defect 5): an unsubscribe or a bounce
makes every later marketing mail ``suppressed``, in the engine and therefore in worker and backtest."""

from __future__ import annotations

import pytest

from kagoflow.core.behaviour import MemberState
from kagoflow.core.engine import Engine
from kagoflow.core.errors import ContractError
from kagoflow.core.events import Engagement
from kagoflow.streams import contract
from tests.core.abandon_helpers import beacon, brief, jst, profile, rule, ruleset, run

P = profile("2026-11-01 00:00")


def unsubscribe(at: str, *, member: str = "m1", event: str = "unsubscribe") -> Engagement:
    return Engagement(member_id=member, event=event, ts=jst(at))  # type: ignore[arg-type]


def test_unsubscribe_record_suppresses_the_due_mail() -> None:
    decisions = run(ruleset(rule("r")), [
        P, beacon("cart_add", "2026-11-24 10:00", "A"), unsubscribe("2026-11-24 10:30"),
    ])
    assert brief(decisions) == [("r", "suppressed", "unsubscribed", "2026-11-24 11:00", ("A",))]


def test_a_mail_due_at_the_unsubscribe_ts_is_still_sent() -> None:
    decisions = run(ruleset(rule("r")), [
        P, beacon("cart_add", "2026-11-24 10:00", "A"), unsubscribe("2026-11-24 11:00"),
    ])
    assert brief(decisions) == [("r", "sent", "", "2026-11-24 11:00", ("A",))]


def test_unsubscribe_is_permanent_and_bounce_suppresses_too() -> None:
    rules = ruleset(rule("r"))
    later_opt_in = run(rules, [
        P, unsubscribe("2026-11-20 10:00"), profile("2026-11-21 10:00", opt_in=True),
        beacon("cart_add", "2026-11-24 10:00", "A"),
    ])
    assert brief(later_opt_in)[0][1:3] == ("suppressed", "unsubscribed")
    bounced = run(rules, [P, unsubscribe("2026-11-20 10:00", event="bounce"),
                          beacon("cart_add", "2026-11-24 10:00", "A")])
    assert brief(bounced)[0][1:3] == ("suppressed", "bounced")


def test_unsubscribed_and_bounced_survive_serialization() -> None:
    engine = Engine(ruleset(rule("r")))
    state = MemberState("m1")
    engine.handle(state, unsubscribe("2026-11-20 10:00"), catalog={})
    engine.handle(state, unsubscribe("2026-11-20 10:01", event="bounce"), catalog={})
    again = MemberState.from_bytes(state.to_bytes())
    assert again.unsubscribed and again.bounced
    # states written before these fields existed still load
    assert not MemberState.from_bytes(MemberState("m2").to_bytes()).bounced


def test_engagement_contract_reads_both_shapes() -> None:
    spec = contract.parse_engagement(
        b'{"member_id":"m1","event":"open","rule":"salt","step":2,"ts":"2026-11-24T10:00:00+09:00",'
        b'"suppressed_bot":false}'.replace(b"suppressed_bot", b"suspected_bot")
    )
    assert spec == Engagement(member_id="m1", event="open", ts=jst("2026-11-24 10:00"), rule="salt", step=2)
    mail = contract.parse_engagement(
        b'{"type":"click","key":"m1|salt|o1|2|1","member_id":"m1","rule":"salt","at_ms":5,"step":2,'
        b'"suspected_bot":true,"url":"https://shop.example/x"}'
    )
    assert mail is not None and (mail.event, mail.ts, mail.step, mail.suspected_bot) == ("click", 5, 2, True)
    bounce = contract.parse_engagement(
        b'{"type":"delivery","key":"k","member_id":"m1","rule":"r","at_ms":7,"status":"failed",'
        b'"detail":"bounce: 550 no such user"}'
    )
    assert bounce is not None and bounce.event == "bounce"
    delivered = b'{"type":"delivery","key":"k","member_id":"m1","rule":"r","at_ms":7,"status":"delivered"}'
    assert contract.parse_engagement(delivered) is None
    with pytest.raises(ContractError, match="event"):
        contract.parse_engagement(b'{"member_id":"m1","event":"like","ts":1}')
    with pytest.raises(ContractError, match="at_ms"):
        contract.parse_engagement(b'{"member_id":"m1","event":"open"}')


def test_another_member_id_with_the_same_address_is_suppressed_too() -> None:
    shared = "Taro@Example.com"
    records = [
        profile("2026-11-01 00:00", member="m1", email=shared),
        profile("2026-11-01 00:00", member="m2", email=" taro@example.com"),
        profile("2026-11-01 00:00", member="m3", email="hanako@example.com"),
        unsubscribe("2026-11-20 10:00", member="m1"),
        beacon("cart_add", "2026-11-24 10:00", "A", member="m2"),
        beacon("cart_add", "2026-11-24 10:00", "A", member="m3"),
    ]
    by_member = {d.member_id: (d.status, d.reason) for d in run(ruleset(rule("r")), records)}
    assert by_member == {"m2": ("suppressed", "unsubscribed"), "m3": ("sent", "")}
    # a profile that arrives after the unsubscribe lists the address too
    late_profile = [unsubscribe("2026-11-20 10:00", member="m1", event="bounce"),
                    profile("2026-11-21 00:00", member="m1", email=shared),
                    profile("2026-11-01 00:00", member="m2", email=shared),
                    beacon("cart_add", "2026-11-24 10:00", "A", member="m2")]
    assert brief(run(ruleset(rule("r")), late_profile)) == [
        ("r", "suppressed", "bounced", "2026-11-24 11:00", ("A",))]
