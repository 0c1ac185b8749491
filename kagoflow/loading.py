"""Loading the operator's configuration: rule files and the templates they name, validated together."""

from __future__ import annotations

from pathlib import Path

from kagoflow.core.rules import RuleSet, load_rules
from kagoflow.mail.templates import check_templates
from kagoflow.settings import Settings


def load_ruleset(settings: Settings, rules_dir: Path | None = None) -> RuleSet:
    """The rules of ``rules_dir`` (default: settings) with every template they name compiled.

    A bad rule file or template fails here, naming file, key or line — at load, never at send time.
    """
    ruleset = load_rules(rules_dir or settings.rules_dir, templates_dir=settings.templates_dir,
                         min_delay_seconds=settings.min_delay_seconds)
    check_templates(settings.templates_dir, ruleset.template_names())
    return ruleset
