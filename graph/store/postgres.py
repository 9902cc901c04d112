"""PostgreSQL backend on psycopg 3 with a connection pool: the scale-out store.

Events are COPYed into a per-connection staging table, then moved into ``events`` under
``pg_advisory_xact_lock``: holding the lock from reading ``MAX(seq)`` to COMMIT makes seq
order equal commit order across concurrent writers, so a reader tailing ``seq > last``
never skips an event; ``ON CONFLICT (event_id) DO NOTHING`` keeps ingest idempotent. Each
committed batch that inserted anything sends one ``NOTIFY matchgraph, '<last seq>'``.
Search is PostgreSQL full text (``tsvector`` + GIN, ``websearch_to_tsquery``,
``ts_rank_cd``). A server that goes away turns calls into ``Unavailable`` with a retry
hint; the pool checks connections before handing them out and reconnects by itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import astuple

import psycopg
from psycopg_pool import ConnectionPool

from graph.records import MatchEvent, ModelRecord
from graph.store import probe_schema as ps
from graph.store.base import (
    CHANGE_CHANNEL,
    KEPT_STATE,
    PORTABLE,
    STATE_CHANNEL,
    DataVersions,
    Heads,
    PoolStats,
    Row,
    StateRow,
    Store,
    StoreConfig,
)
from graph.store.pg_copy import append_events, copy_rows, read_table, replace_table
from graph.store.pg_listen import ChangeListener
from graph.store.pg_records import PgMatchRecords
from graph.store.pg_support import (
    DATA_VERSIONS,
    EVENTS_LOCK,
    HEADS,
    MOVE,
    REPLICA_DELAY,
    SCHEMA,
    SCHEMA_LOCK,
    SEARCH,
    STAGE,
    redact,
    translate_errors,
    where,
)
from graph.store.probe_rows import ProbeOutcomeRow, ProbeResultRow, ProbeRunRow, ProbeScoreRow
from graph.store.rows import (
    alias_rows,
    chunks,
    event_row,
    now_ms,
    record_from_json,
    record_to_json,
    search_doc_rows,
    search_words,
    signal_rows_of,
    unique_events,
)


class PgStore(PgMatchRecords, Store):
    """All reads and writes of the match graph's PostgreSQL database (see the module docstring)."""

    def __init__(self, url: str, config: StoreConfig | None = None) -> None:
        config = config or StoreConfig()
        self.url = redact(url)
        self.place = where(url)
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
        except BaseException:
            self.pool.close()
            raise

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Row]]:
        with translate_errors(self.place, self.timeout_s), self.pool.connection() as conn:
            yield conn

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[Row]]:
        with self._conn() as conn, conn.transaction():
            yield conn

    def _all(self, sql: str, args: Row = ()) -> list[Row]:
        with self._conn() as conn:
            return conn.execute(sql, args).fetchall()

    def _one(self, sql: str, args: Row = ()) -> Row | None:
        with self._conn() as conn:
            return conn.execute(sql, args).fetchone()

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
        with self._tx() as conn:
            row = conn.execute(
                "INSERT INTO models (id, name, type, pricing_tier, serving_endpoint, version, record, updated_ms) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, "
                "type = EXCLUDED.type, pricing_tier = EXCLUDED.pricing_tier, serving_endpoint = "
                "EXCLUDED.serving_endpoint, version = EXCLUDED.version, record = EXCLUDED.record, "
                "updated_ms = EXCLUDED.updated_ms RETURNING node, (xmax = 0)",
                (record.id, record.name, record.type, record.pricing.tier, record.serving_endpoint, record.version,
                 record_to_json(record), now_ms())).fetchone()
            assert row is not None
            self._bump(conn, "catalog_seq")
            for table in ("aliases", "signals", "capabilities", "external_quality", "search_docs"):
                conn.execute(f"DELETE FROM {table} WHERE model_id = %s", (record.id,))
            cur = conn.cursor()
            cur.executemany("INSERT INTO aliases (alias, model_id) VALUES (%s, %s) ON CONFLICT (alias) DO UPDATE "
                            "SET model_id = EXCLUDED.model_id", alias_rows(record))
            cur.executemany("INSERT INTO signals (model_id, dimension, kind, value, source, observed_at) "
                            "VALUES (%s, %s, %s, %s, %s, %s)", signal_rows_of(record))
            cur.executemany("INSERT INTO capabilities VALUES (%s, %s, %s, %s, %s, %s)",
                            [(record.id, i, c.title, c.description, c.unique, c.vs_alternatives)
                             for i, c in enumerate(record.capabilities)])
            cur.executemany("INSERT INTO external_quality (model_id, benchmark, score, source, observed_at) "
                            "VALUES (%s, %s, %s, %s, %s)",
                            [(record.id, q.benchmark, q.score, q.source, q.observed_at)
                             for q in record.external_quality])
            cur.executemany("INSERT INTO search_docs (model_id, capability, title, body) VALUES (%s, %s, %s, %s)",
                            search_doc_rows(record))
        return bool(row[1]), int(row[0])

    def bulk_insert_models(self, records: Iterable[ModelRecord]) -> None:
        now = now_ms()
        with self._tx() as conn:
            self._bump(conn, "catalog_seq")
            cur = conn.cursor()
            for batch in chunks(records, 10_000):
                copy_rows(cur, "models", ("id", "name", "type", "pricing_tier", "serving_endpoint", "version",
                                           "record", "updated_ms"),
                           [(r.id, r.name, r.type, r.pricing.tier, r.serving_endpoint, r.version, record_to_json(r),
                             now) for r in batch])
                copy_rows(cur, "signals", PORTABLE["signals"], [s for r in batch for s in signal_rows_of(r)])
                copy_rows(cur, "search_docs", ("model_id", "capability", "title", "body"),
                           [search_doc_rows(r)[0] for r in batch])

    def get_model(self, model_id: str) -> ModelRecord | None:
        row = self._one("SELECT record FROM models WHERE id = %s", (model_id,))
        return record_from_json(row[0]) if row else None

    def model_nodes(self) -> list[tuple[int, str]]:
        return [(int(n), i) for n, i in self._all("SELECT node, id FROM models ORDER BY node")]

    def aliases(self) -> dict[str, str]:
        return {str(a): str(m) for a, m in self._all("SELECT alias, model_id FROM aliases")}

    def names(self) -> dict[str, str]:
        return {str(i): str(n) for i, n in self._all("SELECT id, name FROM models")}

    def serving(self) -> list[tuple[str, str, str]]:
        return self._all("SELECT id, serving_endpoint, version FROM models WHERE serving_endpoint <> '' "
                         "ORDER BY node")

    def signal_rows(self, dimension: str) -> list[tuple[str, str, float, str, str]]:
        return self._all("SELECT model_id, kind, value, source, observed_at FROM signals WHERE dimension = %s "
                         "ORDER BY rid", (dimension,))

    def signal_values(self, dimension: str) -> list[tuple[str, str, float]]:
        return self._all("SELECT model_id, kind, value FROM signals WHERE dimension = %s ORDER BY rid", (dimension,))

    def signal_rows_for(self, model_id: str, dimension: str) -> list[tuple[str, str, float, str, str]]:
        return self._all("SELECT model_id, kind, value, source, observed_at FROM signals WHERE model_id = %s "
                         "AND dimension = %s ORDER BY rid", (model_id, dimension))

    def external_quality_rows(self) -> list[tuple[str, str, float, str, str]]:
        return self._all("SELECT model_id, benchmark, score, source, observed_at FROM external_quality ORDER BY rid")

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
        with self._tx() as conn:
            cur = conn.cursor()
            cur.execute(STAGE)
            with cur.copy("COPY events_in (ord, event_id, query, matched, compared, clicked, ts_ms) FROM STDIN") as cp:
                for i, e in enumerate(unique):
                    cp.write_row((i, *event_row(e, now)))
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (EVENTS_LOCK,))  # held until COMMIT
            top = cur.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
            base = int(top[0]) if top else 0
            inserted = cur.execute(MOVE, (base,)).rowcount
            if inserted == len(unique):
                new = unique
            else:
                fresh = {r[0] for r in cur.execute("SELECT event_id FROM events WHERE seq > %s", (base,))}
                new = [e for e in unique if e.event_id in fresh]
            if inserted:
                cur.execute("SELECT pg_notify(%s, %s)", (CHANGE_CHANNEL, str(base + inserted)))
        return new, base + 1

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
        with self._tx() as conn:
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

    # ------------------------------------------------------------------ probes
    def add_probe_run(self, run_id: str, seed: int, prompts: list[str], results: list[ProbeResultRow],
                      outcomes: list[ProbeOutcomeRow], scores: list[ProbeScoreRow] | None = None,
                      skipped: list[str] | None = None) -> None:
        with self._tx() as conn:
            conn.execute("INSERT INTO probe_runs (run_id, started_ms, seed, prompts, skipped) "
                         "VALUES (%s, %s, %s, %s, %s)",
                         (run_id, now_ms(), seed, json.dumps(prompts), json.dumps(list(skipped or ()))))
            cur = conn.cursor()
            for table, rows in (("probe_results", results), ("probe_outcomes", outcomes),
                                ("probe_scores", scores or ())):
                if rows:
                    cur.executemany(ps.insert_sql(table, "%s"), [astuple(r) for r in rows])

    def probe_outcomes(self, include_unscorable: bool = False) -> list[ProbeOutcomeRow]:
        return [ps.outcome_from(r) for r in self._all(ps.select_sql("probe_outcomes", "rid", include_unscorable))]

    def probe_results(self, run_id: str | None = None) -> list[ProbeResultRow]:
        if run_id is None:
            return [ps.result_from(r) for r in self._all(ps.select_sql("probe_results", "rid"))]
        sql = ps.select_sql("probe_results", "rid").replace(" ORDER BY", " WHERE run_id = %s ORDER BY")
        return [ps.result_from(r) for r in self._all(sql, (run_id,))]

    def probe_scores(self, include_unscorable: bool = False) -> list[ProbeScoreRow]:
        return [ps.score_from(r) for r in self._all(ps.select_sql("probe_scores", "rid", include_unscorable))]

    def probe_runs(self) -> list[ProbeRunRow]:
        return [ps.run_from(r) for r in self._all(ps.select_sql("probe_runs", "started_ms, run_id"))]

    def record_probe_failure(self, reason: str) -> None:
        value = json.dumps({"at_ms": now_ms(), "reason": reason[:300]})
        self._all("INSERT INTO meta (key, value) VALUES ('last_probe_failure', %s) ON CONFLICT (key) DO UPDATE "
                  "SET value = EXCLUDED.value RETURNING key", (value,))

    def probe_freshness(self) -> tuple[int, int, str]:
        last_ok = self._int(ps.LAST_MEASURED)
        row = self._one("SELECT value FROM meta WHERE key = 'last_probe_failure'")
        failure: dict[str, int | str] = json.loads(row[0]) if row else {"at_ms": 0, "reason": ""}
        return last_ok, int(failure["at_ms"]), str(failure["reason"])

    # ------------------------------------------------------------------ derived state
    def save_state(self, items: dict[str, tuple[int, bytes]]) -> int:
        with self._tx() as conn:
            snapshot = self._bump(conn, "state_seq")
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
        if keys is None:
            self._all("DELETE FROM graph_state WHERE NOT (key = ANY(%s)) RETURNING key", (sorted(KEPT_STATE),))
        else:
            self._all("DELETE FROM graph_state WHERE key = ANY(%s) RETURNING key", (list(keys),))

    def data_versions(self) -> DataVersions:
        row = self._row(DATA_VERSIONS)
        failure = int(json.loads(row[3])["at_ms"]) if row[3] else 0
        return DataVersions(int(row[0]), int(row[1]), int(row[2]), failure)

    # ------------------------------------------------------------------ copying between stores
    def read_rows(self, table: str, batch: int = 10_000) -> Iterator[list[Row]]:
        with self._conn() as conn, conn.transaction():  # one snapshot for the whole table
            yield from read_table(conn, table, batch)

    def replace_rows(self, table: str, rows: Iterable[Row]) -> None:
        with self._tx() as conn:
            replace_table(conn.cursor(), table, rows)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _bump(conn: psycopg.Connection[Row], key: str) -> int:
        row = conn.execute("UPDATE meta SET value = (value::bigint + 1)::text WHERE key = %s RETURNING value::bigint",
                           (key,)).fetchone()
        assert row is not None
        return int(row[0])
