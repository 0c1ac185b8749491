"""Read side of the archive: a member's access log (行動履歴) and the SPEC §8 analytics views.

Everything reads deduplicated rows (``FINAL`` or the ``v_*`` views) so a replayed batch never shows twice.
Values are bound as driver parameters (escaped), never formatted into SQL. The "highest priority only"
filter of the access log needs the live behaviour state, so the worker applies it on top of ``history``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any, Protocol

from kagoflow.core.events import BEACON_TYPES
from kagoflow.core.shoptime import iso

HISTORY_COLUMNS = ("action_ms", "event_id", "type", "product_id", "product_ids", "order_id", "price",
                   "quantity", "device", "shop_id", "last_access_ms")
REPORT_COLUMNS = ("rule_id", "step", "variant", "day", "sent", "capped", "suppressed", "skipped", "delivered",
                  "bounced", "opened", "clicked", "opened_incl_bots", "clicked_incl_bots", "unsubscribed",
                  "conversions", "revenue", "open_rate", "click_rate", "conversion_rate", "revenue_per_mail")
SEND_LIST_COLUMNS = ("day", "at", "member_id", "email", "rule_id", "kind", "step", "variant", "template",
                     "products", "coupon", "decision_key")


class ArchiveReader(Protocol):
    """What the queries need: ``ClickHouseArchive`` (or any engine that runs the same SQL)."""

    def table(self, name: str) -> str: ...

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]: ...


def history(
    archive: ArchiveReader,
    *,
    member_id: str,
    since_ms: int | None = None,
    until_ms: int | None = None,
    product_id: str | None = None,
    type: str | None = None,
    limit: int = 1000,
    newest_first: bool = True,
) -> list[dict[str, Any]]:
    """A member's beacons in ``[since_ms, until_ms)``, optionally one product (purchases listing it
    included) and one beacon type. Each dict: ``action_time`` / ``action_ms``, ``type``, ``product_id``,
    ``product_ids``, ``order_id``, ``price``, ``quantity``, ``device``, ``shop_id``, ``event_id`` and the
    member's ``last_access`` / ``last_access_ms`` (latest beacon of any type, over the whole archive)."""
    if type is not None and type not in BEACON_TYPES:
        raise ValueError(f"type: unknown {type!r}")
    if limit < 1:
        raise ValueError("limit: must be >= 1")
    where = ["member_id = %(member_id)s"]
    params: dict[str, Any] = {"member_id": member_id, "limit": int(limit)}
    if since_ms is not None:
        where.append("ts_ms >= %(since_ms)s")
        params["since_ms"] = int(since_ms)
    if until_ms is not None:
        where.append("ts_ms < %(until_ms)s")
        params["until_ms"] = int(until_ms)
    if product_id is not None:
        where.append("(product_id = %(product_id)s OR has(product_ids, %(product_id)s))")
        params["product_id"] = product_id
    if type is not None:
        where.append("type = %(type)s")
        params["type"] = type
    beacons = archive.table("beacons")
    order = "DESC" if newest_first else "ASC"
    sql = (
        f"SELECT ts_ms, event_id, type, product_id, product_ids, order_id, price, quantity, device, shop_id, "
        f"(SELECT max(ts_ms) FROM {beacons} WHERE member_id = %(member_id)s) AS last_access_ms "
        f"FROM {beacons} FINAL WHERE {' AND '.join(where)} "
        f"ORDER BY ts_ms {order}, event_id {order} LIMIT %(limit)s"
    )
    out = []
    for row in archive.query(sql, params):
        item = dict(zip(HISTORY_COLUMNS, row, strict=True))
        item["product_id"] = item["product_id"] or None
        item["order_id"] = item["order_id"] or None
        item["device"] = item["device"] or None
        item["product_ids"] = list(item["product_ids"])
        item["action_time"] = iso(item["action_ms"])
        item["last_access_time"] = iso(item["last_access_ms"])
        out.append(item)
    return out


def mail_report(
    archive: ArchiveReader,
    *,
    since: date | None = None,
    until: date | None = None,
    rule_id: str | None = None,
) -> list[dict[str, Any]]:
    """Rows of ``v_mail_report`` (per rule / step / variant / shop-local day, days in [since, until])."""
    where, params = _day_filter(since, until, rule_id)
    sql = (f"SELECT {', '.join(REPORT_COLUMNS)} FROM {archive.table('v_mail_report')}{where} "
           f"ORDER BY day, rule_id, step, variant")
    return [dict(zip(REPORT_COLUMNS, row, strict=True)) for row in archive.query(sql, params)]


def daily_send_list(
    archive: ArchiveReader,
    *,
    day: date,
    rule_id: str | None = None,
    limit: int = 100_000,
) -> list[dict[str, Any]]:
    """Who got what on shop-local ``day``: one dict per sent mail, in send order."""
    where, params = _day_filter(day, day, rule_id)
    params["limit"] = int(limit)
    sql = (f"SELECT {', '.join(SEND_LIST_COLUMNS)} FROM {archive.table('v_daily_send_list')}{where} "
           f"ORDER BY at, member_id, rule_id LIMIT %(limit)s")
    rows = [dict(zip(SEND_LIST_COLUMNS, row, strict=True)) for row in archive.query(sql, params)]
    for item in rows:
        item["products"] = list(item["products"])
    return rows


def _day_filter(since: date | None, until: date | None, rule_id: str | None) -> tuple[str, dict[str, Any]]:
    clauses = []
    params: dict[str, Any] = {}
    if since is not None:
        clauses.append("day >= %(since)s")
        params["since"] = since
    if until is not None:
        clauses.append("day <= %(until)s")
        params["until"] = until
    if rule_id is not None:
        clauses.append("rule_id = %(rule_id)s")
        params["rule_id"] = rule_id
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
