"""The in-memory co-match graph: networkx for structure, a scipy CSR matrix for PageRank.

Both are derived from the store's events (snapshot + replay) and updated incrementally from each
ingested batch (``apply``): the networkx edge weights and the CSR matrix get the same
deltas, and PageRank (``refresh``, run when scores are next read) restarts from the
previous vector (warm start) instead of from the uniform one. A rebuild after restart reads
the same rows in the same node order (model rowid order) and therefore builds the same
matrix; the last PageRank vector is
persisted with the graph version it belongs to, so ranks after a restart are identical
to the ones served before it, not merely close.

``pairs_of`` turns events into co-match counts; it is the one definition of an edge,
used by ingest, by the restart replay and by the robustness "what if these events were
removed" computation alike.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from dataclasses import dataclass

import networkx as nx
import numpy as np
import scipy.sparse as sp

from graph import poisson_draws


@dataclass(frozen=True)
class PageRankParams:
    damping: float = 0.85
    tol: float = 1e-10  # L1 change between iterations at which to stop
    max_iter: int = 1000


def pagerank_power(w: sp.csr_array, start: np.ndarray | None, params: PageRankParams,
                   personalization: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Weighted PageRank of the undirected graph ``w`` (symmetric) by power iteration.

    Same model as ``nx.pagerank`` (dangling mass spread like the teleport vector), so the
    two agree to the tolerance; ``start`` is the warm-start vector. Returns (pr, iterations).
    """
    n = w.shape[0]
    if n == 0:
        return np.zeros(0), 0
    deg = np.asarray(w.sum(axis=1)).ravel()
    inv = np.divide(1.0, deg, out=np.zeros_like(deg), where=deg > 0)
    dangling = deg == 0
    tele = np.full(n, 1.0 / n) if personalization is None else personalization / personalization.sum()
    x = tele.copy() if start is None or start.shape[0] != n else start / start.sum()
    alpha = params.damping
    for it in range(1, params.max_iter + 1):
        y = alpha * (w @ (x * inv)) + (alpha * x[dangling].sum() + (1 - alpha)) * tele
        err = np.abs(y - x).sum()
        x = y
        if err < params.tol:
            return x, it
    return x, params.max_iter


