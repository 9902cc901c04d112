"""Snapshots of the event-derived state in the store, and the restart path that reads them back.

A checkpoint ("comatch") holds the co-match edges and the per-model counters as of one graph
version (the seq of the last event it covers). ``load`` is what a restart does: read the
newest checkpoint, then replay the events stored after it through ``MatchCounts.apply``;
the result equals a recount from every event. The PageRank vector is persisted whenever it
is refreshed and adopted only by exactly the graph version it was computed for; the
PageRank bootstrap replicates travel with a checkpoint when they are current.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping

import numpy as np

from graph.counts import MatchCounts, PageRankBootstrap
from graph.store import StateRow, Store

COMATCH, PAGERANK, BOOTSTRAP = "comatch", "pagerank", "mg_bootstrap"


class Checkpoints:
    """Writes and reads the snapshots of ``MatchCounts`` (and of what is derived from its graph)."""

    def __init__(self, store: Store, counts: MatchCounts, bootstrap: PageRankBootstrap,
                 lock: threading.RLock) -> None:
        self.store = store
        self.counts = counts
        self.bootstrap = bootstrap
        self.lock = lock
        self.version = 0  # graph version of the newest checkpoint

    # ------------------------------------------------------------------ writing
    def save(self) -> None:
        """Persist the derived counts so a restart replays little (no PageRank work on this path)."""
        with self.lock:
            g, stats = self.counts.graph, self.counts.stats
            a, b, c = g.upper_edges()
            buf = io.BytesIO()
            np.savez(buf, a=a, b=b, c=c, sn=np.array(g.nodes, dtype=np.int64), sm=stats[:, 0], sc=stats[:, 1],
                     sk=stats[:, 2])
            items = {COMATCH: (g.version, buf.getvalue())}
            boot = self.bootstrap
            if not g.dirty and boot.is_current:
                blob = io.BytesIO()  # the PageRank bootstrap is the slow part of a restart: keep it
                np.savez(blob, key=np.array(boot.key), reps=boot.reps, has=boot.has)
                items[BOOTSTRAP] = (g.version, blob.getvalue())
            self.store.save_state(items)
            self.version = g.version

    def save_pagerank(self) -> None:
        g = self.counts.graph
        self.store.save_state({PAGERANK: (g.version, g.pr.astype(np.float64).tobytes())})

    # ------------------------------------------------------------------ the restart path
    def load(self, nodes: list[int], pos: Mapping[str, int], until_seq: int) -> int:
        """Rebuild the counts from the newest checkpoint plus the events after it, up to ``until_seq``;
        returns the events replayed.

        ``nodes`` are the store nodes in graph order and ``pos`` the dense index of each model id
        (``Catalogue.load``). Afterwards the graph's version is ``until_seq`` and PageRank is the
        persisted vector when it belongs to exactly that version.
        """
        with self.lock:
            since = self.restore(nodes, until_seq)
            replayed = self.replay(since, pos, until_seq)
            self.counts.graph.version = until_seq
            self.version = since
            self.adopt_pagerank()
            return replayed

    def restore(self, nodes: list[int], until_seq: int) -> int:
        """Load the newest checkpoint into the counts; returns its version. Empty (version 0) when there is
        none, or when it covers more than ``until_seq`` events or models that ``nodes`` lacks (a reader
        loading an older snapshot than the writer's last checkpoint)."""
        stats = np.zeros((len(nodes), 3), dtype=np.int64)
        z = np.zeros(0, dtype=np.int64)
        edges, since = (z, z, z), 0
        snap = self.store.load_state(COMATCH)
        if snap is not None and snap[0] <= until_seq:
            arrays = np.load(io.BytesIO(snap[1]))
            known = np.array(nodes, dtype=np.int64)  # nodes ascend
            if np.isin(arrays["sn"], known).all() and np.isin(arrays["a"], known).all() \
                    and np.isin(arrays["b"], known).all():
                edges, since = (arrays["a"], arrays["b"], arrays["c"]), snap[0]
                stats[np.searchsorted(known, arrays["sn"])] = np.column_stack([arrays["sm"], arrays["sc"],
                                                                                arrays["sk"]])
        self.counts.load(nodes, edges, since, stats)
        return since

    def replay(self, after_seq: int, pos: Mapping[str, int], until_seq: int | None = None) -> int:
        """Apply the stored events with ``after_seq`` < seq <= ``until_seq`` (no bound when None) to the
        counts; returns how many. The graph's version follows each chunk applied, so a replay that the
        database interrupts (Unavailable) resumes where it stopped instead of counting a chunk twice."""
        replayed = 0
        for last, rows in self.store.iter_event_chunks(after_seq=after_seq, until_seq=until_seq):
            self.counts.apply_ids([(m.split(), cp.split(), k.split()) for m, cp, k in rows], pos)
            self.counts.graph.version = last
            replayed += len(rows)
        return replayed

    def adopt_pagerank(self, row: StateRow | None = None) -> bool:
        """Take the persisted PageRank vector (``row``, else the stored one) if it was computed for exactly this
        graph; returns whether it did."""
        g = self.counts.graph
        saved = row if row is not None else self.store.load_snapshot(PAGERANK)
        if saved is not None and saved.seq == g.version:
            vec = np.frombuffer(saved.data, dtype=np.float64)
            if vec.shape[0] == len(g.nodes):
                g.set_pagerank(vec)
                return True
        return False

    def adopt_bootstrap(self) -> None:
        """Take the persisted PageRank bootstrap replicates if they belong to the graph as it is now."""
        boot = self.store.load_state(BOOTSTRAP)
        if boot is None or self.counts.graph.dirty:
            return
        arrays = np.load(io.BytesIO(boot[1]))
        if str(arrays["key"]) == self.bootstrap.current_key():
            self.bootstrap.adopt(arrays["reps"], arrays["has"])
