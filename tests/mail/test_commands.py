"""preview / test-send against a stand-in worker API (a real HTTP server on a free port)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from kagoflow.mail import commands
from kagoflow.settings import PROJECT_ROOT, Settings
from tests.mail.helpers import ScriptedSmtp, free_port, mail_settings, scripted_smtp_fixture  # noqa: F401

MEMBER = {
    "member_id": "m1",
    "profile": {
        "email": "m1@example.com",
        "name": "佐藤 花子",
        "opt_in": True,
        "device": "smartphone",
        "locale": "ja",
        "purchase_count": 2,
    },
    "products": [
        {"product_id": "p1", "state": "cart"},
        {"product_id": "p2", "state": "view"},
        {"product_id": "p3", "state": "cart"},
    ],
}
PRODUCTS = {
    f"p{i}": {
        "product_id": f"p{i}",
        "price": 1000.0 * i,
        "stock": 3,
        "updated_ms": 0,
        "name": f"商品{i}",
        "url": f"https://shop.example.com/p{i}",
        "image_url": None,
        "on_sale": None,
        "ref_day": "",
        "ref_price": None,
    }
    for i in (1, 2, 3)
}


OPERATOR_TOKEN = "o" * 32


class _Api(BaseHTTPRequestHandler):
    """The worker's operator API as far as the commands use it (it wants the bearer token, as a real one)."""

    def do_GET(self) -> None:
        doc: Any = None
        if self.headers.get("Authorization") != f"Bearer {OPERATOR_TOKEN}":
            self.send_response(401)
            self.end_headers()
            return
        if self.path == "/api/members/m1":
            doc = MEMBER
        elif self.path.startswith("/api/products/"):
            doc = PRODUCTS.get(self.path.rsplit("/", 1)[1])
        body = json.dumps(doc if doc is not None else {"error": "unknown"}).encode()
        self.send_response(200 if doc is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def worker_api() -> Iterator[Settings]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield mail_settings(Settings(), operator_host="127.0.0.1", operator_port=server.server_address[1],
                        operator_token=OPERATOR_TOKEN)
    server.shutdown()
    server.server_close()


def test_preview_prints_subject_and_text_and_writes_html(
    worker_api: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    html = tmp_path / "preview.html"
    code = commands.preview(
        worker_api, rules_dir=PROJECT_ROOT / "rules", rule_id="cart-1h", member_id="m1", html_out=html
    )
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("Subject: 佐藤 花子 様、カートに商品が残っています")
    assert "商品1" in out and "商品3" in out and "商品2" not in out  # only carted products
    page = html.read_text(encoding="utf-8")
    assert "佐藤 花子 様" in page and 'width="100%"' in page  # smartphone layout


def test_preview_of_a_price_rule_lists_all_watched_products(
    worker_api: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = commands.preview(
        worker_api,
        rules_dir=PROJECT_ROOT / "rules",
        rule_id="price-drop",
        member_id="m1",
        html_out=tmp_path / "p.html",
    )
    out = capsys.readouterr().out
    assert code == 0 and all(f"商品{i}" in out for i in (1, 2, 3))


def test_unreachable_worker_and_unknown_rule_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = mail_settings(Settings(), operator_host="127.0.0.1", operator_port=free_port())
    code = commands.preview(
        settings,
        rules_dir=PROJECT_ROOT / "rules",
        rule_id="cart-1h",
        member_id="m1",
        html_out=tmp_path / "x.html",
    )
    err = capsys.readouterr().err
    assert code == 1
    assert f"http://127.0.0.1:{settings.operator_port}/api/members/m1" in err
    code = commands.preview(
        settings,
        rules_dir=PROJECT_ROOT / "rules",
        rule_id="no-such-rule",
        member_id="m1",
        html_out=tmp_path / "x.html",
    )
    assert code == 1 and "no-such-rule" in capsys.readouterr().err


def test_test_send_goes_to_the_given_address_only(
    worker_api: Settings,
    scripted_smtp: tuple[ScriptedSmtp, Controller],
    capsys: pytest.CaptureFixture[str],
) -> None:
    handler, controller = scripted_smtp
    settings = replace(worker_api, smtp_host="127.0.0.1", smtp_port=controller.port)
    code = commands.test_send(
        settings,
        rules_dir=PROJECT_ROOT / "rules",
        rule_id="cart-1h",
        member_id="m1",
        to="operator@example.com",
    )
    assert code == 0, capsys.readouterr().err
    assert handler.recipients() == ["operator@example.com"]
    import email
    import email.policy

    message = email.message_from_bytes(
        handler.received[0].original_content or b"", policy=email.policy.default
    )
    assert str(message["Subject"]).startswith("[TEST] 佐藤 花子 様")
    assert message["To"] == "operator@example.com"
