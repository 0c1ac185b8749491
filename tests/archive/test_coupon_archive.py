"""Issued coupons in ClickHouse (SPEC §13): the coupons_issued row mapper and the redemption view on the
stack's ClickHouse 18.16 server."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from kagoflow.adapters.clickhouse import ClickHouseArchive, schema_statements
from kagoflow.archive.rows import COLUMNS, MAPPERS, order_row
from kagoflow.core.couponing import IssuedCoupon
from kagoflow.settings import Settings
from tests.archive.test_analytics import archive  # noqa: F401  (fixture)

T0 = 1_790_000_000_000  # 2026-09-21


def issued(code: str, member: str, key: str, at: int) -> bytes:
    return IssuedCoupon(code, member, "winback", key, at, "2026-10-05", at + 14 * 86_400_000, "inactive",
                        "").to_bytes()


def order(order_id: str, member: str, code: str, at: int, status: str = "ordered", ts: int | None = None) -> bytes:
    import orjson

    return orjson.dumps({"order_id": order_id, "member_id": member, "status": status, "ordered_at": at,
                         "ts": ts or at, "coupon": code, "items": [{"product_id": "A", "quantity": 1, "price": 100}]})


def test_coupon_row_maps_the_topic_value() -> None:
    table, mapper = MAPPERS["coupons_issued"]
    row = mapper(issued("WB-1", "m1", "m1|winback|5", T0), 3, 7, None)
    assert table == "coupons_issued" and len(row) == len(COLUMNS[table])
    assert row == ("WB-1", "m1", "winback", "m1|winback|5", "inactive", "", T0, "2026-10-05",
                   T0 + 14 * 86_400_000, 3, 7)


@pytest.mark.integration
def test_an_order_carrying_an_issued_code_shows_as_redeemed(archive: ClickHouseArchive) -> None:  # noqa: F811
    _, coupon_row = MAPPERS["coupons_issued"]
    coupons = [coupon_row(issued(code, member, f"{member}|winback|{i}", T0), 0, i, None)
               for i, (code, member) in enumerate([("WB-1", "m1"), ("WB-2", "m2"), ("WB-3", "m3"), ("WB-4", "m4")])]
    archive.insert("coupons_issued", COLUMNS["coupons_issued"], coupons)
    archive.insert("coupons_issued", COLUMNS["coupons_issued"], coupons[:2])  # a replayed batch
    orders = [
        order("o1", "m1", "WB-1", T0 + 3_600_000),                      # redeems
        order("o2", "m2", "WB-2", T0 + 3_600_000),
        order("o2", "m2", "WB-2", T0 + 3_600_000, status="cancelled", ts=T0 + 7_200_000),  # latest status: cancelled
        order("o3", "m3", "WB-3", T0 - 3_600_000),                      # before the issue
        order("o4", "m1", "WB-4", T0 + 3_600_000),                      # another member's code
    ]
    archive.insert("orders", COLUMNS["orders"], [order_row(value, 0, i, None) for i, value in enumerate(orders)])
    rows = archive.query(f"SELECT code, redeemed, order_id FROM {archive.database}.v_coupon_redemptions "
                         "ORDER BY code")
    assert [tuple(r) for r in rows] == [("WB-1", 1, "o1"), ("WB-2", 0, ""), ("WB-3", 0, ""), ("WB-4", 0, "")]
    report = archive.query(f"SELECT rule_id, issued, redeemed FROM {archive.database}.v_coupon_report")
    assert [tuple(r) for r in report] == [("winback", 4, 1)]


@pytest.mark.integration
def test_redemptions_honour_the_shops_cancelled_statuses(stack: Settings, unique_name: Callable[[str], str],
                                                         tmp_path: Path) -> None:
    """shop.yaml ``cancelled_statuses`` (SPEC §13), not the default list, decides which orders redeem; an
    installation whose view was made with the defaults gets the shop's list when the schema is applied again."""
    (tmp_path / "shop.yaml").write_text('cancelled_statuses: [refunded, "void\'d"]\n', encoding="utf-8")
    settings = replace(stack, clickhouse_database=unique_name("archive"), rules_dir=tmp_path)
    old = ClickHouseArchive(host=stack.clickhouse_host, port=stack.clickhouse_port,
                            database=settings.clickhouse_database)
    old.ensure_schema()  # an existing installation: its view has the default statuses
    shop_archive = ClickHouseArchive.from_settings(settings)
    try:
        shop_archive.ensure_schema()
        _, coupon_row = MAPPERS["coupons_issued"]
        codes = [("WB-1", "m1"), ("WB-2", "m2"), ("WB-3", "m3")]
        shop_archive.insert("coupons_issued", COLUMNS["coupons_issued"],
                       [coupon_row(issued(code, m, f"{m}|winback|{i}", T0), 0, i, None) for i, (code, m) in
                        enumerate(codes)])
        orders = [order("o1", "m1", "WB-1", T0 + 3_600_000, status="refunded"),   # the shop's cancelled status
                  order("o2", "m2", "WB-2", T0 + 3_600_000, status="cancelled"),  # not one of the shop's
                  order("o3", "m3", "WB-3", T0 + 3_600_000, status="void'd")]
        shop_archive.insert("orders", COLUMNS["orders"],
                            [order_row(value, 0, i, None) for i, value in enumerate(orders)])
        rows = shop_archive.query(f"SELECT code, redeemed FROM {shop_archive.database}.v_coupon_redemptions "
                                  "ORDER BY code")
        assert [tuple(r) for r in rows] == [("WB-1", 0), ("WB-2", 1), ("WB-3", 0)]
    finally:
        shop_archive.query(f"DROP DATABASE IF EXISTS {shop_archive.database}")
        shop_archive.close()
        old.close()


def test_the_cancelled_statuses_are_quoted_into_the_schema() -> None:
    statements = schema_statements("SELECT 1 WHERE s NOT IN ('cancelled', 'canceled', 'returned');\n",
                                   cancelled=("a'b", "c\\d"))
    assert statements == ["SELECT 1 WHERE s NOT IN ('a\\'b', 'c\\\\d')"]
