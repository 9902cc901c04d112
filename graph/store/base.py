"""The match graph's storage interface, shared by the SQLite and PostgreSQL backends.

The store is the single source of truth of the match graph: the catalogue (models,
aliases, signals, capabilities, external quality, search documents), the search events
and the probe results. Events are stored one row each with a UNIQUE event id, so replays
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
import json
import re
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Literal

from pydantic import BaseModel, Field

from graph.records import (
    Capability,
    MatchEvent,
    ModelRecord,
    Pricing,
    PricingPlan,
    QualityEvidence,
    Signal,
)

SCHEMA_VERSION = 2
CHANGE_CHANNEL = "matchgraph"  # PostgreSQL NOTIFY channel; the payload is the newest committed event seq

# PostgreSQL's English stop words (tsearch_data/english.stop): dropped from queries on both
# backends, so "draw a picture" does not match every document that contains "a".
STOP_WORDS = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers
herself it its itself they them their theirs themselves what which who whom this that these those am is are
was were be been being have has had having do does did doing a an the and but if or because as until while
of at by for with about against between into through during before after above below to from up down in out
on off over under again further then once here there when where why how all any both each few more most
other some such no nor not only own same so than too very s t can will just don should now
""".split())
_WORD = re.compile(r"\w+", re.UNICODE)
MAX_QUERY_WORDS = 32


class StoreConfig(BaseModel):
    """Storage knobs of the MatchGraph (the backend itself is chosen by ``db_url``)."""

    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="SQLite: FULL fsyncs the WAL at every commit, so an acknowledged event survives "
        "power loss; NORMAL fsyncs only at checkpoints (faster; survives a process crash, not a power cut).")
    pg_pool_min_size: int = Field(2, ge=1, description="PostgreSQL: connections the pool keeps open.")
    pg_pool_max_size: int = Field(8, ge=1, description="PostgreSQL: most connections the pool opens under load.")
    pg_pool_timeout_s: float = Field(
        5.0, gt=0, description="PostgreSQL: longest wait for a pooled connection; past it (e.g. the server is "
        "down) a call answers UNAVAILABLE with a retry hint instead of hanging.")
    pg_connect_timeout_s: int = Field(3, ge=1, description="PostgreSQL: timeout of each connection attempt.")
    change_poll_interval_s: float = Field(
        0.2, gt=0, description="Polling period of wait_for_change when no LISTEN connection can be used "
        "(SQLite, or PostgreSQL hot standbys and outages).")


def normalise_query(text: str) -> str:
    """Queries that differ only in case or spacing are the same query node."""
    return " ".join(text.lower().split())


def search_words(text: str) -> list[str]:
    """The words of a free-text query that search uses: lower case, stop words dropped."""
    return [w for w in _WORD.findall(text.lower()) if w not in STOP_WORDS][:MAX_QUERY_WORDS]


def record_to_json(record: ModelRecord) -> str:
    return json.dumps(asdict(record), sort_keys=True)


def record_from_json(text: str) -> ModelRecord:
    d = json.loads(text)
    return ModelRecord(
        id=d["id"],
        name=d["name"],
        type=d["type"],
        aliases=tuple(d["aliases"]),
        pricing=Pricing(d["pricing"]["tier"], tuple(PricingPlan(**p) for p in d["pricing"]["plans"])),
        adoption=tuple(Signal(**s) for s in d["adoption"]),
        ecosystem=tuple(Signal(**s) for s in d["ecosystem"]),
        serving_endpoint=d["serving_endpoint"],
        version=d["version"],
        capabilities=tuple(Capability(**c) for c in d["capabilities"]),
        external_quality=tuple(QualityEvidence(**q) for q in d["external_quality"]),
    )


def search_doc_rows(record: ModelRecord) -> list[tuple[str, str, str, str]]:
    """(model_id, capability, title, body) of a record's search documents: its names, then each capability."""
    docs = [(record.id, "", record.name, " ".join((record.id, record.name, *record.aliases)))]
    docs += [(record.id, c.title, c.title, " ".join((c.description, c.unique, c.vs_alternatives)))
             for c in record.capabilities]
    return docs


def signal_rows_of(record: ModelRecord) -> list[tuple[str, str, str, float, str, str]]:
    """(model_id, dimension, kind, value, source, observed_at) of a record's signals."""
    return [(record.id, dim, s.kind, s.value, s.source, s.observed_at)
            for dim, sigs in (("adoption", record.adoption), ("ecosystem", record.ecosystem)) for s in sigs]


def event_row(e: MatchEvent, now_ms: int) -> tuple[str, str, str, str, str, int]:
    """(event_id, query, matched, compared, clicked, ts_ms) as stored (id lists space-separated)."""
    return (e.event_id, e.query, " ".join(e.matched), " ".join(e.compared), " ".join(e.clicked),
            e.timestamp_ms or now_ms)


def unique_events(events: list[MatchEvent]) -> list[MatchEvent]:
    """``events`` without repeats of an event id (the first one counts)."""
    seen: set[str] = set()
    out = []
    for e in events:
        if e.event_id not in seen:
            seen.add(e.event_id)
            out.append(e)
    return out


def now_ms() -> int:
    return int(time.time() * 1000)


