"""Backtest page: chosen rules over a recorded period read from ClickHouse, through ``kagoflow.backtest``'s
``Replay`` (the same decision core on a virtual clock as ``kagoflow backtest``).

The recorded rows are turned back into §1 contract records (JSON) and parsed by the contract parsers, so a
row the worker would refuse is refused here too. Members and catalog rows come from before the period as
well (profiles and prices are state, not events); beacons and orders from the period. A job runs in a
thread; the page polls its progress and shows results per day and per rule, with a JSONL download.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from kagoflow.archive.queries import ArchiveReader, day_start_ms
from kagoflow.backtest import Replay
from kagoflow.core.decisions import Decision
from kagoflow.core.errors import ContractError, RuleError
from kagoflow.core.events import Record
from kagoflow.core.rules import RuleSet
from kagoflow.loading import load_ruleset

_KIND_ORDER = {"members": 0, "catalog": 1, "orders": 2, "beacons": 3}
MAX_JOBS = 20
MAX_RECORDS = 2_000_000
"""A backtest holds its records and decisions in the console's memory: bounded."""


@dataclass
class Job:
    rules: list[str]
    since: date
    until: date
    total: int = 0
    seen: int = 0
    done: bool = False
    error: str | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)


def _queries(archive: ArchiveReader, lo: int, hi: int) -> dict[str, str]:
    t = archive.table
    return {
        "members": f"SELECT ts_ms, member_id, email, opt_in, name, device, locale, purchase_count "
                   f"FROM {t('members')} FINAL WHERE ts_ms < {hi} ORDER BY ts_ms",
        "catalog": f"SELECT ts_ms, product_id, price, stock, name, url, image_url, on_sale "
                   f"FROM {t('catalog')} FINAL WHERE ts_ms < {hi} ORDER BY ts_ms",
        "orders": f"SELECT ts_ms, order_id, member_id, status, toUInt32(ordered_at), toUInt32(shipped_at), "
                  f"toUInt32(delivered_at), item_product_ids, item_quantities, item_prices, coupon, total "
                  f"FROM {t('orders')} FINAL WHERE ts_ms >= {lo} AND ts_ms < {hi} ORDER BY ts_ms",
        "beacons": f"SELECT ts_ms, event_id, member_id, type, product_id, product_ids, order_id, price, quantity, "
                   f"device, shop_id FROM {t('beacons')} FINAL WHERE ts_ms >= {lo} AND ts_ms < {hi} ORDER BY ts_ms",
    }


def _json(kind: str, row: tuple[Any, ...]) -> dict[str, Any]:
    """A ClickHouse row back into its §1 contract record (optional fields only when set)."""
    if kind == "members":
        ts, member_id, email, opt_in, name, device, locale, count = row
        out = {"ts": ts, "member_id": member_id, "email": email, "opt_in": bool(opt_in), "name": name,
               "device": device or None, "locale": locale, "purchase_count": count}
    elif kind == "catalog":
        ts, product_id, price, stock, name, url, image_url, on_sale = row
        out = {"ts": ts, "product_id": product_id, "price": price, "stock": stock, "name": name, "url": url,
               "image_url": image_url, "on_sale": None if on_sale is None else bool(on_sale)}
    elif kind == "orders":
        ts, order_id, member_id, status, ordered, shipped, delivered, ids, qtys, prices, coupon, total = row
        out = {"ts": ts, "order_id": order_id, "member_id": member_id, "status": status,
               "ordered_at": ordered * 1000, "shipped_at": shipped * 1000 if shipped else None,
               "delivered_at": delivered * 1000 if delivered else None, "coupon": coupon or None, "total": total,
               "items": [{"product_id": p, "quantity": q, "price": pr} for p, q, pr in zip(ids, qtys, prices,
                                                                                          strict=True)]}
    else:
        ts, event_id, member_id, type_, product_id, product_ids, order_id, price, qty, device, shop = row
        out = {"ts": ts, "event_id": event_id, "member_id": member_id, "type": type_,
               "product_id": product_id or None, "product_ids": list(product_ids) or None,
               "order_id": order_id or None, "price": price, "quantity": qty, "device": device or None,
               "shop_id": shop or None}
    return {k: v for k, v in out.items() if v is not None}


def load_records(archive: ArchiveReader, since: date, until: date, timezone: str) -> list[Record]:
    """The recorded inputs of shop-local days [since, until] in ``ts`` order (ties as ``kagoflow backtest``)."""
    from kagoflow.backtest import _parser

    lo = day_start_ms(since, timezone)
    hi = day_start_ms(until + timedelta(days=1), timezone)
    count = sum(int(archive.query(f"SELECT count() FROM ({sql})")[0][0]) for sql in _queries(archive, lo, hi).values())
    if count > MAX_RECORDS:
        raise ValueError(f"period too large: {count:,} recorded records (at most {MAX_RECORDS:,}); choose fewer days "
                         f"or run `kagoflow backtest` on exported files")
    keyed = []
    for kind, sql in _queries(archive, lo, hi).items():
        parse = _parser(kind)
        for n, row in enumerate(archive.query(sql)):
            try:
                record = parse(orjson.dumps(_json(kind, row)))
            except ContractError:
                continue  # the worker sent this record to the DLQ too
            if record is None:
                continue  # an engagement record that changes no member state (a delivery result)
            keyed.append((record.ts, _KIND_ORDER[kind], n, record))
    keyed.sort(key=lambda item: item[:3])
    return [item[3] for item in keyed]


