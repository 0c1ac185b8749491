"""Rules page: list the rule files and switch one on or off by writing its ``enabled:`` key.

A change is validated together with every other file of the directory (the worker would refuse a bad
directory and keep running the old rules); a change that would not load is refused and nothing is written.
The write keeps the file's comments and layout and replaces the file atomically (temp file + rename), so the
worker's reloader never reads half a file.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kagoflow.core.errors import ContractError, RuleError
from kagoflow.core.rules import SHOP_FILES, read_yaml
from kagoflow.loading import load_ruleset
from kagoflow.settings import Settings

_ENABLED = re.compile(r"^enabled:[^\n#]*", re.MULTILINE)


@dataclass(frozen=True)
class RuleFile:
    rule_id: str
    path: Path
    kind: str
    enabled: bool
    describe: str


def rule_files(settings: Settings) -> tuple[list[RuleFile], str | None]:
    """The rules of the directory with their one-line description, and the load error if it has one."""
    try:
        ruleset = load_ruleset(settings)
    except (RuleError, ContractError) as exc:
        return _raw_files(settings.rules_dir), str(exc)
    files = {_rule_id(p): p for p in _paths(settings.rules_dir)}
    return [RuleFile(rule.id, files.get(rule.id, settings.rules_dir), rule.kind, rule.enabled, rule.describe())
            for rule in ruleset.by_id.values()], None


def set_enabled(settings: Settings, rule_id: str, enabled: bool) -> Path:
    """Write ``enabled: true|false`` into the file of ``rule_id``; raises ``RuleError`` (nothing written) when
    the rule is unknown or the directory would not load afterwards."""
    path = next((p for p in _paths(settings.rules_dir) if _rule_id(p) == rule_id), None)
    if path is None:
        raise RuleError(str(settings.rules_dir), "id", rule_id, "no rule file with this id")
    text = path.read_text(encoding="utf-8")
    line = f"enabled: {'true' if enabled else 'false'}"
    new = _ENABLED.sub(line, text, count=1) if _ENABLED.search(text) else text.rstrip("\n") + f"\n{line}\n"
    with tempfile.TemporaryDirectory(prefix="kagoflow-rules-") as tmp:
        trial = Path(tmp) / "rules"
        shutil.copytree(settings.rules_dir, trial)
        (trial / path.name).write_text(new, encoding="utf-8")
        try:
            load_ruleset(settings, trial)
        except RuleError as exc:  # name the real file, not the trial copy
            file = exc.file.replace(str(trial), str(settings.rules_dir), 1)
            raise RuleError(file, exc.key, exc.value, exc.problem) from None
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(new)
    os.replace(tmp_name, path)
    return path


def _paths(dir: Path) -> list[Path]:
    return sorted(p for p in dir.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix in (".yaml", ".yml") and p.name not in SHOP_FILES)


def _rule_id(path: Path) -> str | None:
    try:
        data = read_yaml(path)
    except RuleError:
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _raw_files(dir: Path) -> list[RuleFile]:
    out = []
    for path in _paths(dir):
        try:
            data = read_yaml(path)
        except RuleError:
            data = None
        data = data if isinstance(data, dict) else {}
        out.append(RuleFile(str(data.get("id", path.stem)), path, str(data.get("kind", "?")),
                            data.get("enabled", True) is not False, "(読み込みエラーのため説明なし)"))
    return out
