"""RecordMatches in domain terms: validate a batch, resolve names, store it, apply what was new.

The store is the source of truth and does the idempotency (a UNIQUE event id); only the
events it reports as new reach ``MatchCounts.apply``, so a replayed batch changes nothing.
A checkpoint is written every ``checkpoint_every_events`` new events.

When the store numbers a batch past the graph's version + 1, events were committed that
the graph never applied: a batch whose reply was lost after its COMMIT (the database
connection dropped in between; the client saw UNAVAILABLE and its retry counts those
events as duplicates). That gap is replayed from the store before the new batch is applied.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from common.errors import InvalidArgument, NotFound
from graph.catalogue import Catalogue
from graph.checkpoint import Checkpoints
from graph.config import EngineConfig
from graph.counts import MatchCounts
from graph.records import MatchEvent
from graph.store import Store
from graph.sync import Sync


@dataclass(frozen=True)
class IngestResult:
    received: int
    inserted: int
    duplicates: int
    graph_version: int


class Ingest:
    """Takes batches of match events into the store and the in-memory counts."""

    def __init__(self, store: Store, catalogue: Catalogue, counts: MatchCounts, checkpoints: Checkpoints,
                 config: EngineConfig, lock: threading.RLock, sync: Sync) -> None:
        self.store = store
        self.catalogue = catalogue
        self.counts = counts
        self.checkpoints = checkpoints
        self.config = config
        self.lock = lock
        self.sync = sync

    def record_events(self, events: list[MatchEvent]) -> IngestResult:
        """Validate, resolve names, store (idempotent), and update the graph incrementally."""
        if len(events) > self.config.max_batch_events:
            raise InvalidArgument(f"batch has {len(events)} events; send at most "
                                  f"{self.config.max_batch_events} per message")
        with self.lock:
            resolved, groups = self._resolve(events)
            new, first = self.store.record_events(resolved, unique_ids=True)
            g = self.counts.graph
            if first - 1 > g.version:  # committed before, never applied here: replay the gap first
                self.sync.replay_until(first - 1)
            if new:
                if len(new) != len(resolved):  # some were replays: keep the groups of the new ones only
                    fresh = {id(e) for e in new}
                    groups = [grp for e, grp in zip(resolved, groups) if id(e) in fresh]
                get = self.catalogue.pos.__getitem__
                compared = [get(m) for e in new if e.compared for m in e.compared]
                clicked = [get(m) for e in new if e.clicked for m in e.clicked]
                self.counts.apply(groups, compared, clicked, first + len(new) - 1)
                if g.version - self.checkpoints.version >= self.config.checkpoint_every_events:
                    self.checkpoints.save()
            self.sync.note(seq=g.version)
            return IngestResult(len(events), len(new), len(events) - len(new), g.version)

    def _resolve(self, events: list[MatchEvent]) -> tuple[list[MatchEvent], list[tuple[int, ...]]]:
        """The batch with repeats dropped and names resolved to ids, and each event's matched indices."""
        resolved: list[MatchEvent] = []
        groups: list[tuple[int, ...]] = []  # matched models as graph indices, per resolved event
        seen: set[str] = set()
        get = self.catalogue.pos.__getitem__
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
                e = self._with_ids(i, e)
                idx = tuple(map(get, e.matched))
            resolved.append(e)
            groups.append(idx)
        return resolved, groups

    def _with_ids(self, i: int, e: MatchEvent) -> MatchEvent:
        """``e`` with every model name resolved to its id (the slow path)."""
        ids = self.catalogue.resolve_fast
        try:
            out = MatchEvent(e.event_id, e.query, tuple(map(ids, e.matched)), tuple(map(ids, e.compared)),
                             tuple(map(ids, e.clicked)), e.timestamp_ms)
        except NotFound as exc:
            raise InvalidArgument(f"events[{i}] ({e.event_id}): {exc.message}") from None
        if len(set(out.matched)) != len(out.matched):
            raise InvalidArgument(f"events[{i}] ({e.event_id}): matched names the same model twice")
        return out
