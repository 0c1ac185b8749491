"""Switching a rule on/off from the console writes its file; a change that would not load is refused and
nothing is written; the worker's reloader applies a good directory and keeps the running rules on a bad one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from kagoflow.console import rules_admin
from kagoflow.core.errors import RuleError
from kagoflow.core.rules import RuleSet
from kagoflow.loading import load_ruleset
from kagoflow.settings import PROJECT_ROOT, Settings
from kagoflow.worker.rules_reload import RulesReloader


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    rules = tmp_path / "rules"
    shutil.copytree(PROJECT_ROOT / "rules", rules, ignore=shutil.ignore_patterns("demo"))
    return Settings(rules_dir=rules)


def test_disable_then_enable_writes_the_file_and_keeps_its_comments(settings: Settings) -> None:
    path = rules_admin.set_enabled(settings, "cart-1h", False)
    text = path.read_text(encoding="utf-8")
    assert "enabled: false" in text and "enabled: true" not in text
    assert text.startswith("# First reminder of a cart series")
    assert not load_ruleset(settings).by_id["cart-1h"].enabled
    rules, error = rules_admin.rule_files(settings)
    assert error is None and {r.rule_id: r.enabled for r in rules}["cart-1h"] is False
    rules_admin.set_enabled(settings, "cart-1h", True)
    assert load_ruleset(settings).by_id["cart-1h"].enabled


def test_a_rule_without_the_key_gets_it_appended(settings: Settings) -> None:
    path = settings.rules_dir / "price-drop.yaml"
    path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                            if not line.startswith("enabled:")))
    rules_admin.set_enabled(settings, "price-drop", False)
    assert path.read_text().rstrip().endswith("enabled: false")


def test_unknown_rule_or_a_directory_that_would_not_load_is_refused_and_nothing_written(settings: Settings) -> None:
    with pytest.raises(RuleError, match="no rule file with this id"):
        rules_admin.set_enabled(settings, "nope", False)
    bad = settings.rules_dir / "broken.yaml"
    bad.write_text("id: broken\nkind: abandonment\ntrigger: cart\nsend: {after: 1h}\ntemplate: cart\nfoo: 1\n")
    before = (settings.rules_dir / "cart-1h.yaml").read_text()
    with pytest.raises(RuleError, match=r"broken\.yaml"):
        rules_admin.set_enabled(settings, "cart-1h", False)
    assert (settings.rules_dir / "cart-1h.yaml").read_text() == before
    rules, error = rules_admin.rule_files(settings)
    assert error is not None and "broken.yaml" in error
    assert "cart-1h" in {r.rule_id for r in rules}


def test_reloader_applies_a_changed_directory_and_keeps_the_rules_when_it_is_bad(settings: Settings) -> None:
    applied: list[RuleSet] = []
    reloader = RulesReloader(settings.rules_dir, lambda: load_ruleset(settings), applied.append)
    assert not reloader.check()  # unchanged
    rules_admin.set_enabled(settings, "cart-1h", False)
    _touch_later(settings.rules_dir / "cart-1h.yaml")
    assert reloader.check() and not applied[-1].by_id["cart-1h"].enabled
    (settings.rules_dir / "bad.yaml").write_text("id: bad\nkind: nonsense\n")
    assert not reloader.check()
    assert len(applied) == 1 and reloader.last_error is not None and "bad.yaml" in reloader.last_error
    (settings.rules_dir / "bad.yaml").unlink()
    assert reloader.check() and len(applied) == 2 and reloader.last_error is None


def _touch_later(path: Path) -> None:
    """mtime granularity may hide a rewrite within the same tick: move it on explicitly."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
