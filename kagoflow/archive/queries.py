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


_NEVER = 9223372036854775807
_STATUSES = ("sent", "capped", "suppressed", "skipped", "held_out")
_ACTION_RANK = {"cart": 3, "favorite": 2, "view": 1}
ACTIONS = ("cart", "favorite", "view", "purchase")


def mail_report(
    archive: ArchiveReader,
    *,
    since: date | None = None,
    until: date | None = None,
    rule_id: str | None = None,
    timezone: str = "Asia/Tokyo",
) -> list[dict[str, Any]]:
    """Rows of ``v_mail_report`` (per rule / step / variant / shop-local day, days in [since, until]), read
    from the pre-aggregated per-mail table with ``FINAL`` (merge on read, no GROUP BY over every mail) and
    conversions only for the members who clicked in the period. ``held_out`` is one more column."""
    params: dict[str, Any] = {"tz": timezone, "never": _NEVER}
    mails_where = []
    if rule_id is not None:
        mails_where.append("rule_id = %(rule_id)s")
        params["rule_id"] = rule_id
    period = []
    if since is not None:
        period.append("day >= %(since)s")
        params["since"] = since
        params["since_ms"] = day_start_ms(since, timezone) - _DAY_MS  # clicks before the period matter too
    if until is not None:
        period.append("day <= %(until)s")
        params["until"] = until
    mails, clicks = archive.table("report_mails"), archive.table("report_clicks")
    click_filter = " AND ".join(
        [*(["rule_id = %(rule_id)s"] if rule_id is not None else []),
         *(["at_ms >= %(since_ms)s"] if since is not None else [])]) or "1"
    first = ", ".join(f"('{s}', {s}_ms)" for s in _STATUSES)
    sql = f"""
SELECT rule_id, step, variant, day,
    countIf(status = 'sent') AS sent, countIf(status = 'capped') AS capped,
    countIf(status = 'suppressed') AS suppressed, countIf(status = 'skipped') AS skipped,
    sumIf(delivered, status = 'sent') AS delivered, sumIf(bounced, status = 'sent') AS bounced,
    sumIf(opened, status = 'sent') AS opened, sumIf(clicked, status = 'sent') AS clicked,
    sumIf(opened_incl_bots, status = 'sent') AS opened_incl_bots,
    sumIf(clicked_incl_bots, status = 'sent') AS clicked_incl_bots,
    sumIf(unsubscribed, status = 'sent') AS unsubscribed,
    sumIf(conversions, status = 'sent') AS conversions, sumIf(revenue, status = 'sent') AS revenue,
    if(sent > 0, opened / sent, 0) AS open_rate, if(sent > 0, clicked / sent, 0) AS click_rate,
    if(clicked > 0, conversions / clicked, 0) AS conversion_rate,
    if(sent > 0, revenue / sent, 0) AS revenue_per_mail, countIf(status = 'held_out') AS held_out
FROM
(
    SELECT rule_id, decision_key, step, variant, status, day, delivered, bounced, opened, clicked,
           opened_incl_bots, clicked_incl_bots, unsubscribed
    FROM
    (
        SELECT rule_id, decision_key, step, variant, delivered, bounced, opened, clicked, opened_incl_bots,
               clicked_incl_bots, unsubscribed, tupleElement(first, 1) AS status,
               toDate(toDateTime(intDiv(tupleElement(first, 2), 1000), 'UTC'), %(tz)s) AS day,
               tupleElement(first, 2) AS first_ms
        FROM
        (
            SELECT rule_id, decision_key, {_finals()}
            FROM {mails} FINAL {"WHERE " + " AND ".join(mails_where) if mails_where else ""}
        )
        ARRAY JOIN [{first}] AS first
    )
    WHERE first_ms < %(never)s {"AND " + " AND ".join(period) if period else ""}
) AS mails
ANY LEFT JOIN
(
    SELECT decision_key, count() AS conversions, sum(amount) AS revenue
    FROM
    (
        SELECT purchase_id, argMax(decision_key, click_ms) AS decision_key, any(amount) AS amount
        FROM
        (
            SELECT member_id, decision_key, at_ms AS click_ms FROM {clicks} FINAL
            WHERE member_id IN (SELECT member_id FROM {clicks} WHERE {click_filter})
        ) AS c
        ALL INNER JOIN
        (
            {_purchases(archive, f"SELECT member_id FROM {clicks} WHERE {click_filter}")}
        ) AS p
        USING member_id
        WHERE purchased_ms >= click_ms AND purchased_ms <= click_ms + 172800000
        GROUP BY purchase_id
    )
    GROUP BY decision_key
) AS converted
USING decision_key
GROUP BY rule_id, step, variant, day
ORDER BY day, rule_id, step, variant"""
    return [dict(zip((*REPORT_COLUMNS, "held_out"), row, strict=True)) for row in archive.query(sql, params)]


