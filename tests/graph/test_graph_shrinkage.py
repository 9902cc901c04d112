"""Shrinkage: one observation moves a score by a small stated amount, many converge to the data."""

from __future__ import annotations

import numpy as np
import pytest

from graph.shrinkage import beta_rate, max_step, shrink


@pytest.mark.parametrize("strength", [19.0, 20.0, 50.0])
def test_one_observation_moves_a_score_at_most_max_step(strength: float) -> None:
    for raw in (0.0, 1.0):
        moved = abs(float(shrink(raw, 1, 0.5, strength)) - 0.5)
        assert moved <= max_step(strength) * 0.5 + 1e-12  # half the range is the farthest raw from 0.5
    assert max_step(20.0) <= 0.05


def test_many_consistent_observations_converge_to_the_unshrunk_value() -> None:
    raw = np.array([0.0, 0.3, 0.9, 1.0])
    out = shrink(raw, np.full(4, 1000), 0.5, 20.0)
    assert np.all(np.abs(out - raw) <= 0.05)
    assert np.all(np.abs(shrink(raw, 0, 0.5, 20.0) - 0.5) == 0)  # no evidence: the prior


def test_beta_rate_interval_narrows_as_trials_grow_and_contains_the_mean() -> None:
    widths = []
    for n in (1, 10, 100, 1000):
        r = beta_rate(n, n, prior=0.5, strength=2.0)
        assert r.low <= r.value <= r.high
        widths.append(r.high - r.low)
    assert widths == sorted(widths, reverse=True) and widths[-1] < widths[0]
    assert beta_rate(1, 1).value - 0.5 <= 1 / 3 + 1e-12  # one success of a Beta(1,1) prior: 2/3
    assert abs(beta_rate(900, 1000).value - 0.9) < 0.01


def test_beta_rate_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError):
        beta_rate(3, 2)
    with pytest.raises(ValueError):
        beta_rate(0, 1, prior=1.0)
