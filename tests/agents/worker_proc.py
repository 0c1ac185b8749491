"""Run the real worker as a subprocess against the local stack, on private topics (a fresh prefix)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from kagoflow.settings import PROJECT_ROOT, Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class WorkerProcess:
    """One worker subprocess; ``start`` / ``kill`` / ``stop`` may be called repeatedly (restarts)."""

    settings: Settings
    workdir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, base: Settings, tmp: Path, *, rules_dir: Path, **overrides: Any) -> WorkerProcess:
        tag = uuid.uuid4().hex[:8]
        settings = replace(
            base,
            app_id=f"kagoflow-test-{tag}",
            topic_prefix=f"t{tag}-",
            data_dir=tmp / "data",
            web_port=free_port(),
            rules_dir=rules_dir,
            min_delay_seconds=1,
            state_flush_seconds=0.5,
            **overrides,
        )
        env = dict(os.environ)
        env.update({
            "KAGOFLOW_APP_ID": settings.app_id,
            "KAGOFLOW_TOPIC_PREFIX": settings.topic_prefix,
            "KAGOFLOW_DATA_DIR": str(settings.data_dir),
            "KAGOFLOW_WEB_PORT": str(settings.web_port),
            "KAGOFLOW_PUBLIC_BASE_URL": f"http://127.0.0.1:{settings.web_port}",
            "KAGOFLOW_RULES_DIR": str(rules_dir),
            "KAGOFLOW_MIN_DELAY_SECONDS": "1",
            "KAGOFLOW_STATE_FLUSH_SECONDS": str(settings.state_flush_seconds),
            "KAGOFLOW_LOCAL_MODE": "1",  # http tracking links on 127.0.0.1
        })
        env.update({f"KAGOFLOW_{k.upper()}": str(v) for k, v in overrides.items()})
        return cls(settings=settings, workdir=tmp, log_path=tmp / "worker.log", env=env)

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kagoflow.cli", "worker"], cwd=PROJECT_ROOT, env=self.env,
            stdout=log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Ready = the member agent has handled a tick (``/metrics`` counts events)."""
        import urllib.request

        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.settings.web_port}/metrics"
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if orjson.loads(response.read())["members"]["events"] > 0:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"worker not ready after {timeout}s\n{self.tail()}")

    def metrics(self) -> dict[str, Any]:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.settings.web_port}/metrics", timeout=5) as response:
            data: dict[str, Any] = orjson.loads(response.read())
            return data

    def kill(self) -> None:
        """SIGKILL: no flush, no commit — what a crash looks like."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    @classmethod
    @contextmanager
    def running(cls, base: Settings, tmp: Path, *, rules_dir: Path, **overrides: Any) -> Iterator[WorkerProcess]:
        """A started, ready worker, stopped on exit."""
        proc = cls.create(base, tmp, rules_dir=rules_dir, **overrides)
        proc.start()
        try:
            proc.wait_ready()
            yield proc
        finally:
            proc.stop()

    def tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


async def produce(settings: Settings, records: list[tuple[str, str | None, dict[str, Any] | bytes]]) -> None:
    """Produce (topic-kind, key, value) records to the worker's prefixed topics, in order."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for kind, key, value in records:
            raw = value if isinstance(value, bytes) else orjson.dumps(value)
            await producer.send_and_wait(settings.topic_prefix + kind, key=key.encode() if key else None, value=raw)
    finally:
        await producer.stop()


def produce_sync(settings: Settings, records: list[tuple[str, str | None, dict[str, Any] | bytes]]) -> None:
    asyncio.run(produce(settings, records))
