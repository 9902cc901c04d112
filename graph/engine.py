"""The MatchGraph engine: the one object the gRPC servicer calls, handing each call to the part that does it.

The parts share the store (the truth), one lock, and the state derived from the store:

- ``Catalogue`` (catalogue.py): ids, names, aliases, resolving what users type, UpsertModel.
- ``MatchCounts`` (counts.py): the co-match graph and counters; ``apply`` is the one path events take.
- ``Checkpoints`` (checkpoint.py): snapshots of those counts and the restart path (newest snapshot +
  the events after it).
- ``Ingest`` (ingest.py): RecordMatches. ``Scorer`` (scoring.py): sub-scores, UnfragileRank, Rank.
- ``Explainer`` (explain.py): GetModel. ``Comparer`` (compare.py) with ``Robustness`` (robustness.py):
  Compare. ``Prober`` (probing.py): RunProbes. ``Searcher`` (search.py): Search.
- ``Sync`` (sync.py): what the in-memory state reflects (``synced``, behind every snapshot id) and
  the replay of writes this process did not apply itself.

An engine built with ``writes_refused`` (a reader) never writes to the store: write calls
answer FailedPrecondition with that message (``refuse`` makes another error of it, e.g.
Unavailable while a new leader is being elected), and PageRank and checkpoints stay in memory.
No gRPC here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from common.errors import FailedPrecondition, InvalidArgument, UnfragileError
from common.gc_pause import cyclic_gc_paused
from graph import manifest as manifests
from graph.catalogue import Catalogue
from graph.checkpoint import Checkpoints
from graph.compare import Comparer, CompareResult
from graph.config import EngineConfig
from graph.counts import MatchCounts, PageRankBootstrap
from graph.explain import EvidenceRow, Explainer
from graph.feedback import Feedback, FeedbackDesk
from graph.ingest import Ingest, IngestResult
from graph.intent_index import IntentIndex, ModelFacts
from graph.manifest import ManifestResult
from graph.passport import Passport, Passports
from graph.probes import ProbeBackend, ProbeRun
from graph.probing import Prober
from graph.rank import Score, ScoreCard
from graph.records import MatchEvent, ModelRecord
from graph.resolve import Resolver, ResolveResult
from graph.robustness import Robustness
from graph.scoring import Scorer, ScoreState, snapshot_id
from graph.search import Embedder, Searcher, SearchResult, SearchWeights
from graph.store import DataVersions, FeedbackRow, Store
from graph.sync import Lag, Sync


class Engine:
    """Catalogue, events, graph and scores behind the MatchGraph RPCs."""

    def __init__(self, store: Store, config: EngineConfig | None = None, embedder: Embedder | None = None,
                 probe_backend: ProbeBackend | None = None, writes_refused: str = "") -> None:
        self.store = store
        self.config = config or EngineConfig()
        self.writes_refused = writes_refused
        self.refuse: Callable[[str], UnfragileError] = FailedPrecondition  # the error write calls then raise
        self.lock = threading.RLock()
        self.catalogue = Catalogue(store, self.lock)
        self.counts = MatchCounts(self.config.pagerank)
        self.graph = self.counts.graph
        self.bootstrap = PageRankBootstrap(self.graph, self.config)
        self.checkpoints = Checkpoints(store, self.counts, self.bootstrap, self.lock)
        self.scorer = Scorer(store, self.catalogue, self.counts, self.bootstrap, self.config, self.lock,
                             self.refresh_graph, lambda: self.sync.synced)
        self.sync = Sync(store, self.catalogue, self.counts, self.checkpoints, self.scorer, self.lock)
        self.ingest = Ingest(store, self.catalogue, self.counts, self.checkpoints, self.config, self.lock, self.sync)
        self.prober = Prober(store, self.catalogue, self.scorer, probe_backend, self.config, self.lock, self.sync)
        self.explainer = Explainer(store, self.catalogue, self.counts, self.scorer, self.prober, self.config)
        self.robustness = Robustness(store, self.catalogue, self.counts, self.config)
        self.comparer = Comparer(store, self.catalogue, self.counts, self.scorer, self.robustness, self.prober,
                                 self.config)
        self.intents = IntentIndex(store, lambda: self.catalogue.version)
        self.searcher = Searcher(store, embedder, self.intents, SearchWeights(self.config.search_intent_weight,
                                                                              self.config.search_prior_weight))
        self.passports = Passports(store, self.catalogue, self.scorer, self.intents, self.config)
        self.feedback = FeedbackDesk(store, self.catalogue)
        self.resolver = Resolver(self.intents, self.config.search_prior_weight)
        # e.g. a metrics hook: (PageRank iterations, seconds) of each rank refresh that ran
        self.on_refresh: Callable[[int, float], None] | None = None
        self.on_write: Callable[[], None] | None = None  # e.g. wakes the writer's publisher
        self.lag_source: Callable[[], Lag] | None = None  # a reader's follower says how far behind it is

    # ------------------------------------------------------------------ lifecycle
    def load(self, target: DataVersions | None = None) -> None:
        """(Re)build everything derived from the store: what a restart does.

        Loads the last checkpoint of the co-match counts, replays the events stored after
        it (up to ``target.seq``; default: the store's versions now), and adopts the persisted
        PageRank vector if it belongs to exactly this graph version (else recomputes it). The
        result equals a recount from all events.
        """
        with self.lock:
            target = target or self.store.data_versions()
            self.sync.synced = DataVersions(0, 0, 0, 0)
            nodes, catalogue = self.sync.read_catalogue()
            if self.checkpoints.load(nodes, self.catalogue.pos, target.seq) and not self.writes_refused:
                self.checkpoints.save()
            self.sync.synced = target._replace(catalogue=catalogue)
            self.refresh_graph()
            self.checkpoints.adopt_bootstrap()
            self.scorer.probes_changed()

    def checkpoint(self) -> None:
        """Persist the derived counts (and current PageRank bootstrap replicates) for a fast restart."""
        if not self.writes_refused:
            self.checkpoints.save()

    def refresh_graph(self, persist: bool = True) -> int:
        """Bring PageRank up to date (warm start); a writing engine persists it with its graph version."""
        with self.lock:
            started = time.perf_counter()
            iterations = self.graph.refresh()
            if iterations:
                if persist and not self.writes_refused:
                    self.checkpoints.save_pagerank()
                if self.on_refresh is not None:
                    self.on_refresh(iterations, time.perf_counter() - started)
            return iterations

    def close(self) -> None:
        """Refresh and persist PageRank, checkpoint the counts, then close: a restart serves identical ranks."""
        if not self.writes_refused:
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

    def snapshot(self) -> int:
        """The snapshot id the next GetModel/Rank/Compare/Search answer carries (no score is computed)."""
        return snapshot_id(self.sync.synced, self.config)

    def lag(self) -> Lag:
        """How far behind the store this process's answers are (a writer's are never behind)."""
        if self.lag_source is not None:
            return self.lag_source()
        seq = self.graph.version
        return Lag(store_seq=seq)

    def stale_seconds(self) -> float:
        """0 for a current answer; else how many seconds behind the store it is (past max_staleness_s)."""
        lag = self.lag()
        return lag.seconds if lag.stale else 0.0

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
    def _writable(self) -> None:
        if self.writes_refused:
            raise self.refuse(self.writes_refused)

    def _wrote(self) -> None:
        if self.on_write is not None:
            self.on_write()

    def upsert(self, record: ModelRecord) -> tuple[ModelRecord, bool]:
        self._writable()
        with self.lock:
            created, node = self.catalogue.upsert(record)
            if created:
                self.counts.add_model(node)
            self.sync.note_catalogue()
            self.scorer.invalidate()
        self._wrote()
        return self.catalogue.stored(record.id), created

    def import_models(self, records: list[ModelRecord], validated: bool = False) -> int:
        """Create or replace many records in one transaction (a catalogue import); returns how many were new.

        ``validated``: the records were validated already (``record_from_pb``, ``catalogue_file``)."""
        self._writable()
        with self.lock, cyclic_gc_paused():  # records and their rows hold no reference cycles
            created = self.catalogue.upsert_many(records, validated)
            self.counts.add_models(created)
            self.sync.note_catalogue()
            self.scorer.invalidate()
        self._wrote()
        return len(created)

    def record_events(self, events: list[MatchEvent]) -> IngestResult:
        self._writable()
        with self.lock:
            result = self.ingest.record_events(events)
            if result.inserted:
                self.scorer.invalidate()
        self._wrote()
        return result

    def get(self, name: str, explain: bool) -> tuple[ModelRecord, ScoreCard, list[EvidenceRow], int]:
        return self.explainer.get(name, explain)

    def rank(self, capability: str, limit: int, offset: int) -> tuple[list[tuple[str, str, ScoreCard]], int, int]:
        return self.scorer.rank(capability, limit, offset)

    def compare(self, name_a: str, name_b: str) -> CompareResult:
        return self.comparer.compare(name_a, name_b)

    def search(self, query: str, limit: int, type_filter: str = "") -> tuple[SearchResult, int]:
        state = self.state()
        pos = self.catalogue.pos

        def prior(model_id: str) -> float:  # a rank that is not measured adds nothing (Rank lists it last too)
            i = pos.get(model_id)
            measured = i is not None and i < len(state.rank.value) and bool(state.rank.mask[i])
            return float(state.rank.value[i]) / 100.0 if measured else 0.0

        return self.searcher.search(query, limit, self.catalogue.names, self.model_info, prior,
                                    type_filter), state.snapshot

    def model_info(self, model_id: str) -> ModelFacts:
        """What search needs of a model, from the intent index or its record."""
        return self.intents.info(model_id) or ModelFacts.of(self.catalogue.record_of(model_id))

    def passport(self, name: str) -> Passport:
        return self.passports.get(name)

    def record_feedback(self, fb: Feedback) -> tuple[MatchEvent, FeedbackRow, bool]:
        self._writable()
        with self.lock:
            result = self.feedback.record(fb)
            if not result[2]:  # a new outcome (not a duplicate): success rates and the snapshot id change
                self.sync.note_feedback()
                self.scorer.feedback_changed()
        self._wrote()
        return result

    def get_match(self, match_id: str) -> tuple[MatchEvent, FeedbackRow | None]:
        return self.feedback.get(match_id)

    def resolve(self, text: str, limit: int) -> ResolveResult:
        state = self.state()
        pos, counts = self.catalogue.pos, self.store.feedback_counts()
        return self.resolver.resolve(
            text, limit, self.catalogue.names, self.model_info, lambda m: self.scorer.scorecard(state, pos[m]).rank,
            lambda m: self.passports.rate(*counts.get(m, (0, 0))), lambda q, n: self.search(q, n)[0], state.snapshot)

    def validate_manifest(self, text: str) -> tuple[ManifestResult, ModelRecord | None, str]:
        """The manifest's problems, the record importing it would store now, and the id of the model it updates."""
        return manifests.check(text, self.catalogue)

    def import_manifest(self, text: str) -> tuple[ModelRecord, bool, ManifestResult]:
        self._writable()
        result, record, _updates = manifests.check(text, self.catalogue)
        if record is None:
            raise InvalidArgument("the manifest is not valid: " + "; ".join(
                f"{e.path or '/'}: {e.message}" for e in result.errors[:20]))
        stored, created = self.upsert(record)
        return stored, created, result

    def run_probes(self, models: list[str], max_prompts: int, seed: int,
                   check_cancel: Callable[[], None] = lambda: None) -> tuple[ProbeRun, dict[str, Score]]:
        self._writable()
        try:
            return self.prober.run(models, max_prompts, seed, check_cancel)
        finally:
            self._wrote()


__all__ = ["CompareResult", "Engine", "EngineConfig", "EvidenceRow", "IngestResult", "Lag"]
