"""Issue 11 against a live worker: what its two servers show, to whom.

The public port (``KAGOFLOW_WEB_PORT``, published to the internet for mail recipients) serves the tracking
routes and ``/health`` only — no member data, no Faust views, no banner, no echoing error pages. The
operator port serves the API and metrics to holders of the bearer token, and refuses bad parameters with
a 400 naming them.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator

import orjson
import pytest

from kagoflow.settings import Settings
from tests.agents.support import get_json, wait_until
from tests.agents.worker_proc import WorkerProcess, produce_sync

pytestmark = pytest.mark.integration
TOKEN = "operator-token-" + "x" * 32


@pytest.fixture(scope="module")
def worker(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    tmp = tmp_path_factory.mktemp("websec")
    rules = tmp / "rules"
    rules.mkdir()
    (rules / "shop.yaml").write_text("timezone: Asia/Tokyo\n")
    with WorkerProcess.running(stack, tmp, rules_dir=rules, operator_token=TOKEN) as proc:
        yield proc


@pytest.fixture(scope="module")
def member(worker: WorkerProcess) -> str:
    """A member with a profile (e-mail, name) the worker holds."""
    member_id = f"sec-{uuid.uuid4().hex[:8]}"
    produce_sync(worker.settings, [("members", member_id, {
        "member_id": member_id, "email": f"{member_id}@secret.test", "name": "秘密 花子", "opt_in": True,
        "ts": "2026-01-01T00:00:00+09:00"})])
    wait_until(lambda: (get_json(worker, f"/api/members/{member_id}")[1] or {}).get("profile") or None,
               timeout=60, what="the member's profile", worker=worker)
    return member_id


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


FAUST_VIEWS = ("/table/", "/table/member-buckets/", "/table/member-buckets/0%2F0/", "/router/",
               "/router/member-buckets/", "/stats/", "/assignment/", "/graph/", "/performance/")


def test_public_port_shows_no_member_data_and_no_faust_views(worker: WorkerProcess, member: str) -> None:
    port = worker.settings.web_port
    for path in (f"/api/members/{member}", f"/api/members/{member}/log", "/api/products/p1", "/metrics",
                 *FAUST_VIEWS):
        status, _, body = _get(port, path, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 404, (path, body[:200])
        assert b"secret.test" not in body and member.encode() not in body
    status, _, body = _get(port, "/health")
    assert status == 200 and orjson.loads(body)["status"] == "ok"


def test_faust_views_are_off_on_the_operator_port_too(worker: WorkerProcess, member: str) -> None:
    for path in FAUST_VIEWS:
        status, _, body = _get(worker.settings.operator_port, path, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 404, (path, body[:200])
        assert b"secret.test" not in body


def test_the_operator_api_needs_the_token(worker: WorkerProcess, member: str) -> None:
    port = worker.settings.operator_port
    for path in (f"/api/members/{member}", "/metrics", "/api/products/p1"):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            status, _, body = _get(port, path, headers)
            assert status == 401, path
            assert b"secret.test" not in body
    status, _, body = _get(port, f"/api/members/{member}", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and f"{member}@secret.test".encode() in body


@pytest.mark.parametrize(("query", "parameter"), [
    ({"from": "9" * 5000}, "from"), ({"from": "²³"}, "from"), ({"to": "9999-12-31"}, "to"),
    ({"from": "0000-01-01"}, "from"), ({"to": "99999999999999999999"}, "to"), ({"from": "2026-02-30"}, "from"),
    ({"to": "2026-01-01T00:00:00"}, "to"), ({"product": "p" * 1000}, "product"), ({"type": "teleport"}, "type"),
    ({"top_only": "maybe"}, "top_only"),
])
def test_bad_log_parameters_are_400_naming_them(worker: WorkerProcess, member: str, query: dict[str, str],
                                                parameter: str) -> None:
    status, body = get_json(worker, f"/api/members/{member}/log?{urllib.parse.urlencode(query)}")
    assert status == 400, body
    assert body["error"].startswith(f"{parameter}: "), body
    assert "Traceback" not in body["error"] and "9" * 100 not in body["error"]


def test_unknown_member_log_is_404(worker: WorkerProcess) -> None:
    status, body = get_json(worker, f"/api/members/nobody-{uuid.uuid4().hex[:8]}/log")
    assert status == 404 and body == {"error": "unknown member"}


def test_public_port_names_no_software_and_echoes_nothing(worker: WorkerProcess) -> None:
    port = worker.settings.web_port
    for path in ("/health", "/o/garbage", "/nothing"):
        _, headers, _ = _get(port, path)
        assert "Server" not in headers, path

    async def raw(request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(65536), timeout=15)
        writer.close()
        return data

    answer = asyncio.run(raw(b"GET /o/x HTTP/1.1\r\nHost: x\r\nX-<script>: 1\r\n\r\n"))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400" and body == b"bad request", answer
    assert b"server:" not in head.lower()
