"""What the console pages read from ClickHouse, beyond the §14 report queries in ``kagoflow.archive.queries``.

Each query touches only what a page needs: one member's rows, or the report day tables (today's and the last
week's decisions: ``queries.decision_counts``). Blocking driver calls run in a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from kagoflow.archive import queries
from kagoflow.archive.queries import ArchiveReader
from kagoflow.console import stats

T = TypeVar("T")
STATUSES = ("sent", "capped", "suppressed", "skipped", "held_out")


class ConsoleData:
    def __init__(self, archive: ArchiveReader, *, timezone: str) -> None:
        self.archive = archive
        self.timezone = timezone
        self.tz = ZoneInfo(timezone)

    def today(self) -> date:
        return datetime.now(self.tz).date()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    # -- overview / rules ------------------------------------------------------------------------------
    def decisions_by_rule(self, since: date, until: date) -> dict[str, dict[str, int]]:
        """rule → status → distinct decisions of shop-local days [since, until] (the report day table)."""
        return queries.decision_counts(self.archive, since=since, until=until, timezone=self.timezone)

    # -- scenario status -------------------------------------------------------------------------------
    def scenario_status(self) -> list[dict[str, Any]]:
        """Per scenario rule and step (the member's highest sent/held-out step of the latest run): members
        running, ended and converted. A rule counts as a scenario when it has ``started`` decisions."""
        table = self.archive.table("mail_decisions")
        sql = f"""
SELECT rule_id, step, countIf(state = 'running'), countIf(state = 'ended'), countIf(state = 'converted')
FROM
(
    SELECT rule_id, member_id, maxIf(step, status IN ('sent', 'held_out')) AS step,
           argMaxIf(status, at_ms, status IN ('started', 'ended', 'converted')) AS last,
           if(last IN ('ended', 'converted'), last, 'running') AS state
    FROM {table}
    WHERE rule_id IN (SELECT rule_id FROM {table} WHERE status = 'started')
    GROUP BY rule_id, member_id
    HAVING countIf(status IN ('started', 'ended', 'converted')) > 0
)
GROUP BY rule_id, step ORDER BY rule_id, step"""
        return [{"rule_id": r, "step": int(s), "running": int(a), "ended": int(b), "converted": int(c)}
                for r, s, a, b, c in self.archive.query(sql)]

    # -- member page -----------------------------------------------------------------------------------
    def member_mails(self, member_id: str, *, limit: int = 200) -> list[dict[str, Any]]:
        """The member's decisions (each key and status once), newest first: what was sent or not, and why."""
        sql = (f"SELECT rule_id, status, reason, min(at_ms) AS at, any(step), any(variant), any(coupon), "
               f"any(products), decision_key FROM {self.archive.table('mail_decisions')} "
               f"PREWHERE member_id = %(m)s GROUP BY decision_key, rule_id, status, reason "
               f"ORDER BY at DESC LIMIT %(limit)s")
        cols = ("rule_id", "status", "reason", "at_ms", "step", "variant", "coupon", "products", "decision_key")
        rows = [dict(zip(cols, row, strict=True)) for row in self.archive.query(sql, {"m": member_id,
                                                                                     "limit": limit})]
        for row in rows:
            row["at"] = self.local(row["at_ms"])
        return rows

    def local(self, ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, self.tz).strftime("%Y-%m-%d %H:%M:%S")

    # -- A/B and holdout (§14) -------------------------------------------------------------------------
    def ab_tests(self, report: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per rule and step with both variants A and B in ``report``: z-tests on click and conversion rate."""
        arms: dict[tuple[str, int], dict[str, dict[str, float]]] = {}
        for row in report:
            if row["variant"] not in ("A", "B"):
                continue
            arm = arms.setdefault((row["rule_id"], int(row["step"])), {}).setdefault(
                row["variant"], {"sent": 0, "clicked": 0, "conversions": 0})
            for name in arm:
                arm[name] += float(row[name])
        out = []
        for (rule, step), pair in sorted(arms.items()):
            if set(pair) != {"A", "B"}:
                continue
            a, b = pair["A"], pair["B"]
            click = stats.two_proportion_z(int(a["clicked"]), int(a["sent"]), int(b["clicked"]), int(b["sent"]))
            conv = stats.two_proportion_z(int(a["conversions"]), int(a["sent"]), int(b["conversions"]),
                                          int(b["sent"]))
            out.append({"rule_id": rule, "step": step, "a": a, "b": b, "click": click, "conversion": conv})
        return out

    def holdout(self, rule_id: str, since: date, until: date, *, attribution_days: int = 7) -> stats.Uplift:
        """Purchase rate within ``attribution_days`` after the decision, sent vs held out, for ``rule_id``."""
        lo = queries.day_start_ms(since, self.timezone)
        hi = queries.day_start_ms(until + timedelta(days=1), self.timezone)
        buyers_sent, n_sent, buyers_held, n_held = queries.holdout_counts(
            self.archive, rule_id=rule_id, since_ms=lo, until_ms=hi, window_ms=attribution_days * 86_400_000)
        return stats.holdout_uplift(buyers_sent, n_sent, buyers_held, n_held)
