"""The console's period reads of the §14 report, the daily send list and the rules-page counts.

They read the ``report_*`` day tables of schema.sql, sorted by the UTC date of each row's own moment, so a period
is a few index ranges of narrow rows (64-bit hashes instead of strings), never a scan of the archive:

- a mail's day is the shop-local day of its first decision of that status (a worker re-deciding after a crash adds
  a row at a later moment); decisions are read from one UTC day before the period so a re-decision that crosses
  the period's start still counts on the first day — one made more than a day later would count again;
- a mail's engagement and the clicks and purchases of its attribution all happen at or after its decision, so
  they are read from the same date on (one day of margin for clock skew between hosts);
- every aggregate is idempotent (DISTINCT keys, min, argMax, groupBitOr), so replayed rows change nothing.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from kagoflow.archive.reader import DAY_MS, REPORT_COLUMNS, SEND_LIST_COLUMNS, ArchiveReader, day_start_ms

STATUSES = ("sent", "capped", "suppressed", "skipped", "held_out")
_STATUS_LIST = "(" + ", ".join(f"'{s}'" for s in STATUSES) + ")"
_STATUS_INDEXES = "[" + ", ".join(str(i) for i in range(1, len(STATUSES) + 1)) + "]"  # STATUSES[i - 1]
# report_mail_events.flags bits (schema.sql)
_FLAGS = (("delivered", 1), ("bounced", 2), ("opened", 4), ("clicked", 8), ("opened_incl_bots", 16),
          ("clicked_incl_bots", 32), ("unsubscribed", 64))
_ATTRIBUTION_MS = 2 * DAY_MS
_NEVER = 9223372036854775807
_NEVER_S = 4294967295  # "no such status" among first moments in seconds (UInt32)
_FAR_FUTURE = date(2100, 1, 1)  # within Date of every release


def _utc_date(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, ZoneInfo("UTC")).date()


def mail_report(
    archive: ArchiveReader,
    *,
    since: date | None = None,
    until: date | None = None,
    rule_id: str | None = None,
    timezone: str = "Asia/Tokyo",
) -> list[dict[str, Any]]:
    """Rows of ``v_mail_report`` (per rule / step / variant / shop-local day, days in [since, until]) plus
    ``held_out``. Held-out decisions count only in ``held_out``: sent and every engagement column are sends."""
    lo = day_start_ms(since, timezone) if since is not None else 0
    hi = day_start_ms(until + timedelta(days=1), timezone) if until is not None else 2**62
    params: dict[str, Any] = {
        "tz": timezone, "lo": lo, "hi": hi, "lo_s": lo // 1000, "hi_s": min(hi // 1000, _NEVER_S),
        "window": _ATTRIBUTION_MS,
        "lo_date": _utc_date(lo - DAY_MS) if since is not None else date(1970, 1, 1),
        "hi_date": _utc_date(hi) if until is not None else _FAR_FUTURE,
    }
    rule = ""
    if rule_id is not None:
        rule = " AND rule_id = %(rule_id)s"
        params["rule_id"] = rule_id
    t = archive.table
    clicks = (f"SELECT member_hash, mail_hash, at_ms AS click_ms FROM {t('report_click_days')} "
              f"WHERE date >= %(lo_date)s AND at_ms >= %(lo)s")
    clickers = ""
    if rule_id is not None:  # only members who clicked this rule's mails can convert on them
        clickers = (f" AND member_hash IN (SELECT member_hash FROM {t('report_click_days')} "
                    f"WHERE date >= %(lo_date)s AND at_ms >= %(lo)s AND rule_id = %(rule_id)s)")
    # per mail only fixed-size states (memory: ~5M mails in two weeks of the benchmark's archive): the rule / step /
    # variant as one 64-bit group hash resolved to names at the end, first moments in seconds
    firsts = ", ".join(f"min(if(status = '{s}', at_s, toUInt32({_NEVER_S})))" for s in STATUSES)
    counts = ", ".join(f"countIf(status = {i}) AS {name}" for i, name in enumerate(STATUSES[:4], 1))
    flags = ", ".join(f"sumIf(bitAnd(bits, {bit}) != 0, status = 1) AS {name}" for name, bit in _FLAGS)
    decisions = (f"FROM {t('report_decisions')} WHERE date >= %(lo_date)s AND date <= %(hi_date)s "
                 f"AND status IN {_STATUS_LIST}{rule}")
    sql = f"""
