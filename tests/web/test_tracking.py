"""Tracking endpoints over real HTTP (aiohttp test server on a free port) with the stack's Redis."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiosmtpd.controller import Controller

from kagoflow.adapters.redis_store import RedisStore
from kagoflow.adapters.smtp import SmtpPool
from kagoflow.mail.context import Links
from kagoflow.mail.delivery import Deliverer
from kagoflow.mail.engagement import MemorySink
from kagoflow.mail.tokens import TrackingToken, sign
from kagoflow.settings import Settings
from kagoflow.web.tracking import PIXEL, add_tracking_routes, suspected_bot
from tests.mail.helpers import (  # noqa: F401  (fixtures)
    ScriptedSmtp,
    free_port,
    mail_settings,
    make_decision,
    make_products,
    make_profile,
    redis_store_fixture,
    scripted_smtp_fixture,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0"
OLD = int(time.time() * 1000) - 3_600_000
"""A send time an hour ago: opens now are not 'within seconds of the send'."""


@pytest_asyncio.fixture
async def tracking(stack: Settings, redis_store: RedisStore) -> AsyncIterator[tuple[TestClient, MemorySink, Settings]]:
    settings = mail_settings(stack)
    sink = MemorySink()
    app = web.Application()
    add_tracking_routes(app, settings=settings, sink=sink, store=redis_store)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    yield client, sink, settings
    await client.close()


def _links(settings: Settings, member_id: str = "m-web", sent_ms: int = OLD) -> tuple[Links, str]:
    decision = make_decision(member_id)
    return Links(settings, decision, sent_ms=sent_ms), decision.key


def _path(url: str) -> str:
    return url.split("https://track.example.com", 1)[1]


async def test_open_pixel_is_an_uncached_gif_and_emits_an_open(tracking) -> None:  # type: ignore[no-untyped-def]
    client, sink, settings = tracking
    links, key = _links(settings)
    response = await client.get(_path(links.open_url), headers={"User-Agent": BROWSER})
    assert response.status == 200
    assert response.content_type == "image/gif"
    assert await response.read() == PIXEL
    assert "no-store" in response.headers["Cache-Control"]
    [event] = sink.of_type("open")
    assert (event["key"], event["member_id"], event["rule"], event["suspected_bot"]) == (
        key,
        "m-web",
        "cart-1h",
        False,
    )


@pytest.mark.parametrize(
    "agent",
    [
        "Mozilla/5.0",
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
        "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
        "",
    ],
)
async def test_proxy_and_scanner_opens_are_flagged_not_dropped(tracking, agent: str) -> None:  # type: ignore[no-untyped-def]
    client, sink, settings = tracking
    links, _ = _links(settings)
    response = await client.get(_path(links.open_url), headers={"User-Agent": agent})
    assert response.status == 200
    assert [e["suspected_bot"] for e in sink.of_type("open")] == [True]


async def test_open_seconds_after_the_send_is_flagged(tracking) -> None:  # type: ignore[no-untyped-def]
    client, sink, settings = tracking
    links, _ = _links(settings, sent_ms=int(time.time() * 1000))
    await client.get(_path(links.open_url), headers={"User-Agent": BROWSER})
    assert [e["suspected_bot"] for e in sink.of_type("open")] == [True]
    assert suspected_bot(BROWSER, sent_ms=0, now_ms=60_000) is False


async def test_click_redirects_to_the_product_page(tracking) -> None:  # type: ignore[no-untyped-def]
    client, sink, settings = tracking
    links, key = _links(settings)
    target = "https://shop.example.com/items/p1?utm_source=mail"
    response = await client.get(_path(links.click(target)), allow_redirects=False, headers={"User-Agent": BROWSER})
    assert response.status == 302
    assert response.headers["Location"] == target
    [event] = sink.of_type("click")
    assert (event["key"], event["url"], event["suspected_bot"]) == (key, target, False)


async def test_foreign_domain_redirect_is_refused(tracking) -> None:  # type: ignore[no-untyped-def]
    client, sink, settings = tracking
    for target in (
        "https://evil.example.net/phish",
        "https://shop.example.com.evil.net/",
        "javascript:alert(1)",
        "https://user@evil.example.net/",
        "https://evil.example.net\\@shop.example.com/",  # a browser reads \\ as /: host evil.example.net
        "https://shop.example.com@evil.example.net/",
        "https://shop.example.com:8443/",
        "https://shop.example.com%2eevil.net/",
    ):
        token = TrackingToken(kind="click", key="k", member_id="m", rule_id="r", sent_ms=OLD, url=target)
        response = await client.get(f"/c/{sign(token, secret=settings.tracking_secret)}", allow_redirects=False)
        assert response.status == 400, target
        assert "Location" not in response.headers
    assert sink.events == []


async def test_click_redirects_to_what_a_browser_would_read(tracking) -> None:  # type: ignore[no-untyped-def]
    client, _, settings = tracking
    token = TrackingToken(kind="click", key="k", member_id="m", rule_id="r", sent_ms=OLD,
                          url="HTTPS://Shop.Example.com:443\\items\tp1")
    response = await client.get(f"/c/{sign(token, secret=settings.tracking_secret)}", allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"] == "https://shop.example.com/itemsp1"


async def test_links_to_foreign_domains_are_rewritten_to_the_shop_at_build_time(tracking) -> None:  # type: ignore[no-untyped-def]
    client, _, settings = tracking
    links, _ = _links(settings)
    response = await client.get(_path(links.click("https://evil.example.net/")), allow_redirects=False)
    assert response.headers["Location"] == settings.shop_url


async def test_tampered_or_unknown_tokens_get_a_bare_404(tracking) -> None:  # type: ignore[no-untyped-def]
    client, sink, settings = tracking
    links, _ = _links(settings)
    open_path = _path(links.open_url)
    tampered = open_path[:-3] + ("AAA" if not open_path.endswith("AAA") else "BBB")
    forged = sign(TrackingToken(kind="unsub", key="k", member_id="victim", rule_id="r", sent_ms=0), secret="guess")
    for path, method in (
        (tampered, "GET"),
        ("/o/garbage", "GET"),
        (f"/u/{forged}", "POST"),
        (_path(links.unsubscribe_url).replace("/u/", "/c/"), "GET"),
    ):
        response = await client.request(method, path, data={"List-Unsubscribe": "One-Click"})
        assert response.status == 404, path
        assert await response.text() == "not found"
    assert sink.events == []


async def test_unsubscribe_page_only_shows_a_form(tracking, redis_store: RedisStore) -> None:  # type: ignore[no-untyped-def]
    client, sink, settings = tracking
    links, _ = _links(settings, member_id="m-page")
    response = await client.get(_path(links.unsubscribe_url))
    assert response.status == 200
    page = await response.text()
    assert '<form method="post"' in page and 'name="List-Unsubscribe" value="One-Click"' in page
    assert await redis_store.suppression_reason(member_id="m-page") is None
    assert sink.events == []


async def test_one_click_unsubscribe_suppresses_at_once(  # type: ignore[no-untyped-def]
    tracking,
    redis_store: RedisStore,
    scripted_smtp: tuple[ScriptedSmtp, Controller],
) -> None:
    client, sink, settings = tracking
    handler, controller = scripted_smtp
    links, key = _links(settings, member_id="m-oneclick")
    bad = await client.post(_path(links.unsubscribe_url), data="something-else")
    assert bad.status == 400
    response = await client.post(
        _path(links.unsubscribe_url),
        data="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status == 200
    assert await redis_store.suppression_reason(member_id="m-oneclick") == "unsubscribe"
    [event] = sink.of_type("unsubscribe")
    assert (event["key"], event["member_id"]) == (key, "m-oneclick")
    deliverer = Deliverer(settings, store=redis_store, sink=sink, pool=SmtpPool(host="127.0.0.1", port=controller.port))
    result = await deliverer.deliver(
        make_decision("m-oneclick"), profile=make_profile("m-oneclick"), products=make_products()
    )
    assert result.status == "suppressed"
    assert handler.recipients() == []
    await deliverer.close()


class _BrokenSink:
    async def emit(self, event: dict[str, object]) -> None:
        raise ConnectionError("kafka away")


async def test_outages_never_break_the_recipients_page(stack: Settings) -> None:
    settings = mail_settings(stack)
    app = web.Application()
    down = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    add_tracking_routes(app, settings=settings, sink=_BrokenSink(), store=down)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        links, _ = _links(settings)
        opened = await client.get(_path(links.open_url))
        assert opened.status == 200 and await opened.read() == PIXEL
        clicked = await client.get(_path(links.click("https://shop.example.com/x")), allow_redirects=False)
        assert clicked.status == 302
        unsubscribed = await client.post(_path(links.unsubscribe_url), data={"List-Unsubscribe": "One-Click"})
        assert unsubscribed.status == 503  # not recorded, so not confirmed to the member
    finally:
        await client.close()
        await down.close()
