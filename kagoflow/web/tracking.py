"""HTTP endpoints that mail recipients reach: open pixel, click redirect, unsubscribe (RFC 8058 one-click).

Served by the public server (``kagoflow.web.public``). Every URL carries an encrypted, authenticated token
(``kagoflow.mail.tokens``); a token that does not verify gets a bare 404 — no hint of what was wrong.
Opens are never dropped, but opens that machines make (mail privacy proxies, security scanners, prefetches
within seconds of the send) are flagged ``suspected_bot`` so open rates can be computed with or without them.
"""

from __future__ import annotations

import base64
import html
import logging
import time
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from kagoflow.adapters.redis_store import RedisStore, StoreUnavailable
from kagoflow.core.scenario import step_of_key
from kagoflow.mail.engagement import EngagementSink, engagement_event
from kagoflow.mail.tokens import InvalidToken, TokenKind, TrackingToken, verify
from kagoflow.settings import Settings
from kagoflow.web.urls import UnsafeUrl, redirect_target

log = logging.getLogger(__name__)
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}
MACHINE_OPEN_SECONDS = 5.0
"""An open this soon after the mail was built is a scanner or prefetch, not a person."""
BOT_AGENT_MARKERS = (
    "googleimageproxy",
    "yahoomailproxy",
    "ggpht.com",
    "barracuda",
    "mimecast",
    "proofpoint",
    "symantec",
    "trendmicro",
    "bot",
    "spider",
    "crawler",
    "python-",
    "curl/",
    "wget/",
    "go-http-client",
)
APPLE_PRIVACY_AGENT = "mozilla/5.0"
"""Apple Mail Privacy Protection fetches pixels with exactly this User-Agent and nothing more."""

SETTINGS_KEY = web.AppKey("kagoflow_tracking_settings", Settings)
SINK_KEY = web.AppKey("kagoflow_tracking_sink", object)
STORE_KEY = web.AppKey("kagoflow_tracking_store", RedisStore)


def add_tracking_routes(
    app: web.Application, *, settings: Settings, sink: EngagementSink, store: RedisStore
) -> None:
    app[SETTINGS_KEY] = settings
    app[SINK_KEY] = sink
    app[STORE_KEY] = store
    app.router.add_get("/o/{token}", _open)
    app.router.add_get("/c/{token}", _click)
    app.router.add_get("/u/{token}", _unsubscribe_page)
    app.router.add_post("/u/{token}", _unsubscribe)


def suspected_bot(user_agent: str, *, sent_ms: int, now_ms: int) -> bool:
    agent = user_agent.strip().lower()
    if not agent or agent == APPLE_PRIVACY_AGENT:
        return True
    if any(marker in agent for marker in BOT_AGENT_MARKERS):
        return True
    return 0 <= now_ms - sent_ms < MACHINE_OPEN_SECONDS * 1000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _token(request: web.Request, kind: TokenKind) -> TrackingToken:
    try:
        return verify(
            request.match_info["token"], secret=request.app[SETTINGS_KEY].tracking_secret, kind=kind
        )
    except InvalidToken:
        raise web.HTTPNotFound(text="not found") from None


async def _emit(request: web.Request, type: Any, token: TrackingToken, **extra: Any) -> None:
    """Record the event; a sink outage is logged, never shown to the person who opened or clicked."""
    sink = cast(EngagementSink, request.app[SINK_KEY])
    event = engagement_event(
        type, key=token.key, member_id=token.member_id, rule=token.rule_id, at_ms=_now_ms(),
        step=step_of_key(token.key, token.member_id, token.rule_id), **extra,  # SPEC §12: opens move runs on
    )
    try:
        await sink.emit(event)
    except Exception:
        log.exception("engagement sink refused a %s event for %s", type, token.key)


async def _open(request: web.Request) -> web.Response:
    token = _token(request, "open")
    bot = suspected_bot(request.headers.get("User-Agent", ""), sent_ms=token.sent_ms, now_ms=_now_ms())
    await _emit(request, "open", token, suspected_bot=bot)
    return web.Response(body=PIXEL, content_type="image/gif", headers=NO_CACHE)


async def _click(request: web.Request) -> web.Response:
    token = _token(request, "click")
    settings = request.app[SETTINGS_KEY]
    try:  # checked again at click time: the token may predate a change of the allow-list or the rules
        url = redirect_target(token.url or "", domains=settings.shop_domains, local_mode=settings.local_mode)
    except UnsafeUrl:
        raise web.HTTPBadRequest(text="bad request") from None
    bot = suspected_bot(request.headers.get("User-Agent", ""), sent_ms=token.sent_ms, now_ms=_now_ms())
    await _emit(request, "click", token, url=url, suspected_bot=bot)
    raise web.HTTPFound(url, headers=NO_CACHE)


_PAGE = """<!DOCTYPE html>
<html lang="ja"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>{title}</title></head>
<body style="font-family:sans-serif;max-width:480px;margin:40px auto;padding:0 16px;line-height:1.7;">
<h1 style="font-size:20px;">{title}</h1>{body}</body></html>
"""


def _page(title: str, body: str, status: int = 200) -> web.Response:
    return web.Response(
        text=_PAGE.format(title=html.escape(title), body=body),
        status=status,
        content_type="text/html",
        headers=NO_CACHE,
    )


async def _unsubscribe_page(request: web.Request) -> web.Response:
    """GET only shows a form: link scanners follow GETs, and must not unsubscribe anybody."""
    _token(request, "unsub")
    action = html.escape(request.path, quote=True)
    form = (
        "<p>今後、このショップからのお知らせメールの配信を停止します。よろしいですか？</p>"
        f'<form method="post" action="{action}">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit" style="padding:10px 24px;font-size:16px;">配信を停止する</button></form>'
    )
    return _page("メール配信停止", form)


async def _unsubscribe(request: web.Request) -> web.Response:
    """RFC 8058 one-click: the POST body is ``List-Unsubscribe=One-Click``; effective immediately."""
    token = _token(request, "unsub")
    try:
        form = await request.post()
    except (ValueError, LookupError, HttpProcessingError):  # no form: broken multipart, unknown charset
        raise web.HTTPBadRequest(text="bad request") from None
    if form.get("List-Unsubscribe") != "One-Click":
        raise web.HTTPBadRequest(text="bad request")
    store = request.app[STORE_KEY]
    try:
        await store.suppress(member_id=token.member_id, reason="unsubscribe", now_ms=_now_ms())
    except StoreUnavailable:
        log.exception("unsubscribe of %s not recorded: redis unavailable", token.member_id)
        raise web.HTTPServiceUnavailable(text="temporarily unavailable, please try again later") from None
    await _emit(request, "unsubscribe", token)
    return _page("配信を停止しました", "<p>メールの配信を停止しました。ご利用ありがとうございました。</p>")
