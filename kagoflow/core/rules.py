"""Loading a rules directory (SPEC §10): ``shop.yaml`` plus one YAML file per rule.

Every fault is a ``RuleError`` naming file, dotted key and value; the first one found stops the load, so a
worker never starts on a half-valid rule set. Files are read in name order, which is also the order rules
are evaluated in when several are due at the same moment.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from kagoflow.core.abandonrule import AbandonmentRule, parse_abandonment_rule
from kagoflow.core.caps import CapLimits
from kagoflow.core.coupons import CouponSpec, pool_path, read_pool
from kagoflow.core.daterules import CustomerRule, parse_date_rule, parse_inactive_rule
from kagoflow.core.errors import RuleError
from kagoflow.core.memberfilters import SHOP_SEGMENT_KEYS, describe_segments, parse_segment_config
from kagoflow.core.scenariorule import ScenarioRule, parse_scenario_rule
from kagoflow.core.segments import SegmentConfig
from kagoflow.core.shoptime import DEFAULT_TZ

__all__ = ["AbandonmentRule", "PriceRuleLike", "RuleSet", "ShopConfig", "load_rules", "parse_shop"]

SHOP_FILES = ("shop.yaml", "shop.yml")
_SHOP_KEYS = ("timezone", "caps", "sender_name", *SHOP_SEGMENT_KEYS)
_KINDS = ("abandonment", "price_drop", "restock", "scenario", "date", "inactive")


class PriceRuleLike(Protocol):
    """What the core needs of ``kagoflow.core.pricerules.PriceRule``."""

    @property
    def id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def enabled(self) -> bool: ...
    @property
    def template(self) -> str: ...
    def describe(self) -> str: ...


@dataclass(frozen=True, slots=True)
class ShopConfig:
    timezone: ZoneInfo = DEFAULT_TZ
    caps: CapLimits = field(default_factory=CapLimits)
    sender_name: str | None = None
    """Default sender name of rules that set none (else the settings' ``mail_sender_name``)."""
    segments: SegmentConfig = field(default_factory=SegmentConfig)
    """CPM / RFM thresholds, cancelled order statuses, attribution days (SPEC §13/§14)."""

    @property
    def cancelled_statuses(self) -> frozenset[str]:
        return self.segments.cancelled_statuses

    def describe(self) -> str:
        caps = ", ".join(
            f"{name} {limit}" for name, limit in (("day", self.caps.day), ("week", self.caps.week),
                                                  ("month", self.caps.month)) if limit is not None
        )
        return f"shop: timezone {self.timezone.key}; caps {caps or 'none'}" + (
            f"; sender {self.sender_name}" if self.sender_name else ""
        ) + "; " + describe_segments(self.segments)


@dataclass(frozen=True)
class RuleSet:
    shop: ShopConfig = field(default_factory=ShopConfig)
    abandonment: list[AbandonmentRule] = field(default_factory=list)
    price: list[PriceRuleLike] = field(default_factory=list)
    by_id: dict[str, Any] = field(default_factory=dict)
    scenarios: list[ScenarioRule] = field(default_factory=list)
    customer: list[CustomerRule] = field(default_factory=list)
    """``date`` and ``inactive`` rules (SPEC §13)."""
    coupon_pools: dict[str, list[str]] = field(default_factory=dict)
    """Pool name → its codes in file order, for every pool a rule names (``coupons/<pool>.txt``)."""

    def template_names(self) -> set[str]:
        """Every template a rule names (each step's, both of an A/B pair)."""
        names = {rule.template for rule in self.by_id.values()}
        for scenario in self.scenarios:
            names.update(name for step in scenario.steps for name in step.templates)
        for rule in self.by_id.values():
            measurement = getattr(rule, "measurement", None)
            if measurement is not None:
                names.update(measurement.templates)
        return names

    def only(self, ids: set[str]) -> RuleSet:
        """The rules ``ids`` alone, each switched on, of every kind (a backtest of chosen rules; it is how an
        operator tries a disabled rule)."""

        def chosen(rules: list[Any]) -> list[Any]:
            return [rule if rule.enabled else replace(rule, enabled=True) for rule in rules if rule.id in ids]

        abandonment, price = chosen(self.abandonment), chosen(self.price)
        scenarios, customer = chosen(self.scenarios), chosen(self.customer)
        by_id = {rule.id: rule for rule in [*abandonment, *price, *scenarios, *customer]}
        return replace(self, abandonment=abandonment, price=price, scenarios=scenarios, customer=customer,
                       by_id={rid: by_id[rid] for rid in self.by_id if rid in by_id})

    def describe(self) -> list[str]:
        """One human line per rule (a scenario: one more per step), in file-name order."""
        return [line for rule in self.by_id.values() for line in rule.describe().split("\n")]


MAX_FILE_BYTES = 1_000_000
"""Rule files are hand-written and small; anything larger is a mistake (or an attack on the loader)."""
MAX_DEPTH = 32
"""Deepest nesting of mappings / lists a rule file may have (the real ones use 3)."""
MAX_VALUES = 20_000
"""Values a rule file may have once its aliases are expanded: the "billion laughs" (nine aliases of nine
aliases of ...) stays a few hundred bytes of YAML but expands to billions of values — which the rule
parsers, and formatting one value for an error message, would walk."""
MAX_TEXT = {"coupon": 64, "sender_name": 100}
"""Keys of any rule (and ``shop.yaml``) that end up in a mail: one line of at most this many characters."""
_NOT_ONE_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class _RuleLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 numbers: ``10:00`` stays a string (YAML 1.1 reads it as the base-60
    integer 600) and an unquoted SKU like ``0123`` stays a string (not octal 83); a key given twice in one
    mapping is an error (YAML says keys are unique; PyYAML silently keeps the last); nesting deeper than
    ``MAX_DEPTH`` and documents expanding to more than ``MAX_VALUES`` values are errors."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        if node is not None:
            _expanded_size(node, {}, 0)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                line = first.setdefault(key, key_node.start_mark.line)
            except TypeError:  # unhashable: the base class reports it
                continue
            if line != key_node.start_mark.line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_short(key)} (first on line {line + 1})", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, sizes: dict[int, int], depth: int) -> int:
    """Values under ``node`` with aliases expanded (an aliased node is composed once and shared, so each is
    counted once and its count reused); raises when it passes ``MAX_VALUES`` or ``MAX_DEPTH``."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    if depth > MAX_DEPTH:
        raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels (through aliases)",
                                          node.start_mark)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, sizes, depth + 1) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes, depth + 1) + _expanded_size(v, sizes, depth + 1) for k, v in node.value)
    if size > MAX_VALUES:
        raise yaml.composer.ComposerError(
            None, None, f"expands to more than {MAX_VALUES} values (aliases)", node.start_mark
        )
    sizes[id(node)] = size
    return size


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_RuleLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _NUMBER_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RuleLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"),
                                  list("-+0123456789"))
_RuleLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)


def read_yaml(path: Path) -> Any:
    """The file's YAML, or a ``RuleError``: unreadable, over ``MAX_FILE_BYTES``, not UTF-8, invalid YAML
    (with the line), a duplicate key, too deep, too many values, a text key that is not one short line."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise RuleError(str(path), "", str(path), f"cannot read: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise RuleError(str(path), "", str(path), f"file too large (over {MAX_FILE_BYTES:,} bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RuleError(str(path), "", str(path), "not UTF-8 text") from None
    try:
        data = yaml.load(text, Loader=_RuleLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise RuleError(str(path), "", None, f"invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if isinstance(data, Mapping):
        for key, limit in MAX_TEXT.items():
            _check_line(data.get(key), key=key, limit=limit, file=str(path))
    return data


def _check_line(value: object, *, key: str, limit: int, file: str) -> None:
    """Mail-bound text (a coupon code, a sender name) must be one line of bounded length: a line break
    would reach a header or a code the shop validates, and a novel would reach the inbox."""
    if not isinstance(value, str):
        return  # absent, or the rule parsers report the wrong type
    if _NOT_ONE_LINE.search(value):
        raise RuleError(file, key, value, "must be a single line (no line breaks or control characters)")
    if len(value) > limit:
        raise RuleError(file, key, value, f"too long ({len(value)} characters; at most {limit})")


def load_rules(dir: Path, *, templates_dir: Path | None = None, min_delay_seconds: int = 900) -> RuleSet:
    """Read ``shop.yaml`` (defaults when absent) and every other ``*.yaml`` / ``*.yml`` file as one rule."""
    if not dir.is_dir():
        raise RuleError(str(dir), "", str(dir), "no such rules directory")
    shop = ShopConfig()
    rule_files: list[Path] = []
    for path in sorted(dir.iterdir()):
        if path.name.startswith(".") or path.suffix not in (".yaml", ".yml") or not path.is_file():
            continue
        if path.name in SHOP_FILES:
            shop = parse_shop(read_yaml(path), file=str(path))
        else:
            rule_files.append(path)
    abandonment: list[AbandonmentRule] = []
    price: list[PriceRuleLike] = []
    scenarios: list[ScenarioRule] = []
    customer_rules: list[CustomerRule] = []
    by_id: dict[str, Any] = {}
    files: dict[str, str] = {}
    for path in rule_files:
        file = str(path)
        data = read_yaml(path)
        if data is None:
            raise RuleError(file, "", None, "empty rule file")
        if not isinstance(data, Mapping):
            raise RuleError(file, "", data, "a rule file must be a mapping of keys")
        kind = data.get("kind")
        rule: Any
        if kind == "abandonment":
            rule = parse_abandonment_rule(data, file=file, templates_dir=templates_dir,
                                          min_delay_seconds=min_delay_seconds, rules_dir=dir)
            abandonment.append(rule)
        elif kind in ("price_drop", "restock"):
            rule = _parse_price(data, file=file, templates_dir=templates_dir, rules_dir=dir)
            price.append(rule)
        elif kind == "date":
            rule = parse_date_rule(data, file=file, templates_dir=templates_dir, rules_dir=dir)
            customer_rules.append(rule)
        elif kind == "inactive":
            rule = parse_inactive_rule(data, file=file, templates_dir=templates_dir, rules_dir=dir,
                                       min_delay_seconds=min_delay_seconds)
            customer_rules.append(rule)
        elif kind == "scenario":
            rule = parse_scenario_rule(data, file=file, templates_dir=templates_dir,
                                       min_delay_seconds=min_delay_seconds, rules_dir=dir)
            scenarios.append(rule)
        else:
            raise RuleError(file, "kind", kind, f"unknown kind (use {', '.join(_KINDS)})")
        if rule.id in by_id:
            raise RuleError(file, "id", rule.id, f"duplicate rule id (also in {files[rule.id]})")
        by_id[rule.id] = rule
        files[rule.id] = file
    pools: dict[str, list[str]] = {}
    for rule in by_id.values():
        spec: CouponSpec | None = getattr(rule, "coupon", None)
        if isinstance(spec, CouponSpec) and spec.form == "pool" and spec.value not in pools:
            pools[spec.value] = read_pool(pool_path(dir, spec.value), file=rule.file)
    return RuleSet(shop=shop, abandonment=abandonment, price=price, by_id=by_id, scenarios=scenarios,
                   customer=customer_rules, coupon_pools=pools)


def load_shop(dir: Path) -> ShopConfig:
    """Only the ``shop.yaml`` of a rules directory (defaults when it or the directory is absent)."""
    for name in SHOP_FILES:
        path = dir / name
        if path.is_file():
            return parse_shop(read_yaml(path), file=str(path))
    return ShopConfig()


def _parse_price(data: Mapping[str, Any], *, file: str, templates_dir: Path | None,
                 rules_dir: Path | None = None) -> PriceRuleLike:
    try:
        from kagoflow.core.pricerules import parse_price_rule
    except ImportError:  # pragma: no cover - only while the price module is being written
        raise RuleError(file, "kind", data.get("kind"), "price rules are not available yet") from None
    rule: PriceRuleLike = parse_price_rule(data, file=file, templates_dir=templates_dir, rules_dir=rules_dir)
    return rule


def parse_shop(data: object, *, file: str) -> ShopConfig:
    if data is None:
        return ShopConfig()
    if not isinstance(data, Mapping):
        raise RuleError(file, "", data, "shop.yaml must be a mapping of keys")
    for key in data:
        if key not in _SHOP_KEYS:
            raise RuleError(file, str(key), data[key], f"unknown key (allowed: {', '.join(_SHOP_KEYS)})")
    tz = DEFAULT_TZ
    if "timezone" in data:
        name = data["timezone"]
        try:
            if not isinstance(name, str) or not name:
                raise ValueError(name)
            tz = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise RuleError(file, "timezone", name, "unknown time zone (e.g. Asia/Tokyo)") from None
    caps = CapLimits()
    if "caps" in data and data["caps"] is not None:
        raw = data["caps"]
        if not isinstance(raw, Mapping):
            raise RuleError(file, "caps", raw, "must be {day: N, week: N, month: N} (each optional)")
        limits: dict[str, int] = {}
        for key, limit in raw.items():
            if key not in ("day", "week", "month"):
                raise RuleError(file, f"caps.{key}", limit, "unknown key (allowed: day, week, month)")
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
                raise RuleError(file, f"caps.{key}", limit, "must be a whole number of mails >= 0")
            limits[key] = limit
        caps = CapLimits(**limits)
    sender = data.get("sender_name")
    if sender is not None and (not isinstance(sender, str) or not sender.strip()):
        raise RuleError(file, "sender_name", sender, "must be a non-empty string")
    return ShopConfig(timezone=tz, caps=caps, sender_name=sender, segments=parse_segment_config(data, file=file))

