"""Suppression by e-mail address (an "address twin": another member id with the address of a member who
unsubscribed or bounced) decides like the member's own unsubscribe, SPEC §11/§12 and the §14 order of checks:
consent (``suppressed``) → caps → holdout → coupon. A suppressed mail uses up no cap and no coupon, a would-be
held-out mail is ``suppressed`` too, and a scenario run of the twin ends at the due moment (``ended``,
``suppressed``) exactly as §12 ends the run of a member who unsubscribed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kagoflow.core.decisions import Decision
from kagoflow.core.events import Engagement, Record
from kagoflow.core.variants import is_held_out

from .abandon_helpers import beacon, jst, local, profile
from .scenario_helpers import order
from .test_customer_rules import replay, rules_dir

SHARED = "taro@example.com"
CART_1H = {"id": "cart-1h", "kind": "abandonment", "trigger": "cart", "send": {"after": "1h"}}
CART_3H = {"id": "cart-3h", "kind": "abandonment", "trigger": "cart", "send": {"after": "3h"}}
STEP_1 = {"send": {"anchor": "ordered", "after": "0m"}, "template": "thanks"}


def step(after: str, template: str = "t") -> dict[str, Any]:
    return {"send": {"anchor": "previous", "after": after}, "template": template}


def follow(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": "follow", "kind": "scenario", "start": {"status": ["ordered"]}, "steps": list(steps), **extra}


def gone(at: str, member: str = "m1", event: str = "unsubscribe") -> Engagement:
    return Engagement(member_id=member, event=event, ts=jst(at))  # type: ignore[arg-type]


def twins(twin: str = "m2") -> list[Record]:
    """m1 and ``twin`` share an address; m1 unsubscribes on 20 November."""
    return [profile("2026-11-01 00:00", member="m1", email=SHARED),
            profile("2026-11-01 00:00", member=twin, email=SHARED.upper()),
            gone("2026-11-20 10:00")]


def of(decisions: list[Decision], member: str) -> list[tuple[str, str, str, int, str]]:
    return [(d.rule_id, d.status, d.reason, d.step, local(d.at_ms)) for d in decisions if d.member_id == member]


def test_a_suppressed_twin_mail_uses_up_no_cap(tmp_path: Path) -> None:
    rules = rules_dir(tmp_path, CART_1H, CART_3H, shop={"caps": {"day": 1}})
    records = [*twins(), beacon("cart_add", "2026-11-24 10:00", "A", member="m2"),
               # the twin moves to an address of its own before its second mail of the day
               profile("2026-11-24 11:30", member="m2", email="jiro@example.com")]
    decisions, rp = replay(rules, records)
    assert of(decisions, "m2") == [("cart-1h", "suppressed", "unsubscribed", 0, "2026-11-24 11:00"),
                                   ("cart-3h", "sent", "", 0, "2026-11-24 13:00")]
    assert sorted(rp.caps.counts.values()) == [1], "only the sent mail is counted"


def test_a_twin_is_suppressed_before_caps_like_a_member_who_unsubscribed(tmp_path: Path) -> None:
    rules = rules_dir(tmp_path, CART_1H, shop={"caps": {"day": 1}})
    # the twin's cap of the day is already full: consent comes first, so it is suppressed, not capped
    records = [*twins(), beacon("cart_add", "2026-11-24 08:00", "B", member="m2"),
               profile("2026-11-24 08:30", member="m2", email="jiro@example.com"),
               profile("2026-11-24 09:30", member="m2", email=SHARED),
               beacon("cart_add", "2026-11-24 10:00", "A", member="m2")]
    decisions, _ = replay(rules, records)
    assert of(decisions, "m2") == [("cart-1h", "sent", "", 0, "2026-11-24 09:00"),
                                   ("cart-1h", "suppressed", "unsubscribed", 0, "2026-11-24 11:00")]


def test_a_twin_that_would_be_held_out_is_suppressed(tmp_path: Path) -> None:
    held = next(f"m{i}" for i in range(2, 200) if is_held_out(f"m{i}", "cart-1h", 50))
    rules = rules_dir(tmp_path, {**CART_1H, "holdout": 50})
    decisions, _ = replay(rules, [*twins(held), beacon("cart_add", "2026-11-24 10:00", "A", member=held)])
    assert of(decisions, held) == [("cart-1h", "suppressed", "unsubscribed", 0, "2026-11-24 11:00")]


def test_a_pool_coupon_is_not_taken_by_a_suppressed_twin(tmp_path: Path) -> None:
    rules = rules_dir(tmp_path, {**CART_1H, "coupon": {"pool": "spring"}}, pools={"spring": ["S1"]})
    records = [*twins(), profile("2026-11-01 00:00", member="m3"),
               beacon("cart_add", "2026-11-24 10:00", "A", member="m2"),
               beacon("cart_add", "2026-11-24 10:05", "A", member="m3")]
    decisions, _ = replay(rules, records)
    assert [(d.member_id, d.status, d.coupon) for d in decisions] == [("m2", "suppressed", None),
                                                                    ("m3", "sent", "S1")]


def test_a_twins_scenario_run_ends_at_the_due_moment(tmp_path: Path) -> None:
    rules = rules_dir(tmp_path, follow(STEP_1, step("1d"), step("1d")))
    records = [profile("2026-11-01 00:00", member="m1", email=SHARED),
               profile("2026-11-01 00:00", member="m2", email=SHARED),
               order("2026-11-24 10:00", member="m2"), gone("2026-11-24 18:00")]
    decisions, rp = replay(rules, records)
    assert of(decisions, "m2") == [
        ("follow", "started", "", 0, "2026-11-24 10:00"), ("follow", "sent", "", 1, "2026-11-24 10:00"),
        ("follow", "suppressed", "unsubscribed", 2, "2026-11-25 10:00"),
        ("follow", "ended", "suppressed", 0, "2026-11-25 10:00")]
    assert "a" not in rp.states["m2"].runs, "no run stays active"
    # the same as the member's own unsubscribe
    own = [*records[:3], gone("2026-11-24 18:00", member="m2")]
    assert of(replay(rules, own)[0], "m2") == of(decisions, "m2")


def test_a_twins_last_step_ends_the_run_suppressed_not_completed(tmp_path: Path) -> None:
    rules = rules_dir(tmp_path, follow(STEP_1))
    decisions, _ = replay(rules, [*twins(), order("2026-11-24 10:00", member="m2")])
    assert of(decisions, "m2") == [
        ("follow", "started", "", 0, "2026-11-24 10:00"),
        ("follow", "suppressed", "unsubscribed", 1, "2026-11-24 10:00"),
        ("follow", "ended", "suppressed", 0, "2026-11-24 10:00")]


def test_steps_due_together_end_at_the_first_suppressed_one(tmp_path: Path) -> None:
    # step 2 is due at once after step 1: the run ends at step 1, step 2 is never decided
    rules = rules_dir(tmp_path, follow(STEP_1, step("0m"), step("1d")))
    decisions, _ = replay(rules, [*twins(), order("2026-11-24 10:00", member="m2")])
    assert [(s, r, k) for _, s, r, k, _ in of(decisions, "m2")] == [
        ("started", "", 0), ("suppressed", "unsubscribed", 1), ("ended", "suppressed", 0)]


def test_a_held_out_twin_run_ends_suppressed_and_a_bounce_counts_too(tmp_path: Path) -> None:
    held = next(f"m{i}" for i in range(2, 200) if is_held_out(f"m{i}", "follow", 50))
    rules = rules_dir(tmp_path, follow(STEP_1, step("1d"), holdout=50))
    records = [profile("2026-11-01 00:00", member="m1", email=SHARED),
               profile("2026-11-01 00:00", member=held, email=SHARED),
               gone("2026-11-20 10:00", event="bounce"), order("2026-11-24 10:00", member=held)]
    assert [(s, r, k) for _, s, r, k, _ in of(replay(rules, records)[0], held)] == [
        ("started", "", 0), ("suppressed", "bounced", 1), ("ended", "suppressed", 0)]


def test_a_members_own_bounce_ends_its_run_at_the_next_due(tmp_path: Path) -> None:
    rules = rules_dir(tmp_path, follow(STEP_1, step("1d")))
    records = [profile("2026-11-01 00:00"), order("2026-11-24 10:00"), gone("2026-11-24 12:00", event="bounce")]
    assert of(replay(rules, records)[0], "m1")[2:] == [
        ("follow", "suppressed", "bounced", 2, "2026-11-25 10:00"),
        ("follow", "ended", "suppressed", 0, "2026-11-25 10:00")]
