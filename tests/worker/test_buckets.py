from __future__ import annotations

import pytest

from kagoflow.worker import buckets
from kagoflow.worker.buckets import BucketCache, BucketLayoutError


def test_a_bucket_round_trips_any_ids_and_states() -> None:
    entries = {"m-1": b'{"v":1}', "会員/二": b"", "x" * 300: bytes(range(256)) * 40}
    raw = buckets.encode(entries, buckets=16)
    assert buckets.decode(raw, buckets=16) == entries
    assert buckets.decode(buckets.encode({}, buckets=16), buckets=16) == {}


def test_a_bucket_written_with_another_bucket_count_is_refused_naming_both_counts() -> None:
    raw = buckets.encode({"m": b"s"}, buckets=16)
    with pytest.raises(BucketLayoutError, match=r"3/7 was written with 16 buckets.*KAGOFLOW_STATE_BUCKETS is 32"):
        buckets.decode(raw, buckets=32, where="3/7")
    with pytest.raises(BucketLayoutError, match="unknown format"):
        buckets.decode(b'{"v":1,"m":"member"}', buckets=16)
    with pytest.raises(BucketLayoutError, match="trailing"):
        buckets.decode(raw + b"x", buckets=16)


def test_members_spread_over_buckets_stably() -> None:
    assert buckets.bucket_of("member-42", 256) == buckets.bucket_of("member-42", 256)
    used = {buckets.bucket_of(f"m{i}", 64) for i in range(5000)}
    assert used == set(range(64))
    assert buckets.parse_key(buckets.bucket_key(3, 17)) == (3, 17)
    assert buckets.parse_key(b"member-42") is None and buckets.parse_key(b"3/x") is None


def test_the_cache_loads_each_bucket_once_and_evicts_by_stored_bytes() -> None:
    store: dict[tuple[int, int], bytes] = {(0, 1): buckets.encode({"a": b"x" * 100}, buckets=4)}
    loads: list[tuple[int, int]] = []

    def load(partition: int, bucket: int) -> bytes | None:
        loads.append((partition, bucket))
        return store.get((partition, bucket))

    cache = BucketCache(buckets=4, capacity_bytes=250, load=load)
    assert cache.entries(0, 1) == {"a": b"x" * 100}
    assert cache.entries(0, 1) is cache.entries(0, 1) and loads == [(0, 1)]
    fresh = cache.entries(1, 2)
    assert fresh == {}
    fresh["b"] = b"y" * 150
    store[(1, 2)] = buckets.encode(fresh, buckets=4)
    cache.stored(1, 2, len(store[(1, 2)]))  # 100+ and 150+ bytes > 250: the older bucket goes
    assert len(cache) == 1 and cache.size_bytes == len(store[(1, 2)])
    assert cache.entries(0, 1) == {"a": b"x" * 100} and loads[-1] == (0, 1)
    cache.drop_partitions({0, 1})
    assert len(cache) == 0 and cache.size_bytes == 0


def test_scan_yields_members_of_the_asked_partitions_only() -> None:
    items = [
        (buckets.bucket_key(0, 1), buckets.encode({"a": b"1", "b": b"2"}, buckets=4)),
        (buckets.bucket_key(1, 3), buckets.encode({"c": b"3"}, buckets=4)),
        (b"not-a-bucket", b"ignored"),
        (buckets.bucket_key(2, 0), None),
    ]
    assert sorted(buckets.scan(iter(items), buckets=4)) == [(0, "a", b"1"), (0, "b", b"2"), (1, "c", b"3")]
    assert list(buckets.scan(iter(items), buckets=4, partitions={1})) == [(1, "c", b"3")]
