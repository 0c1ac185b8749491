"""§14 statistics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from kagoflow.console.stats import holdout_uplift, two_proportion_z


def test_z_test_matches_the_textbook_formula() -> None:
    # A: 60/500 clicks, B: 40/500. pooled p = 0.1, se = sqrt(0.1*0.9*(2/500)) = 0.018974
    t = two_proportion_z(60, 500, 40, 500)
    assert t.z == pytest.approx(0.04 / math.sqrt(0.1 * 0.9 * 2 / 500))
    assert t.z == pytest.approx(2.1082, abs=1e-4)
    assert t.p_value == pytest.approx(0.03501, abs=1e-4)
    assert t.winner == "A"


def test_no_winner_without_significance_or_enough_sends() -> None:
    assert two_proportion_z(12, 99, 2, 99).winner is None  # p < 0.05 but an arm has < 100 sends
    assert two_proportion_z(51, 500, 49, 500).winner is None  # not significant
    assert two_proportion_z(0, 0, 5, 100).p_value == 1.0


def test_holdout_uplift_and_its_95_percent_interval() -> None:
    # sent 30/200 bought, held out 5/100: uplift 0.10; se = sqrt(.15*.85/200 + .05*.95/100)
    u = holdout_uplift(30, 200, 5, 100)
    se = math.sqrt(0.15 * 0.85 / 200 + 0.05 * 0.95 / 100)
    assert u.uplift == pytest.approx(0.10)
    assert (u.low, u.high) == (pytest.approx(0.10 - 1.96 * se, abs=1e-4), pytest.approx(0.10 + 1.96 * se, abs=1e-4))
    assert math.isinf(holdout_uplift(1, 10, 0, 0).low)
