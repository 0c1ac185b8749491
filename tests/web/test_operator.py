"""The operator server's gate (bearer token) and the settings that may run a worker at all."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kagoflow.settings import DEFAULT_TRACKING_SECRET, Settings, is_loopback, require_secrets, secret_problems
from kagoflow.web.operator import bearer_auth, local_operator_url, operator_headers, operator_url

TOKEN = "t" * 40
STRONG = "s" * 32


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@pytest_asyncio.fixture(loop_scope="session")
async def guarded() -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    app = web.Application(middlewares=[bearer_auth(TOKEN)])
    app.router.add_get("/api/members/{member_id}", _ok)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    yield client
    await client.close()


@pytest.mark.asyncio(loop_scope="session")
async def test_the_operator_api_needs_the_bearer_token(guarded: TestClient) -> None:  # type: ignore[type-arg]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"},
                    {"Authorization": "Bearer é"}):
        response = await guarded.get("/api/members/m1", headers=headers)
        assert response.status == 401, headers
        assert await response.json() == {"error": "unauthorized"}
    settings = replace(Settings(), operator_token=TOKEN)
    response = await guarded.get("/api/members/m1", headers=operator_headers(settings))
    assert response.status == 200


def test_default_or_short_secret_is_refused_outside_local_mode() -> None:
    for secret in (DEFAULT_TRACKING_SECRET, "short", "x" * 31):
        settings = Settings(tracking_secret=secret)
        [problem] = secret_problems(settings)
        assert problem.startswith("KAGOFLOW_TRACKING_SECRET:")
        with pytest.raises(ValueError, match="KAGOFLOW_TRACKING_SECRET"):
            require_secrets(settings)
        assert secret_problems(replace(settings, local_mode=True)) == []
    assert secret_problems(Settings(tracking_secret=STRONG)) == []


def test_operator_server_off_loopback_needs_a_token_even_in_local_mode() -> None:
    exposed = Settings(tracking_secret=STRONG, operator_host="0.0.0.0")
    [problem] = secret_problems(exposed)
    assert problem.startswith("KAGOFLOW_OPERATOR_TOKEN:") and "0.0.0.0" in problem
    assert secret_problems(replace(exposed, local_mode=True)) == [problem]
    assert secret_problems(replace(exposed, operator_token=TOKEN)) == []
    assert secret_problems(replace(exposed, operator_token="short"))[0].startswith("KAGOFLOW_OPERATOR_TOKEN:")
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "10.0.0.5", "::", "example.com", ""):
        assert not is_loopback(host), host


def test_operator_urls() -> None:
    settings = Settings(operator_host="0.0.0.0", operator_port=17000)
    assert local_operator_url(settings) == "http://127.0.0.1:17000"
    assert operator_url(settings).endswith(":17000") and "0.0.0.0" not in operator_url(settings)
    assert operator_url(replace(settings, operator_url="http://w1.internal:17000/")) == "http://w1.internal:17000"
    assert operator_headers(Settings()) == {}
