"""A/B variants and holdouts of SPEC §12/§14: deterministic hashes of member and rule, and their rule keys.

Both are pure functions of ids (never of time or chance), so the worker, a restarted worker and the backtest
put a member in the same arm; the holdout hash has its own ``holdout|`` prefix so it is independent of the
A/B hash (a rule with both does not hold out only one arm).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

from kagoflow.core.errors import RuleError

DEFAULT_SPLIT = 50
MAX_HOLDOUT = 50


def ab_bucket(member_id: str, rule_id: str, step: int = 0) -> int:
    """H of §12: 0..99 from sha256 of ``member|rule|step`` (step 0 for non-scenario rules)."""
    return int.from_bytes(sha256(f"{member_id}|{rule_id}|{step}".encode()).digest()[:8], "big") % 100


def variant_of(member_id: str, rule_id: str, split: int, step: int = 0) -> str:
    """``"A"`` when H < split, else ``"B"``."""
    return "A" if ab_bucket(member_id, rule_id, step) < split else "B"


def holdout_bucket(member_id: str, rule_id: str) -> int:
    return int.from_bytes(sha256(f"holdout|{member_id}|{rule_id}".encode()).digest()[:8], "big") % 100


def is_held_out(member_id: str, rule_id: str, holdout: int) -> bool:
    """Whether the member is in the rule's held-out group (``holdout`` percent, 0 = nobody)."""
    return holdout > 0 and holdout_bucket(member_id, rule_id) < holdout


@dataclass(frozen=True, slots=True)
class Measurement:
    """A rule's ``template`` (one, or two for A/B), ``split`` and ``holdout``."""

    templates: tuple[str, ...]
    split: int = DEFAULT_SPLIT
    holdout: int = 0

    @property
    def is_ab(self) -> bool:
        return len(self.templates) == 2

    def pick(self, member_id: str, rule_id: str, step: int = 0) -> tuple[str, str]:
        """(template, variant): the variant is ``""`` without an A/B test."""
        if len(self.templates) == 1:
            return self.templates[0], ""
        variant = variant_of(member_id, rule_id, self.split, step)
        return self.templates[0 if variant == "A" else 1], variant

    def describe(self, *, with_single: bool = True) -> str:
        parts = [f"template {self.templates[0]}" if len(self.templates) == 1 else
                 f"A/B templates {self.templates[0]} / {self.templates[1]} (A {self.split} %)"]
        if not with_single and len(self.templates) == 1:
            parts = []
        if self.holdout:
            parts.append(f"holdout {self.holdout} %")
        return "; ".join(parts)


def parse_templates(value: object, *, file: str, templates_dir: Path | None, key: str = "template") -> tuple[str, ...]:
    """A template name, or a list of exactly two (A/B)."""
    if isinstance(value, list):
        if len(value) != 2:
            raise RuleError(file, key, value, "an A/B test lists exactly two templates")
        names = tuple(_template(item, file=file, key=f"{key}.{i}", templates_dir=templates_dir)
                      for i, item in enumerate(value))
        if names[0] == names[1]:
            raise RuleError(file, f"{key}.1", value[1], "the two variants must differ")
        return names
    return (_template(value, file=file, key=key, templates_dir=templates_dir),)


def _template(value: object, *, file: str, key: str, templates_dir: Path | None) -> str:
    if not isinstance(value, str) or not value.strip() or any(c in value for c in "/\\") or value[0] == ".":
        raise RuleError(file, key, value, "must be a template name")
    if templates_dir is not None and not (templates_dir / value).is_dir():
        raise RuleError(file, key, value, f"unknown template (no directory {templates_dir / value})")
    return value


def parse_measurement(data: Mapping[str, Any], *, file: str, templates_dir: Path | None,
                      default_template: str | None = None, ab_allowed: bool = True) -> Measurement:
    """``template`` (+ ``split``) and ``holdout`` of a rule file. ``split`` needs two templates unless the
    rule tests send times instead (``ab_allowed=False`` then refuses a template pair)."""
    raw = data.get("template", default_template)
    if raw is None:
        raise RuleError(file, "template", None, "missing required key")
    templates = parse_templates(raw, file=file, templates_dir=templates_dir)
    if len(templates) == 2 and not ab_allowed:
        raise RuleError(file, "template", raw, "a rule may test templates or send times, not both")
    split = DEFAULT_SPLIT
    if "split" in data:
        split = data["split"]
        if not isinstance(split, int) or isinstance(split, bool) or not 1 <= split <= 99:
            raise RuleError(file, "split", split, "must be a whole percentage 1..99")
    holdout = 0
    if "holdout" in data:
        holdout = data["holdout"]
        if not isinstance(holdout, int) or isinstance(holdout, bool) or not 0 <= holdout <= MAX_HOLDOUT:
            raise RuleError(file, "holdout", holdout, f"must be a whole percentage 0..{MAX_HOLDOUT}")
    return Measurement(templates, split, holdout)
