"""Topic creation: Faust declares its own changelog topics but not the source topics it reads."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic


async def ensure_topics(*, bootstrap: str, names: Iterable[str], partitions: int, replication: int) -> list[str]:
    """Create the missing topics among ``names``; returns the ones created. Existing topics are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in dict.fromkeys(names) if name not in existing]
        if missing:
            await admin.create_topics(
                [NewTopic(name=name, num_partitions=partitions, replication_factor=replication) for name in missing]
            )
        return missing
    finally:
        await admin.close()


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
