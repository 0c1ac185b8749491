"""Archiver configuration (no broker needed: nothing connects before ``start()``)."""

from __future__ import annotations

import pytest

from kagoflow.archive import ARCHIVE_TOPICS, Archiver
from kagoflow.settings import Settings


def test_default_topics_follow_the_prefix_and_group_follows_the_app_id() -> None:
    archiver = Archiver(Settings(topic_prefix="shop1-", app_id="kf"))
    assert archiver.topics == tuple(f"shop1-{kind}" for kind in ARCHIVE_TOPICS)
    assert archiver.group_id == "kf-archive"


def test_topics_map_kafka_names_to_archived_kinds() -> None:
    archiver = Archiver(Settings(), topics={"raw-clicks": "beacons"}, group_id="g")
    assert (archiver.topics, archiver.group_id) == (("raw-clicks",), "g")
    with pytest.raises(ValueError, match="no row mapping for \\['clicks'\\]"):
        Archiver(Settings(), topics={"raw-clicks": "clicks"})
    with pytest.raises(ValueError, match="no row mapping"):
        Archiver(Settings(), topics=["beacons", "dlq"])
