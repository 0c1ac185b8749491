"""Date dues in the worker: beyond the horizon they stay out of the heap; the daily scan brings them in."""

from __future__ import annotations

from kagoflow.core.behaviour import MemberState, apply_member
from kagoflow.core.daterules import parse_date_rule
from kagoflow.core.engine import Engine
from kagoflow.core.rules import RuleSet
from kagoflow.worker.datescan import HORIZON_MS, DateScan
from tests.core.abandon_helpers import jst, profile

RULE = parse_date_rule({"id": "birthday", "kind": "date", "date": "birthday",
                        "send": {"days_before": 1, "at": "11:00"}, "template": "birthday"}, file="r")


def member(member_id: str, birthday: str) -> MemberState:
    state = MemberState(member_id)
    apply_member(state, profile("2026-01-01 00:00", member=member_id, birthday=birthday))
    return state


def test_far_dues_wait_for_the_daily_scan_which_schedules_only_the_days_members() -> None:
    engine = Engine(RuleSet(customer=[RULE], by_id={RULE.id: RULE}))
    scan = DateScan(engine)
    assert scan.active and scan.fields == ["birthday"]
    states = {m.member_id: m for m in (member("soon", "1990-03-11"), member("later", "1990-06-01"),
                                       member("leap", "2000-03-01"))}
    now = jst("2026-03-09 09:00")
    scan.set_now(now)
    assert engine.next_due(states["later"]) is None, "months away: not in the heap"
    for state in states.values():
        scan.index(0, state)
    scheduled: dict[str, int | None] = {}
    count = scan.schedule_due(0, now, states.__getitem__, lambda due, m: scheduled.__setitem__(m, due),
                              engine.next_due)
    # due the day before the birthday: soon is due tomorrow (10 March 11:00), leap on 28 Feb → already past
    assert count == 1 and scheduled == {"soon": jst("2026-03-10 11:00")}
    assert scan.schedule_due(0, now + 3_600_000, states.__getitem__, lambda due, m: None, engine.next_due) == 0, \
        "once per shop-local day"
    scan.set_now(jst("2026-05-30 12:00"))
    found = scan.schedule_due(0, jst("2026-05-30 12:00"), states.__getitem__,
                              lambda due, m: scheduled.__setitem__(m, due), engine.next_due)
    assert found == 1 and scheduled["later"] == jst("2026-05-31 11:00")
    assert jst("2026-05-31 11:00") - jst("2026-05-30 12:00") < HORIZON_MS


def test_no_date_rules_no_work() -> None:
    scan = DateScan(Engine(RuleSet()))
    assert not scan.active


def test_the_scan_runs_at_the_first_event_of_each_local_day_and_not_again_that_day() -> None:
    """Events every 7 minutes over three days (shop zone Asia/Tokyo): each local day is scanned exactly once,
    at its first event, however the events fall across UTC quarter hours."""
    engine = Engine(RuleSet(customer=[RULE], by_id={RULE.id: RULE}))
    scan = DateScan(engine)
    # birthday on 12 March: due 11 March 11:00, found by the scans of 10 March (tomorrow) and 11 March (today)
    state = member("m", "1990-03-12")
    scan.index(0, state)
    days: list[int] = []
    found_on: dict[int, list[str]] = {}
    now = jst("2026-03-09 23:30")
    while now < jst("2026-03-12 01:00"):
        before = scan.scanned.get(0)
        found = scan.due_members(0, now)
        day = scan.scanned[0]
        if day != before:
            days.append(day.day)
            found_on[day.day] = found
        else:
            assert found == []
        now += 7 * 60_000
    assert days == [9, 10, 11, 12]
    assert found_on == {9: [], 10: ["m"], 11: ["m"], 12: []}
