"""What kagoflow needs inside the services: Kafka topics and the ClickHouse schema.

Works against the local stack and against existing services alike: only ``Settings`` (``KAGOFLOW_*``) say
where they are (``infra/stack provision``).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from kagoflow.settings import Settings
from stacklib.layout import INFRA_DIR
from stacklib.procs import StackError

SCHEMA_FILE = INFRA_DIR / "clickhouse" / "schema.sql"


def ensure_topics(settings: Settings, *, timeout: float = 60.0) -> list[str]:
    """Create the missing topics of ``kagoflow.streams.topics`` (with ``KAGOFLOW_TOPIC_PREFIX``), each with
    ``KAGOFLOW_PARTITIONS`` partitions and ``KAGOFLOW_REPLICATION_FACTOR`` replicas; returns those created."""
    from kagoflow.streams.topics import Topics

    names = Topics(settings.topic_prefix).all()
    return asyncio.run(_ensure_topics(settings.kafka_bootstrap, names, settings.partitions,
                                      settings.replication_factor, timeout))


async def _ensure_topics(bootstrap: str, names: tuple[str, ...], partitions: int, replication_factor: int,
                         timeout: float) -> list[str]:
    """Wait for the broker to answer (it may still be starting), then ``kafka_admin.ensure_topics``."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    from kagoflow.adapters.kafka_admin import TopicSpec, ensure_topics

    deadline = time.monotonic() + timeout
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        try:
            await admin.start()
            break
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise StackError(f"kafka: admin client could not connect to {bootstrap}: {exc!r}") from None
            await asyncio.sleep(0.5)
        finally:
            await admin.close()
    try:
        return await ensure_topics(bootstrap=bootstrap, topics=[TopicSpec(name, partitions) for name in names],
                                   replication=replication_factor,
                                   timeout_s=max(deadline - time.monotonic(), 5.0))
    except RuntimeError as exc:
        raise StackError(str(exc)) from None


def split_sql(text: str) -> list[str]:
    """Statements of a SQL file: ``;``-separated, ``--`` comments dropped, quotes respected."""
    statements: list[str] = []
    current: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            current.append(ch)
            if ch == "\\" and i + 1 < len(text):
                current.append(text[i + 1])
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'`\"":
            quote = ch
            current.append(ch)
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif ch == ";":
            statements.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    statements.append("".join(current))
    return [s.strip() for s in statements if s.strip()]


def apply_schema(settings: Settings, *, schema: Path = SCHEMA_FILE, timeout: float = 60.0) -> int:
    """Create the archive database and run ``schema.sql`` (idempotent statements); returns the count run."""
    from clickhouse_driver import Client
    from clickhouse_driver.errors import NetworkError

    deadline = time.monotonic() + timeout
    while True:
        admin = Client(host=settings.clickhouse_host, port=settings.clickhouse_port, connect_timeout=5)
        try:
            admin.execute(f"CREATE DATABASE IF NOT EXISTS `{settings.clickhouse_database}`")
            break
        except (NetworkError, OSError, EOFError) as exc:
            if time.monotonic() > deadline:
                raise StackError(f"clickhouse: cannot reach {settings.clickhouse_host}:"
                                 f"{settings.clickhouse_port}: {exc}") from None
            time.sleep(0.5)
        finally:
            admin.disconnect()
    if not schema.is_file():
        return 0
    client = Client(host=settings.clickhouse_host, port=settings.clickhouse_port,
                    database=settings.clickhouse_database, connect_timeout=5)
    count = 0
    try:
        for statement in split_sql(schema.read_text()):
            try:
                client.execute(statement)
            except Exception as exc:  # the driver's errors share no useful base class
                first = statement.splitlines()[0][:100]
                raise StackError(f"clickhouse: {schema} statement {count + 1} ({first}) failed: {exc}") \
                    from None
            count += 1
    finally:
        client.disconnect()
    return count
