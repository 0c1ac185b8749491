"""Helpers of the worker integration tests: HTTP views, polling, mails stored by the SMTP sink, DLQ records."""

from __future__ import annotations

import asyncio
import email
import email.parser
import email.policy
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from kagoflow.settings import PROJECT_ROOT, Settings
from kagoflow.web.operator import operator_headers
from tests.agents.worker_proc import WorkerProcess

T = TypeVar("T")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def get_json(worker: WorkerProcess, path: str, **query: object) -> tuple[int, Any]:
    """(HTTP status, decoded JSON body) of ``GET path?query`` on the worker's operator server."""
    url = f"http://127.0.0.1:{worker.settings.operator_port}{path}"
    if query:
        url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
    try:
        request = urllib.request.Request(url, headers=operator_headers(worker.settings))
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, orjson.loads(body)
        except orjson.JSONDecodeError:
            return exc.code, body.decode(errors="replace")


def member_doc(worker: WorkerProcess, member_id: str) -> dict[str, Any] | None:
    status, body = get_json(worker, f"/api/members/{urllib.parse.quote(member_id)}")
    if status == 404:
        return None
    assert status == 200, (status, body)
    assert isinstance(body, dict)
    return body


def products_of(doc: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``product_id → entry`` of a member document (empty for an unknown member)."""
    return {entry["product_id"]: entry for entry in (doc or {}).get("products", [])}


def wait_until(probe: Callable[[], T | None], *, timeout: float, what: str, worker: WorkerProcess | None = None,
               interval: float = 0.25) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` (and the worker log) if not."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    tail = f"\n--- worker log ---\n{worker.tail()}" if worker is not None else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}{tail}")


# -- mail ------------------------------------------------------------------------------------------------
def mailbox_dir() -> Path:
    return Path(os.environ.get("KAGOFLOW_STACK_DIR", PROJECT_ROOT / ".stack")) / "smtp" / "mail"


_RECIPIENTS: dict[Path, str] = {}
_MESSAGES: dict[Path, tuple[float, EmailMessage]] = {}
_SINCE_NS = time.time_ns() - 600 * 10**9
"""Mail stored before this (10 min before this process imported the module) is no test's of this process."""


def _stored_before_us(path: Path) -> bool:
    """The sink names each file ``<arrival time_ns>-<seq>.eml`` (``infra/smtp_sink.py``)."""
    try:
        return int(path.name.split("-", 1)[0]) < _SINCE_NS
    except ValueError:
        return False


def stored_mails_to(domain: str) -> list[tuple[float, EmailMessage]]:
    """(arrival time, message) of every stored mail whose recipient is in ``domain``, oldest first (the sink is
    shared: give each test its domain).

    The folder holds the mail of every session that shares the stack (thousands), and re-parsing all of it on
    every poll burnt minutes of CPU: mail older than this process is skipped by its file name, and as the sink
    moves each mail in complete and never rewrites it, a file's recipient is read (headers only) once per process
    and only the test's own mails are parsed whole.
    """
    found = []
    for path in sorted(mailbox_dir().glob("*.eml")):
        to = _RECIPIENTS.get(path)
        if to is None and _stored_before_us(path):
            to = _RECIPIENTS[path] = ""
        if to is None:
            with open(path, "rb") as fh:
                headers = email.parser.BytesHeaderParser(policy=email.policy.default).parse(fh)
            to = _RECIPIENTS[path] = str(headers["To"])
        if not to.endswith("@" + domain):
            continue
        if path not in _MESSAGES:
            with open(path, "rb") as fh:
                message = email.message_from_binary_file(fh, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            _MESSAGES[path] = (path.stat().st_mtime, message)
        found.append(_MESSAGES[path])
    return found


def mails_to(domain: str) -> list[EmailMessage]:
    """Every stored mail whose recipient is in ``domain``, oldest first (see ``stored_mails_to``)."""
    return [message for _, message in stored_mails_to(domain)]


def recipient(message: EmailMessage) -> str:
    """Local part of the recipient address (the test's member id)."""
    return str(message["To"]).rsplit("<", 1)[-1].rstrip(">").split("@", 1)[0]


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None, "mail without a text part"
    content = part.get_content()
    assert isinstance(content, str)
    return content


# -- dead letters ----------------------------------------------------------------------------------------
async def _read_topic(settings: Settings, topic: str, *, expect: int, timeout: float) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(out) < expect and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                out += [orjson.loads(m.value) for m in messages if m.value is not None]
    finally:
        await consumer.stop()
    return out


def read_dead_letters(settings: Settings, topic_kind: str, *, expect: int, timeout: float = 20.0
                      ) -> list[dict[str, Any]]:
    """The envelopes on ``<prefix><topic_kind>.dlq`` (reads until ``expect`` arrived or ``timeout``)."""
    return asyncio.run(_read_topic(settings, f"{settings.topic_prefix}{topic_kind}.dlq", expect=expect,
                                   timeout=timeout))


# -- offsets ---------------------------------------------------------------------------------------------
async def _produce_located(settings: Settings, records: list[tuple[str, str, dict[str, Any]]]
                           ) -> list[tuple[int, int]]:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        out = []
        for kind, key, value in records:
            meta = await producer.send_and_wait(settings.topic_prefix + kind, key=key.encode(),
                                                value=orjson.dumps(value))
            out.append((meta.partition, meta.offset))
        return out
    finally:
        await producer.stop()


def produce_located(settings: Settings, records: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[int, int]]:
    """Like ``produce_sync``, returning each record's (partition, offset)."""
    return asyncio.run(_produce_located(settings, records))


async def _committed(settings: Settings, topic: str, partition: int) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        tp = TopicPartition(topic, partition)
        offsets = await admin.list_consumer_group_offsets(settings.app_id, partitions=[tp])
        found = offsets.get(tp)
        return -1 if found is None else int(found.offset)
    finally:
        await admin.close()


def committed_offset(settings: Settings, topic_kind: str, partition: int) -> int:
    """The worker's committed offset (next record to read; -1 = none) of ``<prefix><topic_kind>[partition]``."""
    return asyncio.run(_committed(settings, settings.topic_prefix + topic_kind, partition))


def wait_member(worker: WorkerProcess, member_id: str, ready: Callable[[dict[str, Any]], bool], *, what: str,
                timeout: float = 20.0) -> dict[str, Any]:
    """Poll ``/api/members/{member_id}`` until ``ready(document)``; return that document."""
    def probe() -> dict[str, Any] | None:
        doc = member_doc(worker, member_id)
        return doc if doc is not None and ready(doc) else None

    return wait_until(probe, timeout=timeout, what=what, worker=worker)


# -- send ledger -----------------------------------------------------------------------------------------
def ledger_states(settings: Settings) -> tuple[set[str], dict[str, str]]:
    """(decision keys reported ``uncertain``, ledger state per decision key) of the worker app's send ledger.

    A mail is lost by design only when a SIGKILL hit it between its ``transmitting`` mark and the end of DATA
    (``kagoflow.mail.delivery``: at most once); tests allow exactly those."""
    import redis

    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        prefix = f"{settings.app_id}:ledger:"
        uncertain = set(client.smembers(prefix + "uncertain"))
        # entries are "<prefix>{<decision key>}" (hash-tagged: one Redis Cluster slot per entry)
        states = {key.removeprefix(prefix)[1:-1]: str(client.get(key)).split("|", 1)[0]
                  for key in client.scan_iter(prefix + "{*")}
    finally:
        client.close()
    return uncertain, states


def outside_uncertain_window(lost_keys: set[str], settings: Settings) -> dict[str, str | None]:
    """The lost decision keys a SIGKILL between ``transmitting`` and the end of DATA does not explain, with
    their ledger state (None: never reserved)."""
    uncertain, states = ledger_states(settings)
    return {key: states.get(key) for key in lost_keys if key not in uncertain or states.get(key) != "transmitting"}
