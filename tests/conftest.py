"""Shared fixtures: the local stack and helpers to use it without tests stepping on each other.

Integration tests (``@pytest.mark.integration``) take the session fixture ``stack``: it runs
``infra/stack up`` once per session (idempotent: ~5 s when nothing runs, <1 s when everything does) and
returns the ``Settings`` that point at it. Services the session started are stopped at session end;
services that were already up stay up, and ``KAGOFLOW_STACK_KEEP=1`` keeps everything running.

Under pytest-xdist (``infra/test`` runs ``-n``) every worker process has its own session, so a worker never
stops services (the others may still use them): the controller notes what was down when the run began and stops
what the workers started once all of them have finished (``pytest_sessionstart``/``pytest_sessionfinish`` below).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kagoflow.settings import PROJECT_ROOT, Settings

STACK = PROJECT_ROOT / "infra" / "stack"
os.environ.setdefault("KAGOFLOW_LOCAL_MODE", "1")  # tests use short secrets and http links (README "Security")
T = TypeVar("T")


def run_stack(*args: str, env: dict[str, str] | None = None, timeout: float = 900.0,
              check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``infra/stack ARGS``; on failure the exception message carries its output."""
    result = subprocess.run([str(STACK), *args], env=env, capture_output=True, text=True, timeout=timeout,
                            check=False, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise RuntimeError(f"infra/stack {' '.join(args)} exited {result.returncode}:\n"
                           f"{result.stdout}{result.stderr}")
    return result


def stack_status(env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """``{service: {"port", "pid", "state", "log"}}`` of the stack selected by ``env``."""
    out = run_stack("status", "--json", env=env, check=False, timeout=60).stdout
    return {row["service"]: row for row in json.loads(out)}


def redis_cluster_status(env: dict[str, str]) -> dict[str, Any]:
    """The ``stack_status`` row of the optional Redis Cluster (``infra/stack up redis-cluster``)."""
    out = run_stack("status", "--json", "redis-cluster", env=env, check=False, timeout=60).stdout
    return dict(json.loads(out)[0])


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, even when an event loop is running here."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _xdist_worker() -> bool:
    return "PYTEST_XDIST_WORKER" in os.environ


def _xdist_controller(config: pytest.Config) -> bool:
    """True in the process that hands tests to xdist workers (and runs none itself)."""
    return not _xdist_worker() and bool(getattr(config.option, "numprocesses", None))


def _keep_stack(env: dict[str, str]) -> bool:
    return env.get("KAGOFLOW_STACK_KEEP", "") not in {"", "0"}


def _stop_started(before: dict[str, dict[str, Any]], env: dict[str, str]) -> None:
    """Stop the services that were down in ``before`` (``infra/stack down`` only stops what this checkout's
    stack dir runs, never another checkout's)."""
    started = [name for name, row in before.items() if row["state"] != "up"]
    if started and not _keep_stack(env):
        run_stack("down", *started, env=env, check=False, timeout=120)


_STACK_BEFORE = pytest.StashKey[dict[str, dict[str, Any]]]()


def pytest_sessionstart(session: pytest.Session) -> None:
    if _xdist_controller(session.config):
        env = dict(os.environ)
        # The Redis Cluster too (started by ``tests/adapters`` fixtures on demand): a worker that started it
        # must not stop it while another worker's tests still use it.
        session.config.stash[_STACK_BEFORE] = {**stack_status(env), "redis-cluster": redis_cluster_status(env)}


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    before = session.config.stash.get(_STACK_BEFORE, None)
    if before is not None:  # the xdist controller, after every worker has finished
        _stop_started(before, dict(os.environ))


@pytest.fixture(scope="session")
def stack() -> Iterator[Settings]:
    env = dict(os.environ)
    before = stack_status(env)
    run_stack("up", env=env)
    mail_dir = Path(stack_status(env)["smtp"]["mail_dir"])
    if mail_dir != _own_stack_dir() / "smtp" / "mail":
        # The services belong to another checkout's stack (infra/stack reuses them rather than clash on the
        # ports): point KAGOFLOW_STACK_DIR there so every helper finds the mail its SMTP sink stores.
        os.environ["KAGOFLOW_STACK_DIR"] = str(mail_dir.parent.parent)
    yield Settings.from_env()
    if not _xdist_worker():
        _stop_started(before, env)


def _own_stack_dir() -> Path:
    return Path(os.environ.get("KAGOFLOW_STACK_DIR") or PROJECT_ROOT / ".stack").resolve()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``unique_name("orders")`` → ``"orders_t3f9a1c2e"``: topic, group, database or key-prefix names that no
    other test (or other engineer's concurrent run) uses."""

    def make(prefix: str) -> str:
        return f"{prefix}_t{uuid.uuid4().hex[:10]}"

    return make


@pytest.fixture
def kafka_topic(stack: Settings, unique_name: Callable[[str], str]) -> Iterator[Callable[..., str]]:
    """Factory: ``kafka_topic("beacons", partitions=4)`` creates a fresh topic and returns its name; every
    topic created is deleted after the test."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    created: list[str] = []

    async def admin_call(action: Callable[[AIOKafkaAdminClient], Coroutine[Any, Any, Any]]) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
        await admin.start()
        try:
            await action(admin)
        finally:
            await admin.close()

    def make(prefix: str = "topic", *, partitions: int | None = None,
             config: dict[str, str] | None = None) -> str:
        name = unique_name(prefix)
        topic = NewTopic(name, num_partitions=partitions or stack.partitions, replication_factor=1,
                         topic_configs=config or {})
        run_sync(admin_call(lambda admin: admin.create_topics([topic])))
        created.append(name)
        return name

    yield make
    if created:
        run_sync(admin_call(lambda admin: admin.delete_topics(created)))


@pytest.fixture
def scratch_database(stack: Settings, unique_name: Callable[[str], str]) -> Iterator[str]:
    """A fresh ClickHouse database (dropped after the test); connect with ``database=scratch_database``."""
    from clickhouse_driver import Client

    name = unique_name("scratch")
    client = Client(host=stack.clickhouse_host, port=stack.clickhouse_port)
    client.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {name}")
        client.disconnect()


class Mailbox:
    """The SMTP sink's ``.eml`` folder, seen from one test: only mails that arrive after it was made count."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = {p.name for p in path.glob("*.eml")}
        self._parsed: dict[Path, EmailMessage] = {}

    def new_files(self) -> list[Path]:
        return sorted(p for p in self.path.glob("*.eml") if p.name not in self._seen)

    @staticmethod
    def parse(path: Path) -> EmailMessage:
        with open(path, "rb") as fh:
            message = email.message_from_binary_file(fh, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return message

    def wait_for(self, count: int, *, timeout: float = 10.0,
                 match: Callable[[EmailMessage], bool] | None = None) -> list[EmailMessage]:
        """Wait until ``count`` new mails (that satisfy ``match``, e.g. a recipient) have arrived; return them
        in arrival order. Other sessions share the sink, so filter with ``match`` when that matters."""
        deadline = time.monotonic() + timeout
        while True:
            for path in self.new_files():
                if path not in self._parsed:
                    self._parsed[path] = self.parse(path)
            messages = [m for m in self._parsed.values() if match is None or match(m)]
            if len(messages) >= count:
                return messages
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(messages)} of {count} expected mails arrived in {self.path} "
                                   f"within {timeout} s")
            time.sleep(0.05)


@pytest.fixture
def smtp_mailbox(stack: Settings) -> Mailbox:
    """The mail the stack's SMTP sink received from now on (see ``Mailbox.wait_for``)."""
    return Mailbox(_own_stack_dir() / "smtp" / "mail")