class MatchGraph:
    """Co-match graph over models (dense indices in model-rowid order)."""

    def __init__(self, params: PageRankParams | None = None) -> None:
        self.params = params or PageRankParams()
        self.lock = threading.RLock()
        self.nodes: list[int] = []  # store node (rowid) at each dense index
        self.index: dict[int, int] = {}  # store node -> dense index
        self._g: nx.Graph[int] | None = None  # built on first use, then kept in step by deltas
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._w = sp.csr_array((0, 0), dtype=np.float64)
        self._w_pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # deltas not yet in _w
        self.pr = np.zeros(0)
        self.version = 0  # store graph_version the state reflects
        self.structure_version = 0  # bumps on every change (bootstrap caches key on it)
        self.last_iterations = 0
        self.dirty = False  # nodes or edges changed since PageRank was last computed

    # ------------------------------------------------------------------ building
    def load(self, nodes: list[int], a: np.ndarray, b: np.ndarray, c: np.ndarray, version: int) -> None:
        """Build from co-match counts between store nodes; PageRank is left to ``set_pagerank``/``refresh``."""
        with self.lock:
            self.nodes = list(nodes)
            self.index = {n: i for i, n in enumerate(self.nodes)}
            n = len(self.nodes)
            lookup = np.full((max(self.nodes) + 1) if self.nodes else 1, -1, dtype=np.int64)
            lookup[np.array(self.nodes, dtype=np.int64)] = np.arange(n)
            ia, ib = lookup[a.astype(np.int64)], lookup[b.astype(np.int64)]
            self._w = _symmetric(ia, ib, c.astype(np.float64), n)
            self._w_pending = []
            self._g, self._pending = None, []  # networkx is built from the matrix when first needed
            self.version = version
            self.pr = np.full(n, 1.0 / n) if n else np.zeros(0)
            self.dirty = True
            self.structure_version += 1

    def set_pagerank(self, pr: np.ndarray) -> None:
        """Adopt a persisted PageRank vector computed for exactly this graph."""
        with self.lock:
            self.pr = pr.copy()
            self.dirty = False
            self.last_iterations = 0
            self.structure_version += 1

    def upper_edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(node_a, node_b, count) of every edge once (a < b in dense order), as store nodes."""
        with self.lock:
            up = sp.triu(self.w, k=1).tocoo()
            nodes = np.array(self.nodes, dtype=np.int64)
            return nodes[up.row], nodes[up.col], up.data.astype(np.int64)

    def add_nodes(self, nodes: list[int]) -> None:
        """Append newly created models (rowids grow, so order stays rowid order)."""
        with self.lock:
            new = [n for n in nodes if n not in self.index]
            if not new:
                return
            self._merge()  # pending deltas are sized for the current nodes: merge before growing
            for n in sorted(new):
                self.index[n] = len(self.nodes)
                self.nodes.append(n)
                if self._g is not None:
                    self._g.add_node(self.index[n])
            size = len(self.nodes)
            self._w.resize((size, size))  # type: ignore[arg-type]  # the stubs forbid resize; growing in place is intended
            if self.pr.shape[0]:
                old = self.pr.shape[0]
                self.pr = np.concatenate([self.pr * old / size, np.full(size - old, 1.0 / size)])
            else:
                self.pr = np.full(size, 1.0 / size)
            self.dirty = True
            self.structure_version += 1

    def refresh(self) -> int:
        """Recompute PageRank, warm-started from the last vector, if anything changed.

        Returns the iterations it took (0 when nothing had changed).
        """
        with self.lock:
            if not self.dirty:
                return 0
            self.pr, self.last_iterations = pagerank_power(self.w, self.pr, self.params)
            self.dirty = False
            self.structure_version += 1
            return self.last_iterations

    def apply(self, ia: np.ndarray, ib: np.ndarray, cnt: np.ndarray, version: int) -> None:
        """Add a batch's co-match counts (DENSE index pairs ia < ib, counts) to the graph.

        The matrix and networkx only queue the delta (see ``w`` and ``g``), and PageRank is
        not recomputed here: ``refresh`` does it (warm) when scores are next read, so a
        burst of batches costs one merge and one refresh instead of one per batch.
        """
        with self.lock:
            if len(ia):
                self._w_pending.append((ia, ib, cnt))
                if self._g is not None:
                    self._pending.append((ia, ib, cnt))
                self.dirty = True
                self.structure_version += 1
            self.version = version

    @property
    def w(self) -> sp.csr_array:
        """The symmetric co-match matrix, with every pending delta merged in.

        Ingest only queues its deltas (merging costs O(edges) per merge, so one merge per
        read burst instead of one per batch keeps ingest O(batch)).
        """
        with self.lock:
            self._merge()
            return self._w

    def _merge(self) -> None:
        if self._w_pending:
            ia = np.concatenate([d[0] for d in self._w_pending])
            ib = np.concatenate([d[1] for d in self._w_pending])
            cnt = np.concatenate([d[2] for d in self._w_pending])
            self._w = (self._w + _symmetric(ia, ib, cnt, len(self.nodes))).tocsr()
            self._w_pending = []

    @property
    def g(self) -> nx.Graph[int]:
        """The networkx view (weights = co-match counts), brought up to date with pending deltas.

        Ingest only queues its deltas here, so the hot path pays for the matrix update alone;
        the first reader after a burst applies them all at once (or builds the graph from
        the matrix on first use, e.g. after a restart).
        """
        with self.lock:
            if self._g is None:
                up = sp.triu(self.w, k=1).tocoo()
                g: nx.Graph[int] = nx.Graph()
                g.add_nodes_from(range(len(self.nodes)))
                g.add_weighted_edges_from(zip(up.row.tolist(), up.col.tolist(), up.data.tolist()))
                self._g, self._pending = g, []
            elif self._pending:
                # direct dict access: nx.Graph.add_edge costs ~10x more per edge
                adj = self._g._adj  # type: ignore[attr-defined]  # networkx's adjacency dict; the stubs omit it
                for ia, ib, cnt in self._pending:
                    for u, v, k in zip(ia.tolist(), ib.tolist(), cnt.tolist()):
                        d = adj[u].get(v)
                        if d is None:
                            d = {"weight": k}
                            adj[u][v] = d
                            adj[v][u] = d
                        else:
                            d["weight"] += k
                self._pending = []
            return self._g

    # ------------------------------------------------------------------ queries
    def degree(self) -> np.ndarray:
        """Weighted degree (co-match count) per dense index."""
        return np.asarray(self.w.sum(axis=1)).ravel()

    def neighbours(self, node: int, limit: int = 5) -> list[tuple[int, float]]:
        """(store node, co-match count) of the strongest co-matches of ``node``."""
        with self.lock:
            i = self.index.get(node)
            if i is None:
                return []
            lo, hi = self.w.indptr[i], self.w.indptr[i + 1]  # row i of the CSR matrix
            items = sorted(((float(w), self.nodes[int(j)]) for j, w in
                            zip(self.w.indices[lo:hi], self.w.data[lo:hi]) if w > 0), key=lambda t: (-t[0], t[1]))
            return [(n, w) for w, n in items[:limit]]

    def personalized(self, nodes: list[int]) -> np.ndarray:
        """Personalised PageRank restarting at ``nodes`` (models related to those)."""
        with self.lock:
            p = np.zeros(len(self.nodes))
            for n in nodes:
                if n in self.index:
                    p[self.index[n]] = 1.0
            if not p.any():
                return np.zeros(len(self.nodes))
            pr, _ = pagerank_power(self.w, None, self.params, personalization=p)
            return pr

    def without(self, removed: list[tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray]:
        """(PageRank, weighted degree) if the given events (tuples of dense indices) had not happened."""
        with self.lock:
            pairs = pairs_of(removed)
            w = self.w
            if pairs:
                keys = list(pairs)
                ia = np.array([k[0] for k in keys])
                ib = np.array([k[1] for k in keys])
                cnt = np.array([pairs[k] for k in keys], dtype=np.float64)
                w = (w - _symmetric(ia, ib, cnt, len(self.nodes))).tocsr()
                w.eliminate_zeros()
            pr, _ = pagerank_power(w, self.pr, self.params)
            return pr, np.asarray(w.sum(axis=1)).ravel()

    def to_networkx_pagerank(self) -> np.ndarray:
        """Reference: ``nx.pagerank`` of the networkx graph, as a vector in dense order."""
        d = nx.pagerank(self.g, alpha=self.params.damping, tol=1e-12, max_iter=1000, weight="weight")
        return np.array([d[i] for i in range(len(self.nodes))])


def pair_arrays(events: list[tuple[int, ...]], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Co-match counts of events (tuples of node indices < n) as (a, b, count) arrays, a < b.

    The same edges as ``pairs_of``, computed with numpy per event size (no Python loop
    over pairs): the ingest hot path.
    """
    by_len: dict[int, list[tuple[int, ...]]] = {}
    for ev in events:
        if len(ev) > 1:
            by_len.setdefault(len(ev), []).append(ev)
    keys = []
    for size, evs in by_len.items():
        arr = np.sort(np.array(evs, dtype=np.int64), axis=1)
        ii, jj = np.triu_indices(size, k=1)
        keys.append((arr[:, ii] * n + arr[:, jj]).ravel())
    if not keys:
        z = np.zeros(0, dtype=np.int64)
        return z, z, np.zeros(0)
    uniq, cnt = np.unique(np.concatenate(keys), return_counts=True)
    return uniq // n, uniq % n, cnt.astype(np.float64)


