"""UnfragileRank: four documented sub-scores on 0..1, their weighted sum x100, and 95% intervals.

Sub-scores (each a point estimate on all evidence plus a bootstrap over that evidence):

- **Adoption** — for each adoption signal kind seen in the catalogue (downloads, likes,
  stars), a model's value is the mean log1p of its observations of that kind; its score
  for the kind is the mid-rank percentile of that value among all models; a model with
  no (or zero) observation of a kind scores 0 for it ("no evidence, no credit"). The
  sub-score is the mean over kinds. Bootstrap: each model's own signal rows are resampled
  with replacement (a kind that drops out counts 0) and its percentile recomputed against
  the other models' point values (the same "what if this model's evidence were
  different" view the robustness measure takes).
- **Ecosystem** — the same over integrations, SDKs and formats.
- **Match Graph** — the percentile of a model's PageRank on the co-match graph (0 for a
  model never co-matched). Bootstrap: Poisson redraw of every edge count
  (``matchgraph.poisson_replicates``), PageRank and percentiles per replicate.
- **Quality** — for models with probe outcomes: the Bradley-Terry mean win probability
  against the other probed models (FastChat's arena bootstrap over outcomes). Otherwise
  the mean of recorded external benchmark scores (0..1), bootstrapped per model.
  No evidence: 0.

Intervals are the 2.5th and 97.5th percentiles of the replicates; the replicate index is
shared by all dimensions, so a rank replicate is the weighted sum of the dimensions'
replicates with the same index, and differences between two models are taken
replicate by replicate (paired), which is what the verdict rules test against 0.
Every random draw comes from a generator seeded by (settings seed, dimension), so the
same evidence always gives the same intervals — also after a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from graph import bradley_terry

DIMENSIONS = ("adoption", "ecosystem", "match_graph", "quality")
DIMENSION_LABELS = {"rank": "UnfragileRank", "adoption": "Adoption", "ecosystem": "Ecosystem",
                    "match_graph": "Match Graph", "quality": "Quality"}
_DIM_CODE = {"adoption": 1, "ecosystem": 2, "match_graph": 3, "quality": 4}


@dataclass(frozen=True)
class Score:
    """A point estimate with its 95% bootstrap interval and how much evidence is behind it."""

    value: float
    low: float
    high: float
    evidence_count: int = 0


@dataclass(frozen=True)
class ScoreCard:
    rank: Score
    adoption: Score
    ecosystem: Score
    match_graph: Score
    quality: Score
    times_matched: int = 0
    times_compared: int = 0
    times_clicked: int = 0
    weights: dict[str, float] = field(default_factory=dict)

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
    """One dimension for all models: point values, bootstrap replicates, evidence counts."""

    value: np.ndarray  # (N,)
    reps: np.ndarray  # (B, N)
    count: np.ndarray  # (N,) int
    _bounds: np.ndarray | None = None  # (2, N) interval of every model, computed once

    def bounds(self) -> np.ndarray:
        if self._bounds is None:
            if self.reps.shape[0]:
                self._bounds = np.quantile(self.reps, [0.025, 0.975], axis=0)
            else:
                self._bounds = np.vstack([self.value, self.value])
        return self._bounds

    def score(self, i: int) -> Score:
        b = self.bounds()
        return Score(float(self.value[i]), float(b[0, i]), float(b[1, i]), int(self.count[i]))


def rng_for(seed: int, dimension: str) -> np.random.Generator:
    return np.random.default_rng([seed, _DIM_CODE.get(dimension, 0)])


def midrank_percentile(x: np.ndarray) -> np.ndarray:
    """Percentile of each entry among the others, ties at mid-rank; entries <= 0 score 0.

    p_i = (#{j != i: x_j < x_i} + 0.5 * #{j != i: x_j == x_i}) / (N - 1), so with two
    models the better one scores 1 and the other 0, and equal values score equally.
    Works row-wise on a 2-D array.
    """
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
    starts = np.flatnonzero(new)  # first sorted position of each run of equal values
    run = np.cumsum(new) - 1
    lengths = np.diff(np.append(starts, n))
    p = np.empty(n)
    p[order] = (starts[run] + 0.5 * (lengths[run] - 1)) / (n - 1)
    return np.where(x > 0, p, 0.0)


def signal_dimension(ids: list[str], rows: list[tuple[str, str, float]], rounds: int,
                     rng: np.random.Generator) -> DimensionScores:
    """Adoption or ecosystem for every model from its signal rows (see the module doc)."""
    n = len(ids)
    pos = {m: i for i, m in enumerate(ids)}
    rows = [r for r in rows if r[0] in pos]
    kinds = sorted({r[1] for r in rows})
    k_of = {k: i for i, k in enumerate(kinds)}
    nk = len(kinds)
    count = np.zeros(n, dtype=np.int64)
    if not rows or n == 0:
        return DimensionScores(np.zeros(n), np.zeros((rounds, n)), count)
    m = np.array([pos[r[0]] for r in rows], dtype=np.int64)
    k = np.array([k_of[r[1]] for r in rows], dtype=np.int64)
    v = np.log1p(np.array([r[2] for r in rows], dtype=np.float64))
    np.add.at(count, m, 1)

    def values_of(mm: np.ndarray, kk: np.ndarray, vv: np.ndarray) -> np.ndarray:
        key = mm * nk + kk
        sums = np.bincount(key, weights=vv, minlength=n * nk)
        cnts = np.bincount(key, minlength=n * nk)
        return np.divide(sums, cnts, out=np.zeros(n * nk), where=cnts > 0).reshape(n, nk)

    x = values_of(m, k, v)
    p = np.column_stack([midrank_percentile(x[:, c]) for c in range(nk)])
    value = p.mean(axis=1)
    reps = np.tile(value.astype(np.float32), (rounds, 1))
    # Only a model with 2+ rows can draw a different sample; the others keep their point score.
    movable = np.flatnonzero(count >= 2)
    if movable.size == 0:
        return DimensionScores(value, reps, count)
    sub = np.isin(m, movable)
    local = np.searchsorted(movable, m[sub])
    mv, kv, vv = local, k[sub], v[sub]
    nm = movable.size
    cnt_m = count[movable]
    order = np.argsort(mv, kind="stable")
    ms, ks, vs = mv[order], kv[order], vv[order]
    start = np.zeros(nm, dtype=np.int64)
    np.cumsum(cnt_m[:-1], out=start[1:])
    slot_start, slot_n = start[ms], cnt_m[ms]
    x_m, p_m = x[movable], p[movable]
    cols = [np.sort(x[:, c]) for c in range(nk)]
    for b in range(rounds):
        pick = slot_start + np.floor(rng.random(len(ms)) * slot_n).astype(np.int64)
        key = ms * nk + ks[pick]  # each slot keeps its model; the row drawn is any of that model's rows
        sums = np.bincount(key, weights=vs[pick], minlength=nm * nk)
        cnts = np.bincount(key, minlength=nm * nk)
        xb = np.divide(sums, cnts, out=np.zeros(nm * nk), where=cnts > 0).reshape(nm, nk)
        pb = np.where(xb == x_m, p_m, 0.0)  # unchanged value -> unchanged percentile; dropped kind -> 0
        moved = np.nonzero((xb != x_m) & (xb > 0))
        for c in np.unique(moved[1]):
            rows_c = moved[0][moved[1] == c]
            pb[rows_c, c] = percentile_among_others(xb[rows_c, c], x_m[rows_c, c], cols[c])
        reps[b, movable] = pb.mean(axis=1)
    return DimensionScores(value, reps, count)


def percentile_among_others(new: np.ndarray, own: np.ndarray, sorted_col: np.ndarray) -> np.ndarray:
    """Mid-rank percentile of ``new`` values among the OTHER models' point values.

    ``sorted_col`` holds every model's point value (each model's own ``own`` value once),
    so the model's own entry is taken out of the counts.
    """
    n = sorted_col.shape[0]
    if n <= 1:
        return (new > 0).astype(np.float64)
    lt = np.searchsorted(sorted_col, new, "left") - (own < new)
    eq = np.searchsorted(sorted_col, new, "right") - np.searchsorted(sorted_col, new, "left") - (own == new)
    return np.where(new > 0, (lt + 0.5 * eq) / (n - 1), 0.0)


def per_model_mean(ids: list[str], rows: list[tuple[str, float]], rounds: int,
                   rng: np.random.Generator) -> DimensionScores:
    """Mean of each model's values with a per-model resampling bootstrap (external quality)."""
    n = len(ids)
    pos = {m: i for i, m in enumerate(ids)}
    rows = [r for r in rows if r[0] in pos]
    count = np.zeros(n, dtype=np.int64)
    value = np.zeros(n)
    reps = np.zeros((rounds, n))
    if not rows:
        return DimensionScores(value, reps, count)
    m = np.array([pos[r[0]] for r in rows], dtype=np.int64)
    v = np.array([r[1] for r in rows], dtype=np.float64)
    np.add.at(count, m, 1)
    value = np.divide(np.bincount(m, weights=v, minlength=n), count, out=np.zeros(n), where=count > 0)
    order = np.argsort(m, kind="stable")
    ms, vs = m[order], v[order]
    start = np.zeros(n, dtype=np.int64)
    np.cumsum(count[:-1], out=start[1:])
    for b in range(rounds):
        pick = start[ms] + np.floor(rng.random(len(ms)) * count[ms]).astype(np.int64)
        reps[b] = np.divide(np.bincount(ms, weights=vs[pick], minlength=n), count, out=np.zeros(n),
                            where=count > 0)
    return DimensionScores(value, reps, count)


