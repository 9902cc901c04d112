"""The scores of every model, recomputed only when one of their inputs changed.

``Scorer.state`` builds a ``ScoreState``: the five sub-scores (adoption, quality, ecosystem,
match graph, freshness) of all models with their bootstrap replicates and measured flags,
UnfragileRank, the Rank order, the feedback success rates, and the snapshot id of the data
and settings behind them. The state is cached under the versions of its inputs
(catalogue, graph structure, probe runs, feedback), and each catalogue-derived dimension is
cached under the catalogue version, so reads between changes cost nothing and a batch of
events recomputes only the match graph and the rank.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from graph import freshness, quality, rank, rates, signals
from graph.catalogue import Catalogue
from graph.config import EngineConfig
from graph.counts import MatchCounts, PageRankBootstrap
from graph.rank import DIMENSIONS, DimensionScores, RankScores, Score, ScoreCard
from graph.store import DataVersions, Store

StateKey = tuple[int, int, int, int, int]


@dataclass
class ScoreState:
    key: StateKey
    ids: list[str]
    dims: dict[str, DimensionScores]
    ranks: RankScores
    rank_low: np.ndarray
    scales: dict[str, signals.SignalScale]  # adoption / ecosystem: what their scores were computed from
    quality: quality.QualityScores
    order: np.ndarray  # model positions in Rank order
    snapshot: int  # opaque id of the data + settings these scores come from
    feedback: dict[str, Score] = field(default_factory=dict)
    dates: dict[str, dict[str, str]] = field(default_factory=dict)  # freshness: the dates read per model
    as_of: str = ""

    @property
    def rank(self) -> DimensionScores:
        return self.ranks.dims


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
        self.feedback_version = 0
        self._state: ScoreState | None = None
        self._cache: dict[str, tuple[Any, Any]] = {}  # name -> (key, value): catalogue-derived inputs
        self._id_rank = np.zeros(0, dtype=np.int64)

    def invalidate(self) -> None:
        self._state = None

    def probes_changed(self) -> None:
        """A probe run was stored: quality must be refit."""
        with self.lock:
            self.probe_version += 1
            self._state = None

    def feedback_changed(self) -> None:
        """Feedback outcomes were stored: success rates must be re-read."""
        with self.lock:
            self.feedback_version += 1
            self._state = None

    def _cached(self, name: str, key: Any, compute: Callable[[], Any]) -> Any:
        hit = self._cache.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = compute()
        self._cache[name] = (key, value)
        return value

    def state(self) -> ScoreState:
        """The current scores of every model, recomputed only when an input changed."""
        with self.lock:
            self.refresh_graph()
            ids = self.catalogue.ids
            key = (self.catalogue.version, self.counts.graph.structure_version, self.probe_version, len(ids),
                   self.feedback_version)
            if self._state is not None and self._state.key == key:
                return self._state
            cat = (self.catalogue.version, len(ids))
            types = self._cached("types", cat, lambda: self._types(ids))
            dims: dict[str, DimensionScores] = {}
            scales: dict[str, signals.SignalScale] = {}
            for d in ("adoption", "ecosystem"):
                dims[d], scales[d] = self._cached(d, cat, partial(self._signal_dim, d, types))
            as_of, dates = self._cached("dates", cat, self._dates)
            dims["freshness"] = self._cached("freshness", cat, lambda: freshness.freshness_dimension(
                ids, dates, types, as_of, self.config.freshness_half_life_days, self.config.bootstrap_rounds,
                rank.rng_for(self.config.seed, "freshness")))
            q = self._cached("quality", (cat, self.probe_version), self._quality_dim)
            dims["quality"] = q.dims
            dims["match_graph"] = self._match_graph_dim()
            weights = self._cached("weights", cat, lambda: np.array(
                [[self.config.weights_for(t)[d] for d in DIMENSIONS] for t in types]).reshape(len(ids),
                                                                                              len(DIMENSIONS)))
            ranks = rank.combine(dims, weights, rank.rng_for(self.config.seed, "rank"))
            total = ranks.dims
            low = total.bounds()[0]
            order = np.lexsort((self._id_ranks(), -total.value, -low, ~total.mask))  # ranked first, by lower bound
            fb = rates.feedback_scores(self.store.feedback_counts(), self.config.feedback_prior,
                                       self.config.feedback_strength)
            self._state = ScoreState(key, list(ids), dims, ranks, np.asarray(low), scales, q, order,
                                     self._snapshot(), fb, dates, as_of)
            return self._state

    def scorecard(self, st: ScoreState, i: int) -> ScoreCard:
        matched, compared, clicked = self.counts.times(i)
        s = {d: st.dims[d].score(i) for d in DIMENSIONS}
        conf, on, used = rank.card_weights(st.ranks, i)
        return ScoreCard(st.rank.score(i), s["adoption"], s["ecosystem"], s["match_graph"], s["quality"],
                         s["freshness"], times_matched=matched, times_compared=compared, times_clicked=clicked,
                         weights=conf, rests_on=on, rank_weights=used,
                         feedback=st.feedback.get(st.ids[i], Score.not_measured("no feedback recorded")))

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
    def _types(self, ids: list[str]) -> list[str]:
        types = self.store.model_types()
        return [types.get(m, "model") for m in ids]

    def tasks_of(self) -> dict[str, tuple[str, ...]]:
        """Each model's tasks, read once per catalogue version."""
        tasks: dict[str, tuple[str, ...]] = self._cached("tasks", (self.catalogue.version, len(self.catalogue.ids)),
                                                         self.store.model_tasks)
        return tasks

    def _signal_dim(self, dim: str, types: list[str]) -> tuple[DimensionScores, signals.SignalScale]:
        c = self.config
        return signals.signal_dimension(self.catalogue.ids, self.store.signal_values(dim), types, c.bootstrap_rounds,
                                        rank.rng_for(c.seed, dim), c.reading_spread_log, dim)

    def _dates(self) -> tuple[str, dict[str, dict[str, str]]]:
        as_of = self.config.freshness_as_of or self.store.readings_as_of()
        return as_of, freshness.dates_of(self.store.fact_rows())

    def scored_outcomes(self) -> list[tuple[str, str, float, str, str]]:
        """(model a, model b, a's score, task, run id) of the probe outcomes that may be scored: the store keeps
        the others (a random-weight model probed or judging, a contestant judging itself) with the reason, and
        returns only the scorable ones."""
        return [(o.model_a, o.model_b, o.a_score, o.task, o.run_id) for o in self.store.probe_outcomes()]

    def external_rows(self) -> list[tuple[str, str, float, str]]:
        """(model, benchmark, score, task) of every published result."""
        return [(r[0], r[1], r[2], r[5]) for r in self.store.external_quality_rows()]

    def _quality_dim(self) -> quality.QualityScores:
        return quality.quality_dimension(self.catalogue.ids, self.tasks_of(), self.scored_outcomes(),
                                         self.external_rows(), self.config.bootstrap_rounds,
                                         rank.rng_for(self.config.seed, "quality"), self.config.bt_prior)

    def _match_graph_dim(self) -> DimensionScores:
        g = self.counts.graph
        reps, _has = self.bootstrap.replicates()
        c = self.config
        n = len(self.catalogue.ids)
        matched = self.counts.stats[:, 0] if self.counts.stats.shape[0] == n else np.zeros(n, dtype=np.int64)
        return rates.match_graph_dimension(g.pr, reps, matched, c.bootstrap_rounds,
                                           rank.rng_for(c.seed, "match_graph"), c.match_graph_prior,
                                           c.match_graph_strength)

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
    seq, cat, runs, failed, feedback = versions
    digest = hashlib.blake2b(f"{seq}:{cat}:{runs}:{failed}:{feedback}:{config!r}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 11
