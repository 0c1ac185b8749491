"""``kagoflow console``: the staff web server (aiohttp, server-rendered jinja2, Japanese UI).

Every page and JSON route needs a session (pages redirect to the login, ``/api/*`` answers 401); every POST
carries a CSRF token bound to the session (the login form one bound to a pre-login cookie); failed logins
are rate-limited per address and per user name. Cookies are HttpOnly, SameSite=Strict and Secure outside
local mode. The server refuses to start with a default secret unless ``KAGOFLOW_LOCAL_MODE=1``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from kagoflow.console import pages
from kagoflow.console.auth import DEFAULT_SECRET, LoginLimiter, Session, SessionSigner, parse_users, verify_password
from kagoflow.console.data import ConsoleData
from kagoflow.console.operator import HttpOperatorClient, OperatorClient
from kagoflow.settings import Settings
from kagoflow.web.operator import local_operator_url

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "kf_session"
PRE_COOKIE = "kf_pre"
_PUBLIC = ("/login", "/static/")
SESSION = web.RequestKey("session", Session)
_DUMMY_HASH = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
PRE = web.RequestKey("pre", str)
PRE_NEW = web.RequestKey("pre_new", bool)


class ConfigError(Exception):
    """The console cannot start with these settings (the message says which one)."""


class Console:
    """Everything a request handler needs, in one place."""

    def __init__(self, settings: Settings, data: ConsoleData, operator: OperatorClient) -> None:
        self.settings = settings
        self.data = data
        self.operator = operator
        self.users = parse_users(settings.console_users)
        self.signer = SessionSigner(settings.console_session_secret, lifetime_s=settings.console_session_minutes * 60)
        self.limiter = LoginLimiter()
        self._pre_key = hashlib.sha256(b"pre|" + settings.console_session_secret.encode()).digest()
        self.jinja = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                        undefined=jinja2.StrictUndefined)

    def render(self, request: web.Request, name: str, status: int = 200, **values: Any) -> web.Response:
        session: Session | None = request.get(SESSION)
        csrf = self.signer.csrf_token(session) if session else self.pre_token(request.get(PRE, ""))
        html = self.jinja.get_template(name).render(user=session.user if session else None, csrf=csrf,
                                                    path=request.path, **values)
        response = web.Response(text=html, status=status, content_type="text/html", charset="utf-8")
        if PRE_NEW in request:
            self.set_cookie(response, PRE_COOKIE, request[PRE], max_age=3600)
        return response

    def pre_token(self, pre: str) -> str:
        return hmac.new(self._pre_key, pre.encode(), hashlib.sha256).hexdigest()

    def set_cookie(self, response: web.StreamResponse, name: str, value: str, *, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="Strict", path="/",
                            secure=not self.settings.local_mode)


CTX = web.AppKey("console", Console)


def check_settings(settings: Settings) -> None:
    """Refuse defaults outside local mode, and a console nobody can log in to."""
    if not settings.local_mode:
        for name in ("console_session_secret", "tracking_secret"):
            if getattr(settings, name) == DEFAULT_SECRET:
                raise ConfigError(f"KAGOFLOW_{name.upper()} is the default; set a secret "
                                  f"(or KAGOFLOW_LOCAL_MODE=1 on a development machine)")
    try:
        users = parse_users(settings.console_users)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not users:
        raise ConfigError("KAGOFLOW_CONSOLE_USERS is empty: add name:hash entries "
                          "(kagoflow console hash-password prints a hash)")


@web.middleware
async def _guard(request: web.Request, handler: Any) -> web.StreamResponse:
    console: Console = request.app[CTX]
    session = console.signer.check(request.cookies.get(SESSION_COOKIE))
    if session is not None and session.user in console.users:
        request[SESSION] = session
    pre = request.cookies.get(PRE_COOKIE, "")
    if len(pre) < 16:
        pre = secrets.token_urlsafe(18)
        request[PRE_NEW] = True
    request[PRE] = pre
    if not request.path.startswith(_PUBLIC) and SESSION not in request:
        if request.path.startswith("/api/"):
            return web.json_response({"error": "login required"}, status=401)
        raise web.HTTPFound("/login")
    if request.method == "POST" and request.path != "/login":
        form = await request.post()
        if not console.signer.check_csrf(request[SESSION], str(form.get("csrf", ""))):
            return web.Response(status=403, text="CSRF token missing or invalid")
    response: web.StreamResponse = await handler(request)
    response.headers.setdefault("Content-Security-Policy",
                                "default-src 'self'; img-src 'self' data:; style-src 'self'; form-action 'self'; "
                                "frame-ancestors 'none'")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


async def login_page(request: web.Request) -> web.Response:
    return request.app[CTX].render(request, "login.html", error=None)


async def login(request: web.Request) -> web.Response:
    console: Console = request.app[CTX]
    form = await request.post()
    if request.get(PRE_NEW) or not hmac.compare_digest(console.pre_token(request[PRE]),
                                                          str(form.get("csrf", ""))):
        return web.Response(status=403, text="CSRF token missing or invalid")
    user = str(form.get("user", ""))[:100]
    password = str(form.get("password", ""))[:1000]
    peer = request.remote or "?"
    keys = (f"addr:{peer}", f"user:{user}")
    if console.limiter.blocked(*keys):
        return console.render(request, "login.html", status=429,
                              error="ログイン試行が多すぎます。しばらくしてから再度お試しください。")
    encoded = console.users.get(user)
    # an unknown name costs the same scrypt run as a wrong password (no user enumeration by timing)
    if not verify_password(password, encoded or _DUMMY_HASH) or encoded is None:
        console.limiter.failed(*keys)
        return console.render(request, "login.html", status=401, error="ユーザー名またはパスワードが違います。")
    response = web.HTTPFound("/")
    console.set_cookie(response, SESSION_COOKIE, console.signer.issue(user),
                       max_age=console.settings.console_session_minutes * 60)
    raise response


async def logout(request: web.Request) -> web.Response:
    response = web.HTTPFound("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


def make_app(settings: Settings, *, data: ConsoleData | None = None,
             operator: OperatorClient | None = None) -> web.Application:
    check_settings(settings)
    if data is None:
        from kagoflow.adapters.clickhouse import ClickHouseArchive

        data = ConsoleData(ClickHouseArchive.from_settings(settings), timezone=settings.shop_timezone)
    operator = operator or HttpOperatorClient(settings.operator_api_url or local_operator_url(settings),
                                                   token=settings.operator_token)
    app = web.Application(middlewares=[_guard], client_max_size=1 << 20)
    app[CTX] = Console(settings, data, operator)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_static("/static/", HERE / "static")
    pages.add_routes(app)

    async def close(app: web.Application) -> None:
        await app[CTX].operator.close()

    app.on_cleanup.append(close)
    return app


def run(settings: Settings) -> None:
    app = make_app(settings)
    web.run_app(app, host=settings.console_host, port=settings.console_port, print=None)
