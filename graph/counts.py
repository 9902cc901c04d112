"""What the match events add up to, in memory: the co-match graph, each model's counters, and
the PageRank bootstrap replicates of that graph.

``MatchCounts.apply`` is the one place events change this state: ingest calls it for a
stored batch, and the restart path (``checkpoint.Checkpoints.load``) calls it for the
events stored after the last checkpoint. Dense indices are positions in the catalogue's id
list, which follows store node (rowid) order, like the graph's own index.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from graph.config import EngineConfig
from graph.matchgraph import MatchGraph, PageRankParams, pair_arrays, poisson_replicates
from graph.rank import rng_for

# (matched, compared, clicked) model ids of one event
EventIds = tuple[Sequence[str], Sequence[str], Sequence[str]]


class MatchCounts:
    """The co-match graph plus (times matched, compared, clicked) per model (``stats``, N x 3)."""

    def __init__(self, params: PageRankParams) -> None:
        self.graph = MatchGraph(params)
        self.stats: np.ndarray = np.zeros((0, 3), dtype=np.int64)

    def load(self, nodes: list[int], edges: tuple[np.ndarray, np.ndarray, np.ndarray], since: int,
             stats: np.ndarray) -> None:
        """Replace everything with a snapshot: co-match edges between store nodes and the counters."""
        self.stats = stats
        self.graph.load(nodes, *edges, since)

    def add_model(self, node: int) -> None:
        """A model created in the catalogue: one more graph node with zero counts."""
        self.add_models([node])

    def add_models(self, nodes: list[int]) -> None:
        """Models created in the catalogue, in node order: graph nodes with zero counts (one copy for all)."""
        if nodes:
            self.graph.add_nodes(nodes)
            self.stats = np.vstack([self.stats, np.zeros((len(nodes), 3), dtype=np.int64)])

    def apply(self, groups: list[tuple[int, ...]], compared: list[int], clicked: list[int], version: int) -> None:
        """Fold stored events (each one's matched models as dense indices) into the counts and the graph."""
        n = self.stats.shape[0]
        self.stats[:, 0] += np.bincount(np.fromiter(itertools.chain.from_iterable(groups), dtype=np.int64),
                                        minlength=n)
        if compared:
            self.stats[:, 1] += np.bincount(np.array(compared, dtype=np.int64), minlength=n)
        if clicked:
            self.stats[:, 2] += np.bincount(np.array(clicked, dtype=np.int64), minlength=n)
        self.graph.apply(*pair_arrays(groups, n), version)

    def apply_ids(self, events: Iterable[EventIds], pos: Mapping[str, int]) -> None:
        """``apply`` for events given as model ids (a replay of stored rows)."""
        get = pos.__getitem__
        events = list(events)
        groups = [tuple(map(get, matched)) for matched, _c, _k in events]
        compared = [get(m) for _m, c, _k in events for m in c]
        clicked = [get(m) for _m, _c, k in events for m in k]
        self.apply(groups, compared, clicked, self.graph.version)

    def times(self, i: int) -> tuple[int, int, int]:
        """(times matched, compared, clicked) of the model at dense index ``i``."""
        if i >= self.stats.shape[0]:
            return 0, 0, 0
        t = self.stats[i]
        return int(t[0]), int(t[1]), int(t[2])


class PageRankBootstrap:
    """Poisson-bootstrap PageRank replicates of the co-match graph, kept while its structure is unchanged.

    They are the slow part of scoring a large graph, so checkpoints persist them with ``key``
    (what they depend on) and a restart adopts them only if that key still holds.
    """

    def __init__(self, graph: MatchGraph, config: EngineConfig) -> None:
        self.graph = graph
        self.config = config
        self.structure_version = -1  # of the graph the replicates belong to; -1: none
        self.reps: np.ndarray = np.zeros((0, 0))
        self.has: np.ndarray = np.zeros((0, 0))
        self.key = ""

    def current_key(self) -> str:
        """What the replicates depend on: graph version, size and settings."""
        c, g = self.config, self.graph
        return (f"v={g.version};n={len(g.nodes)};nnz={g.w.nnz};"
                f"rounds={c.graph_bootstrap_rounds};tol={c.graph_bootstrap_tol};seed={c.seed};"
                f"damping={c.pagerank.damping};pr_tol={c.pagerank.tol}")

    @property
    def is_current(self) -> bool:
        return self.structure_version == self.graph.structure_version

    def replicates(self) -> tuple[np.ndarray, np.ndarray]:
        """(replicates, has-edges mask) for the graph as it is now, computed if stale."""
        g = self.graph
        if not self.is_current:
            params = PageRankParams(g.params.damping, self.config.graph_bootstrap_tol, g.params.max_iter)
            reps, has = poisson_replicates(g.w, g.pr, params, self.config.graph_bootstrap_rounds,
                                           rng_for(self.config.seed, "match_graph"))
            self.adopt(reps, has)
        return self.reps, self.has

    def adopt(self, reps: np.ndarray, has: np.ndarray) -> None:
        """Take replicates computed for the graph as it is now (fresh, or read back from a checkpoint)."""
        self.structure_version = self.graph.structure_version
        self.reps, self.has = reps, has
        self.key = self.current_key()
