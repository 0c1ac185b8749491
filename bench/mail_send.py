"""Benchmark: render + send N mails through the Deliverer with SMTP pool sizes 1, 4 and 8.

    .venv/bin/python bench/mail_send.py [--mails 20000] [--pools 1,4,8] [--no-redis] [--no-pipelining]
        [--per-connection K] [--batch 256] [--sink raw|aiosmtpd] [--dkim]

The SMTP sink runs in a separate process and counts and discards mails: by default a minimal SMTP
responder (aiosmtpd costs about as much CPU per mail as the client, which on 2 cores would measure the
sink), ``--sink aiosmtpd`` for aiosmtpd; both advertise PIPELINING like most MTAs (``--no-pipelining``: the
client sends one command at a time anyway). With Redis reachable (``KAGOFLOW_REDIS_URL``, default the local stack)
each mail takes the worker's full path: suppression check + ledger reservation, render, build, SMTP,
ledger confirmation, delivery event (to an in-memory sink). ``--no-redis`` measures render + build + SMTP
only. Also prints the render + build cost per mail without any I/O. Mails in flight are the Deliverer's
default, as in the worker (``max(8, 4 × pool size)``); ``--per-connection K`` makes them K × pool size. Like
the delivery agent, the mails are handed to ``deliver_many`` in batches of 256 (``--batch``). ``--dkim``
signs every mail with a fresh 2048-bit RSA key (as ``KAGOFLOW_DKIM_*`` would). The tracking base URL is
https, as outside local mode.

Wall-clock mails/s depends on what else the machine runs (client and sink share its cores); the client's CPU
time per mail, and the rate one fully available core would give (1e6 / that), describe the worker itself.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kagoflow.adapters.redis_store import RedisStore, StoreUnavailable
from kagoflow.adapters.smtp import SmtpPool
from kagoflow.core.catalog import ProductInfo
from kagoflow.core.decisions import Decision
from kagoflow.mail.context import MemberProfile
from kagoflow.mail.delivery import Deliverer, DeliveryJob
from kagoflow.mail.engagement import MemorySink
from kagoflow.mail.message import compose
from kagoflow.mail.templates import MailTemplates
from kagoflow.settings import Settings


def _dkim_key_file() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = Path(tempfile.mkdtemp(prefix="kagoflow-bench-")) / "dkim.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return str(path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RawSmtpSink(asyncio.Protocol):
    """A minimal SMTP responder (EHLO/MAIL/RCPT/DATA/RSET/QUIT, all accepted, content discarded, pipelining).

    aiosmtpd costs about as much CPU per mail as the client under test; on a 2-core machine that would
    measure the sink, not kagoflow. This speaks the same protocol over TCP at a fraction of the cost.
    """

    def __init__(self, on_mail: Any) -> None:
        self._on_mail = on_mail
        self._buf = bytearray()
        self._in_data = False
        self._transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._transport.write(b"220 bench-sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        buf = self._buf
        buf += data
        while True:
            if self._in_data:
                end = buf.find(b"\r\n.\r\n")
                if end < 0:
                    return
                del buf[: end + 5]
                self._in_data = False
                self._on_mail()
                self._transport.write(b"250 OK queued\r\n")
                continue
            end = buf.find(b"\r\n")
            if end < 0:
                return
            verb = bytes(buf[:4]).upper()
            del buf[: end + 2]
            if verb == b"EHLO":
                self._transport.write(b"250-bench-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
            elif verb == b"DATA":
                self._in_data = True
                self._transport.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif verb == b"QUIT":
                self._transport.write(b"221 Bye\r\n")
                self._transport.close()
                return
            else:
                self._transport.write(b"250 OK\r\n")


def _sink_main(port: int, counter: Any, sink_cpu: Any, ready: Any, kind: str = "raw") -> None:
    from aiosmtpd.smtp import SMTP

    def on_mail() -> None:
        with counter.get_lock():
            counter.value += 1
            sink_cpu.value = time.process_time()

    class Discard:
        async def handle_EHLO(
            self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
        ) -> list[str]:
            session.host_name = hostname
            return [*responses[:-1], "250-PIPELINING", responses[-1]]

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            on_mail()
            return "250 OK"

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        if kind == "raw":
            server = await loop.create_server(lambda: RawSmtpSink(on_mail), host="127.0.0.1", port=port)
        else:
            server = await loop.create_server(
                lambda: SMTP(Discard(), hostname="bench-sink", decode_data=False, enable_SMTPUTF8=True),
                host="127.0.0.1",
                port=port,
            )
        ready.set()
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


def _jobs(n: int, run: str) -> list[DeliveryJob]:
    products = [
        ProductInfo(
            product_id=f"sku{i}",
            price=1980.0 + 100 * i,
            stock=5,
            updated_ms=0,
            name=f"ベンチ商品 {i}",
            url=f"https://shop.example.com/items/sku{i}",
            image_url=f"https://shop.example.com/img/sku{i}.jpg",
        )
        for i in range(5)
    ]
    jobs: list[DeliveryJob] = []
    for i in range(n):
        member = f"bench{i}"
        decision = Decision(
            member_id=member,
            rule_id="cart-1h",
            kind="abandonment",
            status="sent",
            reason="",
            products=tuple(p.product_id for p in products[: 3 + i % 3]),
            due_ms=0,
            at_ms=0,
            episode=run,
            template=("cart", "favorite", "view")[i % 3],
            coupon="CART10" if i % 2 else None,
        )
        profile = MemberProfile(
            member_id=member,
            email=f"{member}@example.com",
            name=f"会員 {i}",
            opt_in=True,
            device=("pc", "smartphone", "mobile")[i % 3],
        )
        jobs.append((decision, profile, products))
    return jobs


def render_cost_us(settings: Settings, jobs: list[DeliveryJob], n: int = 2000) -> float:
    templates = MailTemplates(settings.templates_dir)
    started = time.perf_counter()
    for decision, profile, products in jobs[:n]:
        compose(decision, profile=profile, products=products, settings=settings, templates=templates, sent_ms=1)
    return (time.perf_counter() - started) / min(n, len(jobs)) * 1e6


async def run_once(
    settings: Settings,
    *,
    pool_size: int,
    jobs: list[DeliveryJob],
    port: int,
    use_redis: bool,
    pipelining: bool,
    per_connection: int,
    batch: int,
) -> tuple[float, float, dict[str, int]]:
    prefix = f"bench_{uuid.uuid4().hex[:8]}:"
    store = RedisStore.from_url(settings.redis_url, prefix=prefix)
    pool = SmtpPool(host="127.0.0.1", port=port, size=pool_size, pipelining=pipelining)
    deliverer = Deliverer(
        settings, store=store, sink=MemorySink(), pool=pool, concurrency=per_connection * pool_size or None
    )
    await deliverer.start()
    started = time.perf_counter()
    cpu_started = time.process_time()
    try:
        if use_redis:
            # Like the delivery agent: one deliver_many per batch of (up to) 256 decisions.
            statuses: list[str] = []
            for start in range(0, len(jobs), batch or len(jobs)):
                results = await deliverer.deliver_many(jobs[start : start + (batch or len(jobs))])
                statuses += [r.status for r in results]
        else:
            templates = deliverer.templates
            gate = asyncio.Semaphore(deliverer.concurrency)

            async def send(job: DeliveryJob) -> str:
                async with gate:
                    mail = compose(
                        job[0],
                        profile=job[1],
                        products=job[2],
                        settings=settings,
                        templates=templates,
                        sent_ms=1,
                    )
                    await pool.send(sender=mail.sender, recipient=mail.recipient, data=mail.data)
                    return "delivered"

            statuses = list(await asyncio.gather(*(send(job) for job in jobs)))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    finally:
        await deliverer.close()
        if use_redis:
            keys = [key async for key in store.client.scan_iter(match=prefix + "*", count=5000)]
            for i in range(0, len(keys), 1000):
                await store.client.delete(*keys[i : i + 1000])
        await store.close()
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return elapsed, cpu, counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=20000)
    parser.add_argument("--pools", default="1,4,8")
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--no-pipelining", action="store_true", help="one SMTP command at a time")
    parser.add_argument(
        "--batch", type=int, default=256, help="mails per deliver_many call, as the delivery agent (0: all at once)"
    )
    parser.add_argument(
        "--per-connection",
        type=int,
        default=0,
        help="mails in flight per SMTP connection (default: the Deliverer's own, as in the worker)",
    )
    parser.add_argument(
        "--sink", choices=("raw", "aiosmtpd"), default="raw", help="SMTP sink: minimal responder or aiosmtpd"
    )
    parser.add_argument("--dkim", action="store_true", help="DKIM-sign every mail (2048-bit RSA)")
    args = parser.parse_args()
    settings = Settings.from_env()
    if not settings.public_base_url.startswith("https://"):
        settings = replace(settings, public_base_url="https://track.example.com")
    if args.dkim:
        settings = replace(settings, dkim_selector="bench", dkim_private_key_file=_dkim_key_file())
    use_redis = not args.no_redis
    if use_redis:

        async def ping() -> None:
            store = RedisStore.from_url(settings.redis_url)
            try:
                await store.ping()
            finally:
                await store.close()

        try:
            asyncio.run(ping())
        except StoreUnavailable:
            print(f"redis at {settings.redis_url} unreachable: measuring without the ledger", file=sys.stderr)
            use_redis = False

    ctx = multiprocessing.get_context("spawn")
    counter, sink_cpu, ready = ctx.Value("q", 0), ctx.Value("d", 0.0), ctx.Event()
    port = _free_port()
    sink = ctx.Process(target=_sink_main, args=(port, counter, sink_cpu, ready, args.sink), daemon=True)
    sink.start()
    if not ready.wait(15):
        raise SystemExit("bench SMTP sink did not start")
    try:
        run = uuid.uuid4().hex[:8]
        jobs = _jobs(args.mails, run)
        print(f"render + build only: {render_cost_us(settings, jobs):.0f} µs/mail (no I/O)")
        mode = "full path (Redis ledger + SMTP)" if use_redis else "render + SMTP (no Redis)"
        smtp = "one command at a time" if args.no_pipelining else "pipelined"
        in_flight = f"{args.per_connection} × pool" if args.per_connection else "Deliverer default max(8, 4 × pool)"
        signed = ", DKIM-signed" if args.dkim else ""
        print(f"{args.mails} mails per run, {mode}{signed}, {args.sink} SMTP sink in a separate process, {smtp}")
        print(f"mails in flight: {in_flight}; deliver_many batches of {args.batch or args.mails}")
        print(
            f"{'pool':>4}  {'seconds':>8}  {'mails/s':>8}  {'client CPU µs/mail':>18}  {'= mails/s per core':>18}  "
            f"{'sink CPU µs':>11}  results"
        )
        for pool_size in (int(p) for p in args.pools.split(",")):
            before, sink_before = counter.value, sink_cpu.value
            jobs = _jobs(args.mails, f"{run}-{pool_size}")
            elapsed, cpu, counts = uvloop.run(
                run_once(
                    settings,
                    pool_size=pool_size,
                    jobs=jobs,
                    port=port,
                    use_redis=use_redis,
                    pipelining=not args.no_pipelining,
                    per_connection=args.per_connection,
                    batch=args.batch,
                )
            )
            received = counter.value - before
            sink_us = (sink_cpu.value - sink_before) / max(received, 1) * 1e6
            print(
                f"{pool_size:>4}  {elapsed:>8.2f}  {args.mails / elapsed:>8.0f}  "
                f"{cpu / args.mails * 1e6:>18.0f}  {args.mails / cpu:>18.0f}  {sink_us:>11.0f}  "
                f"{counts} (sink got {received})"
            )
    finally:
        sink.terminate()
        sink.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
