"""The MatchGraph engine: the one object the gRPC servicer calls, handing each call to the part that does it.

The parts share the store (the truth), one lock, and the state derived from the store:

- ``Catalogue`` (catalogue.py): ids, names, aliases, resolving what users type, UpsertModel.
- ``MatchCounts`` (counts.py): the co-match graph and counters; ``apply`` is the one path events take.
- ``Checkpoints`` (checkpoint.py): snapshots of those counts and the restart path (newest snapshot +
  the events after it).
- ``Ingest`` (ingest.py): RecordMatches. ``Scorer`` (scoring.py): sub-scores, UnfragileRank, Rank.
- ``Explainer`` (explain.py): GetModel. ``Comparer`` (compare.py) with ``Robustness`` (robustness.py):
  Compare. ``Prober`` (probing.py): RunProbes. ``Searcher`` (search.py): Search.

No gRPC here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from graph.catalogue import Catalogue
from graph.checkpoint import Checkpoints
from graph.compare import Comparer, CompareResult
from graph.config import EngineConfig
from graph.counts import MatchCounts, PageRankBootstrap
from graph.explain import EvidenceRow, Explainer
from graph.ingest import Ingest, IngestResult
from graph.probes import ProbeBackend, ProbeRun
from graph.probing import Prober
from graph.rank import Score, ScoreCard
from graph.records import MatchEvent, ModelRecord
from graph.robustness import Robustness
from graph.scoring import Scorer, ScoreState
from graph.search import Embedder, Searcher, SearchResult
from graph.store import Store


class Engine:
    """Catalogue, events, graph and scores behind the MatchGraph RPCs."""

    def __init__(self, store: Store, config: EngineConfig | None = None, embedder: Embedder | None = None,
                 probe_backend: ProbeBackend | None = None) -> None:
        self.store = store
        self.config = config or EngineConfig()
        self.lock = threading.RLock()
        self.catalogue = Catalogue(store, self.lock)
        self.counts = MatchCounts(self.config.pagerank)
        self.graph = self.counts.graph
        self.bootstrap = PageRankBootstrap(self.graph, self.config)
        self.checkpoints = Checkpoints(store, self.counts, self.bootstrap, self.lock)
        self.ingest = Ingest(store, self.catalogue, self.counts, self.checkpoints, self.config, self.lock)
        self.scorer = Scorer(store, self.catalogue, self.counts, self.bootstrap, self.config, self.lock,
                             self.refresh_graph)
        self.prober = Prober(store, self.catalogue, self.scorer, probe_backend, self.config, self.lock)
        self.explainer = Explainer(store, self.catalogue, self.counts, self.scorer, self.prober, self.config)
        self.robustness = Robustness(store, self.catalogue, self.counts, self.config)
        self.comparer = Comparer(store, self.catalogue, self.counts, self.scorer, self.robustness, self.prober,
                                 self.config)
        self.searcher = Searcher(store, embedder, self.config.rrf_k)
        # e.g. a metrics hook: (PageRank iterations, seconds) of each rank refresh that ran
        self.on_refresh: Callable[[int, float], None] | None = None

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> None:
        """(Re)build everything derived from the store: what a restart does.

        Loads the last checkpoint of the co-match counts, replays the events stored after
        it, and adopts the persisted PageRank vector if it belongs to exactly this graph
        version (else recomputes it). The result equals a recount from all events.
        """
        with self.lock:
            nodes = self.catalogue.load()
            if self.checkpoints.load(nodes, self.catalogue.pos):
                self.checkpoints.save()
            self.refresh_graph()
            self.checkpoints.adopt_bootstrap()
            self.scorer.invalidate()

    def checkpoint(self) -> None:
        """Persist the derived counts (and current PageRank bootstrap replicates) for a fast restart."""
        self.checkpoints.save()

    def refresh_graph(self) -> int:
        """Bring PageRank up to date (warm start) and persist it with its graph version."""
        with self.lock:
            started = time.perf_counter()
            iterations = self.graph.refresh()
            if iterations:
                self.checkpoints.save_pagerank()
                if self.on_refresh is not None:
                    self.on_refresh(iterations, time.perf_counter() - started)
            return iterations

    def close(self) -> None:
        """Refresh and persist PageRank, checkpoint the counts, then close: a restart serves identical ranks."""
        self.refresh_graph()
        self.checkpoint()
        self.store.close()

    def state(self) -> ScoreState:
        """The current scores of every model (computed now if an input changed)."""
        return self.scorer.state()

    # ------------------------------------------------------------------ facts for metrics and health
    def graph_version(self) -> int:
        """Seq of the last event the in-memory graph reflects."""
        return self.graph.version

    def model_count(self) -> int:
        return len(self.graph.nodes)

    def edge_count(self) -> int:
        """Distinct co-match edges (merges queued deltas: not for the ingest path)."""
        return int(self.graph.w.nnz // 2)

    @property
    def can_probe(self) -> bool:
        """Whether the model services are configured, so probes can run."""
        return self.prober.backend is not None

    # ------------------------------------------------------------------ the RPCs
    def upsert(self, record: ModelRecord) -> tuple[ModelRecord, bool]:
        with self.lock:
            created, node = self.catalogue.upsert(record)
            if created:
                self.counts.add_model(node)
            self.scorer.invalidate()
        return self.catalogue.stored(record.id), created

    def record_events(self, events: list[MatchEvent]) -> IngestResult:
        with self.lock:
            result = self.ingest.record_events(events)
            if result.inserted:
                self.scorer.invalidate()
            return result

    def get(self, name: str, explain: bool) -> tuple[ModelRecord, ScoreCard, list[EvidenceRow], int]:
        return self.explainer.get(name, explain)

    def rank(self, capability: str, limit: int, offset: int) -> tuple[list[tuple[str, str, ScoreCard]], int, int]:
        return self.scorer.rank(capability, limit, offset)

    def compare(self, name_a: str, name_b: str) -> CompareResult:
        return self.comparer.compare(name_a, name_b)

    def search(self, query: str, limit: int) -> tuple[SearchResult, int]:
        return self.searcher.search(query, limit, self.catalogue.names), self.state().snapshot

    def run_probes(self, models: list[str], max_prompts: int, seed: int,
                   check_cancel: Callable[[], None] = lambda: None) -> tuple[ProbeRun, dict[str, Score]]:
        return self.prober.run(models, max_prompts, seed, check_cancel)


__all__ = ["CompareResult", "Engine", "EngineConfig", "EvidenceRow", "IngestResult"]
