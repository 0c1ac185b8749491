"""The ClickHouse adapter: schema application, inserts, queries and typed errors, against a real server."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest

from kagoflow.adapters.clickhouse import (
    SCHEMA_PATH,
    ArchiveError,
    ArchiveRowError,
    ArchiveUnavailable,
    ClickHouseArchive,
    schema_statements,
)
from kagoflow.archive.rows import COLUMNS
from kagoflow.settings import Settings

TABLES = {"beacons", "members", "catalog", "orders", "mail_decisions", "engagement", "coupons_issued",
          "report_mails", "report_clicks", "report_member_actions", "report_purchases", "report_decisions",
          "report_mail_events", "report_click_days", "report_purchase_days", "report_sends", "report_emails"}
VIEWS = {"v_beacons", "v_members", "v_catalog", "v_orders", "v_mail_decisions", "v_engagement", "v_purchases",
         "v_mail_engagement", "v_mail_conversions", "v_mail_report", "v_daily_send_list", "v_report_mails",
         "v_report_purchases", "v_coupons_issued", "v_coupon_redemptions", "v_coupon_report"}
MATERIALIZED = {"mv_report_mails_decisions", "mv_report_mails_engagement", "mv_report_clicks",
                "mv_report_member_actions", "mv_report_purchases_orders", "mv_report_purchases_beacons",
                "mv_report_decisions", "mv_report_mail_events", "mv_report_click_days",
                "mv_report_purchase_days_orders", "mv_report_purchase_days_beacons", "mv_report_sends",
                "mv_report_emails"}


def test_schema_statements_split_strip_comments_and_rename_database() -> None:
    statements = schema_statements(SCHEMA_PATH.read_text(encoding="utf-8"), database="shop_a")
    assert statements[0] == "CREATE DATABASE IF NOT EXISTS shop_a"
    assert not any(s.lstrip().startswith("--") or s.endswith(";") for s in statements)
    assert not any("kagoflow." in s for s in statements)
    created = {s.split()[5] for s in statements if s.startswith("CREATE TABLE IF NOT EXISTS")}
    assert created == {f"shop_a.{t}" for t in TABLES}
    views = {s.split()[2] for s in statements if s.startswith("CREATE VIEW")}
    assert views == {f"shop_a.{v}" for v in VIEWS}


def test_identifiers_are_checked() -> None:
    with pytest.raises(ValueError, match="not an identifier"):
        ClickHouseArchive(database="x; DROP TABLE y")
    with pytest.raises(ValueError, match="not an identifier"):
        ClickHouseArchive().table("beacons--")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server_raises_archive_unavailable() -> None:
    archive = ClickHouseArchive(port=_closed_port(), connect_timeout=0.5)
    with pytest.raises(ArchiveUnavailable):
        archive.query("SELECT 1")
    with pytest.raises(ArchiveUnavailable):
        archive.insert("beacons", ("ts_ms",), [(1,)])
    assert archive.ping() is False


@pytest.fixture
def archive(stack: Settings, unique_name: Callable[[str], str]) -> Iterator[ClickHouseArchive]:
    archive = ClickHouseArchive(host=stack.clickhouse_host, port=stack.clickhouse_port,
                                database=unique_name("adapter"))
    try:
        yield archive
    finally:
        archive.query(f"DROP DATABASE IF EXISTS {archive.database}")
        archive.close()


@pytest.mark.integration
def test_ensure_schema_is_idempotent(archive: ClickHouseArchive) -> None:
    archive.ensure_schema()
    archive.insert("beacons", ("ts_ms", "event_id", "member_id", "type"), [(1_000, "e1", "m1", "view")])
    archive.ensure_schema()  # re-creates views, keeps data
    names = {r[0] for r in archive.query("SELECT name FROM system.tables WHERE database = %(db)s",
                                         {"db": archive.database})}
    assert names == TABLES | VIEWS | MATERIALIZED
    assert archive.query(f"SELECT event_id FROM {archive.table('v_beacons')}") == [("e1",)]


@pytest.mark.integration
def test_ensure_schema_adds_columns_an_older_table_lacks(archive: ClickHouseArchive) -> None:
    archive.ensure_schema()
    archive.query(f"ALTER TABLE {archive.table('engagement')} DROP COLUMN suspected_bot")
    archive.query(f"DROP TABLE {archive.table('v_mail_report')}")
    archive.ensure_schema()
    columns = [r[0] for r in archive.query("SELECT name FROM system.columns WHERE database = %(db)s "
                                           "AND table = 'engagement'", {"db": archive.database})]
    assert "suspected_bot" in columns
    assert archive.query(f"SELECT count() FROM {archive.table('v_mail_report')}") == [(0,)]


@pytest.mark.integration
async def test_insert_derives_times_and_replays_collapse(archive: ClickHouseArchive) -> None:
    await archive.ensure_schema_async()
    row: tuple[object, ...] = (1_709_222_400_123, "e'1", "m1", "cart_add", "p1", [], "", 99.5, 2, "pc", "default",
                               3, 77)
    assert await archive.insert_async("beacons", COLUMNS["beacons"], [row, row]) == 2
    await archive.insert_async("beacons", COLUMNS["beacons"], [row])
    sql = (f"SELECT toString(ts), toString(date), price, quantity, kafka_partition "
           f"FROM {archive.table('v_beacons')} WHERE event_id = %(id)s")
    expected = [("2024-02-29 16:00:00", "2024-02-29", 99.5, 2, 3)]
    assert await archive.query_async(sql, {"id": "e'1"}) == expected
    total = archive.query(f"SELECT count() FROM {archive.table('beacons')}")[0][0]
    assert total in (1, 2, 3)  # merges may already have collapsed some; the view is exact either way


@pytest.mark.integration
def test_errors_are_typed(archive: ClickHouseArchive) -> None:
    archive.ensure_schema()
    with pytest.raises(ArchiveRowError):
        archive.insert("beacons", ("ts_ms", "event_id"), [("not a number", "e1")])
    with pytest.raises(ArchiveError) as info:
        archive.insert("no_such_table", ("a",), [(1,)])
    assert info.value.missing_object
    with pytest.raises(ArchiveError) as syntax:
        archive.query("SELEC 1")
    assert not syntax.value.missing_object and not isinstance(syntax.value, ArchiveUnavailable)
    assert archive.query("SELECT 1") == [(1,)]  # the connection recovers after every error
