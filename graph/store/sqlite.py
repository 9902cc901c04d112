"""SQLite backend (sqlite-utils, WAL): the embedded, zero-setup default.

One connection, one writer at a time (``BEGIN IMMEDIATE``), so event seqs are commit
order by construction. Durability: WAL with ``synchronous=FULL`` by default, which
fsyncs the WAL at every commit, so an acknowledged event survives power loss;
``sqlite_synchronous=NORMAL`` fsyncs only at checkpoints (survives a process crash, not a
power cut). Search uses FTS5 (porter stemmer, BM25).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import astuple
from pathlib import Path
from typing import Any

import sqlite_utils

from common.errors import Unavailable
from graph.records import MatchEvent, ModelRecord
from graph.store import probe_schema as ps
from graph.store.base import EVENT_COLUMNS, KEPT_STATE, PORTABLE, DataVersions, Heads, Row, StateRow, Store, StoreConfig
from graph.store.catalogue_write import (
    CHILD_TABLES,
    QUALITY_COLUMNS,
    SEARCH_COLUMNS,
    batch_rows,
    insert_sql,
    model_upsert_sql,
)
from graph.store.observations import ReadingQueries, statements, upsert_sql
from graph.store.probe_rows import ProbeOutcomeRow, ProbeResultRow, ProbeRunRow, ProbeScoreRow
from graph.store.rows import (
    chunks,
    event_row,
    now_ms,
    observation_rows_of,
    record_from_json,
    record_to_json,
    search_doc_rows,
    search_words,
    unique_events,
    with_stored_apart,
)
from graph.store.sqlite_records import SqliteMatchRecords
from graph.store.sqlite_schema import (
    FTS_ADD,
    FTS_FORGET,
    FTS_REBUILD,
    LAST_DOC,
    create_schema,
    migrate_schema,
    schema_lock,
)

OBS_UPSERT = upsert_sql("?")


def fts_query(text: str, op: str = "OR") -> str:
    """Free text -> a safe FTS5 query of quoted words (stop words dropped) joined by ``op``.

    Search uses OR (BM25 ranks documents with more of the words first); the Rank
    capability filter uses AND (a capability must mention every word).
    """
    return f" {op} ".join(f'"{w}"' for w in search_words(text))


class SqliteStore(SqliteMatchRecords, ReadingQueries, Store):
    """All reads and writes of the match graph's SQLite database."""

    def __init__(self, path: str | Path, config: StoreConfig | None = None) -> None:
        config = config or StoreConfig()
        self.path = str(path)
        self.url = "sqlite://" if self.path == ":memory:" else f"sqlite:///{self.path}"
        self.obs = statements("?", "rowid")
        self.poll_interval_s = config.change_poll_interval_s
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        self.conn = conn
        self.lock = threading.RLock()  # one writer at a time; sqlite3 connections are not thread-safe
        self.conn.execute(f"PRAGMA synchronous={config.sqlite_synchronous}")
        self.conn.execute("PRAGMA foreign_keys=OFF")
        self.conn.execute("PRAGMA cache_size=-200000")
        with self.lock, schema_lock(self.path):
            # Switching a new file to WAL needs its exclusive lock: under the schema lock, so a process doing
            # so never meets another one mid-write (SQLite answers that lock upgrade "database is locked" at
            # once, without waiting, since waiting could deadlock).
            self.conn.execute("PRAGMA journal_mode=WAL")
            create_schema(self.db)
            migrate_schema(self.conn)

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def _rows(self, sql: str, args: Row = ()) -> list[Any]:
        return self.conn.execute(sql, args).fetchall()

    def ping(self) -> float:
        t = time.perf_counter()
        try:
            self.conn.execute("SELECT 1").fetchone()
        except sqlite3.Error as exc:
            raise Unavailable(f"the MatchGraph database {self.path} cannot be read: {exc}") from exc
        return time.perf_counter() - t

    # ------------------------------------------------------------------ models
    def upsert_model(self, record: ModelRecord) -> tuple[bool, int]:
        return self.upsert_models([record])[0]

    def upsert_models(self, records: list[ModelRecord]) -> list[tuple[bool, int]]:
        rows = batch_rows(records, now_ms())
        ids = [r.id for r in records]
        with self.lock, self._tx():
            self._bump("catalog_seq")
            existing = self._nodes(ids)
            self.conn.executemany(model_upsert_sql("?"), rows.models)
            nodes = self._nodes(ids)
            for batch in chunks(ids, 500):
                marks = ", ".join("?" * len(batch))
                self.conn.execute(FTS_FORGET.format(marks=marks), batch)
                for table in CHILD_TABLES:
                    self.conn.execute(f"DELETE FROM {table} WHERE model_id IN ({marks})", batch)
            last_doc = self.conn.execute(LAST_DOC).fetchone()[0]  # new documents get larger ids
            self.conn.executemany("INSERT OR REPLACE INTO aliases (alias, model_id) VALUES (?, ?)", rows.aliases)
            self.conn.executemany("INSERT INTO tasks (model_id, task) VALUES (?, ?)", rows.tasks)
            self.conn.executemany(OBS_UPSERT, rows.observations)  # older readings are kept
            self.conn.executemany("INSERT INTO capabilities VALUES (?, ?, ?, ?, ?, ?)", rows.capabilities)
            self.conn.executemany(insert_sql("external_quality", QUALITY_COLUMNS, "?"), rows.external_quality)
            self.conn.executemany(insert_sql("search_docs", SEARCH_COLUMNS, "?"), rows.search_docs)
            self.conn.execute(FTS_ADD, (last_doc,))
        return [(r.id not in existing, nodes[r.id]) for r in records]

    def _nodes(self, ids: list[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for batch in chunks(ids, 500):
            out.update((i, int(n)) for i, n in self.conn.execute(
                f"SELECT id, node FROM models WHERE id IN ({', '.join('?' * len(batch))})", batch))
        return out

    def bulk_insert_models(self, records: Iterable[ModelRecord]) -> None:
        now = now_ms()
        with self.lock, self._tx():
            self._bump("catalog_seq")
            last_doc = self.conn.execute(LAST_DOC).fetchone()[0]
            for batch in chunks(records, 10_000):
                self.conn.executemany(
                    "INSERT INTO models (id, name, type, pricing_tier, serving_endpoint, version, record, "
                    "updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(r.id, r.name, r.type, r.pricing.tier, r.serving_endpoint, r.version, record_to_json(r), now)
                     for r in batch])
                self.conn.executemany(OBS_UPSERT, [o for r in batch for o in observation_rows_of(r, now)])
                self.conn.executemany("INSERT INTO tasks (model_id, task) VALUES (?, ?)",
                                      [(r.id, t) for r in batch for t in r.tasks])
                self.conn.executemany("INSERT INTO external_quality (model_id, benchmark, score, source, "
                                      "observed_at, task, scale, says) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                      [(r.id, q.benchmark, q.score, q.source, q.observed_at, q.task, q.scale, q.says)
                                       for r in batch for q in r.external_quality])
                self.conn.executemany("INSERT INTO search_docs (model_id, capability, title, body) VALUES (?, ?, ?, ?)",
                                      [search_doc_rows(r)[0] for r in batch])
            self.conn.execute(FTS_ADD, (last_doc,))

    def get_model(self, model_id: str) -> ModelRecord | None:
        with self.lock:  # the row and the parts stored apart as one write left them
            row = self.conn.execute("SELECT record FROM models WHERE id = ?", (model_id,)).fetchone()
            if not row:
                return None
            return with_stored_apart(record_from_json(row[0]),
                                     self.conn.execute(self.obs["newest_record"], (model_id,)).fetchall(),
                                     self.conn.execute(self.obs["quality_of"], (model_id,)).fetchall())

    def model_nodes(self) -> list[tuple[int, str]]:
        return [(int(n), i) for n, i in self.conn.execute("SELECT node, id FROM models ORDER BY node")]

    def aliases(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT alias, model_id FROM aliases"))

    def names(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT id, name FROM models"))

    def serving(self) -> list[tuple[str, str, str]]:
        return list(self.conn.execute(
            "SELECT id, serving_endpoint, version FROM models WHERE serving_endpoint != '' ORDER BY node"))

    # ------------------------------------------------------------------ search
    def capability_model_ids(self, text: str) -> set[str]:
        q = fts_query(text, "AND")
        if not q:
            return set()
        return {r[0] for r in self.conn.execute(
            "SELECT d.model_id FROM search_docs_fts f JOIN search_docs d ON d.id = f.rowid "
            "WHERE search_docs_fts MATCH ? AND d.capability != ''", (q,))}

    def search_fts(self, text: str, limit: int) -> list[tuple[str, str, float, str]]:
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
        unique = events if unique_ids else unique_events(events)
        now = now_ms()
        with self.lock, self._tx():
            first = self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0] + 1
            before = self.conn.total_changes
            self.conn.executemany(
                "INSERT OR IGNORE INTO events (event_id, query, matched, compared, clicked, ts_ms) "
                "VALUES (?, ?, ?, ?, ?, ?)", [event_row(e, now) for e in unique])
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
        return int(self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])

    def _event_chunks(self, columns: str, after_seq: int, batch: int, until: int | None = None) -> Iterator[list[Row]]:
        last, top = after_seq, (2**63 - 1) if until is None else until
        while rows := self.conn.execute(f"SELECT {columns} FROM events WHERE seq > ? AND seq <= ? ORDER BY seq "
                                        "LIMIT ?", (last, top, batch)).fetchall():
            last = rows[-1][0]
            yield rows

    def events_with(self, model_id: str, limit: int = 100_000) -> list[tuple[str, str, str]]:
        return [(r[0], r[1], r[2]) for r in self.conn.execute(
            "SELECT event_id, query, matched FROM events WHERE ' ' || matched || ' ' LIKE ? "
            "ORDER BY seq DESC LIMIT ?", (f"% {model_id} %", limit))]

    def append_event_rows(self, rows: list[Row]) -> int:
        with self.lock, self._tx():
            before = self.conn.total_changes
            self.conn.executemany(f"INSERT OR IGNORE INTO events ({', '.join(EVENT_COLUMNS)}) "
                                  "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            return self.conn.total_changes - before

    def event_id_at(self, seq: int) -> str | None:
        row = self.conn.execute("SELECT event_id FROM events WHERE seq = ?", (seq,)).fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------------ probes
    def add_probe_run(self, run_id: str, seed: int, prompts: list[str], results: list[ProbeResultRow],
                      outcomes: list[ProbeOutcomeRow], scores: list[ProbeScoreRow] | None = None,
                      skipped: list[str] | None = None) -> None:
        with self.lock, self._tx():
            self.conn.execute("INSERT INTO probe_runs (run_id, started_ms, seed, prompts, skipped) "
                              "VALUES (?, ?, ?, ?, ?)",
                              (run_id, now_ms(), seed, json.dumps(prompts), json.dumps(list(skipped or ()))))
            for table, rows in (("probe_results", results), ("probe_outcomes", outcomes),
                                ("probe_scores", scores or ())):
                self.conn.executemany(ps.insert_sql(table, "?"), [astuple(r) for r in rows])

    def probe_outcomes(self, include_unscorable: bool = False) -> list[ProbeOutcomeRow]:
        return [ps.outcome_from(r) for r in self.conn.execute(ps.select_sql("probe_outcomes", "rowid",
                                                                            include_unscorable))]

    def probe_results(self, run_id: str | None = None) -> list[ProbeResultRow]:
        if run_id is None:
            return [ps.result_from(r) for r in self.conn.execute(ps.select_sql("probe_results", "rowid"))]
        sql = ps.select_sql("probe_results", "rowid").replace(" ORDER BY", " WHERE run_id = ? ORDER BY")
        return [ps.result_from(r) for r in self.conn.execute(sql, (run_id,))]

    def probe_scores(self, include_unscorable: bool = False) -> list[ProbeScoreRow]:
        return [ps.score_from(r) for r in self.conn.execute(ps.select_sql("probe_scores", "rowid",
                                                                          include_unscorable))]

    def probe_runs(self) -> list[ProbeRunRow]:
        return [ps.run_from(r) for r in self.conn.execute(ps.select_sql("probe_runs", "started_ms, rowid"))]

    def record_probe_failure(self, reason: str) -> None:
        value = json.dumps({"at_ms": now_ms(), "reason": reason[:300]})
        with self.lock:
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_probe_failure', ?)", (value,))

    def probe_freshness(self) -> tuple[int, int, str]:
        last_ok = self.conn.execute(ps.LAST_MEASURED).fetchone()[0]
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'last_probe_failure'").fetchone()
        failure: dict[str, int | str] = json.loads(row[0]) if row else {"at_ms": 0, "reason": ""}
        return int(last_ok), int(failure["at_ms"]), str(failure["reason"])

    # ------------------------------------------------------------------ derived state
    def save_state(self, items: dict[str, tuple[int, bytes]]) -> int:
        with self.lock, self._tx():
            snapshot = self._bump("state_seq")
            self.conn.executemany(
                "INSERT OR REPLACE INTO graph_state (key, version, data, snapshot, saved_ms) VALUES (?, ?, ?, ?, ?)",
                [(k, v, d, snapshot, now_ms()) for k, (v, d) in items.items()])
        return snapshot

    def load_snapshot(self, key: str) -> StateRow | None:
        row = self.conn.execute("SELECT key, version, snapshot, saved_ms, data FROM graph_state WHERE key = ?",
                                (key,)).fetchone()
        return StateRow(row[0], int(row[1]), int(row[2]), int(row[3]), bytes(row[4])) if row else None

    def load_snapshots(self, keys: Iterable[str]) -> dict[str, StateRow]:
        wanted = list(keys)
        rows = self.conn.execute(f"SELECT key, version, snapshot, saved_ms, data FROM graph_state WHERE key IN "
                                 f"({', '.join('?' * len(wanted))})", wanted).fetchall()
        return {r[0]: StateRow(r[0], int(r[1]), int(r[2]), int(r[3]), bytes(r[4])) for r in rows}

    def state_version(self) -> int:
        return int(self.conn.execute("SELECT value FROM meta WHERE key = 'state_seq'").fetchone()[0])

    def delete_state(self, keys: Iterable[str] | None = None) -> None:
        with self.lock, self._tx():
            if keys is None:
                kept = sorted(KEPT_STATE)
                self.conn.execute(f"DELETE FROM graph_state WHERE key NOT IN ({', '.join('?' * len(kept))})", kept)
            else:
                self.conn.executemany("DELETE FROM graph_state WHERE key = ?", [(k,) for k in keys])

    def data_versions(self) -> DataVersions:
        row = self.conn.execute(
            "SELECT (SELECT COALESCE(MAX(seq), 0) FROM events), (SELECT value FROM meta WHERE key = 'catalog_seq'), "
            "(SELECT COUNT(*) FROM probe_runs), (SELECT value FROM meta WHERE key = 'last_probe_failure'), "
            "(SELECT value FROM meta WHERE key = 'feedback_seq')").fetchone()
        failure = int(json.loads(row[3])["at_ms"]) if row[3] else 0
        return DataVersions(int(row[0]), int(row[1]), int(row[2]), failure, int(row[4]))

    def heads(self) -> Heads:
        row = self.conn.execute("SELECT (SELECT COALESCE(MAX(seq), 0) FROM events), "
                                "(SELECT value FROM meta WHERE key = 'state_seq')").fetchone()
        return Heads(int(row[0]), int(row[1]))

    # ------------------------------------------------------------------ copying between stores
    def read_rows(self, table: str, batch: int = 10_000) -> Iterator[list[Row]]:
        cur = self.conn.execute(f"SELECT {', '.join(PORTABLE[table])} FROM {table} ORDER BY rowid")
        while rows := cur.fetchmany(batch):
            yield [tuple(r) for r in rows]

    def replace_rows(self, table: str, rows: Iterable[Row]) -> None:
        cols = PORTABLE[table]
        with self.lock, self._tx():
            self.conn.execute(f"DELETE FROM {table}" + (" WHERE key != 'schema_version'" if table == "meta" else ""))
            verb = "INSERT OR REPLACE" if table == "meta" else "INSERT"
            for batch in chunks(rows, 10_000):
                self.conn.executemany(f"{verb} INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                                      batch)
            if table == "search_docs":  # its full-text index follows in one statement
                self.conn.execute(FTS_REBUILD)

    # ------------------------------------------------------------------ helpers
    def _bump(self, key: str) -> int:
        self.conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = ?", (key,))
        return int(self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (the connection is in autocommit mode)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
