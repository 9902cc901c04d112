"""The scores of every model, recomputed only when one of their inputs changed.

``Scorer.state`` builds a ``ScoreState``: the four sub-scores (adoption, ecosystem, match
graph, quality) of all models with their bootstrap replicates, UnfragileRank, the Rank
order, and the snapshot id of the data and settings behind them. The state is cached under
the versions of its inputs (catalogue, graph structure, probe runs), so reads between
changes cost nothing.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from graph import rank
from graph.catalogue import Catalogue
from graph.config import EngineConfig
from graph.counts import MatchCounts, PageRankBootstrap
from graph.rank import DIMENSIONS, DimensionScores, ScoreCard
from graph.store import DataVersions, Store

# kinds, X (models x kinds: mean log1p value, 0 = none), each kind's column sorted
SignalMatrix = tuple[list[str], np.ndarray, list[np.ndarray]]
StateKey = tuple[int, int, int, int]


@dataclass
class ScoreState:
    key: StateKey
    ids: list[str]
    dims: dict[str, DimensionScores]
    rank: DimensionScores
    rank_low: np.ndarray
    signal_x: dict[str, SignalMatrix]
    order: np.ndarray  # model positions in Rank order
    snapshot: int  # opaque id of the data + settings these scores come from


class Scorer:
    """Computes and caches the ``ScoreState``; ``invalidate`` after any change to its inputs."""

    def __init__(self, store: Store, catalogue: Catalogue, counts: MatchCounts, bootstrap: PageRankBootstrap,
                 config: EngineConfig, lock: threading.RLock, refresh_graph: Callable[[], int],
                 versions: Callable[[], DataVersions]) -> None:
        self.store = store
        self.catalogue = catalogue
        self.counts = counts
        self.bootstrap = bootstrap
        self.config = config
        self.lock = lock
        self.refresh_graph = refresh_graph  # brings PageRank up to date before scores are read
        self.versions = versions  # what the in-memory state reflects (``Sync.synced``)
        self.probe_version = 0
        self._state: ScoreState | None = None
        self._signal_cache: dict[str, tuple[tuple[int, int], DimensionScores]] = {}
        self._rows_cache: tuple[tuple[int, str] | None, list[tuple[str, str, float]]] = (None, [])
        self._id_rank = np.zeros(0, dtype=np.int64)

    def invalidate(self) -> None:
        self._state = None

    def probes_changed(self) -> None:
        """A probe run was stored: quality must be refit."""
        with self.lock:
            self.probe_version += 1
            self._state = None

    def state(self) -> ScoreState:
        """The current scores of every model, recomputed only when an input changed."""
        with self.lock:
            self.refresh_graph()
            ids = self.catalogue.ids
            key = (self.catalogue.version, self.counts.graph.structure_version, self.probe_version, len(ids))
            if self._state is not None and self._state.key == key:
                return self._state
            dims: dict[str, DimensionScores] = {}
            sig: dict[str, SignalMatrix] = {}
            for d in ("adoption", "ecosystem"):
                dims[d] = self._signal_dim(d)
                sig[d] = self._signal_matrix(d)
            dims["match_graph"] = self._match_graph_dim()
            dims["quality"] = self._quality_dim()
            total = rank.combine(dims, self.config.weights)
            low = total.bounds()[0]
            order = np.lexsort((self._id_ranks(), -total.value, -low))  # by lower bound, then value, then id
            self._state = ScoreState(key, list(ids), dims, total, np.asarray(low), sig, order, self._snapshot())
            return self._state

    def scorecard(self, st: ScoreState, i: int) -> ScoreCard:
        matched, compared, clicked = self.counts.times(i)
        s = {d: st.dims[d].score(i) for d in DIMENSIONS}
        return ScoreCard(st.rank.score(i), s["adoption"], s["ecosystem"], s["match_graph"], s["quality"],
                         times_matched=matched, times_compared=compared, times_clicked=clicked,
                         weights=dict(self.config.weights))

    def rank(self, capability: str, limit: int, offset: int) -> tuple[list[tuple[str, str, ScoreCard]], int, int]:
        """One page of the Rank order (optionally only models with a matching capability), total, snapshot."""
        st = self.state()
        order = st.order
        if capability.strip():
            pos = self.catalogue.pos
            keep = np.zeros(len(st.ids), dtype=bool)
            keep[[pos[m] for m in self.store.capability_model_ids(capability) if m in pos]] = True
            order = order[keep[order]]
        page = order[offset:offset + limit].tolist()
        rows = [(st.ids[i], self.catalogue.name(st.ids[i]), self.scorecard(st, i)) for i in page]
        return rows, len(order), st.snapshot

    # ------------------------------------------------------------------ the dimensions
    def signal_values(self, dim: str) -> list[tuple[str, str, float]]:
        """(model id, kind, value) of every signal of ``dim``, cached per catalogue version."""
        key = (self.catalogue.version, dim)
        if self._rows_cache[0] != key:
            self._rows_cache = (key, self.store.signal_values(dim))
        return self._rows_cache[1]

    def _signal_dim(self, dim: str) -> DimensionScores:
        key = (self.catalogue.version, len(self.catalogue.ids))
        hit = self._signal_cache.get(dim)
        if hit and hit[0] == key:
            return hit[1]
        d = rank.signal_dimension(self.catalogue.ids, self.signal_values(dim), self.config.bootstrap_rounds,
                                  rank.rng_for(self.config.seed, dim))
        self._signal_cache[dim] = (key, d)
        return d

    def _signal_matrix(self, dim: str) -> SignalMatrix:
        """Per model and kind: mean log1p(value) (0 = none), plus each kind's sorted column."""
        pos = self.catalogue.pos
        rows = [r for r in self.signal_values(dim) if r[0] in pos]
        kinds = sorted({r[1] for r in rows})
        k_of = {k: i for i, k in enumerate(kinds)}
        n, nk = len(self.catalogue.ids), len(kinds)
        if not rows:
            return kinds, np.zeros((n, nk)), [np.zeros(n) for _ in kinds]
        key = np.array([pos[r[0]] * nk + k_of[r[1]] for r in rows], dtype=np.int64)
        v = np.log1p(np.array([r[2] for r in rows], dtype=np.float64))
        sums = np.bincount(key, weights=v, minlength=n * nk)
        cnts = np.bincount(key, minlength=n * nk)
        x = np.divide(sums, cnts, out=np.zeros(n * nk), where=cnts > 0).reshape(n, nk)
        return kinds, x, [np.sort(x[:, c]) for c in range(nk)]

    def _quality_dim(self) -> DimensionScores:
        outcomes = [(o.model_a, o.model_b, o.a_score) for o in self.store.probe_outcomes()]
        external = [(r[0], r[2]) for r in self.store.external_quality_rows()]
        return rank.quality_dimension(self.catalogue.ids, outcomes, external, self.config.bootstrap_rounds,
                                      rank.rng_for(self.config.seed, "quality"), self.config.bt_prior)

    def _match_graph_dim(self) -> DimensionScores:
        g = self.counts.graph
        reps, has = self.bootstrap.replicates()
        d = rank.match_graph_dimension(g.pr, g.degree(), reps, has, self.counts.stats[:, 0])
        # the graph uses its own (smaller) number of rounds: tile to the common replicate count
        rounds = self.config.bootstrap_rounds
        if d.reps.shape[0] and d.reps.shape[0] != rounds:
            idx = np.arange(rounds) % d.reps.shape[0]
            d = DimensionScores(d.value, d.reps[idx], d.count)
        elif not d.reps.shape[0]:
            d = DimensionScores(d.value, np.tile(d.value, (rounds, 1)), d.count)
        return d

    # ------------------------------------------------------------------ order and snapshot
    def _id_ranks(self) -> np.ndarray:
        """Each model's position in id order (the last tie-breaker of Rank), kept while ids only grow."""
        ids = self.catalogue.ids
        if self._id_rank.shape[0] != len(ids):
            self._id_rank = np.empty(len(ids), dtype=np.int64)
            self._id_rank[np.argsort(np.array(ids))] = np.arange(len(ids))
        return self._id_rank

    def _snapshot(self) -> int:
        return snapshot_id(self.versions(), self.config)


def snapshot_id(versions: DataVersions, config: EngineConfig) -> int:
    """An id (< 2^53, exact in JSON numbers) of the stored data and the settings the scores come from.

    It depends on the data versions alone (no score is computed), so it is cheap to ask for; every
    process that reflects the same versions with the same settings gives the same id.
    """
    seq, cat, runs, failed = versions
    digest = hashlib.blake2b(f"{seq}:{cat}:{runs}:{failed}:{config!r}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 11
