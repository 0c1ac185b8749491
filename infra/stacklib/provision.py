"""What kagoflow needs inside the services: Kafka topics and the ClickHouse schema.

Works against the local stack and against existing services alike: only ``Settings`` (``KAGOFLOW_*``) say
where they are (``infra/stack provision``).
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from kagoflow.settings import Settings
from stacklib.layout import INFRA_DIR
from stacklib.procs import StackError

if TYPE_CHECKING:
    from kagoflow.adapters.clickhouse import ClickHouseArchive

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


def apply_schema(settings: Settings, *, schema: Path = SCHEMA_FILE, timeout: float = 60.0) -> int:
    """Create the archive database and run ``schema.sql`` in it (``KAGOFLOW_CLICKHOUSE_DATABASE``, shop
    time zone ``KAGOFLOW_SHOP_TIMEZONE``, cancelled order statuses of the rules directory's shop.yaml;
    idempotent statements, missing columns added, views re-created); returns the number of statements."""
    from kagoflow.adapters.clickhouse import (
        ArchiveUnavailable,
        ClickHouseArchive,
        schema_statements,
        shop_cancelled_statuses,
    )

    if not schema.is_file():
        return 0
    deadline = time.monotonic() + timeout
    try:
        cancelled = shop_cancelled_statuses(settings)
    except Exception as exc:  # RuleError: the shop file is bad
        raise StackError(f"clickhouse: cancelled statuses of the shop: {exc}") from None
    archive = ClickHouseArchive(host=settings.clickhouse_host, port=settings.clickhouse_port,
                                database=settings.clickhouse_database, timezone=settings.shop_timezone,
                                cancelled_statuses=cancelled, schema_path=schema, connect_timeout=5)
    try:
        while True:
            try:
                existing = {f"{archive.database}.{r[0]}" for r in archive.query(
                    "SELECT name FROM system.tables WHERE database = %(d)s", {"d": archive.database})}
                archive.ensure_schema()
                backfill_reports(archive, existing=existing)
                break
            except ArchiveUnavailable as exc:
                if time.monotonic() > deadline:
                    raise StackError(f"clickhouse: cannot reach {settings.clickhouse_host}:"
                                     f"{settings.clickhouse_port}: {exc}") from None
                time.sleep(0.5)
            except Exception as exc:  # ArchiveError: a statement failed
                raise StackError(f"clickhouse: {schema}: {exc}") from None
    finally:
        archive.close()
    return len(schema_statements(schema.read_text(encoding="utf-8"), database=settings.clickhouse_database,
                                 timezone=settings.shop_timezone))


_MATERIALIZED = re.compile(r"CREATE MATERIALIZED VIEW IF NOT EXISTS (\w+)\.(\w+) TO (\w+\.\w+) AS\s+(SELECT.*)",
                           re.DOTALL)
_SOURCE = re.compile(r"\bFROM (\w+\.\w+)\s*(?:\n|$|ARRAY|WHERE|GROUP)")


def backfill_reports(archive: ClickHouseArchive, *, existing: set[str] | None = None) -> list[str]:
    """Fill each report table that is still empty — or, given ``existing`` (the database's tables before
    ``ensure_schema`` ran), each one created just now — from the raw rows archived before its materialized view
    existed (the view's own SELECT over the whole source table). Safe while the archiver inserts: report
    tables are read through idempotent aggregates, so a row that reaches them twice changes nothing; with
    ``existing`` a table the archiver already wrote into since its creation is still backfilled. Returns the
    views run."""
    from kagoflow.adapters.clickhouse import schema_statements

    views = []
    for statement in schema_statements(archive.schema_path.read_text(encoding="utf-8"), database=archive.database,
                                       timezone=archive.timezone, cancelled=archive.cancelled_statuses):
        match = _MATERIALIZED.match(statement)
        source = _SOURCE.search(match.group(4)) if match else None
        if match is not None and source is not None:
            views.append((match.group(2), match.group(3), source.group(1), match.group(4)))
    if existing is not None:
        empty = {target for _, target, _, _ in views if target not in existing}
    else:
        empty = {target for _, target, _, _ in views if not archive.query(f"SELECT count() FROM {target}")[0][0]}
    done = []
    for name, target, source_table, select in views:  # decided before any runs: two views may share a target
        if target in empty and archive.query(f"SELECT count() FROM {source_table}")[0][0]:
            archive.query(f"INSERT INTO {target} {select}")
            done.append(name)
    return done
