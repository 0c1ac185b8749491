"""The public server: what mail recipients reach, and nothing else.

It serves the tracking routes (``/o``, ``/c``, ``/u``, see ``tracking``) and ``/health``; every other path
and method is a bare 404. It is a plain aiohttp server of its own, apart from Faust's web server (which
serves the operator API, see ``agents/web.py``), so nothing Faust or an operator route adds can ever appear
on the port that is published to the internet. It names no software: no ``Server`` header, and a request
aiohttp cannot parse gets a bare ``400`` — aiohttp's default answer echoes the parser's message, parts of
the request included.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.web_log import AccessLogger
from aiohttp.web_protocol import RequestHandler

from kagoflow.adapters.redis_store import RedisStore
from kagoflow.mail.engagement import EngagementSink
from kagoflow.settings import Settings
from kagoflow.web.tracking import add_tracking_routes

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
READY_KEY = web.AppKey("kagoflow_public_ready", object)


def public_app(
    settings: Settings, *, sink: EngagementSink, store: RedisStore, ready: Callable[[], bool] = lambda: True
) -> web.Application:
    """The public application: tracking routes and ``/health`` (``ready()`` → ``catalog_ready``)."""
    app = web.Application(middlewares=[_not_found_otherwise], client_max_size=64 * 1024)
    add_tracking_routes(app, settings=settings, sink=sink, store=store)
    app[READY_KEY] = ready
    app.router.add_get("/health", _health)
    app.on_response_prepare.append(_drop_server_header)
    return app


async def _health(request: web.Request) -> web.Response:
    ready: Callable[[], bool] = request.app[READY_KEY]  # type: ignore[assignment]
    return web.json_response({"status": "ok", "catalog_ready": bool(ready())})


@web.middleware
async def _not_found_otherwise(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown paths and wrong methods alike: a bare 404, so the port tells a prober nothing."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        return web.Response(status=404, text="not found")


async def _drop_server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.popall(hdrs.SERVER, None)


class _BareResponse(web.Response):
    """An error response without the ``Server`` header aiohttp adds while preparing it."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self.headers.popall(hdrs.SERVER, None)


class _BareErrorHandler(RequestHandler):
    """aiohttp's per-connection protocol, but its own error answers (unparsable request, handler crash)
    are the bare status: no parser message, no request bytes, no traceback, no ``Server`` header."""

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs and refuses once output has started
        response = _BareResponse(status=status, text="bad request" if status == 400 else "")
        response.force_close()
        return response


class _BareErrorServer(web.Server):
    def __init__(self, handler: Any, *, request_factory: Any, **kwargs: Any) -> None:
        super().__init__(handler, request_factory=request_factory, **kwargs)
        self._protocol_kwargs = {k: v for k, v in kwargs.items() if k != "loop"}

    def __call__(self) -> RequestHandler:
        return _BareErrorHandler(self, loop=asyncio.get_running_loop(), **self._protocol_kwargs)


class _PublicRunner(web.AppRunner):
    """``AppRunner`` whose connections use ``_BareErrorHandler``."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # starts and freezes the application
        return _BareErrorServer(server.request_handler, request_factory=server.request_factory,
                                access_log=None, access_log_class=AccessLogger)


class PublicServer:
    """Runs ``public_app`` on ``host:port`` beside the worker's Faust web server."""

    def __init__(self, app: web.Application, *, host: str, port: int) -> None:
        self.app, self.host, self.port = app, host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        runner = _PublicRunner(self.app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port, reuse_address=True).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("public server on http://%s:%s (tracking links, /health)", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
