"""The local stack's Redis keeps the send ledger across a crash: it runs with an append-only file.

Runs a private ``redis-server`` with exactly the stack's command line (own port, own stack folder) — the
shared one is never restarted by tests.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from kagoflow.settings import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "infra"))  # stacklib is imported as infra/stack does
from stacklib.layout import Layout
from stacklib.services import _prepare_redis, _redis_argv

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _layout(root: Path) -> Layout:
    base = Layout.from_env({"KAGOFLOW_STACK_DIR": str(root)})
    return Layout(**{**base.__dict__, "redis_port": _free_port()})


@contextmanager
def _redis(layout: Layout) -> Iterator[tuple[subprocess.Popen[bytes], redis.Redis]]:
    proc = subprocess.Popen(_redis_argv(layout), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=layout.redis_port, socket_timeout=5)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None, "redis-server did not start"
                time.sleep(0.1)
        yield proc, client
    finally:
        client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def test_stack_redis_runs_with_aof_everysec_in_the_stack_folder(tmp_path: Path) -> None:
    layout = _layout(tmp_path / "stack")
    argv = _redis_argv(layout)
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert argv[argv.index("--appendfsync") + 1] == "everysec"
    assert Path(argv[argv.index("--dir") + 1]).is_relative_to(tmp_path / "stack")


def test_a_ledger_entry_survives_a_redis_sigkill(tmp_path: Path) -> None:
    layout = _layout(tmp_path / "stack")
    _prepare_redis(layout)
    with _redis(layout) as (proc, client):
        client.set("kf:ledger:m1|rule|e1", "sent|1|<id@example.com>")
        client.hset("kf:suppressed:member", "m1", "unsubscribed|1")
        time.sleep(1.5)  # appendfsync everysec: at most the last second is at risk
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    with _redis(layout) as (_, client):
        assert client.get("kf:ledger:m1|rule|e1") == b"sent|1|<id@example.com>"
        assert client.hget("kf:suppressed:member", "m1") == b"unsubscribed|1"
