"""schema.sql and the analytics queries on a current ClickHouse engine (chdb, in-process).

The same story and expectations as ``test_analytics`` (which runs on the stack's 18.16 server), so the SQL
is proven on both ends of the version range. Skipped when chdb (an ~830 MB wheel) is not installed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from clickhouse_driver.util.escape import escape_params

from kagoflow.adapters.clickhouse import SCHEMA_PATH, schema_statements
from kagoflow.archive import queries
from kagoflow.archive.rows import COLUMNS
from tests.archive import analytics_data as data
from tests.archive import report_data

chdb_session = pytest.importorskip("chdb.session")


class ChdbArchive:
    """The read/write surface the archive code uses, on chdb. Parameters are escaped like the driver does."""

    def __init__(self, path: Path, database: str = "kagoflow") -> None:
        self.session = chdb_session.Session(str(path))
        self.database = database

    def table(self, name: str) -> str:
        return f"{self.database}.{name}"

    def execute(self, sql: str) -> Any:
        return self.session.query(sql)

    def insert(self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        values = ", ".join("(" + ", ".join(_literal(v) for v in row) + ")" for row in rows)
        self.execute(f"INSERT INTO {self.table(table)} ({', '.join(columns)}) VALUES {values}")

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        text = sql % escape_params(params, None) if params else sql
        text += " SETTINGS output_format_json_quote_64bit_integers = 0"
        result = self.session.query(text, "JSONCompact")
        payload = result.bytes() if hasattr(result, "bytes") else str(result).encode()
        return [tuple(row) for row in orjson.loads(payload)["data"]] if payload.strip() else []


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(value)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbArchive]:
    archive = ChdbArchive(tmp_path_factory.mktemp("chdb"))
    statements = schema_statements(SCHEMA_PATH.read_text(encoding="utf-8"))
    for _ in range(2):  # idempotent
        for statement in statements:
            archive.execute(statement)
    for source in (data.rows(), report_data.rows()):
        for table, rows in source.items():
            half = len(rows) // 2
            archive.insert(table, COLUMNS[table], rows[:half])
            archive.insert(table, COLUMNS[table], rows[half:])
    yield archive
    archive.session.close()


def test_engine_is_a_current_release(engine: ChdbArchive) -> None:
    major = int(engine.query("SELECT version()")[0][0].split(".")[0])
    assert major >= 23


def test_mail_report_on_current_engine(engine: ChdbArchive) -> None:
    report = queries.mail_report(engine)
    data.check_report([r for r in report if r["rule_id"] != "hold"])
    mails = queries.rule_mails(engine, rule_id="hold", since_ms=data.T0 - 1, until_ms=data.T0 + 1)
    report_data.check_holdout(report, mails)
    view = engine.query(f"SELECT rule_id, sent, held_out FROM {engine.table('v_mail_report')} ORDER BY rule_id")
    assert sorted((r, int(s), int(h)) for r, s, h in view) == [
        ("cart-1h", 4, 0), ("fav-1h", 1, 0), ("follow", 1, 0), ("follow", 2, 0), ("hold", 2, 2)]


def test_coupon_report_on_current_engine(engine: ChdbArchive) -> None:
    report_data.check_coupons(queries.coupon_report(engine, since=data.DAY, until=data.DAY))


def test_member_search_on_current_engine(engine: ChdbArchive) -> None:
    report_data.check_search(lambda **kw: queries.member_search(engine, **kw))


def test_send_list_and_history_on_current_engine(engine: ChdbArchive) -> None:
    rows = queries.daily_send_list(engine, day=data.DAY)
    assert sorted((r["member_id"], r["rule_id"], r["email"]) for r in rows if r["rule_id"] != "hold") == \
        data.SEND_LIST
    every = queries.history(engine, member_id="m1")
    assert [(h["event_id"], h["type"]) for h in every] == [("b-2", "purchase"), ("b-1", "cart_add")]


def test_deduplicated_views_on_current_engine(engine: ChdbArchive) -> None:
    for view, table in (("v_mail_decisions", "mail_decisions"), ("v_engagement", "engagement"),
                        ("v_beacons", "beacons"), ("v_orders", "orders")):
        stored = int(engine.query(f"SELECT count() FROM {engine.table(table)}")[0][0])
        distinct = int(engine.query(f"SELECT count() FROM {engine.table(view)}")[0][0])
        assert distinct * 2 == stored, view
