"""Price rule files (SPEC §10): the example rules load, and every fault names file, key and value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kagoflow.core.errors import RuleError
from kagoflow.core.pricerules import PriceRule, parse_price_rule
from kagoflow.settings import PROJECT_ROOT


def price_rule(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "price-drop",
        "kind": "price_drop",
        "watch": ["cart", "favorite", "view"],
        "when": {"drop_yen": 500, "drop_percent": 10},
        "send": {"at": "10:00"},
        "template": "price_drop",
    }
    data.update(overrides)
    return data


def restock_rule(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "back-in-stock",
        "kind": "restock",
        "watch": ["cart", "favorite"],
        "when": {"restocked_at_least": 1},
        "send": {"at": "10:00"},
        "template": "restock",
    }
    data.update(overrides)
    return data


def test_example_rule_files_load() -> None:
    drop = parse_price_rule(yaml.safe_load((PROJECT_ROOT / "rules/price-drop.yaml").read_text()),
                            file="price-drop.yaml", templates_dir=PROJECT_ROOT / "templates")
    stock = parse_price_rule(yaml.safe_load((PROJECT_ROOT / "rules/back-in-stock.yaml").read_text()),
                             file="back-in-stock.yaml", templates_dir=PROJECT_ROOT / "templates")
    assert (drop.kind, drop.watch, drop.drop_yen, drop.drop_percent, drop.price_at_most) == (
        "price_drop", frozenset({"cart", "favorite", "view"}), 500.0, 10.0, None)
    assert (drop.send_at, drop.template, drop.enabled) == ((10, 0), "price_drop", True)
    assert (stock.kind, stock.watch, stock.restocked_at_least, stock.stock_at_most) == (
        "restock", frozenset({"cart", "favorite"}), 1, None)


def test_optional_fields() -> None:
    rule = parse_price_rule(
        price_rule(when={"price_at_most": 3000}, send={"immediately": True}, sender_name="ショップ",
                   enabled=False, products={"include": ["a", 123], "exclude": ["b"]}),
        file="r.yaml",
    )
    assert rule.immediately and rule.send_at is None
    assert (rule.price_at_most, rule.sender_name, rule.enabled) == (3000.0, "ショップ", False)
    assert rule.concerns("a") and rule.concerns("123") and not rule.concerns("b") and not rule.concerns("c")
    assert parse_price_rule(restock_rule(when={"stock_at_most": 3}), file="r.yaml").stock_at_most == 3
    assert "disabled" in rule.describe()


def test_describe_names_condition_and_send() -> None:
    line = parse_price_rule(price_rule(), file="r.yaml").describe()
    assert "500 yen" in line and "10 %" in line and "10:00" in line


@pytest.mark.parametrize(
    ("data", "key", "value"),
    [
        (price_rule(colour="red"), "colour", "red"),
        (price_rule(trigger="cart"), "trigger", "cart"),
        ({k: v for k, v in price_rule().items() if k != "template"}, "template", None),
        (price_rule(id="Price Drop"), "id", "Price Drop"),
        (price_rule(kind="abandonment"), "kind", "abandonment"),
        (price_rule(watch=[]), "watch", []),
        (price_rule(watch="cart"), "watch", "cart"),
        (price_rule(watch=["cart", "wishlist"]), "watch.1", "wishlist"),
        (price_rule(watch=["cart", "cart"]), "watch.1", "cart"),
        (price_rule(when={}), "when", {}),
        (price_rule(when={"restocked_at_least": 1}), "when.restocked_at_least", 1),
        (restock_rule(when={"price_at_most": 100}), "when.price_at_most", 100),
        (price_rule(when={"drop_yen": 500, "cheaper": 1}), "when.cheaper", 1),
        (price_rule(when={"price_at_most": 3000, "drop_yen": 500}), "when.drop_yen", 500),
        (price_rule(when={"price_at_most": 0}), "when.price_at_most", 0),
        (price_rule(when={"drop_yen": -5}), "when.drop_yen", -5),
        (price_rule(when={"drop_yen": "500"}), "when.drop_yen", "500"),
        (price_rule(when={"drop_percent": 0}), "when.drop_percent", 0),
        (price_rule(when={"drop_percent": 150}), "when.drop_percent", 150),
        (price_rule(when={"drop_percent": True}), "when.drop_percent", True),
        (restock_rule(when={"restocked_at_least": 0}), "when.restocked_at_least", 0),
        (restock_rule(when={"stock_at_most": 0}), "when.stock_at_most", 0),
        (restock_rule(when={"stock_at_most": 1.5}), "when.stock_at_most", 1.5),
        (restock_rule(when={"restocked_at_least": 1, "stock_at_most": 3}), "when.stock_at_most", 3),
        (price_rule(send={"at": "24:00"}), "send.at", "24:00"),
        (price_rule(send={"at": "9:00"}), "send.at", "9:00"),
        (price_rule(send={"at": "10:60"}), "send.at", "10:60"),
        (price_rule(send={"at": 600}), "send.at", 600),
        (price_rule(send={"immediately": False}), "send.immediately", False),
        (price_rule(send={"after": "1h"}), "send.after", "1h"),
        (price_rule(send={"at": "10:00", "immediately": True}), "send", {"at": "10:00", "immediately": True}),
        (price_rule(template=""), "template", ""),
        (price_rule(sender_name=""), "sender_name", ""),
        (price_rule(enabled="yes"), "enabled", "yes"),
        (price_rule(products={"only": ["a"]}), "products.only", ["a"]),
        (price_rule(products={"include": []}), "products.include", []),
    ],
)
def test_rule_errors_name_file_key_and_value(data: dict[str, Any], key: str, value: object) -> None:
    with pytest.raises(RuleError) as info:
        parse_price_rule(data, file="rules/bad.yaml")
    assert (info.value.file, info.value.key, info.value.value) == ("rules/bad.yaml", key, value)
    assert "rules/bad.yaml" in str(info.value) and key in str(info.value)


def test_unquoted_time_in_yaml_gets_a_helpful_error() -> None:
    data = yaml.safe_load("id: p\nkind: price_drop\nwatch: [cart]\nwhen: {price_at_most: 1}\n"
                          "send: {at: 10:00}\ntemplate: price_drop\n")
    with pytest.raises(RuleError, match="quoted") as info:
        parse_price_rule(data, file="p.yaml")
    assert info.value.key == "send.at"


def test_template_must_exist_when_templates_dir_given(tmp_path: Path) -> None:
    (tmp_path / "price_drop").mkdir()
    (tmp_path / "not_a_dir").write_text("")
    assert parse_price_rule(price_rule(), file="r.yaml", templates_dir=tmp_path).template == "price_drop"
    for name in ("restock", "not_a_dir"):
        with pytest.raises(RuleError) as info:
            parse_price_rule(price_rule(template=name), file="r.yaml", templates_dir=tmp_path)
        assert (info.value.key, info.value.value) == ("template", name)
    # Without a templates directory the name is not checked (e.g. the backtest).
    assert parse_price_rule(price_rule(template="restock"), file="r.yaml").template == "restock"


def test_rule_is_frozen_and_hashable() -> None:
    rule = parse_price_rule(price_rule(), file="r.yaml")
    assert isinstance(rule, PriceRule)
    with pytest.raises(AttributeError):
        rule.id = "x"  # type: ignore[misc]
    assert rule == parse_price_rule(price_rule(), file="r.yaml") and hash(rule)
