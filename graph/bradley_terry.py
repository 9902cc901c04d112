"""Bradley-Terry fit of pairwise probe outcomes, with a bootstrap (FastChat's arena method).

Ties count as half a win for each side. A symmetric prior (``prior`` pseudo-games per
pair, split evenly) keeps strengths finite when one model wins every game and shrinks
few games toward equal strength: between two players, one game moves the win
probability by at most ``0.5 / (1 + prior)`` from 0.5 (0.045 at 10 pseudo-games), and
1,000 games won land within ``0.5 * prior / (1000 + prior)`` of 1. With ``played_only``
the pseudo-games go to the pairs that met at least once, so players who never met are
related through their common opponents only.
Quality is reported as the mean win probability against the other probed models, so
it is on 0..1 with 0.5 = as good as the average opponent.
"""

from __future__ import annotations

import numpy as np


def fit(i: np.ndarray, j: np.ndarray, s: np.ndarray, n_players: int, prior: float = 1.0,
        weights: np.ndarray | None = None, iters: int = 500, tol: float = 1e-10,
        played_only: bool = False) -> np.ndarray:
    """Log-strengths (mean 0) from games (i[k] vs j[k], s[k] = i's score in {0, .5, 1}).

    Minorisation-maximisation (Hunter 2004); ``weights`` multiplies each game (bootstrap).
    """
    if n_players == 0:
        return np.zeros(0)
    w = np.ones(len(i)) if weights is None else weights
    wins = np.zeros((n_players, n_players))
    np.add.at(wins, (i, j), w * s)
    np.add.at(wins, (j, i), w * (1 - s))
    games = wins + wins.T
    if prior > 0:
        off = 1 - np.eye(n_players)
        if played_only:
            met = np.zeros((n_players, n_players))
            met[i, j] = met[j, i] = 1.0
            off = off * met
        wins = wins + off * prior / 2
        games = games + off * prior
    total_wins = wins.sum(axis=1)
    p = np.ones(n_players)
    for _ in range(iters):
        denom = (games / (p[:, None] + p[None, :])).sum(axis=1)
        new = np.divide(total_wins, denom, out=np.ones_like(p), where=denom > 0)
        new /= np.exp(np.log(np.maximum(new, 1e-300)).mean())
        if np.abs(new - p).max() < tol:
            p = new
            break
        p = new
    return np.log(np.maximum(p, 1e-300))


def win_probability(theta: np.ndarray) -> np.ndarray:
    """Mean probability of beating each other player (0.5 when alone)."""
    n = theta.shape[0]
    if n <= 1:
        return np.full(n, 0.5)
    pw = 1.0 / (1.0 + np.exp(-(theta[:, None] - theta[None, :])))
    np.fill_diagonal(pw, 0.0)
    out: np.ndarray = pw.sum(axis=1) / (n - 1)
    return out


def bootstrap(i: np.ndarray, j: np.ndarray, s: np.ndarray, n_players: int, rounds: int,
              rng: np.random.Generator, prior: float = 1.0, played_only: bool = False,
              parametric: bool = False) -> np.ndarray:
    """(rounds, n_players) win probabilities, each from a fit on games resampled with replacement.

    ``parametric``: each resampled game's outcome is also redrawn from the fitted win probability of
    its pair, so a few one-sided games give an interval, not a point (a plain resample of ten wins
    is ten wins every time); with many games it narrows like the plain bootstrap.
    """
    out = np.zeros((rounds, n_players))
    k = len(i)
    p_win = np.zeros(k)
    if parametric and k:
        theta = fit(i, j, s, n_players, prior, played_only=played_only)
        p_win = 1.0 / (1.0 + np.exp(theta[j] - theta[i]))
    for b in range(rounds):
        counts = np.bincount(rng.integers(0, k, size=k), minlength=k).astype(np.float64) if k else np.zeros(0)
        sb = (rng.random(k) < p_win).astype(np.float64) if parametric else s
        out[b] = win_probability(fit(i, j, sb, n_players, prior, counts, tol=1e-8, played_only=played_only))
    return out
