"""The match graph's storage interface, shared by the SQLite and PostgreSQL backends.

The store is the single source of truth of the match graph: the catalogue (models,
aliases, tasks, dated readings with their history, capabilities, external quality, search
documents), the search events and the probe results. Events are stored one row each with a UNIQUE event id, so replays
are ignored (idempotent ingest), and their ``seq`` numbers equal commit order, so a reader
tailing ``seq > last`` never skips one. Everything derived from events (co-match counts,
Times Matched, the graph, PageRank) is rebuilt from them; to keep restarts fast the derived
state is checkpointed as versioned snapshot rows (``graph_state``, each tagged with the
event seq it covers and a snapshot version that only grows).

Model rows keep their node number forever (upsert updates in place): node order is the
node order of the in-memory graph, so a rebuild puts every node at the same index and
yields the same matrix, bit for bit, on either backend.
"""

from __future__ import annotations

import itertools
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from graph.records import MatchEvent, ModelRecord
from graph.store.columns import EVENT_COLUMNS as EVENT_COLUMNS
from graph.store.columns import LOCAL_META as LOCAL_META
from graph.store.columns import PORTABLE as PORTABLE
from graph.store.config import StoreConfig as StoreConfig
from graph.store.leadership import Leader as Leader
from graph.store.leadership import LeaderLock as LeaderLock
from graph.store.probe_rows import ProbeOutcomeRow, ProbeResultRow, ProbeRunRow, ProbeScoreRow
from graph.store.rows import FeedbackRow as FeedbackRow

SCHEMA_VERSION = 4
CHANGE_CHANNEL = "matchgraph"  # PostgreSQL NOTIFY channel; the payload is the newest committed event seq
STATE_CHANNEL = "matchgraph_state"  # NOTIFY channel of save_state; the payload is the new snapshot version
# graph_state rows that hold source data rather than state derived from events (e.g. what each
# probe run ran on): ``delete_state()`` keeps them, and their ``seq`` is 0 (they cover no event).
KEPT_STATE = frozenset({"probe_basis"})
Row = tuple[Any, ...]


class DataVersions(NamedTuple):
    """What every score depends on, as counters that only grow: equal versions, equal numbers."""

    seq: int  # the last committed event
    catalogue: int  # catalogue changes (upserts, bulk inserts)
    probe_runs: int  # probe runs stored
    probe_failure_ms: int  # when the latest probe attempt failed (0 = never); pages say so
    feedback: int = 0  # feedback outcomes recorded (success rates read them)


class Heads(NamedTuple):
    """The newest committed event seq and snapshot version: what a reader waits on."""

    seq: int
    state: int


@dataclass(frozen=True)
class PoolStats:
    """Connections of a pooled store: open, checked out, and callers waiting for one."""

    size: int
    in_use: int
    waiting: int


@dataclass(frozen=True)
class StateRow:
    """One derived-state snapshot row: what a reader loads before replaying the event tail."""

    key: str
    seq: int  # the last event seq this state covers
    snapshot: int  # snapshot version: grows by one with every save_state, across all keys
    saved_ms: int
    data: bytes




