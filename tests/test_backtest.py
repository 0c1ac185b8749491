"""``kagoflow backtest`` (SPEC §9): JSONL in, exact decision lines out, summary on stderr."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kagoflow.backtest import run_backtest
from kagoflow.cli import main
from kagoflow.core.errors import ContractError
from kagoflow.settings import Settings

SHOP = "timezone: Asia/Tokyo\ncaps: {day: 1}\nsender_name: Shop\n"
CART_1H = "id: cart-1h\nkind: abandonment\ntrigger: cart\nclock: last_access\nsend: {after: 1h}\ncoupon: C1\n"
CART_2H = "id: cart-2h\nkind: abandonment\ntrigger: cart\nsend: {after: 2h}\ntemplate: cart\n"
DROP = (
    "id: drop\nkind: price_drop\nwatch: [cart]\nwhen: {price_at_most: 3000}\nsend: {immediately: true}\n"
    "template: price_drop\n"
)


def jsonl(path: Path, *rows: dict[str, Any]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "rules"
    directory.mkdir()
    for name, text in (
        ("shop.yaml", SHOP),
        ("cart-1h.yaml", CART_1H),
        ("cart-2h.yaml", CART_2H),
        ("drop.yaml", DROP),
    ):
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def beacon(event_id: str, member: str, kind: str, ts: str | int, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "member_id": member, "type": kind, "ts": ts, **fields}


def run(rules_dir: Path, tmp_path: Path, **inputs: Path) -> list[dict[str, Any]]:
    out = tmp_path / "decisions.jsonl"
    assert run_backtest(rules_dir=rules_dir, out=out, progress=False, settings=Settings(), **inputs) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_decision_lines(rules_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    members = jsonl(
        tmp_path / "members.jsonl",
        {"member_id": "m1", "email": "m1@example.com", "opt_in": True, "ts": "2026-11-24T09:00:00+09:00"},
        # same ts as m2's first beacon: members are processed first, so m2 has a profile
        {"member_id": "m2", "email": "m2@example.com", "opt_in": False, "ts": "2026-11-24T10:05:00+09:00"},
    )
    catalog = jsonl(
        tmp_path / "catalog.jsonl",
        {"product_id": "A", "price": 5000, "stock": 3, "ts": "2026-11-24T08:00:00+09:00"},
        {"product_id": "A", "price": 2800, "stock": 3, "ts": "2026-11-24T10:30:00+09:00"},
    )
    beacons = jsonl(
        tmp_path / "beacons.jsonl",
        beacon("b1", "m1", "cart_add", "2026-11-24T10:00:00+09:00", product_id="A", price=5000),
        beacon("b1", "m1", "cart_add", "2026-11-24T10:01:00+09:00", product_id="A"),  # duplicate
        beacon("b2", "m2", "cart_add", "2026-11-24T10:05:00+09:00", product_id="B"),
        beacon("b3", "m1", "page_view", "2026-11-24T10:10:00+09:00"),
    )
    decisions = run(rules_dir, tmp_path, beacons=beacons, members=members, catalog=catalog)

    m1 = "m1|{}|1795482000000"  # 2026-11-24T10:00+09:00, the opening action
    common = {"member_id": "m1", "products": ["A"], "episode": "1795482000000", "sender_name": "Shop",
              "variant": "", "coupon_expires": None}
    assert [{k: d[k] for k in ("member_id", "rule", "status", "at")} for d in decisions] == [
        {"member_id": "m1", "rule": "drop", "status": "sent", "at": "2026-11-24T01:30:00+00:00"},
        {"member_id": "m2", "rule": "cart-1h", "status": "suppressed", "at": "2026-11-24T02:05:00+00:00"},
        {"member_id": "m1", "rule": "cart-1h", "status": "sent", "at": "2026-11-24T02:10:00+00:00"},
        {"member_id": "m1", "rule": "cart-2h", "status": "capped", "at": "2026-11-24T03:00:00+00:00"},
        {"member_id": "m2", "rule": "cart-2h", "status": "suppressed", "at": "2026-11-24T03:05:00+00:00"},
    ]
    assert decisions[2] == {
        **common,
        "rule": "cart-1h",
        "kind": "abandonment",
        "status": "sent",
        "reason": "",
        "at": "2026-11-24T02:10:00+00:00",
        "due": "2026-11-24T02:10:00+00:00",
        "at_ms": 1795486200000,
        "due_ms": 1795486200000,
        "key": m1.format("cart-1h"),
        "template": "cart",
        "coupon": "C1",
        "cap_exempt": False,
    }
    assert decisions[3] == {
        **common,
        "rule": "cart-2h",
        "kind": "abandonment",
        "status": "capped",
        "reason": "capped",
        "at": "2026-11-24T03:00:00+00:00",
        "due": "2026-11-24T03:00:00+00:00",
        "at_ms": 1795489200000,
        "due_ms": 1795489200000,
        "key": m1.format("cart-2h"),
        "template": "cart",
        "coupon": None,
        "cap_exempt": False,
    }
    assert (decisions[0]["kind"], decisions[0]["cap_exempt"], decisions[0]["products"]) == (
        "price_drop",
        True,
        ["A"],
    )
    assert decisions[1]["reason"] == decisions[4]["reason"] == "no_consent"
    assert decisions[1]["products"] == ["B"]

    summary = capsys.readouterr().err.splitlines()
    assert summary[0] == "backtest: 8 records"
    assert summary[1].split() == ["rule", "sent", "capped", "suppressed", "skipped"]
    assert {line.split()[0]: line.split()[1:] for line in summary[2:]} == {
        "cart-1h": ["1", "0", "1", "0"],
        "cart-2h": ["0", "1", "1", "0"],
        "drop": ["1", "0", "0", "0"],
    }


def test_unsorted_file_is_sorted_and_ties_keep_input_order(rules_dir: Path, tmp_path: Path) -> None:
    members = jsonl(
        tmp_path / "members.jsonl", {"member_id": "m1", "email": "m1@example.com", "opt_in": True, "ts": 0}
    )
    beacons = jsonl(
        tmp_path / "beacons.jsonl",
        beacon("b2", "m1", "cart_remove", 1_800_000_000_000 + 1_000, product_id="A"),
        beacon("b1", "m1", "cart_add", 1_800_000_000_000, product_id="A"),
        beacon("b3", "m1", "cart_add", 1_800_000_000_000 + 1_000, product_id="A"),
    )
    decisions = run(rules_dir, tmp_path, beacons=beacons, members=members)
    # sorted: add, then remove and add at the same ts in input order -> A is carted at the due times
    assert [(d["rule"], d["status"], d["products"]) for d in decisions] == [
        ("cart-1h", "sent", ["A"]),
        ("cart-2h", "capped", ["A"]),
    ]


def test_orders_feed_purchase_resets(rules_dir: Path, tmp_path: Path) -> None:
    members = jsonl(
        tmp_path / "members.jsonl", {"member_id": "m1", "email": "m1@example.com", "opt_in": True, "ts": 0}
    )
    orders = jsonl(
        tmp_path / "orders.jsonl",
        {
            "order_id": "o1",
            "member_id": "m1",
            "status": "ordered",
            "ordered_at": 1_800_000_060_000,
            "items": [{"product_id": "A", "quantity": 1, "price": 900}],
        },
    )
    beacons = jsonl(
        tmp_path / "beacons.jsonl",
        beacon("b1", "m1", "cart_add", 1_800_000_000_000, product_id="A"),
        beacon("b2", "m1", "cart_add", 1_800_000_000_000, product_id="B"),
        beacon("b3", "m1", "purchase", 1_800_000_060_000, order_id="o1"),
    )
    decisions = run(rules_dir, tmp_path, beacons=beacons, members=members, orders=orders)
    assert [(d["rule"], d["status"], d["products"]) for d in decisions] == [
        ("cart-1h", "sent", ["B"]),
        ("cart-2h", "capped", ["B"]),
    ]


def test_bad_line_names_file_line_and_field(rules_dir: Path, tmp_path: Path) -> None:
    beacons = jsonl(
        tmp_path / "beacons.jsonl",
        beacon("b1", "m1", "page_view", 1_800_000_000_000),
        {"event_id": "b2", "type": "view", "ts": 1_800_000_000_001, "product_id": "A"},
    )
    with pytest.raises(ContractError, match=r"beacons\.jsonl:2: member_id"):
        run(rules_dir, tmp_path, beacons=beacons)


def test_cli_writes_stdout_and_reports_errors(
    rules_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    beacons = jsonl(
        tmp_path / "beacons.jsonl",
        beacon("b1", "m1", "cart_add", "2026-11-24T10:00:00+09:00", product_id="A"),
    )
    assert main(["backtest", "--rules", str(rules_dir), "--beacons", str(beacons), "--no-progress"]) == 0
    out, err = capfd.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(d["rule"], d["status"], d["reason"]) for d in lines] == [
        ("cart-1h", "suppressed", "no_profile"),
        ("cart-2h", "suppressed", "no_profile"),
    ]
    assert "cart-1h" in err
    assert main(["backtest", "--rules", str(rules_dir), "--beacons", str(tmp_path / "missing.jsonl")]) == 1
    assert "missing.jsonl" in capfd.readouterr().err


FOLLOW = """id: follow
kind: scenario
start: {status: [ordered]}
end: {purchased: any}
steps:
  - send: {anchor: ordered, after: 0m}
    template: thanks
  - send: {anchor: delivered, days: 2, at: "10:00"}
    template: [arrival, review]
