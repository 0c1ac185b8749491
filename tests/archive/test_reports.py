"""Issue 15 report tables on the stack's ClickHouse (18.16): member search, held-out mails, the provisioned
database name and shop time zone, and replay safety of the materialized views."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator

import pytest

from kagoflow.adapters.clickhouse import ClickHouseArchive
from kagoflow.archive import queries
from kagoflow.archive.rows import COLUMNS
from kagoflow.settings import PROJECT_ROOT, Settings
from tests.archive import analytics_data as data
from tests.archive import report_data

pytestmark = pytest.mark.integration


@pytest.fixture
def archive(stack: Settings, unique_name: Callable[[str], str]) -> Iterator[ClickHouseArchive]:
    archive = ClickHouseArchive(host=stack.clickhouse_host, port=stack.clickhouse_port,
                                database=unique_name("reports"))
    archive.ensure_schema()
    for source in (data.rows(), report_data.rows()):
        for table, rows in source.items():
            half = len(rows) // 2
            archive.insert(table, COLUMNS[table], rows[:half])
            archive.insert(table, COLUMNS[table], rows[half:])
    try:
        yield archive
    finally:
        archive.query(f"DROP DATABASE IF EXISTS {archive.database}")
        archive.close()


def test_member_search_by_product_period_action_and_top_priority(archive: ClickHouseArchive) -> None:
    report_data.check_search(lambda **kw: queries.member_search(archive, **kw))
    with pytest.raises(ValueError, match="top_only"):
        queries.member_search(archive, product_id="P9", since=data.DAY, until=data.DAY, top_only=True)


def test_held_out_mails_and_their_purchases(archive: ClickHouseArchive) -> None:
    report = queries.mail_report(archive)
    data.check_report([r for r in report if r["rule_id"] != "hold"])
    mails = queries.rule_mails(archive, rule_id="hold", since_ms=data.T0 - 1, until_ms=data.T0 + 1)
    report_data.check_holdout(report, mails)
    # sent: h1 bought within 7 days, h2 not; held out: h3 bought after 9 days (outside), h4 not
    assert queries.holdout_counts(archive, rule_id="hold", since_ms=data.T0 - 1, until_ms=data.T0 + 1,
                                  window_ms=7 * data.DAY_MS) == (1, 2, 0, 2)


def test_held_out_decisions_are_not_sends(archive: ClickHouseArchive) -> None:
    # SPEC §14: a held-out member gets `held_out` instead of `sent` — nothing is sent, so the report's sent
    # (送信) counts exactly the send list's mails and the held-out ones only under held_out (ホールドアウト)
    report = queries.mail_report(archive, since=data.DAY, until=data.DAY)
    sends = queries.daily_send_list(archive, day=data.DAY)
    assert sum(int(r["sent"]) for r in report) == len(sends) == 10
    hold = [r for r in report if r["rule_id"] == "hold"]
    assert [(r["sent"], r["held_out"], r["delivered"], r["opened"]) for r in hold] == [(2, 2, 0, 0)]
    assert sorted(s["member_id"] for s in sends if s["rule_id"] == "hold") == ["h1", "h2"]
    assert queries.decision_counts(archive, since=data.DAY, until=data.DAY, timezone="Asia/Tokyo")["hold"] == \
        {"sent": 2, "held_out": 2}


def test_coupon_redemptions_per_rule_and_day(archive: ClickHouseArchive) -> None:
    report_data.check_coupons(queries.coupon_report(archive, since=data.DAY, until=data.DAY))
    assert queries.coupon_report(archive, since=report_data.DAY2, until=report_data.DAY2) == []
    assert queries.coupon_report(archive, since=data.DAY, until=data.DAY, rule_id="cart-1h") == []


def test_replaying_every_row_again_changes_no_report_number(archive: ClickHouseArchive) -> None:
    before = queries.mail_report(archive)
    sends = queries.daily_send_list(archive, day=data.DAY)
    for table, rows in data.rows().items():
        archive.insert(table, COLUMNS[table], rows)
    assert queries.mail_report(archive) == before
    assert queries.daily_send_list(archive, day=data.DAY) == sends
    archive.query(f"OPTIMIZE TABLE {archive.table('report_mails')} FINAL")
    assert queries.mail_report(archive) == before


def test_shop_time_zone_moves_the_days(stack: Settings, unique_name: Callable[[str], str]) -> None:
    archive = ClickHouseArchive(host=stack.clickhouse_host, port=stack.clickhouse_port,
                                database=unique_name("tz"), timezone="America/New_York")
    archive.ensure_schema()
    try:
        archive.insert("mail_decisions", COLUMNS["mail_decisions"], [data.decision(data.K1, "sent", data.T0)])
        # T0 = 2024-02-29T16:00Z: 1 March in Tokyo, 29 February in New York
        assert [str(r["day"]) for r in queries.mail_report(archive, timezone="America/New_York")] == ["2024-02-29"]
        assert [str(r[0]) for r in archive.query(f"SELECT day FROM {archive.table('v_mail_report')}")] == \
            ["2024-02-29"]
        assert [str(r["day"]) for r in queries.daily_send_list(
            archive, day=data.DAY.replace(day=29, month=2), timezone="America/New_York")] == ["2024-02-29"]
    finally:
        archive.query(f"DROP DATABASE IF EXISTS {archive.database}")
        archive.close()


def test_provision_puts_every_table_in_the_configured_database(stack: Settings,
                                                               unique_name: Callable[[str], str]) -> None:
    sys.path.insert(0, str(PROJECT_ROOT / "infra"))
    from stacklib.provision import apply_schema

    name = unique_name("provision")
    settings = Settings.from_env({**os.environ, "KAGOFLOW_CLICKHOUSE_DATABASE": name})
    archive = ClickHouseArchive(host=stack.clickhouse_host, port=stack.clickhouse_port, database=name)
    try:
        assert apply_schema(settings) > 20
        tables = {r[0] for r in archive.query("SELECT name FROM system.tables WHERE database = %(d)s", {"d": name})}
        assert {"beacons", "mail_decisions", "report_mails", "v_mail_report", "v_daily_send_list"} <= tables
        create = archive.query("SELECT create_table_query FROM system.tables WHERE database = %(d)s "
                               "AND name = 'v_mail_report'", {"d": name})
        assert "kagoflow." not in create[0][0]
    finally:
        archive.query(f"DROP DATABASE IF EXISTS {name}")
        archive.close()


def test_report_tables_are_backfilled_from_rows_archived_before_them(archive: ClickHouseArchive) -> None:
    sys.path.insert(0, str(PROJECT_ROOT / "infra"))
    from stacklib.provision import backfill_reports

    before = queries.mail_report(archive)
    search = queries.member_search(archive, product_id="P9", since=data.DAY, until=report_data.DAY2)
    sends = queries.daily_send_list(archive, day=data.DAY)
    tables = ("report_mails", "report_clicks", "report_purchases", "report_member_actions", "report_decisions",
              "report_mail_events", "report_click_days", "report_purchase_days", "report_sends", "report_emails")
    for table in tables:
        archive.query(f"TRUNCATE TABLE {archive.table(table)}")
    assert queries.mail_report(archive) == []
    assert sorted(backfill_reports(archive)) == sorted([
        "mv_report_mails_decisions", "mv_report_mails_engagement", "mv_report_clicks", "mv_report_member_actions",
        "mv_report_purchases_orders", "mv_report_purchases_beacons", "mv_report_decisions",
        "mv_report_mail_events", "mv_report_click_days", "mv_report_purchase_days_orders",
        "mv_report_purchase_days_beacons", "mv_report_sends", "mv_report_emails"])
    assert queries.mail_report(archive) == before
    assert queries.member_search(archive, product_id="P9", since=data.DAY, until=report_data.DAY2) == search
    assert queries.daily_send_list(archive, day=data.DAY) == sends
    assert backfill_reports(archive) == []  # tables filled: nothing runs again


def test_a_report_table_added_by_an_upgrade_is_backfilled_while_the_archiver_writes(
        archive: ClickHouseArchive) -> None:
    # an installation from before report_decisions: provision creates it, the archiver inserts a row through
    # its materialized view before the backfill looks — the backfill still runs, and the row counts once
    sys.path.insert(0, str(PROJECT_ROOT / "infra"))
    from stacklib.provision import backfill_reports

    before = queries.decision_counts(archive, since=data.DAY, until=data.DAY, timezone="Asia/Tokyo")
    archive.query(f"DROP TABLE {archive.table('mv_report_decisions')}")
    archive.query(f"DROP TABLE {archive.table('report_decisions')}")
    existing = {f"{archive.database}.{r[0]}" for r in archive.query(
        "SELECT name FROM system.tables WHERE database = %(d)s", {"d": archive.database})}
    archive.ensure_schema()
    archive.insert("mail_decisions", COLUMNS["mail_decisions"], [data.decision(data.K1, "sent", data.T0)])
    assert backfill_reports(archive, existing=existing) == ["mv_report_decisions"]
    assert queries.decision_counts(archive, since=data.DAY, until=data.DAY, timezone="Asia/Tokyo") == before
