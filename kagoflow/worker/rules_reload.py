"""Pick up a changed rules directory without a restart (the console's enable/disable writes rule files).

``RulesReloader`` polls a cheap signature of the directory (names, sizes, mtimes of its YAML files); when it
changes it loads the whole directory again and hands the new ``RuleSet`` to ``apply``. A directory that does
not load is refused: the error (file, key, value) is logged and the running rules stay. Swapping happens on
the event loop between records, so a record is always decided under one rule set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kagoflow.core.couponing import CouponStep
from kagoflow.core.engine import Engine
from kagoflow.core.errors import ContractError, RuleError
from kagoflow.core.rules import RuleSet
from kagoflow.worker.datescan import DateScan

log = logging.getLogger(__name__)
Signature = tuple[tuple[str, int, int], ...]


def signature(dir: Path) -> Signature:
    try:
        entries = sorted(dir.iterdir())
    except OSError:
        return ()
    out = []
    for path in entries:
        if path.suffix in (".yaml", ".yml") and not path.name.startswith("."):
            try:
                st = path.stat()
            except OSError:
                continue
            out.append((path.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


class RulesReloader:
    def __init__(self, dir: Path, load: Callable[[], RuleSet], apply: Callable[[RuleSet], None]) -> None:
        self.dir = dir
        self._load = load
        self._apply = apply
        self._seen = signature(dir)
        self.last_error: str | None = None
        self.reloads = 0

    def check(self) -> bool:
        """Reload when the directory changed; True when new rules were applied."""
        current = signature(self.dir)
        if current == self._seen:
            return False
        self._seen = current
        try:
            ruleset = self._load()
        except (RuleError, ContractError, OSError) as exc:
            self.last_error = str(exc)
            log.error("rules directory %s refused, running rules kept: %s", self.dir, exc)
            return False
        self._apply(ruleset)
        self.last_error = None
        self.reloads += 1
        log.info("rules reloaded from %s: %d rules", self.dir, len(ruleset.by_id))
        return True

    async def run(self, interval_s: float = 2.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.check()


def swap_rules(processor: Any, ruleset: RuleSet) -> None:
    """Give a ``MemberProcessor`` (or the backtest's ``Replay``) new rules: its ``ruleset``, a new ``Engine``
    over them, and what was built from the old engine's programs — the coupon step, and in the worker the date
    scan, whose partitions' heaps and indexes are rebuilt at the next event (else a date rule added by a
    reload would never be scanned)."""
    engine = Engine(ruleset)
    processor.ruleset = ruleset
    processor.engine = engine
    for name in ("coupon_step", "coupons"):
        old = getattr(processor, name, None)
        if isinstance(old, CouponStep):
            setattr(processor, name, CouponStep(ruleset.by_id.values(), pool=old.pool, secret=old.secret,
                                                tz=ruleset.shop.timezone, on_empty=engine.coupon_pool_empty))
    if isinstance(getattr(processor, "dates", None), DateScan):
        processor.dates = DateScan(engine)
        processor.unindexed |= set(processor.books)
