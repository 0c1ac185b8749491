"""A/B variants and holdouts of §14: the exact hash formulas, split, and rule-key parsing."""

from __future__ import annotations

from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest

from kagoflow.core.errors import RuleError
from kagoflow.core.variants import (
    Measurement,
    ab_bucket,
    holdout_bucket,
    is_held_out,
    parse_measurement,
    variant_of,
)


def h(text: str) -> int:
    return int.from_bytes(sha256(text.encode()).digest()[:8], "big") % 100


def test_hashes_follow_the_spec_formulas() -> None:
    for member in ("m1", "m2", "会員-3"):
        assert ab_bucket(member, "cart-1h") == h(f"{member}|cart-1h|0")
        assert ab_bucket(member, "salt", 2) == h(f"{member}|salt|2")
        assert holdout_bucket(member, "cart-1h") == h(f"holdout|{member}|cart-1h")


def test_variant_is_a_below_split_else_b() -> None:
    members = [f"m{i}" for i in range(2000)]
    for member in members[:50]:
        bucket = ab_bucket(member, "r")
        assert variant_of(member, "r", bucket + 1) == "A"
        assert variant_of(member, "r", bucket) == "B"
    share = sum(variant_of(m, "r", 30) == "A" for m in members) / len(members)
    assert 0.25 < share < 0.35


def test_holdout_is_per_rule_and_zero_holds_nobody() -> None:
    members = [f"m{i}" for i in range(2000)]
    assert not any(is_held_out(m, "r", 0) for m in members)
    held = {m for m in members if is_held_out(m, "r", 10)}
    assert 0.07 < len(held) / len(members) < 0.13
    other = {m for m in members if is_held_out(m, "other", 10)}
    assert held != other
    member = members[0]
    assert is_held_out(member, "r", holdout_bucket(member, "r") + 1)
    assert not is_held_out(member, "r", holdout_bucket(member, "r")) or holdout_bucket(member, "r") == 0


def test_pick_template() -> None:
    single = Measurement(("cart",))
    assert single.pick("m1", "r") == ("cart", "")
    ab = Measurement(("a", "b"), split=100 - 1)
    template, variant = ab.pick("m1", "r")
    assert (template, variant) == (("a", "A") if ab_bucket("m1", "r") < 99 else ("b", "B"))


def test_parse_measurement(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    m = parse_measurement({"template": ["a", "b"], "split": 30, "holdout": 10}, file="r", templates_dir=tmp_path)
    assert m == Measurement(("a", "b"), 30, 10) and m.is_ab
    assert parse_measurement({}, file="r", templates_dir=None, default_template="x") == Measurement(("x",))


@pytest.mark.parametrize(("data", "key"), [
    ({"template": ["a"]}, "template"),
    ({"template": ["a", "b", "a"]}, "template"),
    ({"template": ["a", "a"]}, "template.1"),
    ({"template": ["a", "zz"]}, "template.1"),
    ({"template": "a", "split": 0}, "split"),
    ({"template": "a", "split": 100}, "split"),
    ({"template": "a", "holdout": 51}, "holdout"),
    ({"template": "a", "holdout": -1}, "holdout"),
    ({"template": "a", "holdout": True}, "holdout"),
])
def test_bad_measurement_keys(tmp_path: Path, data: dict[str, Any], key: str) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(RuleError) as info:
        parse_measurement(data, file="rules/r.yaml", templates_dir=tmp_path)
    assert info.value.key == key


def test_template_and_send_time_tests_exclude_each_other() -> None:
    with pytest.raises(RuleError) as info:
        parse_measurement({"template": ["a", "b"]}, file="r", templates_dir=None, ab_allowed=False)
    assert "not both" in info.value.problem