def pairs_of(events: list[tuple[int, ...]]) -> Counter[tuple[int, int]]:
    """Co-match counts of events given as tuples of node indices: one per unordered pair per event."""
    flat: list[tuple[int, int]] = []
    for ev in events:
        if len(ev) == 2:
            a, b = ev
            flat.append((a, b) if a < b else (b, a))
        elif len(ev) > 2:
            flat.extend(itertools.combinations(sorted(ev), 2))
    return Counter(flat)


def _symmetric(ia: np.ndarray, ib: np.ndarray, c: np.ndarray, n: int) -> sp.csr_array:
    rows = np.concatenate([ia, ib])
    cols = np.concatenate([ib, ia])
    data = np.concatenate([c, c])
    return sp.coo_array((data, (rows, cols)), shape=(n, n)).tocsr()


def poisson_replicates(w: sp.csr_array, start: np.ndarray, params: PageRankParams, rounds: int,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap PageRank: each undirected edge's count c is redrawn as Poisson(c).

    This is the Poisson bootstrap over match events, approximating each event as
    contributing to one edge (events that matched 3+ models touch several edges; their
    edges are resampled independently). Each edge's draw in replicate b is tied to the edge
    (``poisson_draws``: the same while its count is), so replicate b of a graph that gained a
    few events is close to replicate b before them and an interval moves with the evidence, not
    with a reshuffled random stream. Every replicate starts from ``start`` (the point estimate):
    the replicates are a function of the graph, that vector and the seed, the same in every
    process. Returns (pr replicates (B, N), degree > 0 mask).
    """
    n = w.shape[0]
    w = w.tocsr()
    w.sort_indices()
    upper = sp.triu(w, k=1).tocoo()
    # map every stored entry of w (both directions) to its undirected edge, once, by the edges' keys
    edges = poisson_draws.edge_keys(upper.row, upper.col)
    rows = np.repeat(np.arange(n), np.diff(w.indptr))
    entry = poisson_draws.edge_keys(rows, w.indices)
    sorter = np.argsort(edges)
    edge_of_entry = sorter[np.searchsorted(edges, entry, sorter=sorter)]
    quantiles = poisson_draws.PoissonQuantiles(upper.data)
    base = int(rng.integers(0, 2**62))
    reps = np.zeros((rounds, n))
    has = np.zeros((rounds, n), dtype=bool)
    for b in range(rounds):
        draws = quantiles(poisson_draws.uniforms(edges, base + b))
        wb = sp.csr_array((draws[edge_of_entry], w.indices, w.indptr), shape=(n, n))
        reps[b], _ = pagerank_power(wb, start, params)
        has[b] = np.asarray(wb.sum(axis=1)).ravel() > 0
    return reps, has
