"""The writer's half of one writer and many readers: a versioned snapshot published after every write.

After each write (RecordMatches, UpsertModel, RunProbes) the publisher wakes; it also wakes
every ``publish_check_s`` when idle. It brings the engine to the store's head (replaying
anything committed but never applied here, e.g. a batch whose reply was lost after its
COMMIT), refreshes PageRank (warm start) and saves, in one transaction, the publication row
``published`` (the data versions the engine now reflects and its model count) with the
PageRank vector when that changed. The transaction sends one NOTIFY on the state channel:
readers wake, replay the event tail up to the published seq and adopt exactly this
PageRank vector, so for the same snapshot id their answers are byte-identical to the
writer's. Bursts of writes are published once (``publish_min_interval_s`` apart). With
several writer-capable processes (``election.py``) each publication names the leadership
term it was made under and the leader's address, so readers know where writes go.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from common.errors import UnfragileError
from graph.checkpoint import PAGERANK
from graph.config import FollowConfig
from graph.engine import Engine
from graph.store import DataVersions, StateRow, Store

log = logging.getLogger(__name__)
PUBLISHED = "published"


@dataclass(frozen=True)
class Publication:
    """One published snapshot: the data versions it reflects and its number of models."""

    versions: DataVersions
    models: int
    snapshot: int = 0  # the store snapshot version it was saved with
    saved_ms: int = 0
    term: int = 0  # the leadership term of the writer that made it (0: no election)
    leader: str = ""  # that writer's address ("" when it did not say)

    def to_bytes(self) -> bytes:
        return json.dumps({**self.versions._asdict(), "models": self.models, "term": self.term,
                           "leader": self.leader}).encode()

    @classmethod
    def from_row(cls, row: StateRow) -> Publication:
        d = json.loads(row.data)
        versions = DataVersions(int(d["seq"]), int(d["catalogue"]), int(d["probe_runs"]), int(d["probe_failure_ms"]),
                                int(d.get("feedback", 0)))
        return cls(versions, int(d["models"]), row.snapshot, row.saved_ms, int(d.get("term", 0)),
                   str(d.get("leader", "")))


def read_publication(store: Store) -> tuple[Publication | None, StateRow | None]:
    """The newest publication and the PageRank row, read together (one statement)."""
    rows = store.load_snapshots((PUBLISHED, PAGERANK))
    pub = rows.get(PUBLISHED)
    return (Publication.from_row(pub) if pub is not None else None), rows.get(PAGERANK)


class Publisher:
    """Publishes the writer's state after every write (see the module docstring)."""

    def __init__(self, engine: Engine, config: FollowConfig, term: int = 0, leader: str = "") -> None:
        self.engine = engine
        self.config = config
        self.term, self.leader = term, leader
        self.wake = threading.Event()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="matchgraph-publish", daemon=True)
        self.published: Publication | None = None
        self._pagerank_key = -1  # graph structure version of the last PageRank vector published
        self.on_publish: Callable[[Publication], None] | None = None  # e.g. metrics

    def start(self) -> None:
        """Publish what was loaded, then publish after every write until ``stop``."""
        self.engine.on_write = self.wake.set
        self.publish()
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)

    def publish(self) -> Publication | None:
        """Catch up with the store, refresh PageRank and save a publication if anything changed; returns it."""
        e = self.engine
        with e.lock:
            e.sync.advance(e.store.data_versions())
            e.refresh_graph(persist=False)
            g = e.graph
            pub = Publication(e.sync.synced, len(g.nodes), term=self.term, leader=self.leader)
            new_pagerank = g.structure_version != self._pagerank_key
            if not new_pagerank and self.published is not None \
                    and (pub.versions, pub.models) == (self.published.versions, self.published.models):
                return None
            items = {PUBLISHED: (pub.versions.seq, pub.to_bytes())}
            if new_pagerank:
                items[PAGERANK] = (g.version, g.pr.astype(np.float64).tobytes())
            snapshot = e.store.save_state(items)
            self._pagerank_key = g.structure_version
            self.published = replace(pub, snapshot=snapshot, saved_ms=int(time.time() * 1000))
        if self.on_publish is not None:
            self.on_publish(self.published)
        return self.published

    def _loop(self) -> None:
        backoff = self.config.publish_check_s
        while not self.stop_event.is_set():
            self.wake.wait(self.config.publish_check_s)
            if self.stop_event.is_set():
                return
            self.wake.clear()
            try:
                self.publish()
                backoff = self.config.publish_check_s
            except UnfragileError as exc:  # e.g. the database is restarting: try again shortly
                log.warning("could not publish the graph snapshot (%s); retrying in %.1fs", exc.message, backoff)
                self.wake.set()
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            self.stop_event.wait(self.config.publish_min_interval_s)