SELECT rule_id, step, variant, day, {", ".join(STATUSES[:4])}, {", ".join(name for name, _ in _FLAGS)},
    conversions, revenue, if(sent > 0, opened / sent, 0) AS open_rate, if(sent > 0, clicked / sent, 0) AS click_rate,
    if(clicked > 0, conversions / clicked, 0) AS conversion_rate,
    if(sent > 0, revenue / sent, 0) AS revenue_per_mail, held_out
FROM
(
    SELECT grp, day, {counts}, {flags}, countIf(status = 5) AS held_out,
        sumIf(mail_conversions, status = 1) AS conversions, sumIf(mail_revenue, status = 1) AS revenue
    FROM
    (
        SELECT grp, bits, mail_hash, status, toDate(toDateTime(firsts[status], 'UTC'), %(tz)s) AS day
        FROM
        (
            SELECT mail_hash, max(mail_grp) AS grp, groupBitOr(mail_flags) AS bits, [{firsts}] AS firsts
            FROM
            (
                SELECT mail_hash, cityHash64(rule_id, mail_step, mail_variant) AS mail_grp, status,
                       toUInt32(intDiv(at_ms, 1000)) AS at_s, toUInt8(0) AS mail_flags
                {decisions}
                UNION ALL
                SELECT mail_hash, toUInt64(0) AS mail_grp, '' AS status, toUInt32(0) AS at_s,
                       finalizeAggregation(flags) AS mail_flags
                FROM {t('report_mail_events')}
                WHERE date >= %(lo_date)s{rule}
            )
            GROUP BY mail_hash
        )
        ARRAY JOIN arrayFilter(i -> firsts[i] >= %(lo_s)s AND firsts[i] < %(hi_s)s, {_STATUS_INDEXES}) AS status
    ) AS mails
    ANY LEFT JOIN
    (
        SELECT mail_hash, count() AS mail_conversions, sum(amount) AS mail_revenue
        FROM
        (
            SELECT purchase_hash, argMax(mail_hash, click_ms) AS mail_hash, any(paid) AS amount
            FROM ({clicks}{clickers}) AS clicked
            ALL INNER JOIN
            ({_purchases(archive, clickers)}) AS bought
            USING member_hash
            WHERE purchased_ms >= click_ms AND purchased_ms <= click_ms + %(window)s
            GROUP BY purchase_hash
        )
        GROUP BY mail_hash
    ) AS converted
    USING mail_hash
    GROUP BY grp, day
) AS per_group
ANY LEFT JOIN
(
    SELECT DISTINCT cityHash64(rule_id, mail_step, mail_variant) AS grp, rule_id, mail_step AS step,
           mail_variant AS variant
    {decisions}
) AS names
USING grp
ORDER BY day, rule_id, step, variant"""
    return [dict(zip((*REPORT_COLUMNS, "held_out"), row, strict=True)) for row in archive.query(sql, params)]


def _purchases(archive: ArchiveReader, members: str) -> str:
    """Purchases at or after ``lo`` (as ``v_purchases``: an order whose latest status is not cancelled, or a
    purchase beacon), with the amount of the order's latest record (0 for a beacon without an order)."""
    return f"""SELECT member_hash, purchase_hash, purchased_ms, if(order_ok, order_paid, 0) AS paid
        FROM
        (
            SELECT member_hash, purchase_hash, min(purchased_ms) AS purchased_ms,
                   argMaxIf(order_amount, record_ms, is_order = 1) AS order_paid,
                   max(is_order) = 1 AND argMaxIf(order_status, record_ms, is_order = 1)
                       NOT IN ('cancelled', 'canceled') AS order_ok,
                   min(is_order) = 0 AS beacon
            FROM {archive.table('report_purchase_days')}
            WHERE date >= %(lo_date)s{members}
            GROUP BY member_hash, purchase_hash
        )
        WHERE (order_ok OR beacon) AND purchased_ms >= %(lo)s"""