class Store(ABC):
    """All reads and writes of the match graph's source of truth (see the module docstring).

    Calls that cannot reach the database raise ``common.errors.Unavailable`` with a retry hint.
    """

    url: str  # the db_url it was opened with, password removed

    # ------------------------------------------------------------------ lifecycle
    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def ping(self) -> float:
        """Seconds of one round trip to the database; Unavailable when it cannot be reached."""

    # ------------------------------------------------------------------ catalogue
    @abstractmethod
    def upsert_model(self, record: ModelRecord) -> tuple[bool, int]:
        """Create or replace ``record`` (keeping its node number). Returns (created, node)."""

    @abstractmethod
    def upsert_models(self, records: list[ModelRecord]) -> list[tuple[bool, int]]:
        """``upsert_model`` of every record in one transaction (all or none); (created, node) of each."""

    @abstractmethod
    def bulk_insert_models(self, records: Iterable[ModelRecord]) -> None:
        """Fast path for benchmarks and imports: new models only."""

    @abstractmethod
    def get_model(self, model_id: str) -> ModelRecord | None: ...

    @abstractmethod
    def model_nodes(self) -> list[tuple[int, str]]:
        """(node, id) of every model in node order: the graph's index order."""

    @abstractmethod
    def aliases(self) -> dict[str, str]: ...

    @abstractmethod
    def names(self) -> dict[str, str]: ...

    @abstractmethod
    def serving(self) -> list[tuple[str, str, str]]:
        """(id, serving_endpoint, version) of the models this deployment serves, in node order."""

    @abstractmethod
    def signal_rows(self, dimension: str) -> list[tuple[str, str, float, str, str]]:
        """(model_id, kind, value, source, observed_at): the newest reading of each (model, kind, source) of
        ``dimension`` ("adoption", "ecosystem"), in insertion order."""

    @abstractmethod
    def signal_values(self, dimension: str) -> list[tuple[str, str, float]]:
        """(model_id, kind, value) of the rows of ``signal_rows``."""

    @abstractmethod
    def signal_rows_for(self, model_id: str, dimension: str) -> list[tuple[str, str, float, str, str]]:
        """The rows of ``signal_rows`` for one model."""

    @abstractmethod
    def fact_rows(self) -> list[tuple[str, str, str, str, str]]:
        """(model_id, name, value, source, observed_at): the newest reading of each fact (licence, released,
        last_modified) per (model, source), in insertion order."""

    @abstractmethod
    def observation_history(self, model_id: str) -> list[tuple[str, str, float, str, str, str, str, str]]:
        """Every reading ever stored for a model, old ones included: (dimension, kind, value, text, source,
        observed_at, says, period), by dimension, kind, source and date."""

    @abstractmethod
    def readings_as_of(self) -> str:
        """The newest read date of any stored reading ("" when none): the date time-dependent scores
        (freshness) are evaluated at, so the same data always gives the same numbers."""

    @abstractmethod
    def model_tasks(self) -> dict[str, tuple[str, ...]]:
        """Model id -> its tasks (capability families), for models that list any."""

    @abstractmethod
    def model_types(self) -> dict[str, str]:
        """Model id -> its artifact type ("model", "tool", "api")."""

    @abstractmethod
    def external_quality_rows(self) -> list[tuple[str, str, float, str, str, str, str]]:
        """(model_id, benchmark, score, source, observed_at, task, scale) of every published result."""

    # ------------------------------------------------------------------ search
    @abstractmethod
    def capability_model_ids(self, text: str) -> set[str]:
        """Models with a capability whose title or text matches every (non-stop) word of ``text``."""

    @abstractmethod
    def search_fts(self, text: str, limit: int) -> list[tuple[str, str, float, str]]:
        """(model_id, capability, score, snippet) best first; score is lower = better (BM25 / -ts_rank_cd)."""

    @abstractmethod
    def search_docs(self) -> list[tuple[int, str, str, str, str]]:
        """(id, model_id, capability, title, body) of every search document, by id."""

    # ------------------------------------------------------------------ events
    @abstractmethod
    def record_events(self, events: list[MatchEvent], unique_ids: bool = False) -> tuple[list[MatchEvent], int]:
        """Store the events not seen before, in one transaction; returns (new events, first seq).

        ``events`` must be validated with model ids resolved. Events whose id is already
        stored, or repeated within the batch, are skipped: that is the idempotency
        (``unique_ids=True``: the caller already dropped repeats within the batch). The new
        events get the consecutive seqs ``first, first + 1, ...`` in batch order, and seqs
        equal commit order across concurrent writers.
        """

    @abstractmethod
    def event_count(self) -> int: ...

    @abstractmethod
    def graph_version(self) -> int:
        """The seq of the last committed event: the match graph's version."""

    @abstractmethod
    def _event_chunks(self, columns: str, after_seq: int, batch: int, until: int | None = None) -> Iterator[list[Row]]:
        """Rows of ``columns`` (seq first) of the events with ``after_seq`` < seq <= ``until``, in seq
        order, ``batch`` at a time."""

    def iter_event_chunks(self, after_seq: int = 0, batch: int = 50_000,
                          until_seq: int | None = None) -> Iterator[tuple[int, list[tuple[str, str, str]]]]:
        """(seq of its last event, [(matched, compared, clicked), ...]) per chunk of the events with
        ``after_seq`` < seq <= ``until_seq`` (no upper bound when None), in seq order."""
        for rows in self._event_chunks("seq, matched, compared, clicked", after_seq, batch, until_seq):
            yield int(rows[-1][0]), [(r[1], r[2], r[3]) for r in rows]

    def iter_events(self, after_seq: int = 0, batch: int = 50_000,
                    until_seq: int | None = None) -> Iterator[list[tuple[str, str, str]]]:
        """``iter_event_chunks`` without the seqs."""
        for _last, rows in self.iter_event_chunks(after_seq, batch, until_seq):
            yield rows

    @abstractmethod
    def events_with(self, model_id: str, limit: int = 100_000) -> list[tuple[str, str, str]]:
        """(event_id, query, matched) of the most recent events that matched ``model_id``."""

    def recount_from_events(self) -> tuple[Counter[tuple[int, ...]], Counter[int]]:
        """Re-derive (co-match pair counts by node, matched counts by node) from the events alone."""
        node_of = {i: n for n, i in self.model_nodes()}
        pairs: Counter[tuple[int, ...]] = Counter()
        matched: Counter[int] = Counter()
        for rows in self.iter_events():
            for m, _c, _k in rows:
                nodes = sorted(node_of[x] for x in m.split())
                matched.update(nodes)
                pairs.update(itertools.combinations(nodes, 2))
        return pairs, matched

    def wait_for_change(self, after_seq: int, timeout: float) -> int:
        """Block until an event with seq > ``after_seq`` is committed or ``timeout`` passes; returns the
        newest committed seq. This base version polls every ``change_poll_interval_s``."""
        deadline = time.monotonic() + timeout
        while True:
            seq = self.graph_version()
            remaining = deadline - time.monotonic()
            if seq > after_seq or remaining <= 0:
                return seq
            time.sleep(min(self.poll_interval_s, remaining))

    poll_interval_s: float = 0.2

    @abstractmethod
    def heads(self) -> Heads:
        """The newest committed event seq and snapshot version, read together."""

    def wait_for_news(self, seen: Heads, timeout: float) -> Heads:
        """Block until an event or a snapshot newer than ``seen`` is committed, or ``timeout`` passes;
        returns the newest heads. This base version polls every ``change_poll_interval_s``."""
        deadline = time.monotonic() + timeout
        while True:
            heads = self.heads()
            remaining = deadline - time.monotonic()
            if heads.seq > seen.seq or heads.state > seen.state or remaining <= 0:
                return heads
            time.sleep(min(self.poll_interval_s, remaining))

    def replica_delay_s(self) -> float:
        """Seconds a read-only replica is behind its primary (0 on a primary or when caught up)."""
        return 0.0

    def pool_stats(self) -> PoolStats | None:
        """Connection pool occupancy, or None for a store without a pool (SQLite: one connection)."""
        return None

    # ------------------------------------------------------------------ probes
    @abstractmethod
    def add_probe_run(self, run_id: str, seed: int, prompts: list[str], results: list[ProbeResultRow],
                      outcomes: list[ProbeOutcomeRow], scores: list[ProbeScoreRow] | None = None,
                      skipped: list[str] | None = None) -> None:
        """Store one probe run with its results, pairwise outcomes, per-task mean scores and skip reasons,
        in one transaction."""

    @abstractmethod
    def probe_outcomes(self, include_unscorable: bool = False) -> list[ProbeOutcomeRow]:
        """Stored pairwise outcomes in insertion order: only the scorable ones unless ``include_unscorable``."""

    @abstractmethod
    def probe_results(self, run_id: str | None = None) -> list[ProbeResultRow]:
        """Every stored result (scorable or not) in insertion order, of one run or all."""

    @abstractmethod
    def probe_scores(self, include_unscorable: bool = False) -> list[ProbeScoreRow]:
        """Per-run, per-task mean judged scores in insertion order: only the scorable ones unless asked."""

    @abstractmethod
    def probe_runs(self) -> list[ProbeRunRow]:
        """Every stored probe run, oldest first."""

    @abstractmethod
    def record_probe_failure(self, reason: str) -> None:
        """Remember the latest failed probe attempt (pages state how stale quality is)."""

    @abstractmethod
    def probe_freshness(self) -> tuple[int, int, str]:
        """(last probe run that stored scorable results, ms or 0; last failed attempt ms or 0; its reason)."""

    # ------------------------------------------------------------------ derived state (snapshots)
    @abstractmethod
    def save_state(self, items: dict[str, tuple[int, bytes]]) -> int:
        """Write derived-state blobs (key -> (event seq covered, bytes)) in one transaction; returns the
        new snapshot version they all carry."""

    @abstractmethod
    def load_snapshot(self, key: str) -> StateRow | None: ...

    def load_snapshots(self, keys: Iterable[str]) -> dict[str, StateRow]:
        """The rows of ``keys`` that exist, read together (one statement: rows saved by one save_state
        are seen together or not at all)."""
        return {k: row for k in keys if (row := self.load_snapshot(k)) is not None}

    def load_state(self, key: str) -> tuple[int, bytes] | None:
        """(event seq covered, bytes) of ``key``, or None."""
        row = self.load_snapshot(key)
        return (row.seq, row.data) if row else None

    @abstractmethod
    def state_version(self) -> int:
        """The newest snapshot version (0 before the first save_state)."""

    @abstractmethod
    def delete_state(self, keys: Iterable[str] | None = None) -> None:
        """Drop derived-state rows (every one but ``KEPT_STATE`` when ``keys`` is None): the next load
        replays every event."""

    @abstractmethod
    def data_versions(self) -> DataVersions:
        """What every score depends on, read together (see ``DataVersions``)."""

    # ------------------------------------------------------------------ copying between stores
    @abstractmethod
    def read_rows(self, table: str, batch: int = 10_000) -> Iterator[list[Row]]:
        """Rows of a ``PORTABLE`` table (its columns, in insertion order), in chunks."""

    @abstractmethod
    def replace_rows(self, table: str, rows: Iterable[Row]) -> None:
        """Replace every row of a ``PORTABLE`` table by ``rows`` in one transaction."""

    def read_event_rows(self, after_seq: int, batch: int = 50_000) -> Iterator[list[Row]]:
        """Full event rows (``EVENT_COLUMNS``) with seq > ``after_seq``, in seq order, in chunks."""
        yield from self._event_chunks(", ".join(EVENT_COLUMNS), after_seq, batch)

    @abstractmethod
    def append_event_rows(self, rows: list[Row]) -> int:
        """Insert full event rows keeping their seqs (ignoring stored event ids); returns rows inserted."""

    @abstractmethod
    def event_id_at(self, seq: int) -> str | None: ...

    # ------------------------------------------------------------------ match records and their outcomes
    @abstractmethod
    def capability_records(self) -> list[ModelRecord]:
        """The records of every model with at least one capability, in node order (the intent index's input)."""

    @abstractmethod
    def match_record(self, event_id: str) -> tuple[MatchEvent, FeedbackRow | None] | None:
        """The stored event ``event_id`` with the outcome recorded on it (None: no such event)."""

    @abstractmethod
    def record_feedback(self, row: FeedbackRow) -> tuple[FeedbackRow, bool] | None:
        """Store the outcome of match record ``row.event_id`` in one transaction: (stored row, True) when new,
        (the row stored before, False) when the event already has one (nothing changes), None when there is no
        such event (nothing is written)."""

    @abstractmethod
    def feedback_counts(self) -> dict[str, tuple[int, int]]:
        """{model_id: (successes, trials)} over every recorded outcome, each counted for the models it credits."""

    @abstractmethod
    def outcomes_with(self, model_id: str, limit: int = 100_000) -> list[tuple[str, str, str, str]]:
        """(event_id, query, outcome or "", credited ids space-separated or "") of the most recent events that
        matched ``model_id``, newest first."""

    # ------------------------------------------------------------------ leadership (several writer-capable processes)
    def leader_lock(self, address: str) -> LeaderLock | None:
        """A leadership lock for a candidate writer serving at ``address``; None where the backend has one writer
        by construction (SQLite: one file, one process)."""
        return None

    def leader(self) -> Leader:
        """The leader on record (``Leader(0, "", 0)`` where there is no election)."""
        return Leader(0, "", 0)