def quality_dimension(ids: list[str], outcomes: list[tuple[str, str, float]],
                      external: list[tuple[str, float]], rounds: int, rng: np.random.Generator,
                      prior: float = 1.0) -> DimensionScores:
    """Bradley-Terry win probability for probed models, external evidence for the rest."""
    pos = {m: i for i, m in enumerate(ids)}
    outcomes = [o for o in outcomes if o[0] in pos and o[1] in pos]
    probed = sorted({o[0] for o in outcomes} | {o[1] for o in outcomes}, key=lambda x: pos[x])
    ext = per_model_mean(ids, [e for e in external if e[0] not in set(probed)], rounds, rng)
    value, reps, count = ext.value.copy(), ext.reps.copy(), ext.count.copy()
    if probed:
        p_of = {m: i for i, m in enumerate(probed)}
        i = np.array([p_of[o[0]] for o in outcomes], dtype=np.int64)
        j = np.array([p_of[o[1]] for o in outcomes], dtype=np.int64)
        s = np.array([o[2] for o in outcomes], dtype=np.float64)
        idx = np.array([pos[m] for m in probed], dtype=np.int64)
        value[idx] = bradley_terry.win_probability(bradley_terry.fit(i, j, s, len(probed), prior))
        reps[:, idx] = bradley_terry.bootstrap(i, j, s, len(probed), rounds, rng, prior)
        count[idx] = 0
        np.add.at(count, idx[i], 1)
        np.add.at(count, idx[j], 1)
    return DimensionScores(value, reps, count)


