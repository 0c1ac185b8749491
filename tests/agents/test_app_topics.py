"""The worker creates Faust's internal topics itself, so a fresh broker cannot race Faust's group join."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace

import pytest

from kagoflow.agents.app import create_app, worker_topics
from kagoflow.settings import Settings
from kagoflow.streams.topics import Topics


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    loop.close()


def test_worker_topics_are_kagoflows_own_plus_the_leader_topic_and_a_compacted_changelog_per_table(
    loop: asyncio.AbstractEventLoop,
) -> None:
    settings = replace(Settings.from_env(), app_id="shop-a", topic_prefix="p-", partitions=6)
    kf = create_app(settings)
    specs = {spec.name: spec for spec in worker_topics(kf.app, settings)}

    for name in Topics("p-").all():
        assert specs.pop(name).partitions == 6
    assert specs.pop("shop-a-__assignor-__leader").partitions == 1
    assert {name for name in specs} == {"shop-a-member-buckets-changelog", "shop-a-catalog-state-changelog"}
    assert all(spec.partitions == 6 and spec.config == {"cleanup.policy": "compact"} for spec in specs.values())
