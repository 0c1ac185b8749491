"""OffsetGuard: each record of a member partition is processed once, in offset order, even when Faust hands over
a record fetched before a rebalance after it seeked back to the committed offset."""

from __future__ import annotations

from kagoflow.worker.offsets import OffsetGuard


def test_records_in_order_are_processed_and_older_ones_skipped() -> None:
    guard = OffsetGuard()
    guard.expect("beacons", 0, 36)
    assert [guard.check("beacons", 0, o, now_ms=0) for o in (36, 37, 38)] == ["process"] * 3
    assert guard.check("beacons", 0, 37, now_ms=0) == "skip"  # delivered again: already handed over
    assert guard.expected("beacons", 0) == 39


def test_a_record_past_missing_ones_asks_for_a_seek_back_and_waits_for_the_missing_ones() -> None:
    guard = OffsetGuard(grace_ms=3000)
    guard.expect("beacons", 0, 36)
    # fetched before the rebalance, handed over after the seek to 36: 36..49 would be lost
    assert guard.check("beacons", 0, 50, now_ms=1000) == "rewind"
    assert guard.check("beacons", 0, 51, now_ms=1001) == "skip"  # the rest of the stale fetch
    assert guard.expected("beacons", 0) == 36
    assert [guard.check("beacons", 0, o, now_ms=1100) for o in range(36, 52)] == ["process"] * 16
    assert guard.rewinds == 1 and guard.gaps_accepted == 0


def test_offsets_that_do_not_exist_are_accepted_after_the_grace_period() -> None:
    guard = OffsetGuard(grace_ms=3000)
    guard.expect("members", 3, 10)
    assert guard.check("members", 3, 12, now_ms=0) == "rewind"
    assert guard.check("members", 3, 12, now_ms=2999) == "skip"
    assert guard.check("members", 3, 12, now_ms=3000) == "process"  # 10, 11: compacted away / markers
    assert guard.check("members", 3, 13, now_ms=3001) == "process"
    assert guard.gaps_accepted == 1


def test_topics_and_partitions_are_independent_and_forgotten_on_revoke() -> None:
    guard = OffsetGuard()
    guard.expect("beacons", 0, 5)
    guard.expect("orders", 0, 7)
    guard.expect("beacons", 1, 0)
    assert guard.check("orders", 0, 7, now_ms=0) == "process"
    assert guard.check("beacons", 1, 0, now_ms=0) == "process"
    guard.forget({0})
    assert guard.expected("beacons", 0) is None and guard.expected("beacons", 1) == 1
    assert guard.check("beacons", 0, 99, now_ms=0) == "process"  # no expectation: not checked
    guard.expect("beacons", 0, 5)  # assigned again: from the committed offset
    assert guard.check("beacons", 0, 99, now_ms=0) == "rewind"
