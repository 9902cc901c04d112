"""SQLite store: the single source of truth of the match graph (sqlite-utils, WAL).

The catalogue (models, aliases, signals, capabilities, external quality), the search
events and the probe results are tables here. Match events are stored one row each with
a UNIQUE event id, so replays are ignored (idempotent ingest), and that is the only write
an ingested batch makes: everything else about events -- the co-match counts, "Times
Matched", the networkx graph, the sparse matrix, PageRank -- is derived from the events
table. To make restarts fast the derived counts are checkpointed as one snapshot row
(``graph_state``, tagged with the event seq it covers); a restart loads the snapshot and
replays the events after it, so the result equals a recount from all events (a test
checks this with ``recount_from_events``).

Model rows keep their SQLite rowid forever (upsert = UPDATE, never delete+insert): the
rowid order is the node order of the in-memory graph, so a rebuild after restart puts
every node at the same index and yields the same matrix, bit for bit.
"""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import sqlite_utils

from graph.records import (
    Capability,
    MatchEvent,
    ModelRecord,
    Pricing,
    PricingPlan,
    QualityEvidence,
    Signal,
)

SCHEMA_VERSION = 1


def normalise_query(text: str) -> str:
    """Queries that differ only in case or spacing are the same query node."""
    return " ".join(text.lower().split())


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