def match_graph_dimension(pr: np.ndarray, degree: np.ndarray, reps: np.ndarray, has: np.ndarray,
                          times_matched: np.ndarray) -> DimensionScores:
    """Percentile of PageRank among models; 0 for models with no co-match edge."""
    value = midrank_percentile(np.where(degree > 0, pr, 0.0))
    r = midrank_percentile(np.where(has, reps, 0.0)) if reps.size else reps
    return DimensionScores(value, r, times_matched.astype(np.int64))


def combine(dims: dict[str, DimensionScores], weights: dict[str, float]) -> DimensionScores:
    """UnfragileRank = 100 x weighted sum, replicate by replicate (replicates kept as float32)."""
    total = sum(weights.values())
    value = sum(weights[d] / total * dims[d].value for d in DIMENSIONS) * 100
    reps = np.zeros(dims["adoption"].reps.shape, dtype=np.float32)
    for d in DIMENSIONS:
        reps += np.float32(weights[d] / total * 100) * dims[d].reps.astype(np.float32, copy=False)
    count = sum(dims[d].count for d in DIMENSIONS)
    return DimensionScores(np.asarray(value), np.asarray(reps), np.asarray(count))


@dataclass(frozen=True)
class Difference:
    """a - b on one dimension with its paired 95% bootstrap interval."""

    diff: float
    low: float
    high: float


def difference(d: DimensionScores, i: int, j: int) -> Difference:
    delta = d.reps[:, i] - d.reps[:, j]
    lo, hi = interval(delta) if delta.size else (d.value[i] - d.value[j],) * 2
    return Difference(float(d.value[i] - d.value[j]), float(lo), float(hi))
