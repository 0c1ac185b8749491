"""``kind: scenario`` files are validated like the other kinds: a bad file names file, key and value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kagoflow.core.errors import RuleError
from kagoflow.core.rules import load_rules
from kagoflow.core.scenariorule import parse_scenario_rule
from tests.core.scenario_helpers import scenario

STEP = {"send": {"anchor": "previous", "after": "1d"}, "template": "t"}


def fault(data: dict[str, Any], **kwargs: Any) -> RuleError:
    with pytest.raises(RuleError) as info:
        parse_scenario_rule(data, file="s.yaml", **kwargs)
    return info.value


@pytest.mark.parametrize(("overrides", "key", "needle"), [
    ({"steps": [STEP] * 8}, "steps", "at most 7"),
    ({"steps": []}, "steps", "1 to 7"),
    ({"steps": [{"send": {"anchor": "ordered", "after": "1d"}, "template": "t",
                 "repeat": {"while": "unopened", "times": 2}}]}, "steps.0.repeat", "anchored on previous"),
    ({"steps": [{**STEP, "repeat": {"while": "unopened", "times": 11}}]}, "steps.0.repeat.times", "2..10"),
    ({"steps": [{**STEP, "repeat": {"while": "unopened", "times": 1}}]}, "steps.0.repeat.times", "2..10"),
    ({"steps": [{**STEP, "repeat": {"while": "sometimes", "times": 2}}]}, "steps.0.repeat.while", "one of"),
    ({"steps": [{**STEP, "repeat": {"while": "unopened", "times": 2, "then": "stop"}}]},
     "steps.0.repeat.then", "next or end"),
    ({"steps": [{**STEP, "repeat": {"while": "unopened", "times": 2, "products": ["x"]}}]},
     "steps.0.repeat.products", "not_purchased"),
    ({"steps": [{**STEP, "repeat": {"while": "coupon_unused", "times": 2}}]}, "steps.0.repeat.while", "coupon"),
    ({"steps": [{**STEP, "template": ["a", "b"], "split": 100}]}, "steps.0.split", "1..99"),
    ({"steps": [{**STEP, "template": ["a", "b"], "split": 0}]}, "steps.0.split", "1..99"),
    ({"steps": [{**STEP, "split": 30}]}, "steps.0.split", "two templates"),
    ({"steps": [{**STEP, "template": ["a", "b", "c"]}]}, "steps.0.template", "two"),
    ({"steps": [{"send": {"anchor": "paid", "after": "1d"}, "template": "t"}]}, "steps.0.send.anchor", "ordered"),
    ({"steps": [{"send": {"anchor": "previous", "after": "91d"}, "template": "t"}]}, "steps.0.send.after", "90d"),
    ({"steps": [{"send": {"anchor": "previous", "after": "10s"}, "template": "t"}]}, "steps.0.send.after", "demos"),
    ({"steps": [{"send": {"anchor": "previous", "days": 366, "at": "10:00"}, "template": "t"}]},
     "steps.0.send.days", "0..365"),
    ({"steps": [{"send": {"anchor": "previous", "days": 1, "at": "25:00"}, "template": "t"}]},
     "steps.0.send.at", "HH:MM"),
    ({"steps": [{"send": {"anchor": "previous", "days": 1}, "template": "t"}]}, "steps.0.send.at", "missing"),
    ({"steps": [{**STEP, "colour": "red"}]}, "steps.0.colour", "unknown key"),
    ({"late_after": "12h"}, "late_after", "1d to 365d"),
    ({"anchor_wait": "366d"}, "anchor_wait", "1d to 365d"),
    ({"priority": "high"}, "priority", "whole number"),
    ({"start": {"products": {"include": ["x"]}}}, "start.status", "missing"),
    ({"start": {"status": "shipped"}}, "start.status", "list"),
    ({"start": {"status": ["shipped"], "min_amount": -1}}, "start.min_amount", ">= 0"),
    ({"end": {"purchased": "some"}}, "end.purchased", "any"),
    ({"end": {"state": ["x"]}}, "end.state", "unknown key"),
    ({"id": "Salt"}, "id", "[a-z0-9-]"),
    ({"colour": "red"}, "colour", "unknown key"),
])
def test_bad_values_name_key_and_value(overrides: dict[str, Any], key: str, needle: str) -> None:
    error = fault(scenario("s", **overrides))
    assert error.file == "s.yaml" and error.key == key and needle in error.problem, error


def test_unknown_template_and_seconds_in_demo_mode(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    error = fault(scenario("s", steps=[{**STEP, "template": ["t", "nope"]}]), templates_dir=tmp_path)
    assert error.key == "steps.0.template" and error.value == "nope" and "unknown template" in error.problem
    demo = parse_scenario_rule(scenario("s", steps=[{"send": {"anchor": "previous", "after": "10s"},
                                                     "template": "t"}]), file="s.yaml", min_delay_seconds=5)
    assert demo.steps[0].after_ms == 10_000


def test_rules_check_describes_each_step(tmp_path: Path) -> None:
    data = scenario("salt-sample", priority=10, start={"status": ["shipped"], "products": {"include": ["salt-sample"]}},
                    end={"purchased": {"include": ["salt-set"]}}, coupon="SALT10", steps=[
                        {"send": {"anchor": "shipped", "days": 5, "at": "10:00"}, "template": "salt-1"},
                        {"send": {"anchor": "previous", "days": 7, "at": "10:00"}, "template": ["salt-2a", "salt-2b"],
                         "split": 30, "repeat": {"while": "unopened", "times": 2, "then": "end"}},
                    ])
    (tmp_path / "salt.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    lines = load_rules(tmp_path).describe()
    assert len(lines) == 3
    assert lines[0].startswith("salt-sample: scenario, priority 10, starts on an order with status shipped")
    assert lines[1] == "  step 1: 5 day(s) after shipped at 10:00: salt-1"
    assert lines[2] == ("  step 2: 7 day(s) after previous at 10:00: A/B salt-2a 30% / salt-2b 70%; repeated while "
                        "unopened, up to 2 sends, then end")
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(scenario("salt-sample")), encoding="utf-8")
    with pytest.raises(RuleError, match="duplicate rule id"):
        load_rules(tmp_path)
