"""The operator server's gate and address: member data, products and metrics are for staff only.

The operator server is Faust's web server (so ``table_route`` can forward a member request to the worker
that owns the member). It binds ``KAGOFLOW_OPERATOR_HOST`` — loopback by default — and, when
``KAGOFLOW_OPERATOR_TOKEN`` is set, answers only requests with ``Authorization: Bearer <token>``; binding
anything but loopback without a token is refused at start (``kagoflow.settings.secret_problems``). The
staff console and ``kagoflow preview`` / ``test-send`` call it with that header (``operator_headers``).
"""

from __future__ import annotations

import hmac
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from kagoflow.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


def bearer_auth(token: str) -> Any:
    """aiohttp middleware: 401 unless the request carries ``Authorization: Bearer <token>`` (compared in
    constant time). An empty ``token`` lets every request through (loopback-only operation)."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token:
            given = request.headers.get("Authorization", "").encode("utf-8", "replace")
            if not hmac.compare_digest(given, expected):
                return web.json_response({"error": "unauthorized"}, status=401,
                                         headers={"WWW-Authenticate": 'Bearer realm="kagoflow"'})
        return await handler(request)

    return check


def operator_url(settings: Settings) -> str:
    """Where other workers reach this worker's operator server (a wildcard bind → this host's name)."""
    return _url(settings, socket.gethostname())


def local_operator_url(settings: Settings) -> str:
    """The operator server as a tool on the worker's own machine reaches it (a wildcard bind → loopback)."""
    return _url(settings, "127.0.0.1")


def _url(settings: Settings, wildcard: str) -> str:
    if settings.operator_url:
        return settings.operator_url.rstrip("/")
    host = wildcard if settings.operator_host in WILDCARD_HOSTS else settings.operator_host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.operator_port}"


def operator_headers(settings: Settings) -> dict[str, str]:
    """Headers a client of the operator API sends (the bearer token when one is configured)."""
    return {"Authorization": f"Bearer {settings.operator_token}"} if settings.operator_token else {}
