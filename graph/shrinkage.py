"""Shrinkage of rate-like evidence toward a stated prior, so few observations move a score little.

Two forms, both with the prior as pseudo-observations:

- ``shrink``: a score in [lo, hi] measured from ``n`` observations is pulled toward ``prior``
  with ``strength`` pseudo-observations: ``(n * raw + strength * prior) / (n + strength)``.
  One observation moves the result by at most ``(hi - lo) / (1 + strength)`` from the prior,
  so ``strength = 20`` bounds it at 0.048 of the range; with 1,000 observations the result is
  within ``strength / (1000 + strength)`` of the range (0.02 at 20) of the unshrunk value.
- ``beta_rate``: a success rate from ``successes`` of ``trials`` under a Beta prior with mean
  ``prior`` and ``strength`` pseudo-trials (Beta(strength*prior, strength*(1-prior))); the
  posterior mean and its central 95% credible interval (Beta quantiles), which narrows as
  trials grow.

``max_step(strength)`` states the bound a single observation can move a shrunk score by
(as a fraction of its range), which pages and docs quote.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def shrink(raw: np.ndarray | float, n: np.ndarray | float, prior: float, strength: float) -> np.ndarray:
    """``(n * raw + strength * prior) / (n + strength)``, element-wise (``n`` = observations behind ``raw``)."""
    r = np.asarray(raw, dtype=np.float64)
    k = np.asarray(n, dtype=np.float64)
    if strength < 0:
        raise ValueError("strength must be >= 0")
    den = k + strength
    out: np.ndarray = np.divide(k * r + strength * prior, den, out=np.full(np.broadcast(r, k).shape, float(prior)),
                                where=den > 0)
    return out


def max_step(strength: float) -> float:
    """The most one observation can move a shrunk score from its prior, as a fraction of the range."""
    return 1.0 / (1.0 + strength)


@dataclass(frozen=True)
class Rate:
    """A shrunk success rate with its 95% credible interval and the evidence behind it."""

    value: float
    low: float
    high: float
    successes: int
    trials: int


def beta_rate(successes: int, trials: int, prior: float = 0.5, strength: float = 2.0) -> Rate:
    """Posterior mean and central 95% interval of a rate under a Beta prior (mean ``prior``, ``strength`` trials)."""
    if not 0 < prior < 1:
        raise ValueError("prior must be in (0, 1)")
    if strength <= 0:
        raise ValueError("strength must be > 0")
    if not 0 <= successes <= trials:
        raise ValueError("need 0 <= successes <= trials")
    from scipy.stats import beta as beta_dist  # imported on first use: scipy.stats is slow to import

    a = strength * prior + successes
    b = strength * (1 - prior) + (trials - successes)
    q = np.asarray(beta_dist.ppf([0.025, 0.975], a, b), dtype=np.float64)
    return Rate(float(a / (a + b)), float(q[0]), float(q[1]), successes, trials)
