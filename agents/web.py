"""HTTP views of the worker: member state and access log, products, health and metrics.

Member views are routed by Faust's ``table_route`` to the worker that owns the member's partition, so any
worker can be asked. Tracking routes (open pixel, click redirect, unsubscribe) are mounted from
``kagoflow.web.tracking`` on the same server.
"""

from __future__ import annotations

import asyncio
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import faust
from faust.web import Request, Response, View

from kagoflow.adapters.clickhouse import ArchiveError, ClickHouseArchive
from kagoflow.core.behaviour import MemberState, current_products
from kagoflow.core.events import BEACON_TYPES
from kagoflow.core.shoptime import at_local_time
from kagoflow.worker.processor import profile_snapshot

if TYPE_CHECKING:
    from kagoflow.agents.app import Kagoflow

ACTION_STATE = {"cart_add": "cart", "favorite_add": "favorite", "view": "view"}


def _ms(request: Request, name: str, *, tz: ZoneInfo, end_of_day: bool = False) -> int | None:
    """A time bound of the access log: epoch ms, ISO-8601 with offset, or a shop-local date ``YYYY-MM-DD``
    (operators filter by days: as ``to`` a date includes that whole day, the bound being exclusive)."""
    raw = request.query.get(name)
    if raw in (None, ""):
        return None
    from kagoflow.streams.contract import parse_ts

    if raw.isdigit():
        return parse_ts(int(raw), field=name)
    if len(raw) == 10:
        try:
            day = date.fromisoformat(raw)
        except ValueError:
            pass
        else:
            return at_local_time(day + timedelta(days=1) if end_of_day else day, (0, 0), tz)
    return parse_ts(raw, field=name)


def member_document(state: MemberState) -> dict[str, Any]:
    return {
        "member_id": state.member_id,
        "profile": profile_snapshot(state),
        "last_access_ms": state.last_access,
        "device": state.device,
        "products": current_products(state),
    }


def add_routes(kf: Kagoflow) -> None:
    app: faust.App = kf.app

    async def state_of(member_id: str) -> MemberState | None:
        return await kf.member_state(member_id)

    archives: list[ClickHouseArchive] = []

    def archive() -> ClickHouseArchive:
        """One connection for all requests (it serialises its queries and reconnects by itself)."""
        if not archives:
            archives.append(ClickHouseArchive.from_settings(kf.settings))
        return archives[0]

    @app.page("/api/members/{member_id}")
    class MemberView(View):
        @app.table_route(table=kf.member_table, match_info="member_id")  # type: ignore[arg-type]
        async def get(self, request: Request, member_id: str) -> Response:
            state = await state_of(member_id)
            if state is None:
                return self.json({"error": "unknown member"}, status=404)
            return self.json(member_document(state))

    @app.page("/api/members/{member_id}/log")
    class AccessLogView(View):
        """Access log (seed 000 §2): current state per product + action history from ClickHouse."""

        @app.table_route(table=kf.member_table, match_info="member_id")  # type: ignore[arg-type]
        async def get(self, request: Request, member_id: str) -> Response:
            from kagoflow.core.errors import ContractError

            tz = kf.ruleset.shop.timezone
            try:
                since, until = _ms(request, "from", tz=tz), _ms(request, "to", tz=tz, end_of_day=True)
            except ContractError as exc:
                return self.json({"error": exc.reason}, status=400)
            product = request.query.get("product") or None
            kind = request.query.get("type") or None
            if kind is not None and kind not in BEACON_TYPES:
                return self.json({"error": f"type: unknown {kind!r}"}, status=400)
            top_only = request.query.get("top_only", "") in {"1", "true", "yes"}
            state = await state_of(member_id)
            try:
                history = await _history(archive(), member_id=member_id, since=since, until=until,
                                         product=product, kind=kind)
            except ArchiveError as exc:  # the live state is still worth showing while ClickHouse is away
                return self.json({"error": f"archive: {exc}", "member_id": member_id,
                                  "current": current_products(state) if state else [], "history": []},
                                 status=503)
            for row in history:
                current = state.product_state(row["product_id"]) if state and row.get("product_id") else None
                row["is_top"] = current is not None and ACTION_STATE.get(row["type"]) == current
            if top_only:
                history = [row for row in history if row["is_top"]]
            return self.json({
                "member_id": member_id,
                "current": current_products(state) if state else [],
                "history": history,
            })

    @app.page("/api/products/{product_id}")
    class ProductView(View):
        async def get(self, request: Request, product_id: str) -> Response:
            info = kf.catalog.get(product_id)
            if info is None:
                return self.json({"error": "unknown product"}, status=404)
            return self.json(info.to_json())

    @app.page("/health")
    class HealthView(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok", "catalog_ready": kf.catalog.caught_up.is_set()})

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            engine = await kf.engine_metrics()
            return self.json({
                "members": engine["members"],
                "products": len(kf.catalog.products),
                "delivery": dict(kf.deliverer.metrics) if kf.deliverer is not None else None,
                "archive": engine["archive"],
            })


async def _history(archive: ClickHouseArchive, **query: Any) -> list[dict[str, Any]]:
    from kagoflow.archive.queries import history

    return await asyncio.to_thread(
        history, archive, member_id=query["member_id"], since_ms=query["since"], until_ms=query["until"],
        product_id=query["product"], type=query["kind"],
    )