def _held_or_sent(archive: ArchiveReader) -> str:
    """Per mail of the rule sent or held out in [lo, hi): member, variant, the moment, whether held out."""
    return f"""SELECT mail_hash, member_id, variant, first_ms, held, cityHash64(member_id) AS member_hash
        FROM
        (
            SELECT mail_hash, any(member_id) AS member_id, max(mail_variant) AS variant,
                   min(if(status = 'sent', at_ms, toInt64({_NEVER}))) AS sent_ms,
                   min(if(status = 'held_out', at_ms, toInt64({_NEVER}))) AS held_ms,
                   least(sent_ms, held_ms) AS first_ms, toUInt8(held_ms < sent_ms) AS held
            FROM {archive.table('report_decisions')}
            WHERE date >= %(lo_date)s AND date <= %(hi_date)s AND rule_id = %(rule_id)s
                  AND status IN ('sent', 'held_out')
            GROUP BY mail_hash
        )
        WHERE first_ms >= %(lo)s AND first_ms < %(hi)s"""


def _holdout_params(rule_id: str, since_ms: int, until_ms: int) -> dict[str, Any]:
    return {"rule_id": rule_id, "lo": int(since_ms), "hi": int(until_ms),
            "lo_date": _utc_date(int(since_ms) - DAY_MS), "hi_date": _utc_date(int(until_ms))}


def _member_purchases(archive: ArchiveReader) -> str:
    members = (f" AND member_hash IN (SELECT cityHash64(member_id) FROM {archive.table('report_decisions')} "
               f"WHERE date >= %(lo_date)s AND date <= %(hi_date)s AND rule_id = %(rule_id)s)")
    return f"SELECT member_hash, purchased_ms FROM ({_purchases(archive, members)})"


def rule_mails(archive: ArchiveReader, *, rule_id: str, since_ms: int, until_ms: int) -> list[dict[str, Any]]:
    """Per mail of ``rule_id`` sent or held out in [since_ms, until_ms): member, variant, the moment, whether
    it was held out, and the member's purchases at or after ``since_ms`` (``purchases``, epoch ms)."""
    sql = f"""
SELECT member_id, variant, first_ms, held, purchases
FROM ({_held_or_sent(archive)}) AS m
ANY LEFT JOIN
(
    SELECT member_hash, groupArray(purchased_ms) AS purchases FROM ({_member_purchases(archive)}) GROUP BY member_hash
) AS p
USING member_hash"""
    return [{"member_id": m, "variant": v, "at_ms": int(at), "held_out": bool(h), "purchases": sorted(p)}
            for m, v, at, h, p in archive.query(sql, _holdout_params(rule_id, since_ms, until_ms))]


def holdout_counts(archive: ArchiveReader, *, rule_id: str, since_ms: int, until_ms: int,
                   window_ms: int) -> tuple[int, int, int, int]:
    """§14 holdout of ``rule_id`` for mails decided in [since_ms, until_ms): (buyers, mails) of the sent group
    and of the held-out group, a buyer having purchased within ``window_ms`` after the decision moment."""
    sql = f"""
SELECT countIf(bought AND held = 0), countIf(held = 0), countIf(bought AND held = 1), countIf(held = 1)
FROM
(
    SELECT mail_hash, any(held) AS held,
           max(purchased_ms >= first_ms AND purchased_ms <= first_ms + %(window)s) AS bought
    FROM ({_held_or_sent(archive)}) AS m
    ALL LEFT JOIN ({_member_purchases(archive)}) AS p
    USING member_hash
    GROUP BY mail_hash
)"""
    rows = archive.query(sql, {**_holdout_params(rule_id, since_ms, until_ms), "window": int(window_ms)})
    if not rows:
        return (0, 0, 0, 0)
    a, b, c, d = (int(v) for v in rows[0])
    return (a, b, c, d)


