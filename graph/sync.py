"""Bringing the in-memory state up to given store versions.

A MatchGraph process normally changes its in-memory state by its own writes (ingest,
upsert, probes). Two cases make it adopt writes it did not apply itself:

- a reader follows the writer: it moves to the versions of each snapshot the writer
  publishes (see ``follower.py``);
- a writer whose reply was lost after its commit (the database connection dropped between
  COMMIT and the answer): the store holds events or catalogue changes the graph lacks, and
  the writer replays that gap as soon as it notices (the next ingest, or its periodic check).

``Sync.synced`` is what the in-memory state reflects; the snapshot id of every answer is
derived from it, so equal ids still mean equal numbers in every process.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from graph.catalogue import Catalogue
from graph.checkpoint import Checkpoints
from graph.counts import MatchCounts
from graph.scoring import Scorer
from graph.store import DataVersions, Store

CATALOGUE_READ_ATTEMPTS = 5


@dataclass(frozen=True)
class Lag:
    """How far the answers of this process are behind the store (all zero for a writer)."""

    events: int = 0  # committed events the answers do not reflect yet
    seconds: float = 0.0  # the oldest of those was committed at least this long ago (or the store is unreachable)
    stale: bool = False  # seconds is past the configured bound (max_staleness_s)
    store_seq: int = 0  # newest committed event seq this process has seen in the store
    publication: int = 0  # store snapshot version of the writer's publication it serves (0 = none)


class Sync:
    """Tracks ``synced`` and replays what the store has beyond it."""

    def __init__(self, store: Store, catalogue: Catalogue, counts: MatchCounts, checkpoints: Checkpoints,
                 scorer: Scorer, lock: threading.RLock) -> None:
        self.store = store
        self.catalogue = catalogue
        self.counts = counts
        self.checkpoints = checkpoints
        self.scorer = scorer
        self.lock = lock
        self.synced = DataVersions(0, 0, 0, 0)

    def read_catalogue(self) -> tuple[list[int], int]:
        """Read the catalogue (a consistent read: no upsert committed in between); returns the store nodes in
        graph order and the catalogue version read."""
        with self.lock:
            version = self.store.data_versions().catalogue
            for _ in range(CATALOGUE_READ_ATTEMPTS):
                nodes = self.catalogue.load()
                after = self.store.data_versions().catalogue
                if after == version:
                    break
                version = after
            return nodes, version

    def reload_catalogue(self) -> int:
        """``read_catalogue`` and a graph node for every model added since; returns the catalogue version."""
        with self.lock:
            nodes, version = self.read_catalogue()
            for node in nodes[len(self.counts.graph.nodes):]:  # the graph's own count: robust to a failed reload
                self.counts.add_model(node)
            return version

    def replay_until(self, seq: int) -> int:
        """Apply the stored events after the graph's version up to ``seq``; returns how many. The catalogue is
        read again first when it changed in the store (an event may name a model added since)."""
        with self.lock:
            g = self.counts.graph
            if seq <= g.version:
                return 0
            catalogue = self.store.data_versions().catalogue
            if catalogue != self.synced.catalogue:
                self.synced = self.synced._replace(catalogue=self.reload_catalogue())
            replayed = self.checkpoints.replay(g.version, self.catalogue.pos, seq)
            g.version = seq  # (every event up to seq is applied now, also when the last ones were not events)
            return replayed

    def advance(self, target: DataVersions) -> bool:
        """Bring the in-memory state to ``target`` (never backwards); returns whether anything changed."""
        with self.lock:
            before = self.synced
            if target.catalogue != before.catalogue:
                self.synced = self.synced._replace(catalogue=self.reload_catalogue())
            if target.seq > self.counts.graph.version:
                self.replay_until(target.seq)
            self.synced = self.synced._replace(seq=self.counts.graph.version)
            if (target.probe_runs, target.probe_failure_ms) != (before.probe_runs, before.probe_failure_ms):
                self.synced = self.synced._replace(probe_runs=target.probe_runs,
                                                   probe_failure_ms=target.probe_failure_ms)
                self.scorer.probes_changed()
            if target.feedback != before.feedback:
                self.synced = self.synced._replace(feedback=target.feedback)
                self.scorer.feedback_changed()
            if self.synced == before:
                return False
            self.scorer.invalidate()
            return True

    def note(self, **changes: int) -> None:
        """Record a write this process made itself (e.g. ``seq=`` after an ingest)."""
        with self.lock:
            self.synced = self.synced._replace(**changes)

    def note_catalogue(self) -> None:
        """After an upsert by this process: the catalogue version it reflects now."""
        self.note(catalogue=self.store.data_versions().catalogue)

    def note_feedback(self) -> None:
        """After an outcome recorded by this process: the feedback version it reflects now."""
        self.note(feedback=self.store.data_versions().feedback)

    def note_probes(self) -> None:
        """After a probe run (or a failed attempt) by this process: the probe versions it reflects now."""
        v = self.store.data_versions()
        self.note(probe_runs=v.probe_runs, probe_failure_ms=v.probe_failure_ms)
