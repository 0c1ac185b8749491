"""``kagoflow collect``: the HTTP beacon collector for storefront JavaScript and shop servers.

``POST /beacons`` takes a JSON array of beacons (SPEC §1; one object is taken as an array of one) as
``navigator.sendBeacon`` sends it (``text/plain``) or ``fetch`` does (``application/json``). Each beacon is
validated with the contract's own ``beacon_fields``; the valid ones go to ``PartitionBatcher`` under the
partition their member id hashes to, the invalid ones are answered by index and reason and never produced.

Answers: ``200 {"accepted": n, "rejected": [{"index": i, "reason": "…"}]}`` once Kafka acknowledged every
accepted beacon (``400`` with the same body when none was valid); ``503`` + ``Retry-After`` when Kafka is
behind or away — nothing of that request counts as accepted (retry it whole; repeats are dropped by
``event_id``); ``429`` + ``Retry-After`` over the per-IP rate; ``413`` over the body or item limit; ``403`` for
a browser ``Origin`` not on ``KAGOFLOW_SHOP_DOMAINS``. Like the public server it names no software (no
``Server`` header) and its 4xx bodies are bare.

Shutdown (SIGTERM/SIGINT): stop listening, send the open batches at once, answer the requests in flight
once Kafka has their beacons, then stop the producer.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import hdrs, web

from kagoflow.collector.batcher import PartitionBatcher
from kagoflow.collector.ratelimit import PerClientLimit
from kagoflow.core.errors import ContractError
from kagoflow.settings import Settings
from kagoflow.streams.contract import MAX_BATCH_BYTES, MAX_RECORD_BYTES, beacon_fields, key_partition
from kagoflow.streams.topics import Topics
from kagoflow.web.public import _drop_server_header, _not_found_otherwise, _PublicRunner

log = logging.getLogger(__name__)
COLLECTOR_KEY = web.AppKey("kagoflow_collector", object)


class Collector:
    """The request handling, apart from the aiohttp wiring so tests can drive it with any producer."""

    def __init__(self, settings: Settings, batcher: PartitionBatcher, *, partitions: int) -> None:
        self.settings = settings
        self.batcher = batcher
        self.partitions = partitions
        self.limit = PerClientLimit(settings.collector_rate_per_ip, burst=settings.collector_rate_burst)
        self.closing = False
        schemes = ("https", "http") if settings.local_mode else ("https",)
        self._schemes = frozenset(schemes)
        self._domains = frozenset(d.lower() for d in settings.shop_domains)
        self._retry_after = str(max(1, int(settings.collector_retry_after_seconds)))

    # -- CORS ------------------------------------------------------------------------------------
    def origin_allowed(self, origin: str) -> bool:
        """A browser origin on one of the shop's domains (https; http too in local mode), any port."""
        try:
            parts = urlsplit(origin)
            host = (parts.hostname or "").lower()
        except ValueError:
            return False
        return parts.scheme in self._schemes and host in self._domains

    def _cors(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None:
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
            response.headers[hdrs.VARY] = "Origin"
        return response

    async def preflight(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None or not self.origin_allowed(origin):
            return web.Response(status=403, text="forbidden")
        response = web.Response(status=204)
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = "POST"
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = "Content-Type"
        response.headers[hdrs.ACCESS_CONTROL_MAX_AGE] = "86400"
        return self._cors(request, response)

    # -- beacons ---------------------------------------------------------------------------------
    def client_of(self, request: web.Request) -> str:
        """The address the rate limit counts: the peer, or the last ``X-Forwarded-For`` hop (the one the
        shop's own proxy added) when ``collector_trust_forwarded`` says a proxy stands in front."""
        if self.settings.collector_trust_forwarded:
            forwarded = request.headers.get("X-Forwarded-For", "")
            last = forwarded.rsplit(",", 1)[-1].strip()
            if last:
                return last
        return request.remote or ""

    def _unavailable(self) -> web.Response:
        return web.Response(status=503, text="unavailable", headers={hdrs.RETRY_AFTER: self._retry_after})

    async def beacons(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and not self.origin_allowed(origin):
            return web.Response(status=403, text="forbidden")
        if not self.limit.allow(self.client_of(request)):
            return web.Response(status=429, text="too many requests",
                                headers={hdrs.RETRY_AFTER: str(self.limit.retry_after_s())})
        if self.closing:
            return self._unavailable()
        if (request.content_length or 0) > self.settings.collector_max_body_bytes:
            return web.Response(status=413, text="too large")
        try:
            body = await request.read()  # the whole body, chunked or not, up to the app's client_max_size
        except web.HTTPRequestEntityTooLarge:  # its own text names sizes: answer bare
            return web.Response(status=413, text="too large")
        try:
            items = orjson.loads(body)
        except orjson.JSONDecodeError:
            return web.Response(status=400, text="bad request")
        if type(items) is dict:
            items = [items]
        if type(items) is not list:
            return web.Response(status=400, text="bad request")
        if len(items) > self.settings.collector_max_beacons:
            return web.Response(status=413, text="too large")
        accepted, rejected = self.validate(items)
        if accepted and (not self.batcher.room_for(len(accepted))
                         or self.batcher.oldest_unacked_s() > self.settings.collector_ack_timeout_seconds):
            return self._unavailable()  # Kafka is behind: take nothing more until it catches up
        futures = {id(f): f for f in (self.batcher.add(p, key, raw) for p, key, raw in accepted)}
        if futures:
            try:
                await asyncio.wait_for(asyncio.gather(*futures.values()),
                                       self.settings.collector_ack_timeout_seconds)
            except Exception as exc:  # timeout or a failed produce: the client retries the request
                log.info("answering 503: %d beacons not acknowledged by Kafka (%s)", len(accepted),
                         type(exc).__name__)
                return self._cors(request, self._unavailable())
        document = {"accepted": len(accepted), "rejected": rejected}
        status = 400 if rejected and not accepted else 200
        return self._cors(request, web.json_response(document, status=status, dumps=_dumps))

    def validate(self, items: list[Any]) -> tuple[list[tuple[int, bytes, bytes]], list[dict[str, Any]]]:
        """(partition, key, encoded beacon) of the valid items; ``{"index", "reason"}`` of the others."""
        accepted: list[tuple[int, bytes, bytes]] = []
        rejected: list[dict[str, Any]] = []
        dumps, partitions = orjson.dumps, self.partitions
        for index, item in enumerate(items):
            try:
                if type(item) is not dict:
                    raise ContractError("record: not a JSON object")
                member_id = beacon_fields(item)[1]
                raw = dumps(item)
                if len(raw) > MAX_RECORD_BYTES:
                    raise ContractError(f"record: larger than {MAX_RECORD_BYTES} bytes")
            except ContractError as exc:
                rejected.append({"index": index, "reason": exc.reason})
                continue
            key = member_id.encode()
            accepted.append((key_partition(key, partitions), key, raw))
        return accepted, rejected

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "closing" if self.closing else "ok"})

    def metrics(self) -> dict[str, Any]:
        return {"records": self.batcher.records, "beacons": self.batcher.beacons,
                "failures": self.batcher.failures, "pending": self.batcher.pending}


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def collector_app(collector: Collector) -> web.Application:
    app = web.Application(middlewares=[_not_found_otherwise],
                          client_max_size=collector.settings.collector_max_body_bytes)
    app[COLLECTOR_KEY] = collector
    app.router.add_post("/beacons", collector.beacons)
    app.router.add_route("OPTIONS", "/beacons", collector.preflight)
    app.router.add_get("/health", collector.health)
    app.on_response_prepare.append(_drop_server_header)
    return app


async def serve(settings: Settings, *, stop: asyncio.Event | None = None,
                on_ready: Callable[[int], Awaitable[None] | None] | None = None) -> None:
    """Run the collector until SIGTERM/SIGINT (or ``stop``), then shut down losing nothing accepted."""
    from aiokafka import AIOKafkaProducer

    from kagoflow.adapters.kafka_admin import partition_count

    topic = Topics(settings.topic_prefix).beacons
    # Never let the producer auto-create the topic: a broker default partition count would split members.
    try:
        partitions = await partition_count(bootstrap=settings.kafka_bootstrap, topic=topic)
    except Exception as exc:
        raise CollectorError(f"kafka: {settings.kafka_bootstrap} unreachable ({type(exc).__name__}: {exc})") from None
    if not partitions:
        raise CollectorError(f"kafka: topic {topic!r} does not exist on {settings.kafka_bootstrap} (the worker "
                             "creates it at start, or infra/stack up)")
    if partitions != settings.partitions:
        log.warning("kafka: topic %r has %d partitions, KAGOFLOW_PARTITIONS says %d; batching by the topic's",
                    topic, partitions, settings.partitions)
    # Not idempotent on purpose: after a broker restart aiokafka's idempotent producer can fail every batch with
    # OutOfOrderSequenceNumber for good (seen in the outage test), which would keep the collector at 503. A
    # retried record may then land twice; the worker drops the repeat by event_id. Order per partition holds:
    # aiokafka sends one request per partition at a time.
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, client_id=f"{settings.app_id}-collector", acks="all",
        enable_idempotence=False, linger_ms=2, max_request_size=MAX_BATCH_BYTES + 64 * 1024,
        max_batch_size=MAX_BATCH_BYTES + 64 * 1024,
        request_timeout_ms=int(max(settings.collector_ack_timeout_seconds * 2, 10) * 1000),
    )
    await producer.start()
    try:
        batcher = PartitionBatcher(producer, topic, linger_s=settings.collector_linger_ms / 1000,
                                   max_bytes=min(settings.collector_batch_bytes, MAX_BATCH_BYTES),
                                   max_pending=settings.collector_max_pending)
        collector = Collector(settings, batcher, partitions=partitions)
        runner = _PublicRunner(collector_app(collector), access_log=None,
                               shutdown_timeout=settings.collector_ack_timeout_seconds + 5)
        await runner.setup()
        site = web.TCPSite(runner, settings.collector_host, settings.collector_port, reuse_address=True)
        await site.start()
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("collector on http://%s:%d/beacons → %s (%d partitions)", settings.collector_host,
                 settings.collector_port, topic, partitions)
        if on_ready is not None:
            maybe = on_ready(partitions)
            if maybe is not None:
                await maybe
        await stop.wait()
        log.info("collector stopping: sending open batches, answering requests in flight")
        collector.closing = True
        await site.stop()  # no new connections
        batcher.flush()
        await runner.cleanup()  # waits for the handlers in flight (their batches were just sent)
        batcher.flush()
        await batcher.drain()
        log.info("collector stopped: %s", collector.metrics())
    finally:
        await producer.stop()


class CollectorError(RuntimeError):
    """The collector cannot start (the message says why); ``kagoflow collect`` prints it and exits 1."""


def run_collector(settings: Settings) -> int:
    logging.basicConfig(level=settings.log_level.upper(),
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] collector: %(message)s")
    import uvloop

    try:
        uvloop.run(serve(settings))
    except KeyboardInterrupt:
        pass
    except CollectorError as exc:
        print(f"kagoflow: error: {exc}", file=sys.stderr)
        return 1
    return 0
