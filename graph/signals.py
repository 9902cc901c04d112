"""Adoption and Ecosystem: counts read from public pages, log-normalised per artifact type.

For each signal kind (downloads, likes, stars; finetunes, adapters, spaces, ...) a model's
value is log1p of its newest reading (the mean of log1p over sources when several pages
give one). Each kind has its own scale: the largest value of that kind among all models
of the same artifact type (model / tool / api) in the whole catalogue, so

    score(model, kind) = log1p(value) / log1p(max value of that kind among models of its type)

is 1 for the most-downloaded model and about 0.5 for one with the square root of its
downloads. The dimension is the mean over the kinds the model has a reading of; a kind
with no reading is skipped for that model (not counted as 0), and a model with no reading
of any kind is *not measured*. A reading of 0 is a measurement and scores 0.

The interval is the uncertainty of the readings themselves: a count read from a page is
known only roughly (monthly downloads swing, pages count over different windows, a page
rounds "161K"). One reading's standard deviation is ``reading_spread_log`` in natural-log
units of the count (0.7: about a factor of two), or the spread actually seen between
repeated readings of the same kind of the same model across the catalogue when that is
larger (pooled once ``MIN_POOL`` such repeats exist). On a kind's 0..1 scale that is
``spread / log1p(largest value)``, divided by the square root of the readings of the kind;
a model's replicates add a normal draw of that size to each of its kind scores, average
them and clip to 0..1. One reading gives an interval about +-0.1 wide (a factor of four in
the count either way); more readings and more kinds narrow it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graph.rank import DimensionScores, not_measured

MIN_POOL = 3  # degrees of freedom needed before the catalogue's own spread between kinds is used


@dataclass
class SignalScale:
    """What a dimension's scores were computed from: per kind, each model's log value and its type's scale."""

    kinds: list[str]
    x: np.ndarray  # (N, K) mean log1p of the newest readings; NaN = no reading
    ref: np.ndarray  # (N, K) log1p of the largest value of the kind among models of the same type
    score: np.ndarray  # (N, K) x / ref; NaN = no reading
    spread: float  # one reading's standard deviation in log units of the count, behind the intervals


def signal_dimension(ids: list[str], rows: list[tuple[str, str, float]], types: list[str], rounds: int,
                     rng: np.random.Generator, reading_spread_log: float = 0.7,
                     what: str = "adoption") -> tuple[DimensionScores, SignalScale]:
    """Adoption or ecosystem of every model from (model id, kind, value) rows (see the module doc)."""
    n = len(ids)
    pos = {m: i for i, m in enumerate(ids)}
    rows = [r for r in rows if r[0] in pos]
    kinds = sorted({r[1] for r in rows})
    nk = len(kinds)
    if not rows:
        scale = SignalScale(kinds, np.zeros((n, 0)), np.zeros((n, 0)), np.zeros((n, 0)), reading_spread_log)
        return not_measured(n, rounds, f"no {what} reading recorded"), scale
    k_of = {k: i for i, k in enumerate(kinds)}
    m = np.fromiter((pos[r[0]] for r in rows), dtype=np.int64, count=len(rows))
    k = np.fromiter((k_of[r[1]] for r in rows), dtype=np.int64, count=len(rows))
    v = np.log1p(np.fromiter((r[2] for r in rows), dtype=np.float64, count=len(rows)))
    key = m * nk + k
    sums = np.bincount(key, weights=v, minlength=n * nk)
    cnts = np.bincount(key, minlength=n * nk)
    x = np.divide(sums, cnts, out=np.full(n * nk, np.nan), where=cnts > 0).reshape(n, nk)
    type_names = sorted(set(types))
    t = np.array([type_names.index(name) for name in types], dtype=np.int64) if n else np.zeros(0, dtype=np.int64)
    ref = np.zeros((n, nk))
    for ti in range(len(type_names)):
        sel = t == ti
        top = np.nanmax(np.where(np.isnan(x[sel]), -np.inf, x[sel]), axis=0, initial=-np.inf) if sel.any() else None
        if top is not None:
            ref[sel] = np.maximum(top, 0.0)
    has = ~np.isnan(x)
    score = np.where(has, np.divide(np.nan_to_num(x), ref, out=np.zeros_like(ref), where=ref > 0), np.nan)
    kcount = has.sum(axis=1)
    measured = kcount > 0
    value = np.divide(np.nansum(np.nan_to_num(score) * has, axis=1), kcount, out=np.zeros(n), where=measured)
    spread = max(reading_spread_log, repeat_spread(key, v, n * nk))
    per_kind = np.divide(spread, np.sqrt(cnts.reshape(n, nk)) * ref, out=np.zeros((n, nk)), where=has & (ref > 0))
    sd = np.divide(np.sqrt((per_kind ** 2).sum(axis=1)), kcount, out=np.zeros(n), where=measured)
    reps = np.clip(value + rng.standard_normal((rounds, n)) * sd, 0.0, 1.0)
    reps[:, ~measured] = 0.0
    count = np.bincount(m, minlength=n).astype(np.int64)
    reasons = [f"no {what} reading recorded" if not measured[i] else "" for i in range(n)] if not measured.all() \
        else None
    return DimensionScores(value, reps, count, measured, reasons), SignalScale(kinds, x, ref, score, spread)


def repeat_spread(key: np.ndarray, logv: np.ndarray, size: int) -> float:
    """Standard deviation of log1p readings around their (model, kind) mean, pooled over the (model, kind) pairs
    read more than once; 0 below ``MIN_POOL`` degrees of freedom."""
    cnt = np.bincount(key, minlength=size)
    dof = int((cnt[cnt > 1] - 1).sum())
    if dof < MIN_POOL:
        return 0.0
    mean = np.bincount(key, weights=logv, minlength=size) / np.maximum(cnt, 1)
    return float(np.sqrt(((logv - mean[key]) ** 2).sum() / dof))
