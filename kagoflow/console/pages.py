"""The console's pages (SPEC §15). Each handler reads through ``ConsoleData`` / ``queries`` and renders a
template; bad query parameters give a 400 page naming the parameter, never a stack trace."""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web

from kagoflow.archive import queries
from kagoflow.console import rules_admin
from kagoflow.console.charts import bar_chart
from kagoflow.core.errors import RuleError

if TYPE_CHECKING:
    from kagoflow.console.app import Console


def _console(request: web.Request) -> Console:
    from kagoflow.console.app import CTX

    return request.app[CTX]


def _day(request: web.Request, name: str, default: date) -> date:
    raw = request.query.get(name, "").strip()
    if not raw:
        return default
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name}: not a date (YYYY-MM-DD): {raw[:40]!r}") from None


def _text(request: web.Request, name: str, *, limit: int = 200) -> str | None:
    value = request.query.get(name, "").strip()
    if len(value) > limit:
        raise web.HTTPBadRequest(text=f"{name}: longer than {limit} characters")
    return value or None


async def overview(request: web.Request) -> web.Response:
    console = _console(request)
    data = console.data
    today = data.today()
    by_rule = await data.run(data.decisions_by_rule, today, today)
    metrics = await console.operator.metrics()
    members = (metrics or {}).get("members") or {}
    archive = (metrics or {}).get("archive") or {}
    chart = bar_chart([(rule, float(c.get("sent", 0))) for rule, c in sorted(by_rule.items())],
                      title=f"本日の送信数 ({today.isoformat()})")
    return console.render(request, "overview.html", today=today, by_rule=sorted(by_rule.items()),
                          sent_today=sum(c.get("sent", 0) for c in by_rule.values()),
                          statuses=("sent", "capped", "suppressed", "skipped", "held_out"), chart=chart,
                          worker_up=metrics is not None, members=members, archive=archive)


async def rules_page(request: web.Request, *, message: str | None = None, error: str | None = None,
                     status: int = 200) -> web.Response:
    console = _console(request)
    data = console.data
    files, load_error = await data.run(rules_admin.rule_files, console.settings)
    today = data.today()
    week = await data.run(data.decisions_by_rule, today - timedelta(days=6), today)
    return console.render(request, "rules.html", status=status, rules=files, load_error=load_error, week=week,
                          message=message, error=error)


async def rules_toggle(request: web.Request) -> web.Response:
    console = _console(request)
    form = await request.post()
    rule_id = str(form.get("rule", ""))
    enabled = form.get("enabled") == "1"
    try:
        path = await console.data.run(rules_admin.set_enabled, console.settings, rule_id, enabled)
    except RuleError as exc:
        return await rules_page(request, error=f"変更できません: {exc}", status=400)
    state = "有効" if enabled else "無効"
    return await rules_page(request, message=f"{rule_id} を{state}にしました ({path.name} に書き込み。"
                                             f"ワーカーは数秒以内に読み込みます)")


async def search(request: web.Request) -> web.Response:
    console = _console(request)
    data = console.data
    today = data.today()
    since, until = _day(request, "since", today - timedelta(days=6)), _day(request, "until", today)
    product, action = _text(request, "product"), _text(request, "action", limit=20)
    top_only = request.query.get("top_only") == "1"
    results: list[dict[str, Any]] | None = None
    error = None
    if product:
        try:
            results = await data.run(queries.member_search, data.archive, product_id=product, since=since,
                                     until=until, action=action, top_only=top_only)
        except ValueError as exc:
            error = str(exc)
        for row in results or []:
            row["first"], row["last"] = data.local(row["first_ms"]), data.local(row["last_ms"])
    return console.render(request, "search.html", since=since, until=until, product=product or "",
                          action=action or "", top_only=top_only, results=results, error=error,
                          actions=queries.ACTIONS)


async def member(request: web.Request) -> web.Response:
    console = _console(request)
    data = console.data
    member_id = request.match_info["member_id"][:200]
    live = await console.operator.member(member_id)
    log = await data.run(queries.history, data.archive, member_id=member_id, limit=200)
    for row in log:
        row["local"] = data.local(row["action_ms"])
    mails = await data.run(data.member_mails, member_id)
    return console.render(request, "member.html", member_id=member_id, live=live, log=log, mails=mails)