class Store:
    """All reads and writes of the match graph's SQLite database."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        self.conn = conn
        self.lock = threading.RLock()  # one writer at a time; sqlite3 connections are not thread-safe
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=OFF")
        self.conn.execute("PRAGMA cache_size=-200000")
        self._create_schema()
        self._migrate()

    # ------------------------------------------------------------------ schema
    def _create_schema(self) -> None:
        db = self.db
        with self.lock:
            if "models" not in db.table_names():
                db["models"].create(
                    {"node": int, "id": str, "name": str, "type": str, "pricing_tier": str,
                     "serving_endpoint": str, "version": str, "record": str, "updated_ms": int},
                    pk="node", not_null={"id", "name", "record"},
                )
                db["models"].create_index(["id"], unique=True)
                db["aliases"].create({"alias": str, "model_id": str}, pk="alias")
                db["signals"].create(
                    {"model_id": str, "dimension": str, "kind": str, "value": float, "source": str,
                     "observed_at": str}
                )
                db["signals"].create_index(["model_id"])
                db["capabilities"].create(
                    {"model_id": str, "position": int, "title": str, "description": str,
                     "unique_note": str, "vs_alternatives": str}, pk=("model_id", "position"),
                )
                db["external_quality"].create(
                    {"model_id": str, "benchmark": str, "score": float, "source": str, "observed_at": str}
                )
                db["external_quality"].create_index(["model_id"])
                # Search documents: one per model (name + aliases) and one per capability.
                db["search_docs"].create(
                    {"id": int, "model_id": str, "capability": str, "title": str, "body": str}, pk="id"
                )
                db["search_docs"].create_index(["model_id"])
                db["search_docs"].enable_fts(["title", "body"], tokenize="porter", create_triggers=True)
                self.conn.execute(
                    "CREATE TABLE events (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, "
                    "query TEXT NOT NULL, matched TEXT NOT NULL, compared TEXT NOT NULL, "
                    "clicked TEXT NOT NULL, ts_ms INTEGER NOT NULL)"
                )
                db["probe_runs"].create({"run_id": str, "started_ms": int, "seed": int, "prompts": str},
                                        pk="run_id")
                db["probe_results"].create(
                    {"run_id": str, "model_id": str, "model_version": str, "prompt": str, "score": float,
                     "detail": str}
                )
                db["probe_outcomes"].create(
                    {"run_id": str, "prompt": str, "model_a": str, "model_b": str, "version_a": str,
                     "version_b": str, "a_score": float}
                )
                db["graph_state"].create({"key": str, "version": int, "data": bytes}, pk="key")
                db["meta"].create({"key": str, "value": str}, pk="key")
                db["meta"].insert({"key": "schema_version", "value": str(SCHEMA_VERSION)})


    def _migrate(self) -> None:
        """Rows later versions rely on, added to databases created before them."""
        with self.lock:
            self.conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('catalog_seq', '0')")

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    # ------------------------------------------------------------------ models
    def upsert_model(self, record: ModelRecord) -> tuple[bool, int]:
        """Create or replace ``record`` (keeping its node number). Returns (created, node)."""
        now = int(time.time() * 1000)
        with self.lock, self._tx():
            row = self.conn.execute("SELECT node FROM models WHERE id = ?", (record.id,)).fetchone()
            values = (record.name, record.type, record.pricing.tier, record.serving_endpoint, record.version,
                      record_to_json(record), now)
            if row is None:
                cur = self.conn.execute(
                    "INSERT INTO models (name, type, pricing_tier, serving_endpoint, version, record, "
                    "updated_ms, id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (*values, record.id))
                node, created = int(cur.lastrowid), True  # type: ignore[arg-type]
            else:
                self.conn.execute(
                    "UPDATE models SET name=?, type=?, pricing_tier=?, serving_endpoint=?, version=?, "
                    "record=?, updated_ms=? WHERE id=?", (*values, record.id))
                node, created = int(row[0]), False
            self._bump("catalog_seq")
            for table in ("aliases", "signals", "capabilities", "external_quality", "search_docs"):
                self.conn.execute(f"DELETE FROM {table} WHERE model_id = ?", (record.id,))
            names = {a.lower() for a in (record.name, *record.aliases)} - {record.id}
            for alias in sorted(names):
                self.conn.execute("INSERT OR REPLACE INTO aliases (alias, model_id) VALUES (?, ?)",
                                  (alias, record.id))
            self.conn.executemany(
                "INSERT INTO signals (model_id, dimension, kind, value, source, observed_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(record.id, dim, s.kind, s.value, s.source, s.observed_at)
                 for dim, sigs in (("adoption", record.adoption), ("ecosystem", record.ecosystem)) for s in sigs],
            )
            self.conn.executemany(
                "INSERT INTO capabilities VALUES (?, ?, ?, ?, ?, ?)",
                [(record.id, i, c.title, c.description, c.unique, c.vs_alternatives)
                 for i, c in enumerate(record.capabilities)],
            )
            self.conn.executemany(
                "INSERT INTO external_quality VALUES (?, ?, ?, ?, ?)",
                [(record.id, q.benchmark, q.score, q.source, q.observed_at) for q in record.external_quality],
            )
            docs = [(record.id, "", record.name, " ".join((record.id, record.name, *record.aliases)))]
            docs += [(record.id, c.title, c.title, " ".join((c.description, c.unique, c.vs_alternatives)))
                     for c in record.capabilities]
            self.conn.executemany(
                "INSERT INTO search_docs (model_id, capability, title, body) VALUES (?, ?, ?, ?)", docs)
        return created, node

    def bulk_insert_models(self, records: Iterable[ModelRecord]) -> None:
        """Fast path for benchmarks and imports: new models only, no capability rows re-deleted."""
        now = int(time.time() * 1000)
        with self.lock, self._tx():
            self._bump("catalog_seq")
            for batch in _chunks(records, 10_000):
                self.conn.executemany(
                    "INSERT INTO models (id, name, type, pricing_tier, serving_endpoint, version, record, "
                    "updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(r.id, r.name, r.type, r.pricing.tier, r.serving_endpoint, r.version, record_to_json(r), now)
                     for r in batch],
                )
                self.conn.executemany(
                    "INSERT INTO signals (model_id, dimension, kind, value, source, observed_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(r.id, dim, s.kind, s.value, s.source, s.observed_at) for r in batch
                     for dim, sigs in (("adoption", r.adoption), ("ecosystem", r.ecosystem)) for s in sigs],
                )
                self.conn.executemany(
                    "INSERT INTO search_docs (model_id, capability, title, body) VALUES (?, ?, ?, ?)",
                    [(r.id, "", r.name, " ".join((r.id, r.name, *r.aliases))) for r in batch],
                )

    def get_model(self, model_id: str) -> ModelRecord | None:
        row = self.conn.execute("SELECT record FROM models WHERE id = ?", (model_id,)).fetchone()
        return record_from_json(row[0]) if row else None

    def model_nodes(self) -> list[tuple[int, str]]:
        """(node, id) of every model in node order: the graph's index order."""
        return [(int(n), i) for n, i in self.conn.execute("SELECT node, id FROM models ORDER BY node")]

    def aliases(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT alias, model_id FROM aliases"))

    def names(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT id, name FROM models"))

    def serving(self) -> list[tuple[str, str, str]]:
        """(id, serving_endpoint, version) of the models this deployment serves."""
        return list(self.conn.execute(
            "SELECT id, serving_endpoint, version FROM models WHERE serving_endpoint != '' ORDER BY node"))

    def signal_rows(self, dimension: str) -> list[tuple[str, str, float, str, str]]:
        """(model_id, kind, value, source, observed_at) of every signal of ``dimension``."""
        return list(self.conn.execute(
            "SELECT model_id, kind, value, source, observed_at FROM signals WHERE dimension = ? "
            "ORDER BY rowid", (dimension,)))

    def signal_values(self, dimension: str) -> list[tuple[str, str, float]]:
        """(model_id, kind, value) of every signal of ``dimension``: what scoring needs, cheaply."""
        return self.conn.execute(
            "SELECT model_id, kind, value FROM signals WHERE dimension = ? ORDER BY rowid", (dimension,)).fetchall()

    def signal_rows_for(self, model_id: str, dimension: str) -> list[tuple[str, str, float, str, str]]:
        """The rows of ``signal_rows`` for one model (indexed lookup)."""
        return list(self.conn.execute(
            "SELECT model_id, kind, value, source, observed_at FROM signals WHERE model_id = ? AND dimension = ? "
            "ORDER BY rowid", (model_id, dimension)))

    def external_quality_rows(self) -> list[tuple[str, str, float, str, str]]:
        return list(self.conn.execute(
            "SELECT model_id, benchmark, score, source, observed_at FROM external_quality ORDER BY rowid"))

    def capability_model_ids(self, text: str) -> set[str]:
        """Models with a capability whose title or text matches ``text`` (FTS5)."""
        q = fts_query(text, "AND")
        if not q:
            return set()
        return {r[0] for r in self.conn.execute(
            "SELECT d.model_id FROM search_docs_fts f JOIN search_docs d ON d.id = f.rowid "
            "WHERE search_docs_fts MATCH ? AND d.capability != ''", (q,))}

    def search_fts(self, text: str, limit: int) -> list[tuple[str, str, float, str]]:
        """(model_id, capability, bm25, snippet) best first; bm25 is lower = better."""
        q = fts_query(text)
        if not q:
            return []
        return list(self.conn.execute(
            "SELECT d.model_id, d.capability, bm25(search_docs_fts, 5.0, 1.0) AS s, "
            "snippet(search_docs_fts, 1, '[', ']', '…', 12) FROM search_docs_fts "
            "JOIN search_docs d ON d.id = search_docs_fts.rowid WHERE search_docs_fts MATCH ? "
            "ORDER BY s, d.id LIMIT ?", (q, limit)))

    def search_docs(self) -> list[tuple[int, str, str, str, str]]:
        return list(self.conn.execute("SELECT id, model_id, capability, title, body FROM search_docs ORDER BY id"))

    # ------------------------------------------------------------------ events
    def record_events(self, events: list[MatchEvent], unique_ids: bool = False) -> tuple[list[MatchEvent], int]:
        """Store the events not seen before, in one transaction; returns (new events, first seq).

        ``events`` must be validated with model ids resolved. Events whose id is already
        stored, or repeated within the batch, are skipped: that is the idempotency
        (``unique_ids=True``: the caller already dropped repeats within the batch).
        """
        unique = events
        if not unique_ids:
            seen: set[str] = set()
            unique = []
            for e in events:
                if e.event_id not in seen:
                    seen.add(e.event_id)
                    unique.append(e)
        now = int(time.time() * 1000)
        with self.lock, self._tx():
            first = self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0] + 1
            before = self.conn.total_changes
            self.conn.executemany(
                "INSERT OR IGNORE INTO events (event_id, query, matched, compared, clicked, ts_ms) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(e.event_id, e.query, " ".join(e.matched), " ".join(e.compared), " ".join(e.clicked),
                  e.timestamp_ms or now) for e in unique],
            )
            inserted = self.conn.total_changes - before
            if inserted == len(unique):
                new = unique  # the common case: nothing was a replay
            else:  # the rows just inserted are exactly those with seq >= first, in batch order
                fresh = {r[0] for r in self.conn.execute("SELECT event_id FROM events WHERE seq >= ?", (first,))}
                new = [e for e in unique if e.event_id in fresh]
        return new, first

    def event_count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def graph_version(self) -> int:
        """The seq of the last stored event: the match graph's version."""
        return int(self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])

    def iter_events(self, after_seq: int = 0, batch: int = 50_000) -> Iterator[list[tuple[str, str, str]]]:
        """(matched, compared, clicked) of the events with seq > ``after_seq``, in seq order, in chunks."""
        last = after_seq
        while True:
            rows = self.conn.execute(
                "SELECT seq, matched, compared, clicked FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (last, batch)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [r[1:] for r in rows]

    def events_with(self, model_id: str, limit: int = 100_000) -> list[tuple[str, str, str]]:
        """(event_id, query, matched) of the most recent events that matched ``model_id`` (a scan)."""
        like = f"% {model_id} %"
        return [tuple(r) for r in self.conn.execute(  # type: ignore[misc]
            "SELECT event_id, query, matched FROM events WHERE ' ' || matched || ' ' LIKE ? "
            "ORDER BY seq DESC LIMIT ?", (like, limit))]

    def recount_from_events(self) -> tuple[Counter, Counter]:
        """Re-derive (co-match pair counts by node, matched counts by node) from the events table alone."""
        node_of = {i: n for n, i in self.model_nodes()}
        pairs: Counter = Counter()
        matched: Counter = Counter()
        for rows in self.iter_events():
            for m, _c, _k in rows:
                nodes = sorted(node_of[x] for x in m.split())
                matched.update(nodes)
                pairs.update(itertools.combinations(nodes, 2))
        return pairs, matched

    # ------------------------------------------------------------------ probes
    def add_probe_run(self, run_id: str, seed: int, prompts: list[str], results: list[ProbeResultRow],
                      outcomes: list[ProbeOutcomeRow]) -> None:
        with self.lock, self._tx():
            self.conn.execute("INSERT INTO probe_runs VALUES (?, ?, ?, ?)",
                              (run_id, int(time.time() * 1000), seed, json.dumps(prompts)))
            self.conn.executemany("INSERT INTO probe_results VALUES (?, ?, ?, ?, ?, ?)",
                                  [(r.run_id, r.model_id, r.model_version, r.prompt, r.score, r.detail)
                                   for r in results])
            self.conn.executemany("INSERT INTO probe_outcomes VALUES (?, ?, ?, ?, ?, ?, ?)",
                                  [(o.run_id, o.prompt, o.model_a, o.model_b, o.version_a, o.version_b,
                                    o.a_score) for o in outcomes])

    def probe_outcomes(self) -> list[ProbeOutcomeRow]:
        return [ProbeOutcomeRow(*r) for r in self.conn.execute(
            "SELECT run_id, prompt, model_a, model_b, version_a, version_b, a_score FROM probe_outcomes "
            "ORDER BY rowid")]

    def probe_results(self, run_id: str | None = None) -> list[ProbeResultRow]:
        sql = "SELECT run_id, model_id, model_version, prompt, score, detail FROM probe_results"
        args: tuple = ()
        if run_id is not None:
            sql, args = sql + " WHERE run_id = ?", (run_id,)
        return [ProbeResultRow(*r) for r in self.conn.execute(sql + " ORDER BY rowid", args)]

    def record_probe_failure(self, reason: str) -> None:
        """Remember the latest failed probe attempt (pages state how stale quality is)."""
        value = json.dumps({"at_ms": int(time.time() * 1000), "reason": reason[:300]})
        with self.lock:
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_probe_failure', ?)", (value,))

    def probe_freshness(self) -> tuple[int, int, str]:
        """(last successful probe run ms or 0, last failed attempt ms or 0, its reason)."""
        last_ok = self.conn.execute("SELECT COALESCE(MAX(started_ms), 0) FROM probe_runs").fetchone()[0]
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'last_probe_failure'").fetchone()
        failure = json.loads(row[0]) if row else {"at_ms": 0, "reason": ""}
        return int(last_ok), int(failure["at_ms"]), str(failure["reason"])

    # ------------------------------------------------------------------ derived state
    def save_state(self, items: dict[str, tuple[int, bytes]]) -> None:
        """Write derived-state blobs (key -> (version, bytes)) in one transaction."""
        with self.lock, self._tx():
            self.conn.executemany("INSERT OR REPLACE INTO graph_state (key, version, data) VALUES (?, ?, ?)",
                                  [(k, v, d) for k, (v, d) in items.items()])

    def load_state(self, key: str) -> tuple[int, bytes] | None:
        row = self.conn.execute("SELECT version, data FROM graph_state WHERE key = ?", (key,)).fetchone()
        return (int(row[0]), bytes(row[1])) if row else None

    def data_versions(self) -> tuple[int, int, int]:
        """(last event seq, catalogue change count, probe runs): what every score depends on."""
        seq = self.graph_version()
        cat = int(self.conn.execute("SELECT value FROM meta WHERE key = 'catalog_seq'").fetchone()[0])
        runs = int(self.conn.execute("SELECT COUNT(*) FROM probe_runs").fetchone()[0])
        return seq, cat, runs

    # ------------------------------------------------------------------ helpers
    def _bump(self, key: str) -> None:
        self.conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = ?", (key,))

    def _tx(self) -> _Transaction:
        return _Transaction(self.conn)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (the connection is in autocommit mode)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def _chunks(items: Iterable, n: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


_WORD = re.compile(r"[\w]+", re.UNICODE)


def fts_query(text: str, op: str = "OR") -> str:
    """Free text -> a safe FTS5 query of quoted words joined by ``op``.

    Search uses OR (BM25 ranks documents with more of the words first); the Rank
    capability filter uses AND (a capability must mention every word).
    """
    words = _WORD.findall(text.lower())[:32]
    return f" {op} ".join(f'"{w}"' for w in words)
