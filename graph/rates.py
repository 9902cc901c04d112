"""Rate-like dimensions, shrunk toward a stated prior: Match Graph and feedback success rates.

**Match Graph.** A model's centrality on the co-match graph is its PageRank relative to the
average model's, ``x = N * pr``, mapped to 0..1 as ``raw = x / (1 + x)``: 0.5 for a model as
central as the average, 0.75 for three times the average, toward 1 for a hub. It needs no
min/max normalisation over the catalogue, so an event elsewhere in the graph moves a model's
centrality only as much as it moves its PageRank. That number rests on the ``n`` searches
that matched the model, so it is shrunk toward the prior ``p`` (``match_graph_prior``, 0.5)
with ``s`` pseudo-searches (``match_graph_strength``, 20):

    match_graph = (n * raw + s * p) / (n + s)

One search moves it by at most ``1 / (1 + s)`` of its range from the prior (0.048 at s = 20);
1,000 consistent searches bring it within ``s / (1000 + s)`` (0.02) of the unshrunk value. A
model no search has matched sits at the prior: it is on the page as "prior only" and its
interval is the prior's. The interval is the posterior's: each replicate takes the raw value
of one Poisson-bootstrap PageRank replicate and adds a normal draw with the standard
deviation of the Beta posterior, ``sqrt(m (1 - m) / (n + s + 1))``; it narrows as searches
accumulate.

**Feedback success rate.** Successes of trials reported as feedback on a model's matches,
under a Beta prior with mean ``feedback_prior`` and ``feedback_strength`` pseudo-trials
(``shrinkage.beta_rate``): the posterior mean and its central 95% credible interval. It is
shown beside the rank, not weighted into it. No feedback: not measured.
"""

from __future__ import annotations

import numpy as np

from graph.rank import DimensionScores, Score
from graph.shrinkage import beta_rate, max_step, shrink

PRIOR_ONLY = "prior only: no recorded search has matched it yet"


def centrality(pr: np.ndarray) -> np.ndarray:
    """``x / (1 + x)`` with ``x = N * pr``: PageRank relative to the average node, on 0..1 (row-wise on 2-D)."""
    pr = np.asarray(pr, dtype=np.float64)
    if pr.size == 0:
        return pr.copy()
    x = pr * pr.shape[-1]
    out: np.ndarray = x / (1.0 + x)
    return out


def match_graph_point(pr: np.ndarray, matched: np.ndarray, prior: float, strength: float) -> np.ndarray:
    """The shrunk Match Graph value of every model (what Compare's robustness recomputes)."""
    return shrink(centrality(pr), matched, prior, strength)


def match_graph_dimension(pr: np.ndarray, reps: np.ndarray, matched: np.ndarray, rounds: int,
                          rng: np.random.Generator, prior: float = 0.5, strength: float = 20.0) -> DimensionScores:
    """Match Graph of every model with its posterior interval (see the module doc)."""
    n = pr.shape[0]
    k = matched.astype(np.float64)
    value = shrink(centrality(pr), k, prior, strength)
    if reps.shape[0]:
        raw_b = centrality(reps)
        idx = np.arange(rounds) % reps.shape[0]
        mean_b = shrink(raw_b[idx], k, prior, strength)
    else:
        mean_b = np.tile(value, (rounds, 1))
    sd = np.sqrt(value * (1 - value) / (k + strength + 1))
    draws = mean_b + rng.standard_normal((rounds, n)) * sd
    out = np.clip(draws, 0.0, 1.0).astype(np.float32)
    reasons = [PRIOR_ONLY if matched[i] == 0 else "" for i in range(n)] if (matched == 0).any() else None
    return DimensionScores(value, out, matched.astype(np.int64), np.ones(n, dtype=bool), reasons)


def feedback_scores(counts: dict[str, tuple[int, int]], prior: float, strength: float) -> dict[str, Score]:
    """The shrunk feedback success rate of every model with feedback; the rest are not measured."""
    out: dict[str, Score] = {}
    for model, (succ, trials) in counts.items():
        if trials <= 0:
            continue
        r = beta_rate(min(succ, trials), trials, prior, strength)
        out[model] = Score(r.value, r.low, r.high, trials, True,
                           f"{succ} of {trials} outcomes successful, shrunk toward {prior:g} with {strength:g} "
                           f"pseudo-trials")
    return out


def one_event_bound(strength: float) -> float:
    """The most one search event moves a model's Match Graph value from its prior, as a fraction of its range."""
    return max_step(strength)
