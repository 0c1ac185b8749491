"""The collector's per-client token buckets."""

from __future__ import annotations

from kagoflow.collector.ratelimit import PerClientLimit


def test_rate_limit_buckets_refill_and_stay_bounded() -> None:
    now = [0.0]
    limit = PerClientLimit(2.0, burst=2, max_clients=10, clock=lambda: now[0])
    assert [limit.allow("a") for _ in range(3)] == [True, True, False]
    now[0] += 0.5
    assert limit.allow("a") and not limit.allow("a")
    for i in range(50):
        limit.allow(f"c{i}")
    assert len(limit) <= 10
    assert PerClientLimit(0, burst=1).allow("x")
