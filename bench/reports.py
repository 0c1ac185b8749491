"""Report latency benchmark (issue 15): the console's ClickHouse queries on a large archive.

Fills a fresh database (the project's schema, materialized views included) inside ClickHouse with
``numbers()``: beacons, mail decisions, engagement events and orders at ``--scale`` × (100M, 10M, 10M, 1M),
plus 1M member profiles, spread over 30 shop-local days in 10 rules. Rows go through the normal inserts,
so the report tables are filled by their materialized views exactly as in production. Then it times each
query ``--runs`` times and prints p50 / p95:

  report 1 rule 7 d    ``queries.mail_report`` (the report page for one rule, a week)
  holdout 1 rule 7 d   ``ConsoleData.holdout`` (the report page for one rule with held-out mails: uplift)
  report all 14 d      ``queries.mail_report`` (the report page default: every rule, two weeks)
  send list 1 day      ``queries.daily_send_list`` (one shop-local day, every rule)
  member search        ``queries.member_search`` (one product, a week)
  member log           ``queries.history`` (one member's access log)
  rules 7 d            ``ConsoleData.decisions_by_rule`` (rules page / overview counts)
  coupons 14 d         ``queries.coupon_report`` (the report page's coupon table: issued and redeemed codes)

    .venv/bin/python bench/reports.py --scale 0.1          # 10M beacons, 1M decisions, ...
    .venv/bin/python bench/reports.py --scale 1 --keep     # the issue's size; keep the data for reruns
    .venv/bin/python bench/reports.py --reuse DB           # time again on a kept database
    .venv/bin/python bench/reports.py --reuse DB --migrate # ... after the schema gained report tables

The database is dropped at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kagoflow.adapters.clickhouse import ClickHouseArchive
from kagoflow.archive import queries
from kagoflow.console.data import ConsoleData
from kagoflow.settings import Settings

TZ = "Asia/Tokyo"
FIRST_DAY = date(2026, 10, 1)
DAYS = 30
MEMBERS = 1_000_000
PRODUCTS = 10_000
RULES = 10
CHUNK = 5_000_000


def _base_ms() -> int:
    return queries.day_start_ms(FIRST_DAY, TZ)


def fill(archive: ClickHouseArchive, scale: float) -> dict[str, float]:
    """Insert the data set in chunks (bounded memory); returns seconds per table."""
    base, span = _base_ms(), DAYS * 86_400_000
    t = archive.table
    n_beacons, n_decisions = int(100_000_000 * scale), int(10_000_000 * scale)
    n_engagement, n_orders = int(10_000_000 * scale), int(1_000_000 * scale)
    n_coupons = n_decisions // 10
    member = f"concat('m', toString(cityHash64(number, 1) % {MEMBERS}))"
    statements = {
        "members": (MEMBERS, f"""INSERT INTO {t('members')} (ts_ms, member_id, email, opt_in, device, kafka_partition,
            kafka_offset) SELECT {base} - 86400000 + number, concat('m', toString(number)),
            concat('m', toString(number), '@example.jp'), 1, 'pc', 0, number FROM numbers({{offset}}, {{n}})"""),
        # 80 % views, 12 % cart adds, 7 % favourites, 1 % purchases; a purchase beacon names one of the orders
        # (same member, same order id: one purchase in the reports, as in a real shop)
        "beacons": (n_beacons, f"""INSERT INTO {t('beacons')} (ts_ms, event_id, member_id, type, product_id,
            product_ids, order_id, device, shop_id, kafka_partition, kafka_offset)
            SELECT {base} + cityHash64(number, 2) % {span} AS ts, concat('b', toString(number)),
            if(kind = 'purchase', concat('m', toString(cityHash64(oid, 1) % {MEMBERS})), {member}),
            multiIf(r < 80, 'view', r < 92, 'cart_add', r < 99, 'favorite_add', 'purchase') AS kind,
            if(kind = 'purchase', '', concat('P', toString(cityHash64(number, 4) % {PRODUCTS}))),
            if(kind = 'purchase', [concat('P', toString(oid % {PRODUCTS}))], emptyArrayString()),
            if(kind = 'purchase', concat('O', toString(oid)), ''), 'pc', 'default', 0, number
            FROM (SELECT number, cityHash64(number, 3) % 100 AS r, cityHash64(number, 11) % {max(n_orders, 1)} AS oid
                  FROM numbers({{offset}}, {{n}}))"""),
        "mail_decisions": (n_decisions, f"""INSERT INTO {t('mail_decisions')} (decision_key, member_id, rule_id,
            kind, status, reason, products, at_ms, due_ms, episode, template, coupon, sender_name, cap_exempt,
            step, variant, kafka_partition, kafka_offset)
            SELECT concat({member}, '|rule-', toString(number % {RULES}), '|', toString(number)), {member},
            concat('rule-', toString(number % {RULES})), 'abandonment',
            arrayElement(['sent', 'sent', 'sent', 'sent', 'sent', 'sent', 'sent', 'capped', 'skipped',
                          'held_out'], cityHash64(number, 5) % 10 + 1), '',
            [concat('P', toString(number % {PRODUCTS}))],
            {base} + cityHash64(number, 6) % {span} AS at, at, toString(number), 'cart', '', '', 0,
            toUInt8(number % 3), if(cityHash64(number, 7) % 2 = 0, 'A', 'B'), 0, number
            FROM numbers({{offset}}, {{n}})"""),
        # engagement of decision d = number % n_decisions: delivered, then opens and clicks (some by bots)
        "engagement": (n_engagement, f"""INSERT INTO {t('engagement')} (at_ms, event, decision_key, member_id, rule_id,
            url, detail, suspected_bot, kafka_partition, kafka_offset)
            SELECT {base} + cityHash64(d, 6) % {span} + 60000 * (1 + number % 50), arrayElement(['delivered',
            'delivered', 'open', 'open', 'click', 'unsubscribe', 'bounced', 'open', 'click', 'delivered'],
            cityHash64(number, 8) % 10 + 1), concat(m, '|rule-', toString(d % {RULES}), '|', toString(d)), m,
            concat('rule-', toString(d % {RULES})), '', '', toUInt8(cityHash64(number, 9) % 20 = 0), 1, number
            FROM (SELECT number, (number * 7) % {max(n_decisions, 1)} AS d,
                  concat('m', toString(cityHash64(d, 1) % {MEMBERS})) AS m FROM numbers({{offset}}, {{n}}))"""),
        "orders": (n_orders, f"""INSERT INTO {t('orders')} (ts_ms, order_id, member_id, status, ordered_at,
            item_product_ids, item_quantities, item_prices, coupon, total, kafka_partition, kafka_offset)
            SELECT {base} + cityHash64(number, 10) % {span} AS ts, concat('O', toString(number)), {member},
            'ordered', toDateTime(intDiv(ts, 1000)), [concat('P', toString(number % {PRODUCTS}))], [1], [2980.0],
            if(number % 20 = 0, concat('C', toString(number % {max(n_coupons, 1)})), ''), 2980.0, 2, number
            FROM numbers({{offset}}, {{n}})"""),
        "coupons_issued": (n_coupons, _coupons_sql(t("coupons_issued"), base, span)),
    }
    took = {}
    for table, (n, sql) in statements.items():
        start = time.monotonic()
        for offset in range(0, n, CHUNK):
            size = min(CHUNK, n - offset)
            archive.query(sql.replace("{offset}", str(offset)).replace("{n}", str(size)))
        took[table] = time.monotonic() - start
        print(f"fill {table}: {n:,} rows in {took[table]:.0f} s", file=sys.stderr, flush=True)
    return took


def _coupons_sql(table: str, base: int, span: int) -> str:
    """A code with every tenth decision (same member and moment); 5 % of orders carry some code."""
    return f"""INSERT INTO {table} (code, member_id, rule_id, decision_key, kind, variant, issued_ms, expires,
        kafka_partition, kafka_offset)
        SELECT concat('C', toString(number)), m, concat('rule-', toString(d % {RULES})),
        concat(m, '|rule-', toString(d % {RULES}), '|', toString(d)), 'abandonment', '',
        {base} + cityHash64(d, 6) % {span}, '', 3, number
        FROM (SELECT number, number * 10 AS d, concat('m', toString(cityHash64(d, 1) % {MEMBERS})) AS m
              FROM numbers({{offset}}, {{n}}))"""


def migrate(archive: ClickHouseArchive) -> None:
    """Bring a kept database to the current schema: new report tables created and backfilled from its rows."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "infra"))
    from stacklib.provision import backfill_reports

    start = time.monotonic()
    archive.ensure_schema()
    print(f"migrate: backfilled {backfill_reports(archive)} in {time.monotonic() - start:.0f} s", file=sys.stderr)
    optimize(archive)