def only(rules: RuleSet, chosen: list[str]) -> RuleSet:
    """The rule set with just the chosen rules, each switched on (a backtest is how one tries a disabled rule)."""
    return rules.only(set(chosen))


async def run_job(job: Job, rules: RuleSet, records: list[Record]) -> None:
    replay = Replay(rules)
    job.total = len(records)

    def keep(decisions: list[Decision]) -> None:
        job.decisions.extend(d.to_json() for d in decisions)

    for record in records:
        keep(await replay.feed(record))
        job.seen += 1
        if job.seen % 2000 == 0:
            await asyncio.sleep(0)  # let the page poll the progress
    keep(await replay.advance(None))


JOBS = web.AppKey("backtest_jobs", dict)
TASKS = web.AppKey("backtest_tasks", set)


async def page(request: web.Request) -> web.Response:
    from kagoflow.console.pages import _console

    console = _console(request)
    error: str | None
    try:
        rules = sorted(load_ruleset(console.settings).by_id)
    except (RuleError, ContractError) as exc:
        rules, error = [], str(exc)
    else:
        error = None
    today = console.data.today()
    return console.render(request, "backtest.html", rules=rules, error=error, since=today - timedelta(days=1),
                          until=today - timedelta(days=1), job=None, job_id=None)


async def start(request: web.Request) -> web.Response:
    from kagoflow.console.pages import _console

    console = _console(request)
    form = await request.post()
    chosen = [str(v) for v in form.getall("rule", [])][:50]
    try:
        since, until = date.fromisoformat(str(form.get("since"))), date.fromisoformat(str(form.get("until")))
    except ValueError:
        raise web.HTTPBadRequest(text="since/until: not a date (YYYY-MM-DD)") from None
    if not chosen or until < since or (until - since).days > 31:
        raise web.HTTPBadRequest(text="rule: choose at least one; period: since ≤ until, at most 31 days")
    ruleset = only(load_ruleset(console.settings), chosen)
    jobs: dict[str, Job] = request.app[JOBS]
    while len(jobs) >= MAX_JOBS:
        jobs.pop(next(iter(jobs)))
    job_id = secrets.token_urlsafe(9)
    job = jobs[job_id] = Job(chosen, since, until)
    data = console.data

    async def work() -> None:
        try:
            records = await asyncio.to_thread(load_records, data.archive, since, until, data.timezone)
            await run_job(job, ruleset, records)
        except Exception as exc:  # shown on the page; the console keeps serving
            job.error = f"{type(exc).__name__}: {exc}"
        finally:
            job.done = True

    tasks: set[asyncio.Future[None]] = request.app[TASKS]
    task = asyncio.ensure_future(work())
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    raise web.HTTPFound(f"/backtest/{job_id}")


async def show(request: web.Request) -> web.StreamResponse:
    from kagoflow.console.pages import _console

    console = _console(request)
    job_id = request.match_info["job"]
    download = job_id.endswith(".jsonl")
    job: Job | None = request.app[JOBS].get(job_id.removesuffix(".jsonl"))
    if job is None:
        raise web.HTTPNotFound(text="no such backtest")
    if download:
        body = b"".join(orjson.dumps(d) + b"\n" for d in job.decisions)
        return web.Response(body=body, content_type="application/x-ndjson",
                            headers={"Content-Disposition": 'attachment; filename="backtest.jsonl"'})
    tz = console.data.tz
    per_day: Counter[tuple[str, str, str]] = Counter()
    for d in job.decisions:
        day = datetime.fromisoformat(d["at"]).astimezone(tz).date().isoformat()
        per_day[day, d["rule"] if "rule" in d else d.get("rule_id", ""), d["status"]] += 1
    per_rule: Counter[tuple[str, str]] = Counter()
    for (_, rule, status), n in per_day.items():
        per_rule[rule, status] += n
    return console.render(request, "backtest.html", rules=[], error=None, since=job.since, until=job.until,
                          job=job, job_id=job_id, per_day=sorted(per_day.items()),
                          per_rule=sorted(per_rule.items()), refresh=not job.done,
                          sample=list(itertools.islice(job.decisions, 50)))


def add_routes(app: web.Application) -> None:
    app[JOBS] = {}
    app[TASKS] = set()
    app.router.add_get("/backtest", page)
    app.router.add_post("/backtest", start)
    app.router.add_get("/backtest/{job}", show)
