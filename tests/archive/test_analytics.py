"""SPEC §8 analytics and the access log on the stack's real ClickHouse (18.16 here), with replayed rows."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from kagoflow.adapters.clickhouse import ClickHouseArchive
from kagoflow.archive import queries
from kagoflow.archive.rows import COLUMNS
from kagoflow.settings import Settings
from tests.archive import analytics_data as data

pytestmark = pytest.mark.integration


@pytest.fixture
def archive(stack: Settings, unique_name: Callable[[str], str]) -> Iterator[ClickHouseArchive]:
    archive = ClickHouseArchive(host=stack.clickhouse_host, port=stack.clickhouse_port,
                                database=unique_name("archive"))
    archive.ensure_schema()
    try:
        yield archive
    finally:
        archive.query(f"DROP DATABASE IF EXISTS {archive.database}")
        archive.close()


@pytest.fixture
def story(archive: ClickHouseArchive) -> ClickHouseArchive:
    for table, rows in data.rows().items():
        half = len(rows) // 2
        archive.insert(table, COLUMNS[table], rows[:half])  # the replayed half arrives in its own batch
        archive.insert(table, COLUMNS[table], rows[half:])
    return archive


def test_mail_report_counts_rates_conversions_and_revenue(story: ClickHouseArchive) -> None:
    data.check_report(queries.mail_report(story))
    fav = queries.mail_report(story, rule_id="fav-1h", since=data.DAY, until=data.DAY)
    assert [r["revenue"] for r in fav] == [5000.0]
    assert queries.mail_report(story, since=data.DAY.replace(day=2)) == []


def test_daily_send_list_is_who_got_what_with_latest_address(story: ClickHouseArchive) -> None:
    rows = queries.daily_send_list(story, day=data.DAY)
    assert sorted((r["member_id"], r["rule_id"], r["email"]) for r in rows) == data.SEND_LIST
    assert [r["at"] for r in rows] == sorted(r["at"] for r in rows)
    assert queries.daily_send_list(story, day=data.DAY, rule_id="fav-1h")[0]["products"] == ["sku-1"]
    assert queries.daily_send_list(story, day=data.DAY.replace(day=2)) == []


def test_history_filters_and_dedupes(story: ClickHouseArchive) -> None:
    every = queries.history(story, member_id="m1")
    assert [(h["event_id"], h["type"]) for h in every] == [("b-2", "purchase"), ("b-1", "cart_add")]
    assert {h["last_access_ms"] for h in every} == {data.T0 + 7 * data.HOUR}
    assert every[0]["product_ids"] == ["sku-1"] and every[0]["order_id"] == "O1"
    assert every[1]["action_time"] == "2024-02-29T14:00:00+00:00"
    assert [h["event_id"] for h in queries.history(story, member_id="m1", type="cart_add")] == ["b-1"]
    assert [h["event_id"] for h in queries.history(story, member_id="m1", product_id="sku-1",
                                                   newest_first=False)] == ["b-1", "b-2"]
    assert queries.history(story, member_id="m1", since_ms=data.T0, until_ms=data.T0 + 7 * data.HOUR) == []
    assert len(queries.history(story, member_id="m1", limit=1)) == 1
    assert queries.history(story, member_id="nobody") == []
    with pytest.raises(ValueError, match="type: unknown 'clickk'"):
        queries.history(story, member_id="m1", type="clickk")
