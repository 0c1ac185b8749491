from kagoflow.worker.book import PartitionBook, StateCache


def test_pop_due_yields_each_member_once_and_keeps_later_entries() -> None:
    book: PartitionBook[str, object] = PartitionBook(partition=0)
    book.schedule(100, "a")
    book.schedule(50, "b")
    book.schedule(80, "a")  # a moved earlier; the stale 100 entry stays in the heap
    book.schedule(300, "c")
    book.schedule(None, "d")
    assert list(book.pop_due(100)) == ["b", "a"]
    assert book.next_due_ms() == 300


def test_flush_due_needs_work_and_elapsed_interval() -> None:
    book: PartitionBook[str, object] = PartitionBook(partition=0, last_flush_ms=1_000)
    assert not book.flush_due(10_000, 3_000)  # nothing to write
    book.dirty.add("a")
    assert not book.flush_due(3_999, 3_000)
    assert book.flush_due(4_000, 3_000)


def test_cache_evicts_least_recent_clean_state_never_a_pinned_one() -> None:
    stored = {"x": "stored-x"}
    cache: StateCache[str] = StateCache(capacity=1, load=stored.get, new=lambda m: f"new-{m}")
    assert cache.get("x") == "stored-x"
    cache.pin("x")  # changed, not yet written
    assert cache.get("y") == "new-y"
    assert cache.get("z") == "new-z"  # evicts y, the least recent clean state
    assert cache.peek("y") is None  # gone, never stored
    assert cache.get("x") == "stored-x" and len(cache) == 2
    cache.unpin("x")  # written: x becomes the most recent clean state, z is evicted
    assert cache.peek("z") is None and cache.peek("x") == "stored-x"
    cache.drop_where(lambda state: state == "stored-x")
    assert len(cache) == 0


def test_a_due_time_moving_later_keeps_one_heap_entry_and_pops_early_for_a_recheck() -> None:
    book: PartitionBook[str, object] = PartitionBook(partition=0)
    for due in range(1, 5000):  # a last_access clock: every beacon moves the member's due time later
        book.schedule(due, "a")
    book.schedule(10, "b")
    assert len(book.due) == 2  # no push per beacon
    assert list(book.pop_due(100)) == ["a", "b"]  # a pops at its first time; the caller finds it not due
    book.schedule(4999, "a")  # ... and queues it again at its current due time
    assert book.next_due_ms() == 4999
    assert list(book.pop_due(10_000)) == ["a"]


def test_due_times_moving_earlier_leave_superseded_entries_that_are_skipped_and_compacted() -> None:
    book: PartitionBook[str, object] = PartitionBook(partition=0)
    for due in range(5000, 1, -1):
        book.schedule(due, "a")
    assert len(book.due) <= 2 * len(book.scheduled) + 1024
    assert list(book.pop_due(10_000)) == ["a"]
    book.schedule(None, "c")
    assert book.next_due_ms() is None


def test_a_flush_covers_a_snapshot_written_by_bucket_and_later_changes_wait_for_the_next() -> None:
    book: PartitionBook[str, str] = PartitionBook(partition=0, last_flush_ms=0)
    book.dirty |= {"a", "b", "c"}
    buckets = {"a": 1, "b": 2, "c": 1}
    book.pending_acks += ["e1", "e2"]
    book.in_flight.append("f1")
    assert book.flush_due(10_000, 10_000)
    book.start_flush(10_000, bucket_of=buckets.__getitem__)
    assert not book.flush_due(99_999, 10_000)  # one flush at a time
    book.dirty.add("d")  # changed while the flush runs: belongs to the next one
    book.pending_acks.append("e3")
    book.in_flight.append("f2")  # produced during the flush: the staged buckets may reflect it
    book.staged[b"0/1"] = b"v1"
    first, second = book.next_bucket(), book.next_bucket()
    assert first is not None and second is not None
    assert book.next_bucket() is None and book.flushing == []
    assert sorted((bucket, sorted(members)) for bucket, members in (first, second)) == [(1, ["a", "c"]), (2, ["b"])]
    acks, futures, staged = book.finish_flush()
    assert (acks, futures, staged) == (["e1", "e2"], ["f1", "f2"], {b"0/1": b"v1"})
    assert book.staged == {} and book.in_flight == ["f2"]
    assert book.flushing is None and book.dirty == {"d"} and book.pending_acks == ["e3"]
    assert book.flush_due(20_000, 10_000)
