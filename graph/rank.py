"""UnfragileRank: five sub-scores on 0..1, each measured or explicitly not, their weighted mean x100.

The sub-scores are computed in their own modules (``graph.signals``: adoption and ecosystem;
``graph.freshness``; ``graph.quality``: quality within a task; ``graph.rates``: match graph
and feedback success rates, shrunk toward a stated prior). Each gives a ``DimensionScores``
for every model: a point value on all evidence, bootstrap replicates, the evidence count,
and whether the dimension is *measured* for the model. A dimension with no evidence is not
measured (never 0): it carries the reason instead of a number.

UnfragileRank (``combine``) is 100 x the weighted mean of the model's measured dimensions,
the weights of the others dropped and the rest renormalised. Its interval is widened for
what it does not rest on: in every bootstrap replicate each dimension the model lacks is
drawn uniformly from its 0..1 range at its full weight, so a rank that rests on one
dimension has a wide interval and one that rests on all five a narrow one; the interval
always contains the point. A model with no measured dimension has no rank ("not
measured") and is listed after every ranked model. Match Graph has a prior, so it is
measured for every model (prior only until a search matches it), but it alone never makes
a rank: a rank needs at least one dimension with evidence.

Intervals are the 2.5th and 97.5th percentiles of the replicates; the replicate index is
shared by all dimensions, so a rank replicate is built from the dimensions' replicates with
the same index and differences between two models are taken replicate by replicate
(paired), which is what the verdict rules test against 0. Every random draw comes from a
generator seeded by (settings seed, dimension), so the same evidence always gives the same
intervals, also after a restart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

DIMENSIONS = ("adoption", "quality", "ecosystem", "match_graph", "freshness")
DIMENSION_LABELS = {"rank": "UnfragileRank", "adoption": "Adoption", "ecosystem": "Ecosystem",
                    "match_graph": "Match Graph", "quality": "Quality", "freshness": "Freshness",
                    "feedback": "Feedback success"}
_DIM_CODE = {"adoption": 1, "ecosystem": 2, "match_graph": 3, "quality": 4, "freshness": 5, "feedback": 6,
             "rank": 7}
NAN = float("nan")


@dataclass(frozen=True)
class Score:
    """A point estimate with its 95% interval and the evidence behind it, or *not measured* with the reason.

    A score that is not measured has NaN value and bounds: it is never read as 0.
    """

    value: float
    low: float
    high: float
    evidence_count: int = 0
    measured: bool = True
    reason: str = ""  # why it is not measured, or a note on a measured one ("prior only: ...")

    @classmethod
    def not_measured(cls, reason: str, evidence_count: int = 0) -> Score:
        return cls(NAN, NAN, NAN, evidence_count, False, reason)


NOT_MEASURED = Score.not_measured("not measured")


@dataclass(frozen=True)
class ScoreCard:
    rank: Score
    adoption: Score
    ecosystem: Score
    match_graph: Score
    quality: Score
    freshness: Score = NOT_MEASURED
    times_matched: int = 0
    times_compared: int = 0
    times_clicked: int = 0
    weights: dict[str, float] = field(default_factory=dict)  # the configured weights of this artifact type
    rests_on: tuple[str, ...] = ()  # the dimensions the rank rests on (measured ones)
    rank_weights: dict[str, float] = field(default_factory=dict)  # the renormalised weights the rank used
    feedback: Score = NOT_MEASURED  # success rate of feedback on its matches (shown, not weighted)

    def get(self, dimension: str) -> Score:
        score: Score = getattr(self, dimension)
        return score


def interval(x: np.ndarray) -> tuple[float, float]:
    """(2.5th, 97.5th) percentile of a 1-D sample, linear interpolation (= np.quantile's default).

    Hand-rolled because np.quantile's overhead (~50 us a call) dominated Compare.
    """
    n = x.shape[0]
    if n == 0:
        return 0.0, 0.0
    s = np.sort(x)
    out = []
    for q in (0.025, 0.975):
        h = (n - 1) * q
        lo = int(h)
        hi = min(lo + 1, n - 1)
        out.append(float(s[lo] + (h - lo) * (s[hi] - s[lo])))
    return out[0], out[1]


@dataclass
class DimensionScores:
    """One dimension for all models: point values, bootstrap replicates, evidence counts, measured or not.

    Entries of models the dimension is not measured for hold 0 in ``value`` and ``reps`` (never read:
    ``measured`` says so) and their reason in ``reasons``.
    """

    value: np.ndarray  # (N,)
    reps: np.ndarray  # (B, N)
    count: np.ndarray  # (N,) int
    measured: np.ndarray | None = None  # (N,) bool; None = measured for every model
    reasons: list[str] | None = None  # (N,) why not measured ("" when measured), or a note on a measured value
    _bounds: np.ndarray | None = None  # (2, N) interval of every model, computed once

    def __post_init__(self) -> None:
        if self.measured is None:
            self.measured = np.ones(self.value.shape[0], dtype=bool)

    @property
    def mask(self) -> np.ndarray:
        assert self.measured is not None
        return self.measured

    def bounds(self) -> np.ndarray:
        if self._bounds is None:
            if self.reps.shape[0]:
                self._bounds = np.quantile(self.reps, [0.025, 0.975], axis=0)
            else:
                self._bounds = np.vstack([self.value, self.value])
        return self._bounds

    def reason(self, i: int) -> str:
        return self.reasons[i] if self.reasons is not None else ""

    def score(self, i: int) -> Score:
        if not self.mask[i]:
            return Score.not_measured(self.reason(i) or "not measured", int(self.count[i]))
        b = self.bounds()
        return Score(float(self.value[i]), float(b[0, i]), float(b[1, i]), int(self.count[i]), True, self.reason(i))


def not_measured(n: int, rounds: int, reason: str) -> DimensionScores:
    """A dimension measured for no model (e.g. no evidence of its kind in the catalogue yet)."""
    return DimensionScores(np.zeros(n), np.zeros((rounds, n)), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool),
                           [reason] * n)


def rng_for(seed: int, dimension: str) -> np.random.Generator:
    return np.random.default_rng([seed, _DIM_CODE.get(dimension, 0)])


def midrank_percentile(x: np.ndarray) -> np.ndarray:
    """Percentile of each entry among the others, ties at mid-rank; entries <= 0 score 0 (row-wise on 2-D)."""
    if x.ndim == 2:
        return np.vstack([midrank_percentile(row) for row in x]) if x.shape[0] else x.copy()
    n = x.shape[0]
    if n == 0:
        return x.astype(np.float64)
    if n == 1:
        return (x > 0).astype(np.float64)
    order = np.argsort(x, kind="stable")
    s = x[order]
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(s[1:], s[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    run = np.cumsum(new) - 1
    lengths = np.diff(np.append(starts, n))
    p = np.empty(n)
    p[order] = (starts[run] + 0.5 * (lengths[run] - 1)) / (n - 1)
    return np.where(x > 0, p, 0.0)


@dataclass
class RankScores:
    """UnfragileRank of every model, with what each rank rests on."""

    dims: DimensionScores  # value/reps on 0..100; measured = has a rank
    rests_on: np.ndarray  # (N, D) bool: dimension d (DIMENSIONS order) enters model i's rank
    weights: np.ndarray  # (N, D) configured weight of each dimension for the model's artifact type


def combine(dims: dict[str, DimensionScores], weights: np.ndarray, rng: np.random.Generator,
            evidence_dims: np.ndarray | None = None) -> RankScores:
    """UnfragileRank of every model (see the module doc).

    ``weights`` is (N, D): each model's weights (per artifact type) in ``DIMENSIONS`` order.
    ``evidence_dims`` (N, D) bool marks measured dimensions that rest on evidence (not a prior
    alone); a model needs one to be ranked. Default: measured dimensions with an evidence count.
    """
    n = weights.shape[0]
    mask = np.column_stack([dims[d].mask for d in DIMENSIONS]) if n else np.zeros((0, len(DIMENSIONS)), dtype=bool)
    w_all = weights.sum(axis=1)
    if evidence_dims is None:
        evidence_dims = np.column_stack([dims[d].count > 0 for d in DIMENSIONS]) if n else mask
    x = np.column_stack([dims[d].value for d in DIMENSIONS]) if n else np.zeros((0, len(DIMENSIONS)))
    value, ranked = rank_points(x, mask, weights, evidence_dims)
    rounds = dims[DIMENSIONS[0]].reps.shape[0]
    reps = np.zeros((rounds, n), dtype=np.float32)
    for k, d in enumerate(DIMENSIONS):
        dr = dims[d].reps.astype(np.float32, copy=False)
        missing = np.flatnonzero(~mask[:, k] & ranked)
        share = np.divide(weights[:, k], w_all, out=np.zeros(n), where=w_all > 0).astype(np.float32) * 100
        reps += np.where(mask[:, k], share, np.float32(0)) * dr
        if missing.size and rounds:  # what the rank does not rest on: anywhere in its range, at full weight
            reps[:, missing] += share[missing] * rng.random((rounds, missing.size), dtype=np.float32)
    count = sum(dims[d].count for d in DIMENSIONS)
    reasons = ["" if ranked[i] else "no dimension is measured for it" for i in range(n)] if not ranked.all() else None
    total = DimensionScores(value, reps, np.asarray(count), ranked, reasons)
    b = total.bounds()
    total._bounds = np.vstack([np.minimum(b[0], value), np.maximum(b[1], value)])  # the interval holds the point
    return RankScores(total, mask, weights)


def rank_points(x: np.ndarray, mask: np.ndarray, weights: np.ndarray, evidence: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """(rank on 0..100, ranked?) of every model: 100 x the mean of its measured dimensions ``x`` (N, D) weighted
    by ``weights`` (N, D) renormalised over ``mask``; ranked only with an ``evidence`` dimension among them."""
    w = np.where(mask, weights, 0.0)
    wm = w.sum(axis=1)
    ranked = (wm > 0) & (evidence & mask).any(axis=1)
    value = np.divide((w * x).sum(axis=1), wm, out=np.zeros(x.shape[0]), where=wm > 0) * 100
    return np.where(ranked, value, 0.0), ranked


def card_weights(rs: RankScores, i: int) -> tuple[dict[str, float], tuple[str, ...], dict[str, float]]:
    """(configured weights, dimensions the rank rests on, renormalised weights) of model ``i``."""
    conf = {d: float(rs.weights[i, k]) for k, d in enumerate(DIMENSIONS)}
    on = tuple(d for k, d in enumerate(DIMENSIONS) if rs.rests_on[i, k] and conf[d] > 0)
    total = sum(conf[d] for d in on)
    used = {d: conf[d] / total for d in on} if total > 0 and rs.dims.mask[i] else {}
    return conf, (on if rs.dims.mask[i] else ()), used


@dataclass(frozen=True)
class Difference:
    """a - b on one dimension with its paired 95% bootstrap interval (NaN when either is not measured)."""

    diff: float
    low: float
    high: float


def difference(d: DimensionScores, i: int, j: int) -> Difference:
    if not (d.mask[i] and d.mask[j]):
        return Difference(NAN, NAN, NAN)
    return difference_of(float(d.value[i]), float(d.value[j]), d.reps[:, i], d.reps[:, j])


def difference_of(a: float, b: float, reps_a: np.ndarray, reps_b: np.ndarray) -> Difference:
    """The interval always holds the point difference: where a point sits at an end of its own range (freshness
    with one date read is the date read; the replicates draw the missing one), the percentile interval of the
    replicates' differences alone could leave it outside, and a lead is claimed from this interval."""
    delta = reps_a - reps_b
    lo, hi = interval(delta) if delta.size else (a - b, a - b)
    return Difference(a - b, min(lo, a - b), max(hi, a - b))


def is_nan(x: float) -> bool:
    return math.isnan(x)
