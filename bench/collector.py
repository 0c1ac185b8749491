"""Collector throughput: beacons/s one ``kagoflow collect`` process accepts over loopback HTTP.

Starts the collector (a subprocess, rate limit off) on a fresh topic prefix of the local stack's Kafka, then
``--clients`` load-generator processes each keep ``--connections`` keep-alive connections busy posting JSON
arrays of ``--batch`` session-shaped beacons (``bench/traffic.py``) for ``--seconds``. Counted: beacons in
2xx answers (the collector answers only once Kafka acknowledged them), per second of the measured window,
and the answers' latency. The load generator runs on the same cores as the collector and Kafka: on a small
machine it is part of what is measured (the report prints each process's CPU seconds).

    .venv/bin/python bench/collector.py --seconds 20 --connections 16 --batch 20 --clients 1
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from traffic import generate_beacons  # bench/ is sys.path[0] when run as a script

from kagoflow.settings import PROJECT_ROOT, Settings
from kagoflow.streams.topics import Topics

PARTITIONS = 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _admin(bootstrap: str, *, create: str | None = None, delete: str | None = None) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if create:
            await admin.create_topics([NewTopic(create, num_partitions=PARTITIONS, replication_factor=1)])
        if delete:
            await admin.delete_topics([delete])
    finally:
        await admin.close()


async def _load(url: str, bodies: list[bytes], per_body: int, connections: int, seconds: float,
                warmup: float) -> dict[str, Any]:
    import aiohttp

    accepted = 0
    refused: dict[int, int] = {}
    latencies: list[float] = []
    start = time.perf_counter()
    measure_from, measure_to = start + warmup, start + warmup + seconds

    async def client(n: int) -> None:
        nonlocal accepted
        i = n
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
            while (now := time.perf_counter()) < measure_to:
                body = bodies[i % len(bodies)]
                i += connections
                async with http.post(url, data=body, headers={"Content-Type": "text/plain"}) as answer:
                    await answer.read()
                    done = time.perf_counter()
                    if measure_from <= now and done <= measure_to:
                        if answer.status == 200:
                            accepted += per_body
                            latencies.append(done - now)
                        else:
                            refused[answer.status] = refused.get(answer.status, 0) + 1

    await asyncio.gather(*(client(n) for n in range(connections)))
    return {"accepted": accepted, "refused": refused, "latencies": latencies}


def _client_main(url: str, seed: int, batch: int, connections: int, seconds: float, warmup: float,
                 out: Any) -> None:
    import uvloop

    beacons = list(generate_beacons(members=20_000, events=batch * 2000, seed=seed,
                                    start_ms=time.time_ns() // 1_000_000 - 600_000, span_s=600))
    for n, beacon in enumerate(beacons):  # unique event ids per client: nothing is a duplicate
        beacon["event_id"] = f"{seed}-{n}"
    bodies = [orjson.dumps(beacons[i:i + batch]) for i in range(0, len(beacons), batch)]
    result = uvloop.run(_load(url, bodies, batch, connections, seconds, warmup))
    result["cpu_s"] = resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(
        resource.RUSAGE_SELF).ru_stime
    out.send(result)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window (after --warmup)")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections per client process")
    parser.add_argument("--clients", type=int, default=1, help="load-generator processes")
    parser.add_argument("--batch", type=int, default=20, help="beacons per request")
    parser.add_argument("--linger-ms", type=int, default=50, help="KAGOFLOW_COLLECTOR_LINGER_MS")
    parser.add_argument("--bootstrap", default=Settings.from_env().kafka_bootstrap)
    args = parser.parse_args(argv)

    prefix = f"kfcollect-{time.strftime('%m%d%H%M%S')}-{os.getpid()}-"
    topic = Topics(prefix).beacons
    asyncio.run(_admin(args.bootstrap, create=topic))
    port = _free_port()
    env = {**os.environ, "KAGOFLOW_KAFKA_BOOTSTRAP": args.bootstrap, "KAGOFLOW_TOPIC_PREFIX": prefix,
           "KAGOFLOW_COLLECTOR_PORT": str(port), "KAGOFLOW_COLLECTOR_RATE_PER_IP": "0",
           "KAGOFLOW_COLLECTOR_LINGER_MS": str(args.linger_ms), "KAGOFLOW_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "kagoflow.cli", "collect"], cwd=PROJECT_ROOT, env=env)
    url = f"http://127.0.0.1:{port}/beacons"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url.replace("/beacons", "/health"), timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("collector did not start") from None
                time.sleep(0.2)
        cpu_before = _cpu_s(proc.pid)
        pipes, workers = [], []
        for n in range(args.clients):
            receive, send = multiprocessing.Pipe(duplex=False)
            worker = multiprocessing.Process(target=_client_main, args=(url, n + 1, args.batch, args.connections,
                                                                        args.seconds, args.warmup, send))
            worker.start()
            pipes.append(receive)
            workers.append(worker)
        results = [pipe.recv() for pipe in pipes]
        for worker in workers:
            worker.join()
        cpu = _cpu_s(proc.pid) - cpu_before
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        asyncio.run(_admin(args.bootstrap, delete=topic))
    accepted = sum(r["accepted"] for r in results)
    latencies = sorted(x for r in results for x in r["latencies"])
    refused: dict[int, int] = {}
    for r in results:
        for status, count in r["refused"].items():
            refused[status] = refused.get(status, 0) + count
    print(f"collector: {args.clients} client process(es) × {args.connections} connections, {args.batch} beacons "
          f"a request, linger {args.linger_ms} ms, {args.seconds:.0f} s measured")
    print(f"accepted {accepted} beacons = {accepted / args.seconds:,.0f} beacons/s "
          f"({len(latencies) / args.seconds:,.0f} requests/s); refused {refused or 'none'}")
    if latencies:
        print(f"latency p50 {statistics.median(latencies) * 1000:.1f} ms, "
              f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms")
    print(f"CPU s: collector {cpu:.1f} (incl. warm-up), load generators "
          + ", ".join(f"{r['cpu_s']:.1f}" for r in results) + f"; load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
