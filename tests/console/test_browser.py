"""The console in a real browser (Debian chromium driven by playwright) against the stack's ClickHouse.

Data: the analytics story of ``tests.archive`` (every row stored twice, as a replay would) plus two mails
sent today, inserted in a fresh database. The console runs in a thread on a free port; the test logs in and
walks every page, checking what an operator sees against hand-computed numbers.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from kagoflow.adapters.clickhouse import ClickHouseArchive
from kagoflow.archive.rows import COLUMNS
from kagoflow.console.app import make_app
from kagoflow.console.auth import hash_password
from kagoflow.settings import PROJECT_ROOT, Settings
from tests.archive import analytics_data as data
from tests.archive import report_data

pytestmark = pytest.mark.integration


def _chromium() -> str:
    """Debian chromium, installed through the project's script when missing (apt-get, about a minute)."""
    path = shutil.which("chromium")
    if path is None:
        subprocess.run([sys.executable, str(PROJECT_ROOT / "infra" / "stacklib" / "browser.py")], check=True,
                       timeout=900)
        path = shutil.which("chromium")
    assert path is not None, "chromium not installed"
    return path

PASSWORD = "browser-pass-1"


class ServerThread:
    """An aiohttp app on its own event loop in a thread (the test itself drives a synchronous browser)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return f"http://127.0.0.1:{self.port}"
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("console did not start")

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


@pytest.fixture
def console(stack: Settings, unique_name: Callable[[str], str], tmp_path: Path) -> Iterator[tuple[str, Settings]]:
    database = unique_name("console")
    archive = ClickHouseArchive(host=stack.clickhouse_host, port=stack.clickhouse_port, database=database)
    archive.ensure_schema()
    now = int(time.time() * 1000)
    today = [data.decision(f"t{i}|cart-1h|e1", "sent", now - i * 1000) for i in (1, 2)]
    for source in (data.rows(), report_data.rows(), {"mail_decisions": today}):
        for table, rows in source.items():
            archive.insert(table, COLUMNS[table], rows)
    rules = tmp_path / "rules"
    shutil.copytree(PROJECT_ROOT / "rules", rules, ignore=shutil.ignore_patterns("demo"))
    settings = Settings(clickhouse_host=stack.clickhouse_host, clickhouse_port=stack.clickhouse_port,
                        clickhouse_database=database, rules_dir=rules, local_mode=True,
                        console_users=(f"staff:{hash_password(PASSWORD)}",),
                        operator_api_url="http://127.0.0.1:9")  # no worker: the pages must say so, not fail
    try:
        with ServerThread(make_app(settings)) as url:
            yield url, settings
    finally:
        archive.query(f"DROP DATABASE IF EXISTS {database}")
        archive.close()


@pytest.fixture
def page(console: tuple[str, Settings]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--lang=ja-JP"], headless=True)
        context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True,
                                      locale="ja-JP", timezone_id="Asia/Tokyo")
        yield context.new_page()
        browser.close()


def _cli_backtest(settings: Settings, tmp_path: Path, *, lo: int, hi: int) -> list[bytes]:
    """``kagoflow backtest`` over the same recorded inputs, written as §1 JSONL files from the story's rows."""
    import orjson

    from kagoflow.console.rules_admin import set_enabled

    rules = tmp_path / "cli-rules"
    shutil.copytree(settings.rules_dir, rules)
    for path in rules.glob("*.yaml"):
        if path.name != "shop.yaml" and path.name != "cart-1h.yaml":
            path.unlink()
    set_enabled(Settings(rules_dir=rules), "cart-1h", True)
    story: dict[str, list[dict[str, Any]]] = {}
    for source in (data.rows(), report_data.rows()):
        for table, rows in source.items():
            story.setdefault(table, []).extend(dict(zip(COLUMNS[table], row, strict=True)) for row in rows)
    files = {}
    for kind in ("beacons", "members", "orders"):
        lines = []
        for r in story.get(kind, []):
            if kind == "beacons" and lo <= r["ts_ms"] < hi:
                rec = {"event_id": r["event_id"], "member_id": r["member_id"], "type": r["type"], "ts": r["ts_ms"],
                       "product_id": r["product_id"] or None, "product_ids": r["product_ids"] or None,
                       "order_id": r["order_id"] or None}
            elif kind == "members" and r["ts_ms"] < hi:
                rec = {"member_id": r["member_id"], "email": r["email"], "opt_in": bool(r["opt_in"]),
                       "ts": r["ts_ms"]}
            elif kind == "orders" and lo <= r["ts_ms"] < hi:
                rec = {"order_id": r["order_id"], "member_id": r["member_id"], "status": r["status"],
                       "ordered_at": r["ordered_at"] * 1000, "ts": r["ts_ms"], "total": r["total"],
                       "items": [{"product_id": p, "quantity": q, "price": pr} for p, q, pr in
                                 zip(r["item_product_ids"], r["item_quantities"], r["item_prices"], strict=True)]}
            else:
                continue
            line = orjson.dumps({k: v for k, v in rec.items() if v is not None})
            if line not in lines:  # the story stores every row twice; the archive's FINAL keeps one
                lines.append(line)
        lines.sort(key=lambda b: orjson.loads(b)["ts"])
        files[kind] = tmp_path / f"{kind}.jsonl"
        files[kind].write_bytes(b"".join(x + b"\n" for x in lines))
    out = tmp_path / "cli.jsonl"
    subprocess.run([sys.executable, "-m", "kagoflow.cli", "backtest", "--rules", str(rules), "--beacons",
                    str(files["beacons"]), "--members", str(files["members"]), "--orders", str(files["orders"]),
                    "--out", str(out), "--no-progress"], check=True, timeout=120, capture_output=True)
    return out.read_bytes().splitlines()


