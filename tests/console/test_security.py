"""The console's gate: no page or JSON without a session, CSRF on every POST, login rate limit, refusing
default secrets. The web layer only (an archive that answers no rows); the browser test covers the rest."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from kagoflow.console.app import ConfigError, check_settings, make_app
from kagoflow.console.auth import hash_password
from kagoflow.console.data import ConsoleData
from kagoflow.settings import PROJECT_ROOT, Settings

PASSWORD = "s3cret-pass"
HASH = hash_password(PASSWORD)
pytestmark = pytest.mark.asyncio(loop_scope="session")
PAGES = ("/", "/rules", "/search", "/members/m1", "/send-list", "/send-list.csv", "/scenarios", "/reports",
         "/backtest")


class EmptyArchive:
    def table(self, name: str) -> str:
        return f"db.{name}"

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return []


class NoWorker:
    async def member(self, member_id: str) -> dict[str, Any] | None:
        return None

    async def metrics(self) -> dict[str, Any] | None:
        return None

    async def close(self) -> None:
        pass


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"local_mode": True, "console_users": (f"alice:{HASH}",),
                              "rules_dir": PROJECT_ROOT / "rules"}
    return Settings(**{**values, **overrides})


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    app = make_app(settings(), data=ConsoleData(EmptyArchive(), timezone="Asia/Tokyo"), operator=NoWorker())
    async with TestClient(TestServer(app)) as c:
        yield c


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert match, html[:500]
    return match.group(1)


async def login(client: TestClient[Any, Any], password: str = PASSWORD, *, headers: list[str] | None = None
                ) -> int:
    token = _csrf(await (await client.get("/login")).text())
    response = await client.post("/login", data={"csrf": token, "user": "alice", "password": password},
                                 allow_redirects=False)
    if headers is not None:
        headers.extend(response.headers.getall("Set-Cookie", []))
    return response.status


async def test_pages_redirect_to_login_and_json_answers_401_without_a_session(client: Any) -> None:
    for path in PAGES:
        response = await client.get(path, allow_redirects=False)
        assert response.status == 302 and response.headers["Location"] == "/login", path
    for path in ("/api/report", "/api/members/m1"):
        response = await client.get(path)
        assert response.status == 401 and await response.json() == {"error": "login required"}
    forged = {"kf_session": "alice|99999999999999|x|" + "0" * 64}
    response = await client.get("/", cookies=forged, allow_redirects=False)
    assert response.status == 302


async def test_login_then_every_page_renders(client: Any) -> None:
    set_cookie: list[str] = []
    assert await login(client, headers=set_cookie) == 302
    session = next(c for c in set_cookie if c.startswith("kf_session="))
    assert "HttpOnly" in session and "SameSite=Strict" in session and "Max-Age=28800" in session
    for path in PAGES:
        response = await client.get(path)
        assert response.status == 200, path
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    csv = await client.get("/send-list.csv?day=2024-03-01")
    assert (await csv.read()).startswith("\ufeffday,at,member_id,email".encode())
    assert (await client.get("/reports?since=nope")).status == 400


async def test_login_form_and_every_post_need_the_csrf_token(client: Any) -> None:
    await client.get("/login")
    response = await client.post("/login", data={"user": "alice", "password": PASSWORD}, allow_redirects=False)
    assert response.status == 403
    assert await login(client) == 302
    for path, form in (("/rules/toggle", {"rule": "cart-1h", "enabled": "0"}), ("/logout", {}),
                       ("/backtest", {"rule": "cart-1h", "since": "2024-03-01", "until": "2024-03-01"})):
        assert (await client.post(path, data=form, allow_redirects=False)).status == 403, path
        assert (await client.post(path, data={**form, "csrf": "0" * 64}, allow_redirects=False)).status == 403
    assert (await client.get("/")).status == 200  # still logged in: nothing was done


async def test_login_is_rate_limited(client: Any) -> None:
    for _ in range(5):
        assert await login(client, "wrong") == 401
    assert await login(client, "wrong") == 429
    assert await login(client) == 429  # even the right password, until the window passes


async def test_console_refuses_default_secrets_outside_local_mode() -> None:
    with pytest.raises(ConfigError, match="KAGOFLOW_CONSOLE_SESSION_SECRET"):
        check_settings(settings(local_mode=False, tracking_secret="t" * 32))
    with pytest.raises(ConfigError, match="KAGOFLOW_TRACKING_SECRET"):
        check_settings(settings(local_mode=False, console_session_secret="s" * 32))
    with pytest.raises(ConfigError, match="KAGOFLOW_CONSOLE_USERS is empty"):
        check_settings(settings(console_users=()))
    check_settings(settings(local_mode=False, console_session_secret="s" * 32, tracking_secret="t" * 32))


async def test_secure_cookie_outside_local_mode() -> None:
    from kagoflow.console.app import Console

    console = Console(settings(local_mode=False, console_session_secret="s" * 32, tracking_secret="t" * 32),
                      ConsoleData(EmptyArchive(), timezone="Asia/Tokyo"), NoWorker())
    from aiohttp import web

    response = web.Response()
    console.set_cookie(response, "kf_session", "v", max_age=60)
    assert response.cookies["kf_session"]["secure"]
