"""PostgreSQL backend on psycopg 3 with a connection pool: the scale-out store.

Ingest is four round trips per message (``pg_copy.copy_new_events``): BEGIN with the
leadership fencing check, ``pg_advisory_xact_lock`` and ``MAX(seq)``; a COPY of the numbered
rows straight into ``events``; NOTIFY with COMMIT. The lock, held from reading ``MAX(seq)`` to
COMMIT, makes seq order equal commit order across concurrent writers, so a reader tailing
``seq > last`` never skips an event. A message holding an event id that is stored already (a
client's retry) fails that COPY on the UNIQUE index and goes the idempotent way instead:
staged, then ``INSERT … SELECT`` of the new rows numbered consecutively, ``ON CONFLICT
DO NOTHING``. One ``NOTIFY matchgraph, '<last seq>'`` per message that inserted anything.
Search is PostgreSQL full text (``tsvector`` + GIN, ``websearch_to_tsquery``, ``ts_rank_cd``).
A server that goes away turns calls into ``Unavailable`` with a retry hint; the pool checks
connections before handing them out. With writer-capable processes electing a leader
(``pg_leader.py``) every write transaction checks the writer's term first (``Fenced``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from graph.records import MatchEvent, ModelRecord
from graph.store.base import (
    KEPT_STATE,
    PORTABLE,
    STATE_CHANNEL,
    DataVersions,
    Heads,
    Leader,
    PoolStats,
    Row,
    StateRow,
    Store,
    StoreConfig,
)
from graph.store.catalogue_write import CHILD_TABLES, QUALITY_COLUMNS, SEARCH_COLUMNS, batch_rows, model_upsert_sql
from graph.store.observations import ReadingQueries, statements, upsert_sql
from graph.store.pg_copy import append_events, copy_new_events, copy_rows, read_table, replace_table, stage_new_events
from graph.store.pg_leader import FENCE, LEADER_ROW, LEADER_SCHEMA, PgLeaderLock
from graph.store.pg_listen import ChangeListener
from graph.store.pg_probes import PgProbes
from graph.store.pg_records import PgMatchRecords
from graph.store.pg_support import (
    DATA_VERSIONS,
    HEADS,
    REPLICA_DELAY,
    SCHEMA,
    SCHEMA_LOCK,
    SEARCH,
    Fenced,
    bump,
    redact,
    translate_errors,
    where,
)
from graph.store.rows import (
    OBSERVATION_COLUMNS,
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

OBS_UPSERT = upsert_sql("%s")


class PgStore(PgMatchRecords, PgProbes, ReadingQueries, Store):
    """All reads and writes of the match graph's PostgreSQL database (see the module docstring)."""

    def __init__(self, url: str, config: StoreConfig | None = None) -> None:
        config = config or StoreConfig()
        self.url = redact(url)
        self.place = where(url)
        self.obs = statements("%s", "rid")
        self.conninfo, self.connect_timeout_s = url, config.pg_connect_timeout_s
        self.term: int | None = None  # leadership term every write is fenced by (None: not fenced; pg_leader.py)
        self.fenced = False  # a write was refused because the term is over
        self.timeout_s = config.pg_pool_timeout_s
        self.poll_interval_s = config.change_poll_interval_s
        self.pool = ConnectionPool(
            url, min_size=config.pg_pool_min_size, max_size=max(config.pg_pool_max_size, config.pg_pool_min_size),
            kwargs={"autocommit": True, "connect_timeout": config.pg_connect_timeout_s},
            check=ConnectionPool.check_connection, timeout=config.pg_pool_timeout_s, name="matchgraph", open=False)
        self.pool.open(wait=False)
        self.listener = ChangeListener(url, config.pg_connect_timeout_s)
        try:
            with self._conn() as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                self.read_only = bool(row and row[0])
                if not self.read_only:  # a hot standby serves the primary's schema as it is
                    with conn.transaction():
                        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                        conn.execute(SCHEMA)
                        conn.execute(LEADER_SCHEMA)
        except BaseException:
            self.pool.close()
            raise

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Row]]:
        try:
            with translate_errors(self.place, self.timeout_s), self.pool.connection() as conn:
                yield conn
        except Fenced:
            self.fenced = True
            raise

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[Row]]:
        with self._conn() as conn, conn.transaction():
            yield conn

    @contextmanager
    def _wtx(self) -> Iterator[psycopg.Connection[Row]]:
        """A write transaction: its first statement is the leadership fencing check when the store has a term."""
        with self._tx() as conn:
            if self.term is not None:
                conn.execute(FENCE, (self.term,))
            yield conn

    def _all(self, sql: str, args: Row = ()) -> list[Row]:
        with self._conn() as conn:
            return conn.execute(sql, args).fetchall()

    def _one(self, sql: str, args: Row = ()) -> Row | None:
        with self._conn() as conn:
            return conn.execute(sql, args).fetchone()

    def _rows(self, sql: str, args: Row = ()) -> list[Any]:
        return self._all(sql, args)

    def _row(self, sql: str, args: Row = ()) -> Row:
        """The first row of a query that always returns one (aggregates, scalar subqueries)."""
        row = self._one(sql, args)
        assert row is not None
        return row

    def _int(self, sql: str, args: Row = ()) -> int:
        return int(self._row(sql, args)[0])

    def close(self) -> None:
        self.listener.close()
        self.pool.close()

    def ping(self) -> float:
        t = time.perf_counter()
        self._one("SELECT 1")
        return time.perf_counter() - t

    # ------------------------------------------------------------------ models
    def upsert_model(self, record: ModelRecord) -> tuple[bool, int]:
        return self.upsert_models([record])[0]

    def upsert_models(self, records: list[ModelRecord]) -> list[tuple[bool, int]]:
        rows = batch_rows(records, now_ms())
        ids = [r.id for r in records]
        with self._wtx() as conn:
            bump(conn, "catalog_seq")
            node_of = "SELECT id, node FROM models WHERE id = ANY(%s)"
            existing = {str(i): int(n) for i, n in conn.execute(node_of, (ids,)).fetchall()}
            cur = conn.cursor()
            cur.executemany(model_upsert_sql("%s"), rows.models)
            nodes = {str(i): int(n) for i, n in conn.execute(node_of, (ids,)).fetchall()}
            for table in CHILD_TABLES:
                cur.execute(f"DELETE FROM {table} WHERE model_id = ANY(%s)", (ids,))
            cur.executemany("INSERT INTO aliases (alias, model_id) VALUES (%s, %s) ON CONFLICT (alias) DO UPDATE "
                            "SET model_id = EXCLUDED.model_id", rows.aliases)
            copy_rows(cur, "tasks", PORTABLE["tasks"], rows.tasks)
            cur.executemany(OBS_UPSERT, rows.observations)  # older readings are kept
            copy_rows(cur, "capabilities", PORTABLE["capabilities"], rows.capabilities)
            copy_rows(cur, "external_quality", QUALITY_COLUMNS, rows.external_quality)
            copy_rows(cur, "search_docs", SEARCH_COLUMNS, rows.search_docs)
        return [(r.id not in existing, nodes[r.id]) for r in records]

    def bulk_insert_models(self, records: Iterable[ModelRecord]) -> None:
        now = now_ms()
        with self._wtx() as conn:
            bump(conn, "catalog_seq")
            cur = conn.cursor()
            for batch in chunks(records, 10_000):
                copy_rows(cur, "models", ("id", "name", "type", "pricing_tier", "serving_endpoint", "version",
                                           "record", "updated_ms"),
                           [(r.id, r.name, r.type, r.pricing.tier, r.serving_endpoint, r.version, record_to_json(r),
                             now) for r in batch])
                copy_rows(cur, "observations", OBSERVATION_COLUMNS,
                          [o for r in batch for o in observation_rows_of(r, now)])
                copy_rows(cur, "tasks", PORTABLE["tasks"], [(r.id, t) for r in batch for t in r.tasks])
                copy_rows(cur, "external_quality", QUALITY_COLUMNS,
                          [(r.id, q.benchmark, q.score, q.source, q.observed_at, q.task, q.scale, q.says)
                           for r in batch for q in r.external_quality])
                copy_rows(cur, "search_docs", ("model_id", "capability", "title", "body"),
                           [search_doc_rows(r)[0] for r in batch])

    def get_model(self, model_id: str) -> ModelRecord | None:
        with self._conn() as conn, conn.transaction():  # the row and the parts stored apart from one snapshot
            row = conn.execute("SELECT record FROM models WHERE id = %s", (model_id,)).fetchone()
            if not row:
                return None
            return with_stored_apart(record_from_json(row[0]),
                                     conn.execute(self.obs["newest_record"], (model_id,)).fetchall(),
                                     conn.execute(self.obs["quality_of"], (model_id,)).fetchall())

    def model_nodes(self) -> list[tuple[int, str]]:
        return [(int(n), i) for n, i in self._all("SELECT node, id FROM models ORDER BY node")]

    def aliases(self) -> dict[str, str]:
        return {str(a): str(m) for a, m in self._all("SELECT alias, model_id FROM aliases")}

    def names(self) -> dict[str, str]:
        return {str(i): str(n) for i, n in self._all("SELECT id, name FROM models")}

    def serving(self) -> list[tuple[str, str, str]]:
        return self._all("SELECT id, serving_endpoint, version FROM models WHERE serving_endpoint <> '' "
                         "ORDER BY node")

    # ------------------------------------------------------------------ search
    def capability_model_ids(self, text: str) -> set[str]:
        words = search_words(text)
        if not words:
            return set()
        return {r[0] for r in self._all("SELECT DISTINCT model_id FROM search_docs WHERE capability <> '' AND "
                                        "tsv @@ websearch_to_tsquery('english', %s)", (" ".join(words),))}

    def search_fts(self, text: str, limit: int) -> list[tuple[str, str, float, str]]:
        words = search_words(text)
        if not words:
            return []
        return [(m, c, float(s), h) for m, c, s, h in self._all(SEARCH, (" or ".join(words), limit))]

    def search_docs(self) -> list[tuple[int, str, str, str, str]]:
        return self._all("SELECT id, model_id, capability, title, body FROM search_docs ORDER BY id")

    # ------------------------------------------------------------------ events
    def record_events(self, events: list[MatchEvent], unique_ids: bool = False) -> tuple[list[MatchEvent], int]:
        unique = events if unique_ids else unique_events(events)
        now = now_ms()
        rows = [event_row(e, now) for e in unique]
        with self._conn() as conn:
            base = copy_new_events(conn, rows, self.term)
        if base is not None:
            return unique, base + 1
        with self._tx() as conn:  # some were stored already: the idempotent way
            base, fresh = stage_new_events(conn.cursor(), rows, self.term)
        return (unique if fresh is None else [e for e in unique if e.event_id in fresh]), base + 1

    def event_count(self) -> int:
        return self._int("SELECT COUNT(*) FROM events")

    def graph_version(self) -> int:
        return self._int("SELECT COALESCE(MAX(seq), 0) FROM events")

    def _event_chunks(self, columns: str, after_seq: int, batch: int, until: int | None = None) -> Iterator[list[Row]]:
        last, top = after_seq, (2**63 - 1) if until is None else until
        while rows := self._all(f"SELECT {columns} FROM events WHERE seq > %s AND seq <= %s ORDER BY seq LIMIT %s",
                                (last, top, batch)):
            last = rows[-1][0]
            yield rows

    def events_with(self, model_id: str, limit: int = 100_000) -> list[tuple[str, str, str]]:
        return self._all("SELECT event_id, query, matched FROM events WHERE ' ' || matched || ' ' LIKE %s "
                         "ORDER BY seq DESC LIMIT %s", (f"% {model_id} %", limit))

    def append_event_rows(self, rows: list[Row]) -> int:
        with self._wtx() as conn:
            return append_events(conn.cursor(), rows)

    def event_id_at(self, seq: int) -> str | None:
        row = self._one("SELECT event_id FROM events WHERE seq = %s", (seq,))
        return row[0] if row else None

    def wait_for_change(self, after_seq: int, timeout: float) -> int:
        """As ``Store.wait_for_change``, woken by NOTIFY; polls while LISTEN is unavailable (standby, outage)."""
        return self.wait_for_news(Heads(after_seq, 2**63 - 1), timeout).seq

    def wait_for_news(self, seen: Heads, timeout: float) -> Heads:
        """As ``Store.wait_for_news``, woken by NOTIFY; polls while LISTEN is unavailable (standby, outage)."""
        heads = self.heads()
        if heads.seq > seen.seq or heads.state > seen.state or timeout <= 0:
            return heads
        deadline = time.monotonic() + timeout
        self.listener.start()
        heads = self.heads()  # LISTEN is in place: later commits are announced (one racing LISTEN: at timeout)
        while heads.seq <= seen.seq and heads.state <= seen.state and (left := deadline - time.monotonic()) > 0:
            self.listener.wait(seen, left, self.poll_interval_s)
            heads = self.heads()
        return heads

    def heads(self) -> Heads:
        row = self._row(HEADS)
        return Heads(int(row[0]), int(row[1]))

    def replica_delay_s(self) -> float:
        """On a hot standby with received but unreplayed WAL: seconds since the last transaction it replayed."""
        return max(0.0, float(self._row(REPLICA_DELAY)[0])) if self.read_only else 0.0

    def pool_stats(self) -> PoolStats:
        stats = self.pool.get_stats()
        size = stats.get("pool_size", 0)
        return PoolStats(size, size - stats.get("pool_available", 0), stats.get("requests_waiting", 0))

    # ------------------------------------------------------------------ derived state
    def save_state(self, items: dict[str, tuple[int, bytes]]) -> int:
        with self._wtx() as conn:
            snapshot = bump(conn, "state_seq")
            conn.cursor().executemany(
                "INSERT INTO graph_state (key, version, snapshot, saved_ms, data) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (key) DO UPDATE SET version = EXCLUDED.version, snapshot = EXCLUDED.snapshot, "
                "saved_ms = EXCLUDED.saved_ms, data = EXCLUDED.data",
                [(k, v, snapshot, now_ms(), d) for k, (v, d) in items.items()])
            conn.execute("SELECT pg_notify(%s, %s)", (STATE_CHANNEL, str(snapshot)))
        return snapshot

    def load_snapshot(self, key: str) -> StateRow | None:
        row = self._one("SELECT key, version, snapshot, saved_ms, data FROM graph_state WHERE key = %s", (key,))
        return StateRow(row[0], int(row[1]), int(row[2]), int(row[3]), bytes(row[4])) if row else None

    def load_snapshots(self, keys: Iterable[str]) -> dict[str, StateRow]:
        rows = self._all("SELECT key, version, snapshot, saved_ms, data FROM graph_state WHERE key = ANY(%s)",
                         (list(keys),))
        return {r[0]: StateRow(r[0], int(r[1]), int(r[2]), int(r[3]), bytes(r[4])) for r in rows}

    def state_version(self) -> int:
        return self._int("SELECT value::bigint FROM meta WHERE key = 'state_seq'")

    def delete_state(self, keys: Iterable[str] | None = None) -> None:
        with self._wtx() as conn:
            if keys is None:
                conn.execute("DELETE FROM graph_state WHERE NOT (key = ANY(%s))", (sorted(KEPT_STATE),))
            else:
                conn.execute("DELETE FROM graph_state WHERE key = ANY(%s)", (list(keys),))

    def data_versions(self) -> DataVersions:
        row = self._row(DATA_VERSIONS)
        failure = int(json.loads(row[3])["at_ms"]) if row[3] else 0
        return DataVersions(int(row[0]), int(row[1]), int(row[2]), failure, int(row[4]))

    # ------------------------------------------------------------------ copying between stores
    def read_rows(self, table: str, batch: int = 10_000) -> Iterator[list[Row]]:
        with self._conn() as conn, conn.transaction():  # one snapshot for the whole table
            yield from read_table(conn, table, batch)

    def replace_rows(self, table: str, rows: Iterable[Row]) -> None:
        with self._wtx() as conn:
            replace_table(conn.cursor(), table, rows)

    def leader_lock(self, address: str) -> PgLeaderLock:  # several writer-capable processes: pg_leader.py
        return PgLeaderLock(self, self.conninfo, self.connect_timeout_s, address)

    def leader(self) -> Leader:
        row = self._one(LEADER_ROW)
        return Leader(int(row[0]), str(row[1]), int(row[2])) if row else Leader(0, "", 0)
