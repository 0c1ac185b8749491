"""``swap_rules`` on the worker's processor: what was built from the old engine's programs follows the new rules
(a date rule added by a reload is scanned; an empty pool is reported to the new engine)."""

from __future__ import annotations

from pathlib import Path

from kagoflow.core.caps import InMemoryCapStore
from kagoflow.core.rules import load_rules
from kagoflow.settings import Settings
from kagoflow.worker.engine import RecordingTable
from kagoflow.worker.processor import make_processor
from kagoflow.worker.rules_reload import swap_rules

CART = "id: cart-x\nkind: abandonment\ntrigger: cart\nproducts: all\nsend: {after: 1h}\ntemplate: cart\n"
BIRTHDAY = ("id: birthday\nkind: date\ndate: birthday\nsend: {days_before: 1, at: '11:00'}\n"
            "template: birthday\n")


def test_a_date_rule_added_by_a_reload_is_scanned_by_the_new_engine(tmp_path: Path) -> None:
    (tmp_path / "cart-x.yaml").write_text(CART)
    processor = make_processor(Settings(state_buckets=8), load_rules(tmp_path), table=RecordingTable(),
                               catalog={}, caps=InMemoryCapStore(), outbox=None)  # type: ignore[arg-type]
    processor.assign({0, 1})
    processor.rebuild()
    processor.book(0)
    assert not processor.dates.active
    (tmp_path / "birthday.yaml").write_text(BIRTHDAY)
    swap_rules(processor, load_rules(tmp_path))
    assert processor.dates.active and processor.dates.fields == ["birthday"]
    assert processor.dates.programs[0] in processor.engine.programs
    assert processor.coupon_step.on_empty == processor.engine.coupon_pool_empty
    assert 0 in processor.unindexed  # heaps and indexes rebuilt at the next event
