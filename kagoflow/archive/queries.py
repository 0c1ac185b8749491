"""Read side of the archive: a member's access log (行動履歴) and the SPEC §8 analytics views.

Everything reads deduplicated rows (``FINAL``, the ``v_*`` views or idempotent aggregates) so a replayed batch
never shows twice. The console's period reads (report, send list, rules-page counts) live in
``kagoflow.archive.report_queries`` and are re-exported here.
Values are bound as driver parameters (escaped), never formatted into SQL. The "highest priority only"
filter of the access log needs the live behaviour state, so the worker applies it on top of ``history``.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from kagoflow.archive.reader import DAY_MS, REPORT_COLUMNS, SEND_LIST_COLUMNS, ArchiveReader, day_start_ms
from kagoflow.archive.report_queries import (
    coupon_report,
    daily_send_list,
    decision_counts,
    holdout_counts,
    mail_report,
    rule_mails,
)
from kagoflow.core.events import BEACON_TYPES
from kagoflow.core.shoptime import iso

__all__ = ["ACTIONS", "DAY_MS", "HISTORY_COLUMNS", "REPORT_COLUMNS", "SEND_LIST_COLUMNS", "ArchiveReader",
           "coupon_report", "daily_send_list", "day_start_ms", "decision_counts", "history", "holdout_counts",
           "mail_report", "member_search", "rule_mails"]

HISTORY_COLUMNS = ("action_ms", "event_id", "type", "product_id", "product_ids", "order_id", "price",
                   "quantity", "device", "shop_id", "last_access_ms")


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


_ACTION_RANK = {"cart": 3, "favorite": 2, "view": 1}
ACTIONS = ("cart", "favorite", "view", "purchase")


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
