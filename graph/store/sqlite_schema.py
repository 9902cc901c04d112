"""The SQLite schema of ``SqliteStore``: tables, indexes, the FTS5 search index, and upgrades of older files."""

from __future__ import annotations

import fcntl
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import sqlite_utils

from graph.store.base import SCHEMA_VERSION
from graph.store.probe_schema import sqlite_upgrade

_SCHEMA = """
CREATE TABLE events (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, query TEXT NOT NULL,
  matched TEXT NOT NULL, compared TEXT NOT NULL, clicked TEXT NOT NULL, ts_ms INTEGER NOT NULL);
CREATE TABLE graph_state (key TEXT PRIMARY KEY, version INTEGER NOT NULL, data BLOB NOT NULL,
  snapshot INTEGER NOT NULL DEFAULT 0, saved_ms INTEGER NOT NULL DEFAULT 0);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
"""
# Dated readings, history kept (graph/store/observations.py); the unique key makes a re-read of the
# same page on the same day a correction, and serves the "newest reading" lookups.
OBSERVATIONS = """
CREATE TABLE IF NOT EXISTS observations (model_id TEXT NOT NULL, dimension TEXT NOT NULL, kind TEXT NOT NULL,
  value REAL NOT NULL DEFAULT 0, text_value TEXT NOT NULL DEFAULT '', source TEXT NOT NULL, observed_at TEXT NOT NULL,
  says TEXT NOT NULL DEFAULT '', period TEXT NOT NULL DEFAULT '', recorded_ms INTEGER NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX IF NOT EXISTS observations_key ON observations (model_id, dimension, kind, source, observed_at);
CREATE INDEX IF NOT EXISTS observations_dimension ON observations (dimension);
"""
# The FTS5 index of search_docs (external content) is kept by the writes themselves, one statement per batch:
# rows about to be deleted are removed from it first (FTS_FORGET), and rows just inserted are added in one
# INSERT ... SELECT (FTS_ADD). Per-row triggers did the same row by row, several times slower on imports.
FTS_FORGET = ("INSERT INTO search_docs_fts (search_docs_fts, rowid, title, body) SELECT 'delete', id, title, body "
              "FROM search_docs WHERE model_id IN ({marks})")
FTS_ADD = "INSERT INTO search_docs_fts (rowid, title, body) SELECT id, title, body FROM search_docs WHERE id > ?"
FTS_REBUILD = "INSERT INTO search_docs_fts (search_docs_fts) VALUES ('rebuild')"
LAST_DOC = "SELECT COALESCE(MAX(id), 0) FROM search_docs"
_FTS_TRIGGERS = ("search_docs_ai", "search_docs_ad", "search_docs_au")  # what schema 3 and before kept it with
# Outcomes reported on match records (one per event); added after the first schema, so created by both paths.
_FEEDBACK = """
CREATE TABLE IF NOT EXISTS feedback (event_id TEXT PRIMARY KEY, outcome TEXT NOT NULL,
  clicked_through INTEGER NOT NULL, source TEXT NOT NULL, comment TEXT NOT NULL, credited TEXT NOT NULL,
  ts_ms INTEGER NOT NULL);
"""


@contextmanager
def schema_lock(path: str) -> Iterator[None]:
    """Held while a process creates or upgrades the schema, so processes opening one new file together
    (a writer and its readers starting at once) do it one after the other, each seeing the other's tables.

    A BSD ``flock`` on the database file: independent of SQLite's own POSIX locks on it (Linux keeps the
    two apart), released when the file is closed, also if the process dies.
    """
    if path == ":memory:":
        yield
        return
    with open(path, "ab") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def create_schema(db: sqlite_utils.Database) -> None:
    """Every table of a new database (nothing when the file already has them)."""
    if "models" in db.table_names():
        return
    db.table("models").create(
        {"node": int, "id": str, "name": str, "type": str, "pricing_tier": str,
         "serving_endpoint": str, "version": str, "record": str, "updated_ms": int},
        pk="node", not_null={"id", "name", "record"},
    )
    db.table("models").create_index(["id"], unique=True)
    db.table("aliases").create({"alias": str, "model_id": str}, pk="alias")  # index by model: migrate_schema
    db.conn.executescript(OBSERVATIONS)
    db.table("tasks").create({"model_id": str, "task": str}, pk=("model_id", "task"))
    db.table("capabilities").create({"model_id": str, "position": int, "title": str, "description": str,
                                     "unique_note": str, "vs_alternatives": str}, pk=("model_id", "position"))
    db.table("external_quality").create({"model_id": str, "benchmark": str, "score": float, "source": str,
                                         "observed_at": str, "task": str, "scale": str, "says": str})
    db.table("external_quality").create_index(["model_id"])
    # Search documents: one per model (name + aliases) and one per capability.
    db.table("search_docs").create({"id": int, "model_id": str, "capability": str, "title": str, "body": str},
                                   pk="id")
    db.table("search_docs").create_index(["model_id"])
    db.table("search_docs").enable_fts(["title", "body"], tokenize="porter", create_triggers=False)
    db.conn.executescript(_SCHEMA)
    db.table("probe_runs").create({"run_id": str, "started_ms": int, "seed": int, "prompts": str}, pk="run_id")
    db.table("probe_results").create({"run_id": str, "model_id": str, "model_version": str, "prompt": str,
                                      "score": float, "detail": str})
    db.table("probe_outcomes").create({"run_id": str, "prompt": str, "model_a": str, "model_b": str,
                                       "version_a": str, "version_b": str, "a_score": float})
    db.conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))


def migrate_schema(conn: sqlite3.Connection) -> None:
    """Rows and columns later versions rely on, added to databases created before them."""
    cols = {r[1] for r in conn.execute("PRAGMA table_info(graph_state)")}
    for col in ("snapshot", "saved_ms"):
        if col not in cols:
            conn.execute(f"ALTER TABLE graph_state ADD COLUMN {col} INTEGER NOT NULL DEFAULT 0")
    cols = {r[1] for r in conn.execute("PRAGMA table_info(external_quality)")}
    for col in ("task", "scale", "says"):
        if col not in cols:
            conn.execute(f"ALTER TABLE external_quality ADD COLUMN {col} TEXT NOT NULL DEFAULT ''")
    conn.execute("CREATE TABLE IF NOT EXISTS tasks (model_id TEXT, task TEXT, PRIMARY KEY (model_id, task))")
    conn.execute("CREATE INDEX IF NOT EXISTS aliases_model ON aliases (model_id)")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.executescript(OBSERVATIONS)
    if "signals" in tables:  # schema 2 kept only the last upsert's signals: they become the first readings
        conn.execute("INSERT OR IGNORE INTO observations (model_id, dimension, kind, value, source, observed_at) "
                     "SELECT model_id, dimension, kind, value, source, observed_at FROM signals ORDER BY rowid")
        conn.execute("DROP TABLE signals")
    for trigger in _FTS_TRIGGERS:  # the index stays as they left it; the writes keep it from now on
        conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    sqlite_upgrade(conn)
    conn.executescript(_FEEDBACK)
    for key in ("catalog_seq", "state_seq"):
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, '0')", (key,))
    # counts every outcome recorded (the snapshot id depends on it); a database from before it counts its rows
    conn.execute("INSERT OR IGNORE INTO meta (key, value) SELECT 'feedback_seq', COUNT(*) FROM feedback")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