def _cells(page: Any, table: str) -> list[list[str]]:
    rows = page.locator(f"table#{table} tr").all()
    return [[c.inner_text().strip() for c in row.locator("td").all()] for row in rows[1:]]


def test_staff_walks_every_page(console: tuple[str, Settings], page: Any, tmp_path: Path) -> None:
    url, settings = console
    page.goto(url + "/reports")
    assert page.url == url + "/login"
    page.fill("input[name=user]", "staff")
    page.fill("input[name=password]", "wrong-password")
    page.click("button[type=submit]")
    assert "ユーザー名またはパスワードが違います" in page.content()
    page.fill("input[name=user]", "staff")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")

    # overview: the two mails sent today; no worker running
    assert page.url == url + "/"
    assert page.inner_text("#sent-today") == "2"
    assert "応答なし" in page.inner_text("main")

    # rules: disable cart-1h (file written), then a broken file makes the next change refused
    page.click("a[href='/rules']")
    row = page.locator("#rule-cart-1h")
    assert "有効" in row.inner_text()
    row.locator("button").click()
    assert "cart-1h を無効にしました" in page.inner_text("#message")
    assert "enabled: false" in (settings.rules_dir / "cart-1h.yaml").read_text()
    assert "無効" in page.locator("#rule-cart-1h td").nth(4).inner_text()
    (settings.rules_dir / "zz-broken.yaml").write_text("id: zz\nkind: abandonment\nbogus: 1\n")
    page.locator("#rule-view-2h button").click()
    assert "変更できません" in page.inner_text("#error") and "zz-broken.yaml" in page.inner_text("#error")
    assert "enabled: true" in (settings.rules_dir / "view-2h.yaml").read_text()
    (settings.rules_dir / "zz-broken.yaml").unlink()

    # member search (seed 000 §2): product P9, 1–2 March, views, highest priority only → a3
    page.goto(url + "/search")
    page.fill("input[name=since]", "2024-03-01")
    page.fill("input[name=until]", "2024-03-02")
    page.fill("input[name=product]", "P9")
    page.click("form.filters button")
    assert sorted(r[0] for r in _cells(page, "results")) == ["a1", "a2", "a3", "a5"]
    page.select_option("select[name=action]", "view")
    page.check("input[name=top_only]")
    page.click("form.filters button")
    assert [r[0] for r in _cells(page, "results")] == ["a3"]

    # member page: action log and mails with reasons
    page.goto(url + "/members/m4")
    mails = _cells(page, "mails")
    assert {(m[1], m[4], m[5]) for m in mails} == {("cart-1h", "sent", ""), ("cart-1h", "skipped", "filter:devices")}
    page.goto(url + "/members/m1")
    assert [r[1] for r in _cells(page, "log")] == ["purchase", "cart_add"]

    # daily send list and its CSV (UTF-8 with BOM, the right rows)
    page.goto(url + "/send-list?day=2024-03-01")
    assert len(_cells(page, "sends")) == 10
    with page.expect_download() as info:
        page.click("#csv")
    raw = Path(info.value.path()).read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    got = sorted((r["member_id"], r["rule_id"], r["email"]) for r in rows if r["rule_id"] != "hold")
    assert got == data.SEND_LIST
    assert sorted(r["member_id"] for r in rows if r["rule_id"] == "hold") == ["h1", "h2"]

    page.goto(url + "/scenarios")
    assert page.locator("table#scenarios").is_visible()

    # reports: hand-computed totals of the story (sent 4 + 1 + 2 + 1 + 2 held-out rule, revenue 5000 + 3000)
    page.goto(url + "/reports?since=2024-03-01&until=2024-03-01")
    assert page.inner_text("#total-sent") == "10"
    assert page.inner_text("#total-clicked") == "4"
    assert page.inner_text("#total-conversions") == "3"
    assert page.inner_text("#total-revenue") == "8,000"
    report = {(r[1], r[2], r[3]): r for r in _cells(page, "report")}
    assert report[("cart-1h", "—", "—")][4:9] == ["4", "0", "3", "1", "50.0%"]  # sent, held, delivered, bounced, open
    assert report[("fav-1h", "—", "—")][11:14] == ["1", "100.0%", "5,000"]
    # the holdout rule: 2 members sent, 2 held out (not sent, not counted under 送信 nor 配信)
    assert report[("hold", "—", "—")][4:7] == ["2", "2", "0"]
    assert page.inner_text("#total-held_out") == "2"
    # coupons: h1 and h2 got a code with the hold mail, h1 ordered with it
    assert page.inner_text("#total-coupons_redeemed") == "1"
    assert _cells(page, "coupons") == [["2024-03-01", "hold", "—", "2", "1", "50.0%"]]
    assert page.locator("svg.chart").count() == 1
    assert page.locator("table#ab tr").count() == 3  # follow step 1: A vs B, click and conversion rate
    page.goto(url + "/reports?since=2024-03-01&until=2024-03-01&rule=hold")
    assert "アップリフト" in page.inner_text("#holdout")
    shot = Path(os.environ.get("KAGOFLOW_CONSOLE_SCREENSHOT", tmp_path / "console.png"))
    page.goto(url + "/reports?since=2024-03-01&until=2024-03-01")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # backtest of the recorded day through the decision core
    page.goto(url + "/backtest")
    page.check("input[value='cart-1h']")
    page.fill("input[name=since]", "2024-02-29")
    page.fill("input[name=until]", "2024-03-01")
    page.click("form.filters button")
    deadline = time.monotonic() + 60
    while "完了" not in page.inner_text("#progress") and time.monotonic() < deadline:
        page.wait_for_timeout(500)
        page.reload()
    assert "完了" in page.inner_text("#progress")
    with page.expect_download() as info:
        page.click("#download")
    shown = Path(info.value.path()).read_bytes().splitlines()
    assert shown == _cli_backtest(settings, tmp_path, lo=data.T0 - 25 * data.HOUR, hi=data.T0 + 23 * data.HOUR)
    assert shown  # the story's cart of m1 makes at least one decision

    # a phone: every page fits 390 px (wide tables scroll inside their own box)
    page.set_viewport_size({"width": 390, "height": 844})
    for path in ("/", "/rules", "/search", "/members/m1", "/send-list?day=2024-03-01", "/scenarios",
                 "/reports?since=2024-03-01&until=2024-03-01", "/backtest"):
        page.goto(url + path)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, path
    page.screenshot(path=str(shot.with_name("console-phone.png")))

    page.click("form[action='/logout'] button")
    page.goto(url + "/reports")
    assert page.url == url + "/login"
    page.screenshot(path=str(shot.with_name("console-login.png")))  # logged out: the login page, nothing else