"""


def test_cli_scenarios_with_orders_and_engagement(rules_dir: Path, tmp_path: Path,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    (rules_dir / "follow.yaml").write_text(FOLLOW, encoding="utf-8")
    members = jsonl(tmp_path / "members.jsonl",
                    *({"member_id": m, "email": f"{m}@example.com", "opt_in": True, "ts": "2026-11-01T00:00:00+09:00"}
                      for m in ("m1", "m2")))
    order = {"status": "ordered", "ordered_at": "2026-11-24T10:00:00+09:00",
             "items": [{"product_id": "salt", "quantity": 1, "price": 800}]}
    orders = jsonl(tmp_path / "orders.jsonl",
                   {**order, "order_id": "o1", "member_id": "m1"}, {**order, "order_id": "o2", "member_id": "m2"},
                   # shipped and delivered without ts: the record happens at its latest date
                   *({**order, "order_id": o, "member_id": m, "status": "delivered",
                      "shipped_at": "2026-11-25T09:00:00+09:00", "delivered_at": "2026-11-26T15:00:00+09:00"}
                     for o, m in (("o1", "m1"), ("o2", "m2"))))
    engagement = jsonl(tmp_path / "engagement.jsonl",
                       {"member_id": "m2", "event": "unsubscribe", "rule": "follow", "step": 1,
                        "ts": "2026-11-25T00:00:00+09:00", "suspected_bot": False})
    beacons = jsonl(tmp_path / "beacons.jsonl")
    assert main(["backtest", "--rules", str(rules_dir), "--beacons", str(beacons), "--members", str(members),
                 "--orders", str(orders), "--engagement", str(engagement), "--no-progress"]) == 0
    out, err = capfd.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(d["member_id"], d["status"], d["reason"], d["step"], d["send"], d["at"]) for d in lines] == [
        ("m1", "started", "", 0, 0, "2026-11-24T01:00:00+00:00"),
        ("m1", "sent", "", 1, 1, "2026-11-24T01:00:00+00:00"),
        ("m2", "started", "", 0, 0, "2026-11-24T01:00:00+00:00"),
        ("m2", "sent", "", 1, 1, "2026-11-24T01:00:00+00:00"),
        # the fallback (shipped + 48 h) would have been 27 Nov; the real delivery moves step 2 to 28 Nov 10:00
        ("m1", "sent", "", 2, 1, "2026-11-28T01:00:00+00:00"),
        ("m1", "ended", "completed", 0, 0, "2026-11-28T01:00:00+00:00"),
        ("m2", "suppressed", "unsubscribed", 2, 1, "2026-11-28T01:00:00+00:00"),
        ("m2", "ended", "suppressed", 0, 0, "2026-11-28T01:00:00+00:00"),
    ]
    assert all(d["kind"] == "scenario" and d["order_id"] in ("o1", "o2") and d["products"] == ["salt"]
               for d in lines)
    assert lines[4]["variant"] in ("A", "B") and lines[4]["key"] == "m1|follow|o1|2|1"
    assert "started" in err.splitlines()[1] and "follow" in err