def _finals() -> str:
    columns = ("step", "variant", *(f"{s}_ms" for s in _STATUSES), "delivered", "bounced", "opened", "clicked",
               "opened_incl_bots", "clicked_incl_bots", "unsubscribed")
    return ", ".join(f"finalizeAggregation({c}) AS {c}" for c in columns)


def _purchases(archive: ArchiveReader, members_sql: str) -> str:
    """``v_report_purchases`` for the members ``members_sql`` selects, with the filter on the sorting key
    (18.16 does not push a filter into a view's GROUP BY)."""
    return f"""SELECT member_id, purchase_id, purchased_ms, if(order_ok, amount, 0) AS amount
            FROM (
                SELECT member_id, purchase_id, minMerge(purchased_ms) AS purchased_ms,
                       argMaxMerge(order_amount) AS amount,
                       maxMerge(has_order) = 1 AND argMaxMerge(order_status) NOT IN ('cancelled', 'canceled')
                           AS order_ok, maxMerge(has_beacon) AS beacon
                FROM {archive.table('report_purchases')} WHERE member_id IN ({members_sql})
                GROUP BY member_id, purchase_id
            ) WHERE order_ok OR beacon = 1"""


def rule_mails(archive: ArchiveReader, *, rule_id: str, since_ms: int, until_ms: int) -> list[dict[str, Any]]:
    """Per mail of ``rule_id`` sent or held out in [since_ms, until_ms): member, variant, the moment, whether
    it was held out, and the purchases of the member after it (``purchase_ms`` list) for holdout uplift."""
    params = {"rule_id": rule_id, "lo": int(since_ms), "hi": int(until_ms), "never": _NEVER}
    mails = archive.table("report_mails")
    sql = f"""
SELECT member_id, variant, at_ms, held, purchases
FROM
(
    SELECT member_id, variant, least(sent_ms, held_out_ms) AS at_ms, toUInt8(held_out_ms < sent_ms) AS held
    FROM
    (
        SELECT finalizeAggregation(member_id) AS member_id, finalizeAggregation(variant) AS variant,
               finalizeAggregation(sent_ms) AS sent_ms, finalizeAggregation(held_out_ms) AS held_out_ms
        FROM {mails} FINAL WHERE rule_id = %(rule_id)s
    )
    WHERE at_ms >= %(lo)s AND at_ms < %(hi)s
) AS m
ANY LEFT JOIN
(
    SELECT member_id, groupArray(purchased_ms) AS purchases
    FROM ({_purchases(archive, f"SELECT finalizeAggregation(member_id) FROM {mails} WHERE rule_id = %(rule_id)s")})
    GROUP BY member_id
) AS p
USING member_id"""
    return [{"member_id": m, "variant": v, "at_ms": int(at), "held_out": bool(h), "purchases": list(p)}
            for m, v, at, h, p in archive.query(sql, params)]


