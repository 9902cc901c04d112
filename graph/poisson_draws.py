"""Poisson draws tied to each edge, so bootstrap replicates change only where the graph did.

A bootstrap replicate redraws every co-match edge's count ``c`` as Poisson(``c``). Drawn from one
random stream, every draw moves whenever one edge is added (the stream shifts), so a replicate of
the graph after one new event shares nothing with the replicate before it, and every interval
jitters by the bootstrap's own noise whenever events arrive anywhere. Here the draw of edge (a, b)
in replicate ``r`` is the Poisson(``c``) quantile of a uniform number hashed from (a, b, r, seed):
it is the same number on every refresh
while the edge's count is the same, and moves by the least amount when the count changes (the same
uniform through the new distribution). Replicate ``r`` of the new graph is then close to replicate
``r`` of the old one, so a model's interval moves with the evidence and does not jitter whenever
events arrive elsewhere in the graph.

Marginally each draw is exactly Poisson(``c``) (inverse-CDF sampling); draws of different edges and
replicates are independent to the quality of the splitmix64 finaliser.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
TABLE_MAX_MEAN = 256.0  # counts up to this use a CDF table and a binary search; larger ones scipy's ppf


def mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of each uint64 (wrapping arithmetic): a bijection that scatters bits."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
    out: np.ndarray = x ^ (x >> np.uint64(31))
    return out


def edge_keys(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A stable uint64 per undirected edge between dense node indices ``a`` and ``b``."""
    lo = np.minimum(a, b).astype(np.uint64)
    hi = np.maximum(a, b).astype(np.uint64)
    keys: np.ndarray = (lo << np.uint64(32)) | hi
    return keys


def uniforms(keys: np.ndarray, stream: int) -> np.ndarray:
    """A uniform number in [0, 1) per key for stream ``stream`` (one stream per seed and replicate)."""
    salt = mix64(np.array([stream & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    return (mix64(keys ^ salt) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


class PoissonQuantiles:
    """Poisson(``means``) quantiles of uniforms, for one set of means and many sets of uniforms.

    Means up to ``TABLE_MAX_MEAN`` are grouped once (a co-match graph has few distinct counts); each
    group is then one binary search of its CDF table. Larger means go through scipy's ppf together."""

    def __init__(self, means: np.ndarray) -> None:
        self.n = means.shape[0]
        self.large = np.flatnonzero(means > TABLE_MAX_MEAN)
        self.large_means = means[self.large]
        small = np.flatnonzero((means > 0) & (means <= TABLE_MAX_MEAN))
        values, inverse = np.unique(means[small], return_inverse=True)
        self.order = small[np.argsort(inverse, kind="stable")]
        self.bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=values.shape[0]))])
        # P(X > top) is below 1e-17 for each table's mean
        self.tables = [stats.poisson.cdf(np.arange(int(v + 12.0 * np.sqrt(v) + 30.0) + 1), v) for v in values]

    def __call__(self, u: np.ndarray) -> np.ndarray:
        out = np.zeros(self.n)  # a mean of 0 draws 0
        for g, table in enumerate(self.tables):
            idx = self.order[self.bounds[g]:self.bounds[g + 1]]
            # the least k with CDF(k) >= u
            out[idx] = np.minimum(np.searchsorted(table, u[idx], side="left"), table.shape[0] - 1)
        if self.large.size:
            out[self.large] = stats.poisson.ppf(u[self.large], self.large_means)
        return out
