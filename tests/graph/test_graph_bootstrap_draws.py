"""Bootstrap draws tied to edges: exactly Poisson, stable while a count is, so replicates move with the
evidence; and still a function of the graph."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from graph.config import EngineConfig
from graph.counts import MatchCounts, PageRankBootstrap
from graph.poisson_draws import TABLE_MAX_MEAN, PoissonQuantiles, edge_keys, uniforms


def _draws(means: np.ndarray, keys: np.ndarray, stream: int) -> np.ndarray:
    return PoissonQuantiles(means)(uniforms(keys, stream))


@pytest.mark.parametrize("mean", [1.0, 3.0, 17.0, TABLE_MAX_MEAN + 44.0])
def test_draws_are_poisson_with_the_edge_count_as_mean(mean: float) -> None:
    n = 200_000
    keys = edge_keys(np.arange(n), np.arange(n) + 1)
    x = _draws(np.full(n, mean), keys, stream=7)
    assert np.all(x == np.round(x)) and x.min() >= 0
    assert abs(x.mean() - mean) < 0.02 * mean
    assert abs(x.var() - mean) < 0.05 * mean
    ks = np.arange(int(mean - 2 * np.sqrt(mean)), int(mean + 2 * np.sqrt(mean)) + 1)
    freq = np.array([(x == k).mean() for k in ks])
    assert np.allclose(freq, stats.poisson.pmf(ks, mean), atol=0.005)  # the shape, not only two moments


def test_mixed_means_draw_each_from_its_own_distribution() -> None:
    n = 60_000
    means = np.tile([0.0, 2.0, TABLE_MAX_MEAN + 44.0], n // 3)
    x = _draws(means, edge_keys(np.arange(n), np.arange(n) + 7), stream=1)
    assert np.all(x[means == 0] == 0)
    for m in (2.0, TABLE_MAX_MEAN + 44.0):
        assert abs(x[means == m].mean() - m) < 0.03 * m


def test_an_edges_draw_depends_on_the_edge_its_count_and_the_stream_only() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 10_000, 5_000), rng.integers(0, 10_000, 5_000)
    means = rng.integers(1, 6, 5_000).astype(np.float64)
    keys = edge_keys(a, b)
    before = _draws(means, keys, stream=3)
    assert np.array_equal(keys, edge_keys(b, a))  # undirected
    # more edges (a graph that grew): the old edges keep their draws
    more_a, more_b = rng.integers(0, 10_000, 2_000), rng.integers(0, 10_000, 2_000)
    grown = _draws(np.concatenate([means, np.full(2_000, 2.0)]), np.concatenate([keys, edge_keys(more_a, more_b)]), 3)
    assert np.array_equal(grown[:5_000], before)
    # one more event on every edge: each draw moves up or stays (the same uniform through the next distribution)
    bumped = _draws(means + 1, keys, stream=3)
    assert np.all(bumped >= before) and (bumped > before).mean() > 0.2
    # another replicate's stream: independent draws
    other = _draws(means, keys, stream=4)
    assert (other != before).mean() > 0.5
    assert abs(np.corrcoef(other - means, before - means)[0, 1]) < 0.05


def _ring(n: int, extra: list[tuple[int, ...]]) -> MatchCounts:
    counts = MatchCounts(EngineConfig().pagerank)
    counts.load(list(range(1, n + 1)), (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)), 0,
                np.zeros((n, 3), dtype=np.int64))
    rng = np.random.default_rng(1)
    groups = [tuple(int(x) for x in rng.choice(n, 3, replace=False)) for _ in range(4 * n)] + extra
    counts.apply(groups, [], [], 1)
    return counts


def test_replicates_move_with_the_evidence_and_are_a_function_of_the_graph() -> None:
    config = EngineConfig(graph_bootstrap_rounds=8, graph_bootstrap_tol=1e-10)
    counts = _ring(300, [])
    boot = PageRankBootstrap(counts.graph, config)
    counts.graph.refresh()
    old = boot.replicates()[0].copy()
    counts.add_models([301])  # a new model, matched with an old one
    counts.apply([(0, 1, 2), (5, 300)], [], [], 2)
    counts.graph.refresh()
    new = boot.replicates()[0]
    # the same graph reached in one step, in another process that adopted this PageRank vector (as a reader
    # adopts the writer's): the same replicates, bit for bit
    again = _ring(300, [])
    again.add_models([301])
    again.apply([(0, 1, 2), (5, 300)], [], [], 2)
    again.graph.pr = counts.graph.pr.copy()
    assert np.array_equal(PageRankBootstrap(again.graph, config).replicates()[0], new)
    # tied draws: each replicate moved about as little as the point estimate did, far less than replicates differ
    moved = np.abs(new[:, :300] - old).sum(axis=1).max()
    spread = np.abs(new - new.mean(axis=0)).sum(axis=1).min()
    assert moved < spread / 5