def daily_send_list(
    archive: ArchiveReader,
    *,
    day: date,
    rule_id: str | None = None,
    limit: int = 100_000,
    timezone: str = "Asia/Tokyo",
) -> list[dict[str, Any]]:
    """Who got what on shop-local ``day`` (columns of ``v_daily_send_list``): one dict per sent mail, in
    send order, the first send of a replayed decision. Reads only the partitions of ``date`` (UTC day of the
    due moment) from a week before the day to the day after: a mail sent more than a week late is missed."""
    lo = day_start_ms(day, timezone)
    params: dict[str, Any] = {"lo": lo // 1000, "hi": (lo + _DAY_MS) // 1000, "tz": timezone,
                              "lo_date": date.fromordinal(day.toordinal() - 7),
                              "hi_date": date.fromordinal(day.toordinal() + 1), "limit": int(limit)}
    rule = ""
    if rule_id is not None:
        rule = " AND rule_id = %(rule_id)s"
        params["rule_id"] = rule_id
    decisions = archive.table("mail_decisions")
    sent = (f"FROM {decisions} PREWHERE date >= %(lo_date)s AND date <= %(hi_date)s "
            f"WHERE status = 'sent' AND at >= %(lo)s AND at < %(hi)s{rule}")
    sql = f"""
SELECT {', '.join(SEND_LIST_COLUMNS)}
FROM
(
    SELECT toDate(at, %(tz)s) AS day, at, member_id, rule_id, kind, step, variant, template, products, coupon,
           decision_key
    {sent}
    ORDER BY at, kafka_partition, kafka_offset
    LIMIT 1 BY decision_key
) AS sent_mails
ANY LEFT JOIN
(
    SELECT member_id, argMax(email, ts_ms) AS email FROM {archive.table('members')}
    WHERE member_id IN (SELECT member_id {sent})
    GROUP BY member_id
) AS profiles
USING member_id
ORDER BY at, member_id, rule_id LIMIT %(limit)s"""
    rows = [dict(zip(SEND_LIST_COLUMNS, row, strict=True)) for row in archive.query(sql, params)]
    for item in rows:
        item["products"] = list(item["products"])
    return rows


def member_search(
    archive: ArchiveReader,
    *,
    product_id: str,
    since: date,
    until: date,
    action: str | None = None,
    top_only: bool = False,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Members who acted on ``product_id`` on shop-local days [since, until] (seed 000 §2 access-log search).
    ``action``: cart / favorite / view / purchase. ``top_only``: only members whose highest-priority action
    on the product in the period (cart > favorite > view) is ``action``. Each dict: ``member_id``,
    ``actions`` (sorted), ``top_action``, ``first_ms``, ``last_ms``."""
    if action is not None and action not in ACTIONS:
        raise ValueError(f"action: unknown {action!r}")
    if top_only and action not in _ACTION_RANK:
        raise ValueError("top_only: needs an action of cart, favorite or view")
    params: dict[str, Any] = {"product_id": product_id, "since": since, "until": until, "limit": int(limit),
                              "action": action or ""}
    rank = "transform(action, ['cart', 'favorite', 'view'], [3, 2, 1], 0)"
    having = ""
    if action is not None:
        having = (f"HAVING max({rank}) = {_ACTION_RANK[action]}" if top_only
                  else "HAVING has(groupUniqArray(action), %(action)s)")
    sql = f"""
SELECT member_id, arraySort(groupUniqArray(action)) AS actions, max({rank}) AS top_rank,
       min(finalizeAggregation(first_ms)) AS first_ms, max(finalizeAggregation(last_ms)) AS last_ms
FROM {archive.table('report_member_actions')}
WHERE product = %(product_id)s AND day >= %(since)s AND day <= %(until)s
GROUP BY member_id {having}
ORDER BY last_ms DESC, member_id LIMIT %(limit)s"""
    names = {rank_: name for name, rank_ in _ACTION_RANK.items()}
    return [{"member_id": m, "actions": list(a), "top_action": names.get(int(r), "purchase"),
             "first_ms": int(f), "last_ms": int(la)} for m, a, r, f, la in archive.query(sql, params)]


_DAY_MS = 86_400_000


def day_start_ms(day: date, timezone: str) -> int:
    """Epoch ms of 00:00 of ``day`` in ``timezone``."""
    from datetime import datetime, time
    from zoneinfo import ZoneInfo

    return int(datetime.combine(day, time(0), tzinfo=ZoneInfo(timezone)).timestamp() * 1000)


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
