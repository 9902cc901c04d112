"""The MatchGraph engine: one object that the gRPC servicer hands every call to.

It owns the store (truth), the in-memory match graph (derived, incremental) and the score
state (derived, recomputed lazily when its inputs' versions change), and it answers the
seven operations of the API in domain terms. No gRPC here.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import itertools
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from common.errors import FailedPrecondition, InvalidArgument, NotFound, UnfragileError
from graph import fragility, pages, rank
from graph.config import EngineConfig
from graph.matchgraph import MatchGraph, PageRankParams, pair_arrays, poisson_replicates
from graph.probes import PROBE_PROMPTS, ProbeBackend, ProbeRun, run_probes
from graph.rank import DIMENSIONS, DimensionScores, ScoreCard
from graph.records import MatchEvent, ModelRecord, slugify
from graph.search import Embedder, Searcher, SearchResult
from graph.store import Store, normalise_query
from graph.verdict import DimensionResult, headline, verdict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvidenceRow:
    dimension: str
    kind: str
    detail: str
    value: float
    contribution: float
    source: str = ""
    observed_at: str = ""


@dataclass(frozen=True)
class CompareResult:
    comparison: pages.Comparison
    markdown: str
    html: str
    snapshot: int = 0


@dataclass(frozen=True)
class IngestResult:
    received: int
    inserted: int
    duplicates: int
    graph_version: int


@dataclass
class _ScoreState:
    key: tuple
    ids: list[str]
    dims: dict[str, DimensionScores]
    rank: DimensionScores
    rank_low: np.ndarray
    signal_x: dict[str, tuple[list[str], np.ndarray, list[np.ndarray]]]  # kinds, X (N,K), sorted columns
    order: np.ndarray  # model positions in Rank order
    snapshot: int  # opaque id of the data + settings these scores come from


class Engine:
    """Catalogue, events, graph and scores behind the seven RPCs."""

    def __init__(self, store: Store, config: EngineConfig | None = None, embedder: Embedder | None = None,
                 probe_backend: ProbeBackend | None = None) -> None:
        self.store = store
        self.config = config or EngineConfig()
        self.graph = MatchGraph(self.config.pagerank)
        self.searcher = Searcher(store, embedder, self.config.rrf_k)
        self.probe_backend = probe_backend
        self.lock = threading.RLock()
        self.catalog_version = 0
        self.probe_version = 0
        self.ids: list[str] = []
        self.pos: dict[str, int] = {}
        self.node_of: dict[str, int] = {}
        self.alias: dict[str, str] = {}
        self.names: dict[str, str] = {}
        self.stats = np.zeros((0, 3), dtype=np.int64)
        self._state: _ScoreState | None = None
        self._signal_cache: dict[str, tuple[tuple, DimensionScores]] = {}
        self._mg_boot: tuple[int, np.ndarray, np.ndarray] | None = None
        self._mg_boot_key = ""
        self._fragility_cache: dict[tuple, tuple[dict[str, int], int]] = {}
        self._checkpoint_version = 0
        self._rows_cache: tuple[tuple, list] = ((), [])
        self._id_rank = np.zeros(0, dtype=np.int64)
        self._records: OrderedDict[tuple[str, int], ModelRecord] = OrderedDict()
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
            nodes = self.store.model_nodes()
            self.ids = [m for _n, m in nodes]
            self.pos = {m: i for i, m in enumerate(self.ids)}
            self.node_of = {m: n for n, m in nodes}
            self.alias = self.store.aliases()
            self.names = self.store.names()
            node_list = [n for n, _m in nodes]
            self.stats = np.zeros((len(self.ids), 3), dtype=np.int64)
            snap = self.store.load_state("comatch")
            z = np.zeros(0, dtype=np.int64)
            a, b, c, since = z, z, z, 0
            if snap is not None:
                arrays = np.load(io.BytesIO(snap[1]))
                a, b, c, since = arrays["a"], arrays["b"], arrays["c"], snap[0]
                rows = np.searchsorted(np.array(node_list, dtype=np.int64), arrays["sn"])  # nodes ascend
                self.stats[rows] = np.column_stack([arrays["sm"], arrays["sc"], arrays["sk"]])
            self.graph.load(node_list, a, b, c, since)
            replayed = 0
            for rows in self.store.iter_events(after_seq=since):
                self._apply_events([(m.split(), cp.split(), k.split()) for m, cp, k in rows])
                replayed += len(rows)
            self.graph.version = self.store.graph_version()
            self._checkpoint_version = since
            saved = self.store.load_state("pagerank")
            if saved is not None and saved[0] == self.graph.version:
                vec = np.frombuffer(saved[1], dtype=np.float64)
                if vec.shape[0] == len(node_list):
                    self.graph.set_pagerank(vec)
            if replayed:
                self.checkpoint()
            self.refresh_graph()
            boot = self.store.load_state("mg_bootstrap")
            if boot is not None and not self.graph.dirty:
                arrays = np.load(io.BytesIO(boot[1]))
                if str(arrays["key"]) == self._boot_key():
                    self._mg_boot = (self.graph.structure_version, arrays["reps"], arrays["has"])
                    self._mg_boot_key = self._boot_key()
            self.catalog_version += 1
            self._state = None

    def _apply_events(self, events: list[tuple[Sequence[str], Sequence[str], Sequence[str]]] | None,
                      groups: list[tuple[int, ...]] | None = None,
                      compared: list[int] | None = None, clicked: list[int] | None = None) -> None:
        """Fold (matched, compared, clicked) id lists into the graph and the per-model counters.

        Dense graph indices equal positions in ``self.ids`` (both follow the rowid order).
        Ingest passes ``groups`` (matched models as indices) and the ``compared``/``clicked``
        indices it already resolved, and no ``events``; a replay passes only ``events``.
        """
        get = self.pos.__getitem__
        if groups is None:
            groups = [tuple(map(get, matched)) for matched, _c, _k in events or ()]
        n = len(self.ids)
        self.stats[:, 0] += np.bincount(np.fromiter(itertools.chain.from_iterable(groups), dtype=np.int64),
                                        minlength=n)
        if compared is None:
            compared = [get(m) for _m, c, _k in events or () for m in c]
        if clicked is None:
            clicked = [get(m) for _m, _c, k in events or () for m in k]
        if compared:
            self.stats[:, 1] += np.bincount(np.array(compared, dtype=np.int64), minlength=n)
        if clicked:
            self.stats[:, 2] += np.bincount(np.array(clicked, dtype=np.int64), minlength=n)
        self.graph.apply(*pair_arrays(groups, n), self.graph.version)

    def checkpoint(self) -> None:
        """Persist the derived counts so a restart replays little (no PageRank work on this path).

        The PageRank vector is persisted whenever it is refreshed, and its bootstrap
        replicates here if they are current; a restart adopts either only if it belongs to
        exactly the graph version it rebuilt.
        """
        with self.lock:
            a, b, c = self.graph.upper_edges()
            nodes = np.array(self.graph.nodes, dtype=np.int64)
            buf = io.BytesIO()
            np.savez(buf, a=a, b=b, c=c, sn=nodes, sm=self.stats[:, 0], sc=self.stats[:, 1], sk=self.stats[:, 2])
            v = self.graph.version
            items = {"comatch": (v, buf.getvalue())}
            if not self.graph.dirty and self._mg_boot is not None \
                    and self._mg_boot[0] == self.graph.structure_version:
                boot = io.BytesIO()  # the PageRank bootstrap is the slow part of a restart: keep it
                np.savez(boot, key=np.array(self._mg_boot_key), reps=self._mg_boot[1], has=self._mg_boot[2])
                items["mg_bootstrap"] = (v, boot.getvalue())
            self.store.save_state(items)
            self._checkpoint_version = v

    def _boot_key(self) -> str:
        """What the PageRank bootstrap replicates depend on: graph version, size and settings."""
        c = self.config
        return (f"v={self.graph.version};n={len(self.graph.nodes)};nnz={self.graph.w.nnz};"
                f"rounds={c.graph_bootstrap_rounds};tol={c.graph_bootstrap_tol};seed={c.seed};"
                f"damping={c.pagerank.damping};pr_tol={c.pagerank.tol}")

    def refresh_graph(self) -> int:
        """Bring PageRank up to date (warm start) and persist it with its graph version."""
        with self.lock:
            started = time.perf_counter()
            iterations = self.graph.refresh()
            if iterations:
                self._persist_pagerank()
                if self.on_refresh is not None:
                    self.on_refresh(iterations, time.perf_counter() - started)
            return iterations

    def close(self) -> None:
        """Refresh and persist PageRank, checkpoint the counts, then close: a restart serves identical ranks."""
        self.refresh_graph()
        self.checkpoint()
        self.store.close()

    def _persist_pagerank(self) -> None:
        self.store.save_state({"pagerank": (self.graph.version, self.graph.pr.astype(np.float64).tobytes())})

    # ------------------------------------------------------------------ catalogue
    def resolve(self, name: str, what: str = "model") -> str:
        """id, display name or alias (case-insensitive) -> id, or NotFound with suggestions."""
        key = name.strip()
        if not key:
            raise InvalidArgument(f"{what} is empty: give a model id, name or alias")
        if key in self.pos:
            return key
        low = key.lower()
        if low in self.pos:
            return low
        if low in self.alias:
            return self.alias[low]
        slug = slugify(key)
        if slug in self.pos:
            return slug
        close = difflib.get_close_matches(low, [*self.pos, *self.alias], n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(self.alias.get(c, c)) for c in close)}?" if close else ""
        raise NotFound(f"{what} {name!r} is not in the match graph{hint} (add it with UpsertModel)")

    def upsert(self, record: ModelRecord) -> tuple[ModelRecord, bool]:
        record.validate()
        with self.lock:
            for alias in {a.lower() for a in (record.name, *record.aliases)}:
                owner = self.alias.get(alias, alias if alias in self.pos else None)
                if owner is not None and owner != record.id:
                    raise InvalidArgument(f"name/alias {alias!r} already belongs to model {owner!r}; "
                                          f"choose another alias or update {owner!r}")
            created, node = self.store.upsert_model(record)
            if created:
                self.pos[record.id] = len(self.ids)
                self.ids.append(record.id)
                self.node_of[record.id] = node
                self.graph.add_nodes([node])
                self.stats = np.vstack([self.stats, np.zeros((1, 3), dtype=np.int64)])
            self.alias = self.store.aliases()
            self.names[record.id] = record.name
            self.catalog_version += 1
            self._state = None
        stored = self.store.get_model(record.id)
        assert stored is not None
        return stored, created

    def record_of(self, model_id: str) -> ModelRecord:
        """The stored record, through a small LRU cache (records change only by upsert)."""
        key = (model_id, self.catalog_version)
        rec = self._records.get(key)
        if rec is not None:
            self._records.move_to_end(key)
            return rec
        rec = self.store.get_model(model_id)
        if rec is None:
            raise NotFound(f"model {model_id!r} disappeared from the store")
        self._records[key] = rec
        if len(self._records) > 4096:
            self._records.popitem(last=False)
        return rec

    # ------------------------------------------------------------------ events
    def record_events(self, events: list[MatchEvent]) -> IngestResult:
        """Validate, resolve names, store (idempotent), and update the graph incrementally."""
        if len(events) > self.config.max_batch_events:
            raise InvalidArgument(f"batch has {len(events)} events; send at most "
                                  f"{self.config.max_batch_events} per message")
        resolved: list[MatchEvent] = []
        groups: list[tuple[int, ...]] = []  # matched models as graph indices, per resolved event
        seen: set[str] = set()
        get = self.pos.__getitem__
        with self.lock:
            for i, e in enumerate(events):
                try:
                    e.validate("event")
                except InvalidArgument as exc:  # name the event only on the (rare) error path
                    raise InvalidArgument(exc.message.replace("event", f"events[{i}]", 1)) from None
                if e.event_id in seen:  # repeated within the batch: the first one counts
                    continue
                seen.add(e.event_id)
                try:  # fast path: every name is already a model id
                    idx = tuple(map(get, e.matched))
                    if e.compared or e.clicked:
                        tuple(map(get, e.compared + e.clicked))
                except KeyError:
                    try:
                        e = MatchEvent(e.event_id, e.query, tuple(map(self._resolve_fast, e.matched)),
                                       tuple(map(self._resolve_fast, e.compared)),
                                       tuple(map(self._resolve_fast, e.clicked)), e.timestamp_ms)
                    except NotFound as exc:
                        raise InvalidArgument(f"events[{i}] ({e.event_id}): {exc.message}") from None
                    if len(set(e.matched)) != len(e.matched):
                        raise InvalidArgument(f"events[{i}] ({e.event_id}): matched names the same model twice")
                    idx = tuple(map(get, e.matched))
                resolved.append(e)
                groups.append(idx)
            new, first = self.store.record_events(resolved, unique_ids=True)
            if new:
                if len(new) != len(resolved):  # some were replays: keep the groups of the new ones only
                    fresh = {id(e) for e in new}
                    groups = [g for e, g in zip(resolved, groups) if id(e) in fresh]
                self.graph.version = first + len(new) - 1
                compared = [get(m) for e in new if e.compared for m in e.compared]
                clicked = [get(m) for e in new if e.clicked for m in e.clicked]
                self._apply_events(None, groups, compared, clicked)
                self._state = None
                if self.graph.version - self._checkpoint_version >= self.config.checkpoint_every_events:
                    self.checkpoint()
            return IngestResult(len(events), len(new), len(events) - len(new), self.graph.version)

    def _resolve_fast(self, name: str) -> str:
        if name in self.pos:
            return name
        return self.resolve(name)

    # ------------------------------------------------------------------ scores
    def _signal_rows(self, dim: str) -> list[tuple[str, str, float]]:
        key = (self.catalog_version, dim)
        if self._rows_cache[0] != key:
            self._rows_cache = (key, self.store.signal_values(dim))
        return self._rows_cache[1]

    def _signal_dim(self, dim: str) -> DimensionScores:
        key = (self.catalog_version, len(self.ids))
        hit = self._signal_cache.get(dim)
        if hit and hit[0] == key:
            return hit[1]
        rows = self._signal_rows(dim)
        d = rank.signal_dimension(self.ids, rows, self.config.bootstrap_rounds,
                                  rank.rng_for(self.config.seed, dim))
        self._signal_cache[dim] = (key, d)
        return d

    def _signal_matrix(self, dim: str) -> tuple[list[str], np.ndarray, list[np.ndarray]]:
        """Per model and kind: mean log1p(value) (0 = none), plus each kind's sorted column."""
        rows = [r for r in self._signal_rows(dim) if r[0] in self.pos]
        kinds = sorted({r[1] for r in rows})
        k_of = {k: i for i, k in enumerate(kinds)}
        n, nk = len(self.ids), len(kinds)
        if not rows:
            return kinds, np.zeros((n, nk)), [np.zeros(n) for _ in kinds]
        key = np.array([self.pos[r[0]] * nk + k_of[r[1]] for r in rows], dtype=np.int64)
        v = np.log1p(np.array([r[2] for r in rows], dtype=np.float64))
        sums = np.bincount(key, weights=v, minlength=n * nk)
        cnts = np.bincount(key, minlength=n * nk)
        x = np.divide(sums, cnts, out=np.zeros(n * nk), where=cnts > 0).reshape(n, nk)
        return kinds, x, [np.sort(x[:, c]) for c in range(nk)]

    def _quality_dim(self) -> DimensionScores:
        outcomes = [(o.model_a, o.model_b, o.a_score) for o in self.store.probe_outcomes()]
        external = [(r[0], r[2]) for r in self.store.external_quality_rows()]
        return rank.quality_dimension(self.ids, outcomes, external, self.config.bootstrap_rounds,
                                      rank.rng_for(self.config.seed, "quality"), self.config.bt_prior)

    def _match_graph_dim(self) -> DimensionScores:
        g = self.graph
        rounds = self.config.graph_bootstrap_rounds
        if self._mg_boot is None or self._mg_boot[0] != g.structure_version:
            params = PageRankParams(g.params.damping, self.config.graph_bootstrap_tol, g.params.max_iter)
            reps, has = poisson_replicates(g.w, g.pr, params, rounds, rank.rng_for(self.config.seed, "match_graph"))
            self._mg_boot = (g.structure_version, reps, has)
            self._mg_boot_key = self._boot_key()
        _v, reps, has = self._mg_boot
        d = rank.match_graph_dimension(g.pr, g.degree(), reps, has, self.stats[:, 0])
        # the graph uses its own (smaller) number of rounds: tile to the common replicate count
        if d.reps.shape[0] and d.reps.shape[0] != self.config.bootstrap_rounds:
            idx = np.arange(self.config.bootstrap_rounds) % d.reps.shape[0]
            d = DimensionScores(d.value, d.reps[idx], d.count)
        elif not d.reps.shape[0]:
            d = DimensionScores(d.value, np.tile(d.value, (self.config.bootstrap_rounds, 1)), d.count)
        return d

    def state(self) -> _ScoreState:
        """The current scores of every model, recomputed only when an input changed."""
        with self.lock:
            self.refresh_graph()
            key = (self.catalog_version, self.graph.structure_version, self.probe_version, len(self.ids))
            if self._state is not None and self._state.key == key:
                return self._state
            dims: dict[str, DimensionScores] = {}
            sig = {}
            for d in ("adoption", "ecosystem"):
                dims[d] = self._signal_dim(d)
                sig[d] = self._signal_matrix(d)
            dims["match_graph"] = self._match_graph_dim()
            dims["quality"] = self._quality_dim()
            total = rank.combine(dims, self.config.weights)
            low = total.bounds()[0]
            if self._id_rank.shape[0] != len(self.ids):  # ids only ever grow
                self._id_rank = np.empty(len(self.ids), dtype=np.int64)
                self._id_rank[np.argsort(np.array(self.ids))] = np.arange(len(self.ids))
            id_rank = self._id_rank
            order = np.lexsort((id_rank, -total.value, -low))  # by lower bound, then value, then id
            seq, cat, runs = self.store.data_versions()
            digest = hashlib.blake2b(f"{seq}:{cat}:{runs}:{self.config!r}".encode(), digest_size=8).digest()
            snapshot = int.from_bytes(digest, "big") >> 11  # < 2^53: exact in JSON numbers
            self._state = _ScoreState(key, list(self.ids), dims, total, np.asarray(low), sig, order, snapshot)
            self._fragility_cache.clear()
            return self._state

    def scorecard(self, st: _ScoreState, i: int) -> ScoreCard:
        t = self.stats[i] if i < self.stats.shape[0] else (0, 0, 0)
        return ScoreCard(st.rank.score(i), *(st.dims[d].score(i) for d in DIMENSIONS),
                         times_matched=int(t[0]), times_compared=int(t[1]), times_clicked=int(t[2]),
                         weights=dict(self.config.weights))

    # ------------------------------------------------------------------ GetModel
    def get(self, name: str, explain: bool) -> tuple[ModelRecord, ScoreCard, list[EvidenceRow], int]:
        model_id = self.resolve(name)
        st = self.state()
        i = self.pos[model_id]
        card = self.scorecard(st, i)
        record = self.record_of(model_id)
        return record, card, (self._explain(st, i, record, card) if explain else []), st.snapshot

    def _explain(self, st: _ScoreState, i: int, record: ModelRecord, card: ScoreCard) -> list[EvidenceRow]:
        out: list[EvidenceRow] = []
        for dim, sigs in (("adoption", record.adoption), ("ecosystem", record.ecosystem)):
            kinds, x, cols = st.signal_x[dim]
            n_kinds = max(len(kinds), 1)
            per_kind = {k: [s for s in sigs if s.kind == k] for k in kinds}
            for k in kinds:
                p = _pct_among(x[i, kinds.index(k)], cols[kinds.index(k)], x[i, kinds.index(k)], len(st.ids))
                for s in per_kind[k]:
                    out.append(EvidenceRow(dim, k, f"{k} = {s.value:,.0f}: percentile {p:.2f} among "
                                           f"{len(st.ids)} models (log1p scale)", s.value,
                                           p / n_kinds / len(per_kind[k]), s.source, s.observed_at))
            for k in kinds:
                if not per_kind[k]:
                    out.append(EvidenceRow(dim, k, f"no {k} recorded: counts 0", 0.0, 0.0))
        node = self.node_of[record.id]
        g = self.graph
        gi = g.index[node]
        out.append(EvidenceRow("match_graph", "pagerank",
                               f"PageRank {g.pr[gi]:.3e} on the co-match graph (weighted degree "
                               f"{g.degree()[gi]:.0f}, {card.times_matched} events matched it); "
                               f"percentile {card.match_graph.value:.2f}", float(g.pr[gi]),
                               card.match_graph.value, f"graph version {g.version}"))
        for other, cnt in g.neighbours(node, 10):
            mid = self.ids[g.index[other]]
            out.append(EvidenceRow("match_graph", "co_match", f"co-matched with {self.names.get(mid, mid)} "
                                   f"in {cnt:.0f} searches", cnt, 0.0, "events (co-match counts)"))
        recent = self.store.events_with(record.id, self.config.explain_scan_events)
        queries = Counter(normalise_query(q) for _e, q, _m in recent)
        for q, cnt in sorted(queries.items(), key=lambda t: (-t[1], t[0]))[:5]:
            out.append(EvidenceRow("match_graph", "query", f"query {q!r} matched it {cnt} times (of the last "
                                   f"{len(recent)} events that matched it)", cnt, 0.0, "events"))
        outcomes = [o for o in self.store.probe_outcomes() if record.id in (o.model_a, o.model_b)]
        if outcomes:
            tally: dict[tuple[str, str], list[float]] = {}
            for o in outcomes:
                me_a = o.model_a == record.id
                opp = o.model_b if me_a else o.model_a
                score = o.a_score if me_a else 1 - o.a_score
                tally.setdefault((opp, o.run_id), []).append(score)
            for (opp, run), scores in sorted(tally.items()):
                w = sum(s == 1 for s in scores)
                t = sum(s == 0.5 for s in scores)
                out.append(EvidenceRow("quality", "probe_outcome",
                                       f"vs {self.names.get(opp, opp)}: {w} wins, {t} ties, "
                                       f"{len(scores) - w - t} losses on shared probes", float(np.mean(scores)),
                                       0.0, f"probe run {run}"))
        else:
            for q in record.external_quality:
                out.append(EvidenceRow("quality", "external", f"{q.benchmark}: {q.score:.3f}", q.score,
                                       q.score / max(len(record.external_quality), 1), q.source, q.observed_at))
        total_w = sum(self.config.weights.values())
        for d in DIMENSIONS:
            w = self.config.weights[d] / total_w
            out.append(EvidenceRow("rank", "weight", f"{rank.DIMENSION_LABELS[d]} {card.get(d).value:.3f} x "
                                   f"weight {w:.3f} x 100", w, card.get(d).value * w * 100, "settings"))
        return out

    # ------------------------------------------------------------------ Rank
    def rank(self, capability: str, limit: int, offset: int) -> tuple[list[tuple[str, str, ScoreCard]], int, int]:
        st = self.state()
        order = st.order
        if capability.strip():
            keep = np.zeros(len(st.ids), dtype=bool)
            keep[[self.pos[m] for m in self.store.capability_model_ids(capability) if m in self.pos]] = True
            order = order[keep[order]]
        page = order[offset:offset + limit].tolist()
        rows = [(st.ids[i], self.names.get(st.ids[i], st.ids[i]), self.scorecard(st, i)) for i in page]
        return rows, len(order), st.snapshot

    # ------------------------------------------------------------------ Compare
    def compare(self, name_a: str, name_b: str) -> CompareResult:
        a_id, b_id = self.resolve(name_a, "model a:"), self.resolve(name_b, "model b:")
        if a_id == b_id:
            raise InvalidArgument(f"a and b are the same model ({a_id!r}); compare two different models")
        st = self.state()
        i, j = self.pos[a_id], self.pos[b_id]
        ca, cb = self.scorecard(st, i), self.scorecard(st, j)
        flips, rank_flip = self._fragility(st, i, j)
        thr = self.config.fragility_threshold

        def result(dim: str, d: DimensionScores) -> DimensionResult:
            r = flips.get(dim, 0) if dim != "rank" else rank_flip
            return DimensionResult(dim, ca.get(dim), cb.get(dim), rank.difference(d, i, j), r, 0 < r <= thr)

        rank_res = result("rank", st.rank)
        dims = tuple(result(d, st.dims[d]) for d in ("adoption", "quality", "ecosystem", "match_graph"))
        rec_a, rec_b = self.record_of(a_id), self.record_of(b_id)
        comp = pages.Comparison(
            rec_a, rec_b, ca, cb, rank_res, dims, pages.feature_rows(rec_a, rec_b, ca, cb),
            headline(rec_a.name, rec_b.name, rank_res),
            tuple(verdict(rec_a.name, rec_b.name, rank_res, list(dims), rec_a.pricing, rec_b.pricing)),
            self.graph.version, pages.freshness_note(*self.store.probe_freshness()))
        return CompareResult(comp, pages.markdown(comp), pages.html(comp), st.snapshot)

    # ------------------------------------------------------------------ fragility
    def _fragility(self, st: _ScoreState, i: int, j: int) -> tuple[dict[str, int], int]:
        key = (st.key, i, j)
        if key in self._fragility_cache:
            return self._fragility_cache[key]
        cap = self.config.fragility_max_records
        flips: dict[str, int] = {}
        rank_curves: dict[str, list[float]] = {}
        rank_leader_a = st.rank.value[i] >= st.rank.value[j]
        L, O = (i, j) if rank_leader_a else (j, i)
        graph_skipped = False
        for dim in DIMENSIONS:
            lead_a = st.dims[dim].value[i] >= st.dims[dim].value[j]
            dl, do = (i, j) if lead_a else (j, i)
            curve = self._curve(st, dim, dl, do, cap, stop=True)
            if curve is None:
                flips[dim] = 0 if abs(st.dims[dim].value[i] - st.dims[dim].value[j]) == 0 else -2
                graph_skipped = True
                continue
            flips[dim] = fragility.records_to_flip(curve, dim)
            if (dl, do) == (L, O) and curve[-1] <= 0 and len(curve) > 1:
                curve = self._curve(st, dim, L, O, cap, stop=False) or curve
            elif (dl, do) != (L, O):
                curve = self._curve(st, dim, L, O, cap, stop=False) or [st.dims[dim].value[L] - st.dims[dim].value[O]]
            rank_curves[dim] = curve
        if graph_skipped:
            rank_curves["match_graph"] = [float(st.dims["match_graph"].value[L] - st.dims["match_graph"].value[O])]
        r = fragility.merge_rank_curves(rank_curves, self.config.weights, cap)
        if r == -1 and graph_skipped:
            r = -2
        if len(self._fragility_cache) >= 10_000:  # bounded: pairs are cheap to recompute
            self._fragility_cache.clear()
        self._fragility_cache[key] = (flips, r)
        return flips, r

    def _curve(self, st: _ScoreState, dim: str, L: int, O: int, cap: int, stop: bool) -> list[float] | None:
        if dim in ("adoption", "ecosystem"):
            return self._signal_curve(st, dim, L, O, cap, stop)
        if dim == "quality":
            return self._quality_curve(L, O, st, cap, stop)
        return self._graph_curve(L, O, cap, stop)

    def _signal_curve(self, st: _ScoreState, dim: str, L: int, O: int, cap: int, stop: bool) -> list[float]:
        kinds, x, cols = st.signal_x[dim]
        n = len(st.ids)
        if not kinds:
            return [0.0]
        rows = [(kinds.index(r[1]), float(np.log1p(r[2]))) for r in self.store.signal_rows_for(st.ids[L], dim)]
        xo = x[O]

        def pct(val: float, c: int, self_orig: float, peer: float) -> float:
            if val <= 0:
                return 0.0
            s = cols[c]
            lt = np.searchsorted(s, val, "left") - (x[L, c] < val) - (x[O, c] < val) + (peer < val)
            eq = np.searchsorted(s, val, "right") - np.searchsorted(s, val, "left") \
                - (x[L, c] == val) - (x[O, c] == val) + (peer == val)
            return float((lt + 0.5 * eq) / (n - 1)) if n > 1 else 1.0

        def diff_without(removed: list[object]) -> float:
            gone = set(removed)
            sums = np.zeros(len(kinds))
            cnt = np.zeros(len(kinds))
            for r_i, (k, v) in enumerate(rows):
                if r_i not in gone:
                    sums[k] += v
                    cnt[k] += 1
            xl = np.divide(sums, cnt, out=np.zeros_like(sums), where=cnt > 0)
            pl = np.mean([pct(xl[c], c, x[L, c], xo[c]) for c in range(len(kinds))])
            po = np.mean([pct(xo[c], c, x[O, c], xl[c]) for c in range(len(kinds))])
            return float(pl - po)

        return fragility.greedy_curve(list(range(len(rows))), diff_without, cap, stop)

    def _quality_curve(self, L: int, O: int, st: _ScoreState, cap: int, stop: bool) -> list[float]:
        lid, oid = st.ids[L], st.ids[O]
        outcomes = self.store.probe_outcomes()
        ext = self.store.external_quality_rows()
        # removal candidates, most damaging to L's lead first
        cand: list[tuple[str, int]] = []
        o_idx = list(range(len(outcomes)))
        score_for = lambda k, m: outcomes[k].a_score if outcomes[k].model_a == m else 1 - outcomes[k].a_score  # noqa: E731
        involves = lambda k, m: m in (outcomes[k].model_a, outcomes[k].model_b)  # noqa: E731
        cand += [("o", k) for k in o_idx if involves(k, lid) and involves(k, oid) and score_for(k, lid) == 1]
        cand += [("e", k) for k in sorted((k for k, r in enumerate(ext) if r[0] == lid), key=lambda k: -ext[k][2])]
        cand += [("e", k) for k in sorted((k for k, r in enumerate(ext) if r[0] == oid), key=lambda k: ext[k][2])]
        cand += [("o", k) for k in o_idx if involves(k, lid) and not involves(k, oid) and score_for(k, lid) == 1]
        cand += [("o", k) for k in o_idx if involves(k, oid) and not involves(k, lid) and score_for(k, oid) == 0]
        cand += [("o", k) for k in o_idx if involves(k, lid) and score_for(k, lid) == 0.5]

        def diff_without(removed: list[object]) -> float:
            gone = set(removed)
            outs = [(o.model_a, o.model_b, o.a_score) for k, o in enumerate(outcomes) if ("o", k) not in gone]
            exts = [(r[0], r[2]) for k, r in enumerate(ext) if ("e", k) not in gone and r[0] in (lid, oid)]
            players = sorted({lid, oid} | {o[0] for o in outs} | {o[1] for o in outs})
            d = rank.quality_dimension(players, outs, exts, 0, np.random.default_rng(0), self.config.bt_prior)
            return float(d.value[players.index(lid)] - d.value[players.index(oid)])

        return fragility.prefix_curve(cand, diff_without, cap, stop)

    def _graph_curve(self, L: int, O: int, cap: int, stop: bool) -> list[float] | None:
        g = self.graph
        if g.w.nnz // 2 > self.config.fragility_max_edges:
            return None
        lid, oid = self.ids[L], self.ids[O]
        events = [m.split() for _e, _q, m in self.store.events_with(lid, cap * 20)]
        events = [e for e in events if oid not in e]
        events.sort(key=lambda e: -len(e))
        removable = [tuple(self.pos[m] for m in e) for e in events]
        ia, io_ = g.index[self.node_of[lid]], g.index[self.node_of[oid]]

        def diff_without(removed: list[object]) -> float:
            pr, deg = g.without(removed) if removed else (g.pr, g.degree())  # type: ignore[arg-type]
            pct = rank.midrank_percentile(np.where(deg > 0, pr, 0.0))
            return float(pct[ia] - pct[io_])

        return fragility.prefix_curve(removable, diff_without, cap, stop)

    # ------------------------------------------------------------------ Search
    def search(self, query: str, limit: int) -> tuple[SearchResult, int]:
        return self.searcher.search(query, limit, self.names), self.state().snapshot

    # ------------------------------------------------------------------ probes
    def run_probes(self, models: list[str], max_prompts: int, seed: int,
                   check_cancel: Callable[[], None] = lambda: None) -> tuple[ProbeRun, dict[str, rank.Score]]:
        if self.probe_backend is None:
            raise FailedPrecondition("probes need the model services: set visionlanguage_target and "
                                     "diffusion_target (UNFRAGILE_GRAPH_VISIONLANGUAGE_TARGET / _DIFFUSION_TARGET)")
        served = self.store.serving()
        if models:
            wanted = {self.resolve(m) for m in models}
            not_served = sorted(wanted - {s[0] for s in served})
            if not_served:
                raise InvalidArgument(f"models {not_served} are not served by this deployment "
                                      f"(serving_endpoint is empty); probes run only on served models")
            served = [s for s in served if s[0] in wanted]
        if not served:
            raise FailedPrecondition("no served models to probe: set serving_endpoint on a model record")
        prompts = PROBE_PROMPTS[:max_prompts] if max_prompts else PROBE_PROMPTS
        try:
            run = run_probes(self.probe_backend, served, prompts, seed, self.config.probe_tie_margin, check_cancel)
        except UnfragileError as exc:  # a model service down or too slow: record it, pages say quality is stale
            self.store.record_probe_failure(exc.message)
            raise
        if run.results:
            self.store.add_probe_run(run.run_id, seed, list(prompts), list(run.results), list(run.outcomes))
            with self.lock:
                self.probe_version += 1
                self._state = None
        st = self.state()
        probed = sorted({r.model_id for r in run.results})
        return run, {m: st.dims["quality"].score(self.pos[m]) for m in probed}


def _pct_among(val: float, sorted_col: np.ndarray, self_val: float, n: int) -> float:
    """Mid-rank percentile of ``val`` among a column that contains ``self_val`` once."""
    if val <= 0 or n <= 1:
        return float(val > 0)
    lt = np.searchsorted(sorted_col, val, "left") - (self_val < val)
    eq = np.searchsorted(sorted_col, val, "right") - np.searchsorted(sorted_col, val, "left") - (self_val == val)
    return float((lt + 0.5 * eq) / (n - 1))


__all__ = ["Engine", "EngineConfig", "EvidenceRow", "CompareResult", "IngestResult"]
