"""What every archive read shares: the engine protocol, the report columns and shop-local day bounds."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, time
from typing import Any, Protocol
from zoneinfo import ZoneInfo

REPORT_COLUMNS = ("rule_id", "step", "variant", "day", "sent", "capped", "suppressed", "skipped", "delivered",
                  "bounced", "opened", "clicked", "opened_incl_bots", "clicked_incl_bots", "unsubscribed",
                  "conversions", "revenue", "open_rate", "click_rate", "conversion_rate", "revenue_per_mail")
SEND_LIST_COLUMNS = ("day", "at", "member_id", "email", "rule_id", "kind", "step", "variant", "template",
                     "products", "coupon", "decision_key")
DAY_MS = 86_400_000


class ArchiveReader(Protocol):
    """What the queries need: ``ClickHouseArchive`` (or any engine that runs the same SQL)."""

    def table(self, name: str) -> str: ...

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]: ...


def day_start_ms(day: date, timezone: str) -> int:
    """Epoch ms of 00:00 of ``day`` in ``timezone``."""
    return int(datetime.combine(day, time(0), tzinfo=ZoneInfo(timezone)).timestamp() * 1000)