def optimize(archive: ClickHouseArchive) -> None:
    start = time.monotonic()
    tables = [r[0] for r in archive.query(
        "SELECT name FROM system.tables WHERE database = %(d)s AND name LIKE 'report%%' AND engine LIKE '%%MergeTree'",
        {"d": archive.database})]
    for table in tables:
        archive.query(f"OPTIMIZE TABLE {archive.table(table)} FINAL")
    print(f"optimize {len(tables)} report tables: {time.monotonic() - start:.0f} s", file=sys.stderr)


def timings(archive: ClickHouseArchive, runs: int) -> dict[str, list[float]]:
    rng = random.Random(15)
    data = ConsoleData(archive, timezone=TZ)
    last = FIRST_DAY + timedelta(days=DAYS - 1)

    def report_rule() -> Any:
        return queries.mail_report(archive, rule_id=f"rule-{rng.randrange(RULES)}", since=last - timedelta(days=6),
                                   until=last, timezone=TZ)

    cases: dict[str, Callable[[], Any]] = {
        "report 1 rule 7 d": report_rule,
        "holdout 1 rule 7 d": lambda: data.holdout(f"rule-{rng.randrange(RULES)}", last - timedelta(days=6), last),
        "report all 14 d": lambda: queries.mail_report(archive, since=last - timedelta(days=13), until=last,
                                                       timezone=TZ),
        "send list 1 day": lambda: queries.daily_send_list(
            archive, day=FIRST_DAY + timedelta(days=rng.randrange(DAYS)), timezone=TZ),
        "member search": lambda: queries.member_search(
            archive, product_id=f"P{rng.randrange(PRODUCTS)}", since=last - timedelta(days=6), until=last),
        "member log": lambda: queries.history(archive, member_id=f"m{rng.randrange(MEMBERS)}", limit=200),
        "rules 7 d": lambda: data.decisions_by_rule(last - timedelta(days=6), last),
        "coupons 14 d": lambda: queries.coupon_report(archive, since=last - timedelta(days=13), until=last,
                                                      timezone=TZ),
    }
    out: dict[str, list[float]] = {}
    for name, case in cases.items():
        try:
            case()  # warm-up (first read of the parts)
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                rows = case()
                times.append(time.perf_counter() - start)
        except Exception as exc:  # a query over the memory limit or the timeout: report it, time the others
            print(f"{name:20s} failed: {str(exc).splitlines()[0][:160]}", flush=True)
            continue
        out[name] = times
        count = len(rows) if isinstance(rows, list | dict) else 1
        print(f"{name:20s} p50 {_pct(times, 50):6.3f} s  p95 {_pct(times, 95):6.3f} s  ({count} rows)", flush=True)
    return out


def _pct(values: list[float], pct: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="× (100M beacons, 10M decisions, 10M engagement, "
                                                               "1M orders); members stay 1M")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--reuse", help="time an existing database (from --keep) without filling")
    parser.add_argument("--migrate", action="store_true", help="with --reuse: create and backfill report tables "
                                                               "added to the schema since the database was filled")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    database = args.reuse or f"bench_reports_{int(time.time())}"
    archive = ClickHouseArchive(host=settings.clickhouse_host, port=settings.clickhouse_port, database=database,
                                timezone=TZ, send_receive_timeout=3600)
    try:
        if not args.reuse:
            archive.ensure_schema()
            fill(archive, args.scale)
            optimize(archive)
        elif args.migrate:
            migrate(archive)
        print(f"database {database}, ClickHouse {archive.query('SELECT version()')[0][0]}, runs {args.runs}")
        timings(archive, args.runs)
    finally:
        if not args.keep and not args.reuse:
            archive.query(f"DROP DATABASE IF EXISTS {database}")
        archive.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
