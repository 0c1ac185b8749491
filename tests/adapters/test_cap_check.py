"""The non-counting cap check of a held-out mail (SPEC §14) on the stack's Redis."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from kagoflow.adapters.redis_store import RedisStore
from kagoflow.core.caps import CapLimits, cap_request

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]
LIMITS = CapLimits(day=1)
AT = 1_790_000_000_000


async def test_check_counts_nothing_and_sees_a_full_cap(redis_store: RedisStore) -> None:
    caps = redis_store.caps
    first = cap_request(member_id="m1", key="k1", at_ms=AT, limits=LIMITS, tz=ZoneInfo("Asia/Tokyo"))
    assert await caps.check(first)
    assert await caps.check(first)
    assert await caps.acquire(first), "checks counted nothing"
    second = cap_request(member_id="m1", key="k2", at_ms=AT + 1000, limits=LIMITS, tz=ZoneInfo("Asia/Tokyo"))
    assert not await caps.check(second)