def chunks(items: Iterable, n: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


@dataclass(frozen=True)
class ProbeOutcomeRow:
    run_id: str
    prompt: str
    model_a: str
    model_b: str
    version_a: str
    version_b: str
    a_score: float  # 1 a won, 0 b won, 0.5 tie


@dataclass(frozen=True)
class ProbeResultRow:
    run_id: str
    model_id: str
    model_version: str
    prompt: str
    score: float
    detail: str


@dataclass(frozen=True)
class StateRow:
    """One derived-state snapshot row: what a reader loads before replaying the event tail."""

    key: str
    seq: int  # the last event seq this state covers
    snapshot: int  # snapshot version: grows by one with every save_state, across all keys
    saved_ms: int
    data: bytes


# Columns copied by ``unfragile graph migrate``, per table, in the order both backends store them.
# Rows are read and written in insertion order (rowid / serial id), which scoring depends on.
PORTABLE: dict[str, tuple[str, ...]] = {
    "models": ("node", "id", "name", "type", "pricing_tier", "serving_endpoint", "version", "record", "updated_ms"),
    "aliases": ("alias", "model_id"),
    "signals": ("model_id", "dimension", "kind", "value", "source", "observed_at"),
    "capabilities": ("model_id", "position", "title", "description", "unique_note", "vs_alternatives"),
    "external_quality": ("model_id", "benchmark", "score", "source", "observed_at"),
    "search_docs": ("id", "model_id", "capability", "title", "body"),
    "probe_runs": ("run_id", "started_ms", "seed", "prompts"),
    "probe_results": ("run_id", "model_id", "model_version", "prompt", "score", "detail"),
    "probe_outcomes": ("run_id", "prompt", "model_a", "model_b", "version_a", "version_b", "a_score"),
    "graph_state": ("key", "version", "snapshot", "saved_ms", "data"),
    "meta": ("key", "value"),
}
EVENT_COLUMNS = ("seq", "event_id", "query", "matched", "compared", "clicked", "ts_ms")
LOCAL_META = frozenset({"schema_version"})  # meta rows that describe one database, never copied


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
        """(model_id, kind, value, source, observed_at) of every signal of ``dimension``, in insertion order."""

    @abstractmethod
    def signal_values(self, dimension: str) -> list[tuple[str, str, float]]:
        """(model_id, kind, value) of every signal of ``dimension``, in insertion order."""

    @abstractmethod
    def signal_rows_for(self, model_id: str, dimension: str) -> list[tuple[str, str, float, str, str]]:
        """The rows of ``signal_rows`` for one model."""

    @abstractmethod
    def external_quality_rows(self) -> list[tuple[str, str, float, str, str]]: ...

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
    def iter_events(self, after_seq: int = 0, batch: int = 50_000) -> Iterator[list[tuple[str, str, str]]]:
        """(matched, compared, clicked) of the events with seq > ``after_seq``, in seq order, in chunks."""

    @abstractmethod
    def events_with(self, model_id: str, limit: int = 100_000) -> list[tuple[str, str, str]]:
        """(event_id, query, matched) of the most recent events that matched ``model_id``."""

    def recount_from_events(self) -> tuple[Counter, Counter]:
        """Re-derive (co-match pair counts by node, matched counts by node) from the events alone."""
        node_of = {i: n for n, i in self.model_nodes()}
        pairs: Counter = Counter()
        matched: Counter = Counter()
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

    # ------------------------------------------------------------------ probes
    @abstractmethod
    def add_probe_run(self, run_id: str, seed: int, prompts: list[str], results: list[ProbeResultRow],
                      outcomes: list[ProbeOutcomeRow]) -> None: ...

    @abstractmethod
    def probe_outcomes(self) -> list[ProbeOutcomeRow]: ...

    @abstractmethod
    def probe_results(self, run_id: str | None = None) -> list[ProbeResultRow]: ...

    @abstractmethod
    def record_probe_failure(self, reason: str) -> None:
        """Remember the latest failed probe attempt (pages state how stale quality is)."""

    @abstractmethod
    def probe_freshness(self) -> tuple[int, int, str]:
        """(last successful probe run ms or 0, last failed attempt ms or 0, its reason)."""

    # ------------------------------------------------------------------ derived state (snapshots)
    @abstractmethod
    def save_state(self, items: dict[str, tuple[int, bytes]]) -> int:
        """Write derived-state blobs (key -> (event seq covered, bytes)) in one transaction; returns the
        new snapshot version they all carry."""

    @abstractmethod
    def load_snapshot(self, key: str) -> StateRow | None: ...

    def load_state(self, key: str) -> tuple[int, bytes] | None:
        """(event seq covered, bytes) of ``key``, or None."""
        row = self.load_snapshot(key)
        return (row.seq, row.data) if row else None

    @abstractmethod
    def state_version(self) -> int:
        """The newest snapshot version (0 before the first save_state)."""

    @abstractmethod
    def delete_state(self, keys: Iterable[str] | None = None) -> None:
        """Drop derived-state rows (all when ``keys`` is None): the next load replays every event."""

    @abstractmethod
    def data_versions(self) -> tuple[int, int, int]:
        """(last event seq, catalogue change count, probe runs): what every score depends on."""

    # ------------------------------------------------------------------ copying between stores
    @abstractmethod
    def read_rows(self, table: str, batch: int = 10_000) -> Iterator[list[tuple]]:
        """Rows of a ``PORTABLE`` table (its columns, in insertion order), in chunks."""

    @abstractmethod
    def replace_rows(self, table: str, rows: Iterable[tuple]) -> None:
        """Replace every row of a ``PORTABLE`` table by ``rows`` in one transaction."""

    @abstractmethod
    def read_event_rows(self, after_seq: int, batch: int = 50_000) -> Iterator[list[tuple]]:
        """Full event rows (``EVENT_COLUMNS``) with seq > ``after_seq``, in seq order, in chunks."""

    @abstractmethod
    def append_event_rows(self, rows: list[tuple]) -> int:
        """Insert full event rows keeping their seqs (ignoring stored event ids); returns rows inserted."""

    @abstractmethod
    def event_id_at(self, seq: int) -> str | None: ...
