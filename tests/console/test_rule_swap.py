"""After the reloader swaps in a rule set where a rule is disabled, that rule decides nothing more — also for
episodes opened before the swap (the worker's ``swap_rules`` on the same core the backtest drives)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kagoflow.backtest import Replay
from kagoflow.core.rules import load_rules
from kagoflow.streams.contract import parse_beacon, parse_member
from kagoflow.worker.rules_reload import swap_rules

RULE = """id: cart-x
kind: abandonment
trigger: cart
products: all
send: {{after: 1h}}
template: cart
enabled: {enabled}
"""
T0 = 1_709_222_400_000


def _decisions(tmp_path: Path, *, disable_after_cart: bool) -> list[str]:
    (tmp_path / "cart-x.yaml").write_text(RULE.format(enabled="true"))
    replay = Replay(load_rules(tmp_path))

    async def run() -> list[str]:
        out = []
        out += await replay.feed(parse_member(b'{"member_id": "m1", "email": "m1@example.jp", "opt_in": true, '
                                              b'"ts": %d}' % (T0 - 1000)))
        out += await replay.feed(parse_beacon(b'{"event_id": "e1", "member_id": "m1", "type": "cart_add", '
                                              b'"product_id": "P1", "price": 5000, "ts": %d}' % T0))
        if disable_after_cart:
            (tmp_path / "cart-x.yaml").write_text(RULE.format(enabled="false"))
            swap_rules(replay, load_rules(tmp_path))
        out += await replay.advance(T0 + 2 * 3_600_000)
        return [f"{d.rule_id}:{d.status}" for d in out]

    return asyncio.run(run())


def test_disabled_rule_stops_deciding_after_the_swap(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert _decisions(tmp_path / "a", disable_after_cart=False) == ["cart-x:sent"]
    assert _decisions(tmp_path / "b", disable_after_cart=True) == []
