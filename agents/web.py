"""The operator API on Faust's web server: member state and access log, products, metrics.

Member views are routed by Faust's ``table_route`` to the worker that owns the member's partition (its
``operator_url``), so any worker can be asked; the forwarded request keeps its ``Authorization`` header.
The server binds ``KAGOFLOW_OPERATOR_HOST`` (loopback by default) and checks the bearer token
(``kagoflow.web.operator``). Tracking routes are on the public server
(``kagoflow.web.public``), never here, and Faust's own views (``/table``, ``/router``, statistics) are off.
A bad query parameter is a 400 naming it, an unknown member a 404.
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
from kagoflow.core.errors import ContractError
from kagoflow.core.events import BEACON_TYPES
from kagoflow.core.shoptime import at_local_time
from kagoflow.worker.processor import profile_snapshot

if TYPE_CHECKING:
    from kagoflow.agents.app import Kagoflow

ACTION_STATE = {"cart_add": "cart", "favorite_add": "favorite", "view": "view"}


MAX_PARAM_LENGTH = 256
TOP_ONLY = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False, "": False}


class BadParameter(ValueError):
    """A query parameter the operator API refuses; the message names it and what is expected."""


def _ms(request: Request, name: str, *, tz: ZoneInfo, end_of_day: bool = False) -> int | None:
    """A time bound of the access log: epoch ms, ISO-8601 with offset, or a shop-local date ``YYYY-MM-DD``
    (operators filter by days: as ``to`` a date includes that whole day, the bound being exclusive).
    Anything else, or a time outside 1970..2099, is ``BadParameter`` naming ``name``."""
    raw = request.query.get(name)
    if raw in (None, ""):
        return None
    try:
        return _bound(raw, tz=tz, end_of_day=end_of_day)
    except (ContractError, ValueError, OverflowError):
        raise BadParameter(f"{name}: expected epoch ms, ISO-8601 with offset or a date YYYY-MM-DD "
                           "(1970..2099)") from None


def _bound(raw: str, *, tz: ZoneInfo, end_of_day: bool) -> int:
    from kagoflow.streams.contract import parse_ts

    if len(raw) > 64 or not raw.isascii():  # also keeps int() off 5,000-digit numbers and '²³'
        raise ValueError(raw)
    if raw.isdigit():
        return parse_ts(int(raw), field="")
    if len(raw) == 10:
        day = date.fromisoformat(raw)
        return parse_ts(at_local_time(day + timedelta(days=1) if end_of_day else day, (0, 0), tz), field="")
    return parse_ts(raw, field="")


def _text(request: Request, name: str) -> str | None:
    value = request.query.get(name) or None
    if value is not None and len(value) > MAX_PARAM_LENGTH:
        raise BadParameter(f"{name}: longer than {MAX_PARAM_LENGTH} characters")
    return value


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
            tz = kf.ruleset.shop.timezone
            try:
                since, until = _ms(request, "from", tz=tz), _ms(request, "to", tz=tz, end_of_day=True)
                product, kind = _text(request, "product"), _text(request, "type")
                if kind is not None and kind not in BEACON_TYPES:
                    raise BadParameter(f"type: not one of {', '.join(sorted(BEACON_TYPES))}")
                top_only = TOP_ONLY.get(request.query.get("top_only", "").lower())
                if top_only is None:
                    raise BadParameter("top_only: expected 1 or 0")
            except BadParameter as exc:
                return self.json({"error": str(exc)}, status=400)
            state = await state_of(member_id)
            if state is None:
                return self.json({"error": "unknown member"}, status=404)
            try:
                history = await _history(archive(), member_id=member_id, since=since, until=until,
                                         product=product, kind=kind)
            except ArchiveError as exc:  # the live state is still worth showing while ClickHouse is away
                return self.json({"error": f"archive: {exc}", "member_id": member_id,
                                  "current": current_products(state), "history": []},
                                 status=503)
            for row in history:
                current = state.product_state(row["product_id"]) if row.get("product_id") else None
                row["is_top"] = current is not None and ACTION_STATE.get(row["type"]) == current
            if top_only:
                history = [row for row in history if row["is_top"]]
            return self.json({
                "member_id": member_id,
                "current": current_products(state),
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
        """Also on the public server (``kagoflow.web.public``), for probes that only reach one of them."""

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