def coupon_report(
    archive: ArchiveReader,
    *,
    since: date,
    until: date,
    rule_id: str | None = None,
    timezone: str = "Asia/Tokyo",
) -> list[dict[str, Any]]:
    """Coupon codes issued on shop-local days [since, until] and redeemed (``v_coupon_redemptions``, SPEC §13),
    per rule / variant / day of issue. The view reads every order, so it runs only when the period issued a code."""
    lo = day_start_ms(since, timezone)
    hi = day_start_ms(until + timedelta(days=1), timezone)
    params: dict[str, Any] = {"lo": lo, "hi": hi, "lo_s": lo // 1000, "hi_s": hi // 1000, "tz": timezone,
                              "lo_date": _utc_date(lo), "hi_date": _utc_date(hi)}
    rule = ""
    if rule_id is not None:
        rule = " AND rule_id = %(rule_id)s"
        params["rule_id"] = rule_id
    issued = archive.query(f"SELECT count() FROM {archive.table('coupons_issued')} WHERE date >= %(lo_date)s "
                           f"AND date <= %(hi_date)s AND issued_ms >= %(lo)s AND issued_ms < %(hi)s{rule}", params)
    if not issued or not issued[0][0]:
        return []
    sql = f"""
SELECT rule_id, variant, toDate(issued_at, %(tz)s) AS day, count() AS issued, sum(redeemed) AS redeemed
FROM {archive.table('v_coupon_redemptions')}
WHERE issued_at >= toDateTime(%(lo_s)s) AND issued_at < toDateTime(%(hi_s)s){rule}
GROUP BY rule_id, variant, day
ORDER BY day, rule_id, variant"""
    return [{"rule_id": r, "variant": v, "day": d, "issued": int(i), "redeemed": int(n)}
            for r, v, d, i, n in archive.query(sql, params)]


def daily_send_list(
    archive: ArchiveReader,
    *,
    day: date,
    rule_id: str | None = None,
    limit: int = 100_000,
    timezone: str = "Asia/Tokyo",
) -> list[dict[str, Any]]:
    """Who got what on shop-local ``day`` (columns of ``v_daily_send_list``): one dict per sent mail, in send
    order, the first send of a replayed decision, with the member's latest e-mail address."""
    lo = day_start_ms(day, timezone)
    hi = lo + DAY_MS
    params: dict[str, Any] = {"lo": lo, "hi": hi, "tz": timezone, "lo_date": _utc_date(lo),
                              "hi_date": _utc_date(hi), "limit": int(limit)}
    rule = ""
    if rule_id is not None:
        rule = " AND rule_id = %(rule_id)s"
        params["rule_id"] = rule_id
    sends = (f"FROM {archive.table('report_sends')} WHERE date >= %(lo_date)s AND date <= %(hi_date)s "
             f"AND at_ms >= %(lo)s AND at_ms < %(hi)s{rule}")
    sql = f"""
SELECT {', '.join(SEND_LIST_COLUMNS)}
FROM
(
    SELECT toDate(at, %(tz)s) AS day, at, member_id, rule_id, kind, step, variant, template, products, coupon,
           decision_key
    {sends}
    ORDER BY at_ms, kafka_partition, kafka_offset
    LIMIT 1 BY decision_key
) AS sent_mails
ANY LEFT JOIN
(
    SELECT member_id, argMaxMerge(latest_email) AS email FROM {archive.table('report_emails')}
    WHERE member_id IN (SELECT member_id {sends})
    GROUP BY member_id
) AS profiles
USING member_id
ORDER BY at, member_id, rule_id LIMIT %(limit)s"""
    rows = [dict(zip(SEND_LIST_COLUMNS, row, strict=True)) for row in archive.query(sql, params)]
    for item in rows:
        item["products"] = list(item["products"])
    return rows


def decision_counts(archive: ArchiveReader, *, since: date, until: date,
                    timezone: str) -> dict[str, dict[str, int]]:
    """rule → status → distinct decisions made on shop-local days [since, until] (a replayed decision counts on
    each day it was made)."""
    lo = day_start_ms(since, timezone)
    hi = day_start_ms(until + timedelta(days=1), timezone)
    sql = (f"SELECT rule_id, status, uniqExact(mail_hash) FROM {archive.table('report_decisions')} "
           f"WHERE date >= %(lo_date)s AND date <= %(hi_date)s AND at_ms >= %(lo)s AND at_ms < %(hi)s "
           f"GROUP BY rule_id, status")
    out: dict[str, dict[str, int]] = {}
    for rule, status, count in archive.query(sql, {"lo": lo, "hi": hi, "lo_date": _utc_date(lo),
                                                   "hi_date": _utc_date(hi)}):
        out.setdefault(rule, {})[status] = int(count)
    return out
