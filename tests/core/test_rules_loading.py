"""Rule directory loading (SPEC §10): every kind of bad input names file, key and value; describe()."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kagoflow.core.caps import CapLimits
from kagoflow.core.errors import RuleError
from kagoflow.core.rules import load_rules
from kagoflow.settings import PROJECT_ROOT

GOOD: dict[str, Any] = {"id": "cart-1h", "kind": "abandonment", "trigger": "cart", "send": {"after": "1h"}}


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def rule_text(**changes: Any) -> str:
    data = {**GOOD, **changes}
    return yaml.safe_dump({k: v for k, v in data.items() if v is not None}, allow_unicode=True)


def load_error(tmp_path: Path, text: str, **kwargs: Any) -> RuleError:
    path = write(tmp_path, "rule.yaml", text)
    with pytest.raises(RuleError) as info:
        load_rules(tmp_path, **kwargs)
    assert info.value.file == str(path)
    assert str(path) in str(info.value)
    return info.value


def test_example_rules_directory_loads() -> None:
    rules = load_rules(PROJECT_ROOT / "rules")
    assert rules.shop.timezone.key == "Asia/Tokyo"
    assert rules.shop.caps == CapLimits(day=1, week=7, month=10)
    ids = {r.id for r in rules.abandonment}
    assert {"cart-1h", "cart-72h", "cart-166h"} <= ids
    assert all(r.after_ms is None or r.after_ms <= 12 * 3600_000 for r in rules.abandonment)
    assert {"follow", "salt-sample"} <= {r.id for r in rules.scenarios}
    # one line per rule, and one more per scenario step
    assert len(rules.describe()) == len(rules.by_id) + sum(len(s.steps) for s in rules.scenarios)


def test_defaults_without_shop_file_and_optional_keys(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", rule_text())
    rules = load_rules(tmp_path)
    (rule,) = rules.abandonment
    assert rules.shop.timezone.key == "Asia/Tokyo" and rules.shop.caps.unlimited
    assert (rule.clock, rule.include, rule.template, rule.enabled, rule.after_ms) == (
        "action",
        None,
        "cart",
        True,
        3600_000,
    )
    assert rules.by_id == {"cart-1h": rule}


def test_times_of_day_and_skus_parse_as_strings_unquoted(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.yaml",
        "id: a\nkind: abandonment\ntrigger: view\nsend: {days: 1, at: 10:00}\n"
        "products: {include: [0123, 456]}\n",
    )
    (rule,) = load_rules(tmp_path).abandonment
    assert rule.at == (10, 0) and rule.include == frozenset({"0123", "456"})


@pytest.mark.parametrize(
    ("changes", "key", "value"),
    [
        ({"colour": "red"}, "colour", "red"),
        ({"id": "Cart_1"}, "id", "Cart_1"),
        ({"trigger": "wishlist"}, "trigger", "wishlist"),
        ({"clock": "ordered"}, "clock", "ordered"),
        ({"send": {"after": "10m"}}, "send.after", "10m"),
        ({"send": {"after": "12h1m"}}, "send.after", "12h1m"),
        ({"send": {"after": "90s"}}, "send.after", "90s"),
        ({"send": {"after": 60}}, "send.after", 60),
        ({"send": {"after": "1h", "at": "09:00"}}, "send.at", "09:00"),
        ({"send": {"days": 0, "at": "09:00"}}, "send.days", 0),
        ({"send": {"days": 2, "at": "24:00"}}, "send.at", "24:00"),
        ({"send": {"days": 2}}, "send.at", None),
        ({"send": {"in": "1h"}}, "send.in", "1h"),
        ({"products": "some"}, "products", "some"),
        ({"products": {"include": []}}, "products.include", []),
        ({"products": {"only": ["A"]}}, "products.only", ["A"]),
        ({"products": {"include": ["A"], "exclude": ["A"]}}, "products.exclude", ["A"]),
        ({"filters": {"age": 3}}, "filters.age", 3),
        ({"filters": {"devices": ["tablet"]}}, "filters.devices.0", "tablet"),
        ({"filters": {"devices": []}}, "filters.devices", []),
        ({"filters": {"purchase_count": {"min": 3, "max": 1}}}, "filters.purchase_count.max", 1),
        ({"filters": {"purchase_count": {"min": -1}}}, "filters.purchase_count.min", -1),
        ({"filters": {"purchase_count": {"least": 1}}}, "filters.purchase_count.least", 1),
        ({"filters": {"min_cart_amount": -5}}, "filters.min_cart_amount", -5),
        ({"filters": {"min_cart_amount": "1000"}}, "filters.min_cart_amount", "1000"),
        ({"filters": {"product_purchase_count": {"min": 1}}}, "filters.product_purchase_count", {"min": 1}),
        (
            {"filters": {"product_purchase_count": {"products": ["A"], "min": 1, "max": 0}}},
            "filters.product_purchase_count.max",
            0,
        ),
        ({"enabled": "yes please"}, "enabled", "yes please"),
        ({"coupon": ""}, "coupon", ""),
        ({"template": "../etc"}, "template", "../etc"),
        ({"kind": "birthday"}, "kind", "birthday"),
        ({"send": None}, "send", None),
    ],
)
def test_bad_rule_values_name_file_key_and_value(
    tmp_path: Path, changes: dict[str, Any], key: str, value: object
) -> None:
    error = load_error(tmp_path, rule_text(**changes))
    assert (error.key, error.value) == (key, value)
    assert key in str(error)


def test_min_delay_floor_can_be_lowered_for_demos(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", rule_text(send={"after": "1m"}))
    with pytest.raises(RuleError, match="at least 15m"):
        load_rules(tmp_path)
    (rule,) = load_rules(tmp_path, min_delay_seconds=60).abandonment
    assert rule.after_ms == 60_000


def test_unknown_template_when_templates_dir_is_given(tmp_path: Path) -> None:
    rules_dir, templates = tmp_path / "rules", tmp_path / "templates"
    rules_dir.mkdir()
    (templates / "cart").mkdir(parents=True)
    write(rules_dir, "a.yaml", rule_text(template="cart"))
    assert load_rules(rules_dir, templates_dir=templates).abandonment[0].template == "cart"
    (rules_dir / "a.yaml").unlink()
    error = load_error(rules_dir, rule_text(template="fancy"), templates_dir=templates)
    assert (error.key, error.value) == ("template", "fancy")


def test_duplicate_ids_name_both_files(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", rule_text())
    second = write(tmp_path, "b.yaml", rule_text(trigger="view"))
    with pytest.raises(RuleError) as info:
        load_rules(tmp_path)
    assert (info.value.file, info.value.key, info.value.value) == (str(second), "id", "cart-1h")
    assert str(first) in str(info.value)


def test_missing_required_key(tmp_path: Path) -> None:
    error = load_error(tmp_path, rule_text(trigger=None))
    assert (error.key, error.problem) == ("trigger", "missing required key")


def test_invalid_yaml_and_non_mapping_files(tmp_path: Path) -> None:
    assert "line 2" in load_error(tmp_path, "id: a\n  bad: [\n").problem
    assert load_error(tmp_path, "- a\n- b\n").problem.startswith("a rule file must be a mapping")
    assert load_error(tmp_path, "").problem == "empty rule file"


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("timezone: Mars/Olympus\n", "timezone", "Mars/Olympus"),
        ("caps: {day: -1}\n", "caps.day", -1),
        ("caps: {year: 3}\n", "caps.year", 3),
        ("caps: 3\n", "caps", 3),
        ("currency: JPY\n", "currency", "JPY"),
    ],
)
def test_bad_shop_file(tmp_path: Path, text: str, key: str, value: object) -> None:
    shop = write(tmp_path, "shop.yaml", text)
    with pytest.raises(RuleError) as info:
        load_rules(tmp_path)
    assert (info.value.file, info.value.key, info.value.value) == (str(shop), key, value)


def test_shop_file(tmp_path: Path) -> None:
    write(tmp_path, "shop.yaml", "timezone: Europe/Paris\ncaps: {day: 2, month: 5}\nsender_name: Boutique\n")
    shop = load_rules(tmp_path).shop
    assert (shop.timezone.key, shop.caps, shop.sender_name) == (
        "Europe/Paris",
        CapLimits(day=2, month=5),
        "Boutique",
    )


def test_missing_directory() -> None:
    with pytest.raises(RuleError, match="no such rules directory"):
        load_rules(Path("/nonexistent/rules"))


def test_describe_one_line_per_rule(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.yaml",
        rule_text(
            clock="last_access", coupon="CART10", template="cart", filters={"devices": ["smartphone", "pc"]}
        ),
    )
    write(
        tmp_path,
        "b.yaml",
        rule_text(
            id="fav-2d",
            trigger="favorite",
            send={"days": 2, "at": "09:30"},
            products={"include": ["B", "A"], "exclude": ["C"]},
            enabled=False,
            filters={
                "purchase_count": {"min": 1, "max": 3},
                "min_cart_amount": 1000,
                "product_purchase_count": {"products": ["X"], "max": 0},
            },
            sender_name="ショップ",
        ),
    )
    assert load_rules(tmp_path).describe() == [
        "cart-1h: abandonment on cart, all products, 1h after last access; filters: devices=pc,smartphone; "
        "template cart; coupon CART10",
        "fav-2d: abandonment on favorite, products A,B except C, 2 days after the action at 09:30; "
        "filters: purchase_count=1..3 min_cart_amount=1000 product_purchase_count(X)=..0; template favorite; "
        "sender ショップ (disabled)",
    ]


def test_price_rules_are_dispatched_to_the_price_parser(tmp_path: Path) -> None:
    write(
        tmp_path,
        "p.yaml",
        "id: drop\nkind: price_drop\nwatch: [cart]\nwhen: {price_at_most: 3000}\n"
        "send: {at: '10:00'}\ntemplate: price_drop\n",
    )
    rules = load_rules(tmp_path)
    assert [r.id for r in rules.price] == ["drop"] and rules.abandonment == []
    write(
        tmp_path,
        "q.yaml",
        "id: drop\nkind: restock\nwatch: [cart]\nwhen: {restocked_at_least: 1}\n"
        "send: {at: '10:00'}\ntemplate: restock\n",
    )
    with pytest.raises(RuleError, match="duplicate"):
        load_rules(tmp_path)


# -- hostile or careless rule files (issue 11) ---------------------------------------------------------
def test_a_file_over_one_megabyte_is_refused(tmp_path: Path) -> None:
    error = load_error(tmp_path, rule_text() + "# " + "x" * 1_000_000 + "\n")
    assert "too large" in str(error)


def test_a_key_given_twice_is_a_load_error_naming_the_key_and_both_lines(tmp_path: Path) -> None:
    error = load_error(tmp_path, rule_text(template="cart") + "template: view\n")
    assert "duplicate key 'template'" in str(error) and "line" in str(error)


def test_billion_laughs_fails_fast_with_a_short_message(tmp_path: Path) -> None:
    import time

    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    text = rule_text() + "x-laughs:\n" + "".join(f"  {line}\n" for line in lines) + "coupon: *i\n"
    started = time.monotonic()
    error = load_error(tmp_path, text)
    assert time.monotonic() - started < 2
    assert "expands to more than" in str(error) and len(str(error)) < 500


def test_an_error_message_shows_a_long_value_truncated(tmp_path: Path) -> None:
    error = load_error(tmp_path, rule_text(trigger=["cart"] * 5000))
    assert "trigger" in str(error) and len(str(error)) < 500


def test_deep_nesting_is_a_load_error_not_a_crash(tmp_path: Path) -> None:
    error = load_error(tmp_path, rule_text() + "filters: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested deeper than" in str(error)


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("coupon", "SAVE10\nBcc: victim@example.com", "single line"),
        ("coupon", "SAVE\u2028TEN", "single line"),
        ("coupon", "C" * 65, "too long"),
        ("sender_name", "Shop\r\nX-Injected: 1", "single line"),
        ("sender_name", "店" * 101, "too long"),
    ],
)
def test_coupon_and_sender_name_are_one_bounded_line(tmp_path: Path, key: str, value: str, problem: str) -> None:
    error = load_error(tmp_path, rule_text(**{key: value}))
    assert error.key == key and problem in str(error)


def test_shop_sender_name_is_one_bounded_line(tmp_path: Path) -> None:
    write(tmp_path, "shop.yaml", "sender_name: \"Shop\\nBcc: x@example.com\"\n")
    with pytest.raises(RuleError) as info:
        load_rules(tmp_path)
    assert info.value.key == "sender_name" and "single line" in str(info.value)


def test_only_keeps_the_chosen_rules_of_every_kind_switched_on() -> None:
    rules = load_rules(PROJECT_ROOT / "rules")
    chosen = {"cart-1h", "follow", "winback-60", "price-drop"}
    sub = rules.only(chosen)
    assert set(sub.by_id) == chosen
    assert [r.id for r in sub.abandonment] == ["cart-1h"] and [r.id for r in sub.scenarios] == ["follow"]
    assert [r.id for r in sub.customer] == ["winback-60"] and [r.id for r in sub.price] == ["price-drop"]
    assert all(rule.enabled for rule in sub.by_id.values())
