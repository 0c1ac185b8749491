"""Per-client request rate limit of the collector: one token bucket per IP address, never waiting.

Why not ``kagoflow.mail.ratelimit.TokenBucket``: that one makes callers wait in line (mail sends must all go
out); a collector must answer an over-eager client at once (429) and keep one bucket per address, so the
buckets here are two floats in a dict, bounded by dropping the ones that have filled up again.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class PerClientLimit:
    """``rate`` requests per second per client, ``burst`` saved up; ``rate <= 0`` = unlimited."""

    def __init__(self, rate: float, *, burst: float, max_clients: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        """client → (tokens, time of that count)."""

    def allow(self, client: str) -> bool:
        """Take one token of ``client``'s bucket; False when it is empty (answer 429)."""
        if self.rate <= 0:
            return True
        now = self._clock()
        tokens, stamp = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        if tokens < 1:
            self._buckets[client] = (tokens, now)
            return False
        if len(self._buckets) >= self.max_clients and client not in self._buckets:
            self._sweep(now)
        self._buckets[client] = (tokens - 1, now)
        return True

    def retry_after_s(self) -> int:
        """Seconds until an empty bucket holds a token again (rounded up, at least 1)."""
        return max(1, int(1 / self.rate + 0.999)) if self.rate > 0 else 1

    def _sweep(self, now: float) -> None:
        """Forget clients whose bucket is full again (they start full anyway); if none is, the oldest half."""
        full = [c for c, (tokens, stamp) in self._buckets.items()
                if tokens + (now - stamp) * self.rate >= self.burst]
        if not full:
            full = sorted(self._buckets, key=lambda c: self._buckets[c][1])[: len(self._buckets) // 2]
        for client in full:
            del self._buckets[client]

    def __len__(self) -> int:
        return len(self._buckets)
