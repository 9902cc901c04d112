"""Databases written by earlier versions upgrade on open, on both backends, keeping what they hold.

Schema 2 kept one row per signal (``signals``: the last upsert's adoption and ecosystem numbers), no
tasks, no published-result task/scale/says, no probe judge columns and no feedback. Schema 3 added the
probe judge columns, ``probe_scores`` and ``feedback``. Schema 4 keeps every reading as a dated
observation (the old signals become the first readings), adds tasks and facts, and counts feedback
outcomes (``feedback_seq``) so the snapshot id changes with them. Each older database here is made
from a new one by undoing what came later, rows included.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import pytest

from graph.records import Fact, MatchEvent, Signal
from graph.seed_data import SEED_MODELS
from graph.store import FeedbackRow, ProbeResultRow, open_store
from graph.store.base import SCHEMA_VERSION
from graph.store.probe_schema import LEGACY_REASON

SRC = "https://example.org/test-readings/kosmos-2"
KOSMOS = replace(SEED_MODELS[0], adoption=(Signal("downloads", 160_000.0, SRC, "2026-11-01"),
                                           Signal("likes", 170.0, SRC, "2026-11-01")),
                 facts=(Fact("licence", "mit", SRC, "2026-11-01"),))
SD = SEED_MODELS[1]
# (model, kind, value, source, observed_at) of the adoption readings both versions keep
ADOPTION = [(KOSMOS.id, "downloads", 160_000.0, SRC, "2026-11-01"), (KOSMOS.id, "likes", 170.0, SRC, "2026-11-01")]

_TO_3 = [  # schema 4 -> 3: readings back to one signals row each; no tasks, no published-result columns
    "INSERT INTO signals (model_id, dimension, kind, value, source, observed_at) SELECT model_id, dimension, kind, "
    "value, source, observed_at FROM observations WHERE dimension != 'fact'",
    "DROP TABLE observations", "DROP TABLE tasks",
    *(f"ALTER TABLE external_quality DROP COLUMN {c}" for c in ("task", "scale", "says")),
    "DELETE FROM meta WHERE key = 'feedback_seq'", "UPDATE meta SET value = '3' WHERE key = 'schema_version'"]
_TO_2 = [  # schema 3 -> 2: no probe judge columns, no probe_scores, no feedback
    "ALTER TABLE probe_runs DROP COLUMN skipped", "DROP TABLE probe_scores", "DROP TABLE feedback",
    *(f"ALTER TABLE {t} DROP COLUMN {c}" for t in ("probe_results", "probe_outcomes")
      for c in ("task", "judge_id", "judge_version", "probe_set", "scorable", "reason")),
    "INSERT INTO probe_runs (run_id, started_ms, seed, prompts) VALUES ('old', 1, 0, '[\"p\"]')",
    "INSERT INTO probe_results (run_id, model_id, model_version, prompt, score, detail) "
    "VALUES ('old', 'kosmos-2-patch14-224', '1', 'p', 0.5, 'round trip')",
    "UPDATE meta SET value = '2' WHERE key = 'schema_version'"]
_FTS_TRIGGERS = [  # SQLite schema 2/3 kept the full-text index by per-row triggers (as sqlite-utils writes them)
    'CREATE TRIGGER "search_docs_ai" AFTER INSERT ON "search_docs" BEGIN INSERT INTO "search_docs_fts" (rowid, '
    '"title", "body") VALUES (new.rowid, new."title", new."body"); END',
    'CREATE TRIGGER "search_docs_ad" AFTER DELETE ON "search_docs" BEGIN INSERT INTO "search_docs_fts" '
    '("search_docs_fts", rowid, "title", "body") VALUES(\'delete\', old.rowid, old."title", old."body"); END',
    'CREATE TRIGGER "search_docs_au" AFTER UPDATE ON "search_docs" BEGIN INSERT INTO "search_docs_fts" '
    '("search_docs_fts", rowid, "title", "body") VALUES(\'delete\', old.rowid, old."title", old."body"); '
    'INSERT INTO "search_docs_fts" (rowid, "title", "body") VALUES (new.rowid, new."title", new."body"); END']
_SIGNALS = {  # the schema-2/3 signals table of each backend
    "sqlite": "CREATE TABLE signals (model_id TEXT, dimension TEXT, kind TEXT, value FLOAT, source TEXT, "
              "observed_at TEXT)",
    "postgresql": "CREATE TABLE signals (rid BIGSERIAL PRIMARY KEY, model_id TEXT NOT NULL, dimension TEXT NOT NULL, "
                  "kind TEXT NOT NULL, value DOUBLE PRECISION NOT NULL, source TEXT, observed_at TEXT)"}


def _run(url: str, backend: str, statements: list[str]) -> None:
    if backend == "sqlite":
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        for sql in statements:
            conn.execute(sql)
        conn.commit()
        conn.close()
    else:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
            for sql in statements:
                conn.execute(sql)


def _older(url: str, backend: str, version: int) -> None:
    """A database as schema ``version`` (2 or 3) left it: two models, readings, one event with an outcome (3)."""
    store = open_store(url)
    store.upsert_model(KOSMOS)
    store.upsert_model(SD)
    store.record_events([MatchEvent("e1", "caption my photo", (KOSMOS.id, SD.id))])
    if version == 3:
        store.record_feedback(FeedbackRow("e1", "success", True, "web", "", (KOSMOS.id,), 1))
    store.close()
    _run(url, backend, [_SIGNALS[backend], *_TO_3, *(_TO_2 if version == 2 else []),
                        *(_FTS_TRIGGERS if backend == "sqlite" else [])])


@pytest.mark.parametrize("version", [2, 3])
def test_an_older_database_upgrades_on_open_and_keeps_its_rows(graph_dbs, db_backend, version):
    url = graph_dbs.url(f"schema{version}.db")
    _older(url, db_backend, version)
    store = open_store(url)  # the upgrade happens on open
    try:
        meta = dict(next(store.read_rows("meta")))
        assert meta["schema_version"] == str(SCHEMA_VERSION) == "4"
        # the old signals are the first dated readings; the history grows from them
        assert store.signal_rows("adoption") == ADOPTION
        assert [(s.kind, s.value) for s in store.get_model(KOSMOS.id).adoption] == [("downloads", 160_000.0),
                                                                                      ("likes", 170.0)]
        assert store.model_tasks() == {} and store.fact_rows() == []
        assert store.event_count() == 1
        # feedback recorded before the counter existed is counted once, and every new outcome counts
        before = store.data_versions().feedback
        assert before == (1 if version == 3 else 0)
        assert store.feedback_counts() == ({KOSMOS.id: (1, 1)} if version == 3 else {})
        store.record_events([MatchEvent("e2", "draw a cat", (SD.id,))])
        assert store.record_feedback(FeedbackRow("e2", "failure", False, "api", "", (SD.id,), 2)) is not None
        assert store.data_versions().feedback == before + 1
        # probe rows of schema 2 are kept for the record, never scored; new runs get every column
        if version == 2:
            (old,) = store.probe_results()
            assert (old.detail, old.scorable, old.reason) == ("round trip", False, LEGACY_REASON)
        store.add_probe_run("new", 1, ["p"], [ProbeResultRow("new", SD.id, "1", "p", 0.7, "", "text-to-image", "j",
                                                            "1", "s", True, "")], [])
        assert store.probe_runs()[-1].run_id == "new"
        # a new upsert adds readings beside the old ones and stores tasks and facts
        store.upsert_model(replace(KOSMOS, tasks=("image-to-text",), adoption=(
            Signal("downloads", 170_000.0, SRC, "2026-12-01"),)))
        assert store.model_tasks() == {KOSMOS.id: ("image-to-text",)}
        history = [(k, v, at) for d, k, v, _t, _s, at, _y, _p in store.observation_history(KOSMOS.id)
                   if d == "adoption"]
        assert history == [("downloads", 160_000.0, "2026-11-01"), ("downloads", 170_000.0, "2026-12-01"),
                           ("likes", 170.0, "2026-11-01")]
        assert [f[1:3] for f in store.fact_rows()] == [("licence", "mit")]
        # full-text search still finds the model, and the replaced documents are gone from the index
        assert {m for m, *_rest in store.search_fts("grounded captioning", 10)} == {KOSMOS.id}
        assert store.capability_model_ids("grounded captioning") == {KOSMOS.id}
        if db_backend == "sqlite":  # the writes keep the index now: the old per-row triggers are gone
            conn = sqlite3.connect(url.removeprefix("sqlite:///"))
            assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall() == []
            assert conn.execute("INSERT INTO search_docs_fts (search_docs_fts) VALUES ('integrity-check')")
            conn.close()
    finally:
        store.close()
    reopened = open_store(url)  # opening an upgraded database again changes nothing
    try:
        assert reopened.data_versions().feedback == before + 1
        assert dict(next(reopened.read_rows("meta")))["schema_version"] == "4"
    finally:
        reopened.close()
