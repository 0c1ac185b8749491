"""Topic creation before the worker starts: the source topics Faust reads and Faust's own internal topics.

Faust declares its changelog and leader topics itself, moments before its consumer joins the group. On a
freshly started broker the consumer's metadata may not list them yet: Faust then logs "Ignoring missing
topic" and the worker runs without the leader partition (no ticks, so no timers) and without its changelog
partitions until the next rebalance. Creating every topic up front, and waiting until each partition has a
leader, removes that race.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

TOPIC_ALREADY_EXISTS = 36
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)


async def ensure_topics(*, bootstrap: str, topics: Iterable[TopicSpec], replication: int,
                        timeout_s: float = 60.0) -> list[str]:
    """Create the missing ``topics`` and wait until every partition of each has a leader.

    Returns the names created. Existing topics are left as they are; one whose partition count differs from
    its spec gets a warning (co-partitioned tables need the count the settings say).
    """
    specs = {spec.name: spec for spec in topics}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for name, spec in specs.items() if name not in existing]
        if missing:
            response = await admin.create_topics([
                NewTopic(name=spec.name, num_partitions=spec.partitions, replication_factor=replication,
                         topic_configs=dict(spec.config))
                for spec in missing
            ])
            for name, code, *rest in response.topic_errors:
                if code not in (0, TOPIC_ALREADY_EXISTS):
                    raise RuntimeError(f"kafka: creating topic {name!r} failed: error {code} {rest}")
        await _wait_for_leaders(admin, specs, deadline=time.monotonic() + timeout_s)
        return [spec.name for spec in missing]
    finally:
        await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, specs: dict[str, TopicSpec], *, deadline: float) -> None:
    while True:
        pending = []
        described = await admin.describe_topics(list(specs))
        for topic in described:
            parts = topic.get("partitions", [])
            if topic.get("error_code", 0) or not parts or any(p.get("leader", -1) < 0 for p in parts):
                pending.append(topic.get("topic"))
        if not pending:
            for topic in described:
                spec = specs.get(topic.get("topic", ""))
                if spec is not None and len(topic["partitions"]) != spec.partitions:
                    log.warning("kafka: topic %r has %d partitions, expected %d (KAGOFLOW_PARTITIONS)",
                                spec.name, len(topic["partitions"]), spec.partitions)
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"kafka: topics without a partition leader after the wait: {pending}")
        await asyncio.sleep(0.2)


async def partition_count(*, bootstrap: str, topic: str) -> int:
    """Number of partitions of ``topic`` (0 when it does not exist)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    for entry in described:
        if entry.get("topic") == topic and not entry.get("error_code"):
            return len(entry.get("partitions", []))
    return 0
