"""``kagoflow backtest`` over the example rules directory: every new kind and decision field (§9, §13, §14)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from kagoflow.backtest import run_backtest
from kagoflow.core.coupons import generated_code
from kagoflow.core.variants import is_held_out
from kagoflow.settings import PROJECT_ROOT, Settings


def jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_backtest_of_the_example_rules_covers_date_inactive_holdout_and_coupons(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(PROJECT_ROOT / "rules", rules)
    members = [f"m{i}" for i in range(30)]
    profiles = [{"member_id": m, "email": f"{m}@example.com", "opt_in": True, "birthday": "1990-03-10",
                 "purchase_count": 3, "total_amount": 80000, "first_purchase_at": "2025-01-01T10:00:00+09:00",
                 "ts": "2026-01-01T00:00:00+09:00"} for m in members]
    orders = [{"order_id": f"o-{m}", "member_id": m, "status": "ordered", "ordered_at": "2026-01-10T15:00:00+09:00",
               "items": [{"product_id": "A", "quantity": 1, "price": 5000}], "total": 5000} for m in members]
    beacons = [{"event_id": f"e-{m}", "member_id": m, "type": "cart_add", "product_id": "A", "price": 5000,
                "ts": "2026-01-20T10:00:00+09:00"} for m in members]
    out = tmp_path / "decisions.jsonl"
    settings = Settings(tracking_secret="s3cret")
    assert run_backtest(rules_dir=rules, beacons=jsonl(tmp_path / "b.jsonl", beacons),
                        members=jsonl(tmp_path / "m.jsonl", profiles), orders=jsonl(tmp_path / "o.jsonl", orders),
                        out=out, progress=False, settings=settings) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    by = {(d["member_id"], d["rule"], d["at"][:10]): d for d in lines}
    m0 = by["m0", "birthday", "2026-03-10"]
    assert (m0["kind"], m0["status"], m0["products"]) == ("date", "sent", [])
    assert m0["coupon"] == generated_code("s3cret", "m0|birthday|2026", "BD-", 8)
    assert m0["coupon_expires"] == "2026-04-09"
    winback = [d for d in lines if d["rule"] == "winback-60" and d["status"] == "sent"]
    assert len(winback) == len(members), "one win-back per member: 60 d after 10 Jan 15:00 → 12 Mar 10:00"
    assert all(d["at"].startswith("2026-03-12T01:00") for d in winback)
    codes = [d["coupon"] for d in winback]
    pool = [c for c in (rules / "coupons" / "winback.txt").read_text().split() if c.startswith("WB-")]
    assert codes == pool[:len(members)], "pool codes in file order, one per mail"
    cart72 = {d["member_id"]: d for d in lines if d["rule"] == "cart-72h"}
    for member, decision in cart72.items():
        if is_held_out(member, "cart-72h", 10):
            assert (decision["status"], decision["coupon"]) == ("held_out", None)
        else:
            assert decision["coupon"] == "CART5" and decision["coupon_expires"] == "2026-01-30"
    assert any(d["status"] == "held_out" for d in cart72.values())
