"""§14 statistics: the two-proportion z-test of an A/B pair and the holdout uplift with its 95 % interval.

Pure functions on counts (the console reads the counts from ClickHouse), so they are unit-tested exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_SENDS = 100
ALPHA = 0.05


@dataclass(frozen=True)
class ZTest:
    rate_a: float
    rate_b: float
    z: float
    p_value: float
    winner: str | None
    """"A" / "B" when p < 0.05 and each arm has at least 100 sends, else None."""


def two_proportion_z(success_a: int, n_a: int, success_b: int, n_b: int) -> ZTest:
    """Pooled two-proportion z-test (two-sided)."""
    rate_a = success_a / n_a if n_a else 0.0
    rate_b = success_b / n_b if n_b else 0.0
    if not n_a or not n_b:
        return ZTest(rate_a, rate_b, 0.0, 1.0, None)
    pooled = (success_a + success_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    z = (rate_a - rate_b) / se if se > 0 else 0.0
    p = math.erfc(abs(z) / math.sqrt(2))
    winner = None
    if p < ALPHA and n_a >= MIN_SENDS and n_b >= MIN_SENDS and rate_a != rate_b:
        winner = "A" if rate_a > rate_b else "B"
    return ZTest(rate_a, rate_b, z, p, winner)


@dataclass(frozen=True)
class Uplift:
    rate_sent: float
    rate_held: float
    uplift: float
    low: float
    high: float


def holdout_uplift(buyers_sent: int, n_sent: int, buyers_held: int, n_held: int) -> Uplift:
    """Purchase-rate difference sent − held out with its 95 % Wald interval (unpooled)."""
    p1 = buyers_sent / n_sent if n_sent else 0.0
    p0 = buyers_held / n_held if n_held else 0.0
    diff = p1 - p0
    if not n_sent or not n_held:
        return Uplift(p1, p0, diff, -math.inf, math.inf)
    se = math.sqrt(p1 * (1 - p1) / n_sent + p0 * (1 - p0) / n_held)
    return Uplift(p1, p0, diff, diff - 1.959963984540054 * se, diff + 1.959963984540054 * se)
