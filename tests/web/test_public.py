"""The public server over real HTTP: tracking routes and /health only, no banner, bare error answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from kagoflow.adapters.redis_store import RedisStore
from kagoflow.mail.context import Links
from kagoflow.mail.engagement import MemorySink
from kagoflow.settings import Settings
from kagoflow.web.public import PublicServer, public_app
from tests.mail.helpers import free_port, mail_settings, make_decision

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture
async def public() -> AsyncIterator[tuple[str, Settings, MemorySink]]:
    settings = mail_settings(Settings(), local_mode=False, tracking_secret="x" * 32)
    sink = MemorySink()
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0")  # never reached by these requests
    port = free_port()
    server = PublicServer(public_app(settings, sink=sink, store=store, ready=lambda: True), host="127.0.0.1",
                          port=port)
    await server.start()
    yield f"http://127.0.0.1:{port}", settings, sink
    await server.stop()
    await store.close()


async def _raw(port_url: str, request: bytes) -> bytes:
    host, port = port_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(65536), timeout=10)
    writer.close()
    return data


async def test_only_tracking_routes_and_health_answer(public) -> None:  # type: ignore[no-untyped-def]
    base, settings, sink = public
    links = Links(settings, make_decision("m-pub"), sent_ms=int(time.time() * 1000) - 3_600_000)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/health") as response:
            assert response.status == 200 and (await response.json())["status"] == "ok"
        async with http.get(base + links.open_url.removeprefix(settings.public_base_url)) as response:
            assert response.status == 200 and response.content_type == "image/gif"
        for method, path in (("GET", "/api/members/m-pub"), ("GET", "/api/members/m-pub/log"),
                             ("GET", "/api/products/p1"), ("GET", "/metrics"), ("GET", "/"),
                             ("GET", "/table/member-buckets/0%2F1/"), ("GET", "/router/"), ("GET", "/stats/"),
                             ("GET", "/graph/"), ("GET", "/assignment/"), ("POST", "/o/x"), ("DELETE", "/u/x"),
                             ("PUT", "/health")):
            async with http.request(method, f"{base}{path}", allow_redirects=False) as response:
                assert response.status == 404, (method, path)
                assert await response.text() == "not found"
    assert [event["type"] for event in sink.events] == ["open"]


async def test_no_server_banner(public) -> None:  # type: ignore[no-untyped-def]
    base, _, _ = public
    async with aiohttp.ClientSession() as http:
        for path in ("/health", "/nothing", "/o/garbage"):
            async with http.get(f"{base}{path}") as response:
                assert "Server" not in response.headers, path
    assert b"\r\nserver:" not in (await _raw(base, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")).lower()


@pytest.mark.parametrize("request_bytes", [
    b"G\x01T /o/x HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /o/<script>alert(1)</script> HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Echo<script>: 1\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: zz-SECRET-zz\r\n\r\n",
])
async def test_malformed_requests_get_a_bare_400(public, request_bytes: bytes) -> None:  # type: ignore[no-untyped-def]
    base, _, _ = public
    answer = await _raw(base, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400", answer
    assert b"server:" not in head.lower()
    assert body == b"bad request"


async def test_a_body_that_is_no_form_is_a_bare_400(public) -> None:  # type: ignore[no-untyped-def]
    base, settings, sink = public
    links = Links(settings, make_decision("m-form"), sent_ms=0)
    path = links.unsubscribe_url.removeprefix(settings.public_base_url)
    async with aiohttp.ClientSession() as http:
        for body, kind in ((b"--zz\r\nbroken", "multipart/form-data; boundary=zz"),
                           (b"List-Unsubscribe=One-Click", "application/x-www-form-urlencoded; charset=no-such")):
            async with http.post(f"{base}{path}", data=body, headers={"Content-Type": kind}) as response:
                assert response.status == 400, kind
                assert await response.text() == "bad request"
    assert sink.events == []
