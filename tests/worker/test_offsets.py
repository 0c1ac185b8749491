"""OffsetGuard: each record of a member partition is processed once, in offset order, even when Faust hands over
a record fetched before a rebalance after it seeked back to the committed offset."""

from __future__ import annotations

from kagoflow.worker.offsets import OffsetGuard


def test_records_in_order_are_processed_and_older_ones_skipped() -> None:
    guard = OffsetGuard()
    guard.expect("beacons", 0, 36)
    assert [guard.check("beacons", 0, o) for o in (36, 37, 38)] == [("process", 36), ("process", 37), ("process", 38)]
    assert guard.check("beacons", 0, 37) == ("skip", 37)  # delivered again: already handed over
    assert guard.expected("beacons", 0) == 39 and guard.fills == 0


def test_a_record_past_missing_ones_asks_for_them_first() -> None:
    guard = OffsetGuard()
    guard.expect("beacons", 0, 36)
    # fetched before the rebalance, handed over after the seek to 36: 36..49 would be lost
    assert guard.check("beacons", 0, 50) == ("fill", 36)
    assert guard.check("beacons", 0, 51) == ("process", 51)
    assert guard.check("beacons", 0, 40) == ("skip", 40)  # Faust delivering the re-fetched ones after all
    assert guard.fills == 1


def test_topics_and_partitions_are_independent_and_forgotten_on_revoke() -> None:
    guard = OffsetGuard()
    guard.expect("beacons", 0, 5)
    guard.expect("orders", 0, 7)
    guard.expect("beacons", 1, 0)
    assert guard.check("orders", 0, 7) == ("process", 7)
    assert guard.check("beacons", 1, 0) == ("process", 0)
    guard.forget({0})
    assert guard.expected("beacons", 0) is None and guard.expected("beacons", 1) == 1
    assert guard.check("beacons", 0, 99) == ("process", 99)  # no expectation: not checked
    guard.expect("beacons", 0, 5)  # assigned again: from the committed offset
    assert guard.check("beacons", 0, 99) == ("fill", 5)
