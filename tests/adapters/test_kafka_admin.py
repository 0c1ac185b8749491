"""Topic creation against the real broker: specs honoured, leaders elected before it returns, idempotent."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from kagoflow.adapters.kafka_admin import TopicSpec, ensure_topics, partition_count
from kagoflow.settings import Settings
from tests.conftest import run_sync

pytestmark = pytest.mark.integration


async def _describe(bootstrap: str, names: list[str]) -> tuple[list[dict[str, object]], dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = await admin.describe_topics(names)
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, names[1])])
        entries = {entry[0]: entry[1] for entry in configs[0].resources[0][4]}
        return topics, entries
    finally:
        await admin.close()


async def _delete(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


def test_creates_missing_topics_as_specified_and_returns_only_after_every_partition_has_a_leader(
    stack: Settings, unique_name: Callable[[str], str]
) -> None:
    plain, compacted = unique_name("admin-plain"), unique_name("admin-compact")
    specs = [TopicSpec(plain, 3), TopicSpec(compacted, 1, {"cleanup.policy": "compact"})]
    try:
        created = run_sync(ensure_topics(bootstrap=stack.kafka_bootstrap, topics=specs, replication=1))
        topics, config = run_sync(_describe(stack.kafka_bootstrap, [plain, compacted]))
        again = run_sync(ensure_topics(bootstrap=stack.kafka_bootstrap, topics=specs, replication=1))
        assert run_sync(partition_count(bootstrap=stack.kafka_bootstrap, topic=plain)) == 3
    finally:
        run_sync(_delete(stack.kafka_bootstrap, [plain, compacted]))
    assert created == [plain, compacted]
    assert again == []
    by_name = {t["topic"]: t for t in topics}
    assert len(by_name[plain]["partitions"]) == 3  # type: ignore[arg-type]
    assert len(by_name[compacted]["partitions"]) == 1  # type: ignore[arg-type]
    assert all(p["leader"] >= 0 for t in topics for p in t["partitions"])  # type: ignore[attr-defined]
    assert config["cleanup.policy"] == "compact"