async def send_list(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    data = console.data
    day = _day(request, "day", data.today())
    rule = _text(request, "rule")
    rows = await data.run(queries.daily_send_list, data.archive, day=day, rule_id=rule,
                          timezone=data.timezone)
    if request.path.endswith(".csv"):
        out = io.StringIO()
        out.write("\ufeff")  # BOM: Excel opens UTF-8
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(queries.SEND_LIST_COLUMNS)
        for row in rows:
            writer.writerow([_csv_cell(row[c]) for c in queries.SEND_LIST_COLUMNS])
        return web.Response(body=out.getvalue().encode("utf-8"), content_type="text/csv", charset="utf-8",
                            headers={"Content-Disposition": f'attachment; filename="send-list-{day}.csv"'})
    return console.render(request, "send_list.html", day=day, rule=rule or "", rows=rows[:1000],
                          total=len(rows))


def _csv_cell(value: Any) -> str:
    text = " ".join(value) if isinstance(value, list) else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text  # no formula injection


async def scenarios(request: web.Request) -> web.Response:
    console = _console(request)
    rows = await console.data.run(console.data.scenario_status)
    return console.render(request, "scenarios.html", rows=rows)


async def reports(request: web.Request) -> web.Response:
    console = _console(request)
    data = console.data
    today = data.today()
    since, until = _day(request, "since", today - timedelta(days=13)), _day(request, "until", today)
    rule = _text(request, "rule")
    rows = await data.run(queries.mail_report, data.archive, since=since, until=until, rule_id=rule,
                          timezone=data.timezone)
    per_day: dict[str, float] = {}
    for row in rows:
        per_day[str(row["day"])] = per_day.get(str(row["day"]), 0.0) + float(row["sent"])
    charts = [bar_chart(sorted(per_day.items()), title="日別送信数")]
    holdout = None
    if rule and any(int(r["held_out"]) for r in rows):
        holdout = await data.run(data.holdout, rule, since, until)
    coupons = await data.run(queries.coupon_report, data.archive, since=since, until=until, rule_id=rule,
                             timezone=data.timezone)
    totals = {**_totals(rows), "coupons_issued": sum(c["issued"] for c in coupons),
              "coupons_redeemed": sum(c["redeemed"] for c in coupons)}
    return console.render(request, "reports.html", since=since, until=until, rule=rule or "", rows=rows,
                          totals=totals, charts=charts, ab=data.ab_tests(rows), holdout=holdout, coupons=coupons)


def _totals(rows: list[dict[str, Any]]) -> dict[str, float]:
    names = ("sent", "held_out", "delivered", "bounced", "opened", "clicked", "unsubscribed", "conversions",
             "revenue")
    return {n: sum(float(r[n]) for r in rows) for n in names}


async def api_member(request: web.Request) -> web.Response:
    console = _console(request)
    live = await console.operator.member(request.match_info["member_id"][:200])
    if live is None:
        return web.json_response({"error": "member not found or worker unavailable"}, status=404)
    return web.json_response(live)


async def api_report(request: web.Request) -> web.Response:
    console = _console(request)
    data = console.data
    today = data.today()
    rows = await data.run(queries.mail_report, data.archive, since=_day(request, "since", today - timedelta(days=13)),
                          until=_day(request, "until", today), rule_id=_text(request, "rule"),
                          timezone=data.timezone)
    return web.json_response([{k: (str(v) if isinstance(v, date) else v) for k, v in r.items()} for r in rows])


def add_routes(app: web.Application) -> None:
    from kagoflow.console import backtest_page

    app.router.add_get("/", overview)
    app.router.add_get("/rules", rules_page)
    app.router.add_post("/rules/toggle", rules_toggle)
    app.router.add_get("/search", search)
    app.router.add_get("/members/{member_id}", member)
    app.router.add_get("/send-list", send_list)
    app.router.add_get("/send-list.csv", send_list)
    app.router.add_get("/scenarios", scenarios)
    app.router.add_get("/reports", reports)
    app.router.add_get("/api/members/{member_id}", api_member)
    app.router.add_get("/api/report", api_report)
    backtest_page.add_routes(app)
