"""Probe tables shared by both backends: the columns added in schema 3 and row conversions.

Schema 3 records, with every probe result and outcome, the task it belongs to, the judge
that scored it (model id and version), the probe set, and whether it may enter a score
(``scorable``, with the ``reason`` when not); it adds ``probe_scores`` (each model's mean
judged score per task and run) and the skip reasons of each run. Databases created before
get the columns on open (``ALTER TABLE ... ADD COLUMN``): their old rows come from probes
judged by a contestant across tasks, so they are kept for the record but never scorable.
"""

from __future__ import annotations

import json
from typing import Any

from graph.store.base import PORTABLE, Row
from graph.store.probe_rows import ProbeOutcomeRow, ProbeResultRow, ProbeRunRow, ProbeScoreRow

# Why rows stored before schema 3 never enter a score (no quotes: it is inlined into DDL).
LEGACY_REASON = ("measured before quality was compared only within a task by an independent judge "
                 "(the served vision-language model judged both tasks, its own included)")
_JUDGED = (("task", "''"), ("judge_id", "''"), ("judge_version", "''"), ("probe_set", "''"))
# table -> (column, SQLite type, PostgreSQL type, value of the rows stored before the column existed)
ADDED_COLUMNS: dict[str, tuple[tuple[str, str, str, str], ...]] = {
    "probe_runs": (("skipped", "TEXT", "TEXT", "'[]'"),),
    **{table: (*((c, "TEXT", "TEXT", d) for c, d in _JUDGED), ("scorable", "INTEGER", "BOOLEAN", "0"),
               ("reason", "TEXT", "TEXT", f"'{LEGACY_REASON}'"))
       for table in ("probe_results", "probe_outcomes")},
}
_SCORES = ("run_id TEXT NOT NULL, task TEXT NOT NULL, model_id TEXT NOT NULL, model_version TEXT NOT NULL, "
           "judge_id TEXT NOT NULL, judge_version TEXT NOT NULL, probe_set TEXT NOT NULL, mean {real} NOT NULL, "
           "n INTEGER NOT NULL, scorable {bool} NOT NULL, reason TEXT NOT NULL")
SQLITE_SCORES = f"CREATE TABLE IF NOT EXISTS probe_scores ({_SCORES.format(real='REAL', bool='INTEGER')})"
PG_SCORES = (f"CREATE TABLE IF NOT EXISTS probe_scores (rid BIGSERIAL PRIMARY KEY, "
             f"{_SCORES.format(real='DOUBLE PRECISION', bool='BOOLEAN')})")
assert PORTABLE["probe_scores"] == tuple(c.split()[0] for c in _SCORES.split(", "))


def _pg_default(pg_type: str, default: str) -> str:
    return ("TRUE" if default == "1" else "FALSE") if pg_type == "BOOLEAN" else default


def sqlite_upgrade(conn: Any) -> None:
    """Add the schema-3 probe columns and table to an SQLite database that lacks them."""
    for table, cols in ADDED_COLUMNS.items():
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        for name, sqlite_type, _pg, default in cols:
            if name not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {sqlite_type} NOT NULL DEFAULT {default}")
    conn.execute(SQLITE_SCORES)


# Run with the PostgreSQL schema on every writer start (a no-op once applied).
PG_UPGRADE = ";\n".join(
    [f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} {pg_type} NOT NULL DEFAULT {_pg_default(pg_type, d)}"
     for table, cols in ADDED_COLUMNS.items() for name, _s, pg_type, d in cols] + [PG_SCORES]) + ";\n"


# The newest probe run that stored scorable results (a run that could measure nothing, or only test models or
# under a test judge, says why, but is no evidence of quality).
LAST_MEASURED = ("SELECT COALESCE(MAX(r.started_ms), 0) FROM probe_runs r "
                 "WHERE EXISTS (SELECT 1 FROM probe_results p WHERE p.run_id = r.run_id AND p.scorable)")


def columns(table: str) -> str:
    return ", ".join(PORTABLE[table])


def select_sql(table: str, order: str, include_unscorable: bool = True) -> str:
    """SELECT of every portable column of ``table`` in insertion order (``order``), scorable rows only unless asked."""
    where = "" if include_unscorable or table == "probe_runs" else " WHERE scorable"
    return f"SELECT {columns(table)} FROM {table}{where} ORDER BY {order}"


def insert_sql(table: str, placeholder: str) -> str:
    """INSERT of every portable column of ``table`` (``placeholder`` is ``?`` or ``%s``)."""
    return f"INSERT INTO {table} ({columns(table)}) VALUES ({', '.join([placeholder] * len(PORTABLE[table]))})"


def _fields(table: str, row: Row) -> dict[str, Any]:
    values = dict(zip(PORTABLE[table], row, strict=True))
    values["scorable"] = bool(values["scorable"])  # SQLite stores 0/1
    return values


def result_from(row: Row) -> ProbeResultRow:
    return ProbeResultRow(**_fields("probe_results", row))


def outcome_from(row: Row) -> ProbeOutcomeRow:
    return ProbeOutcomeRow(**_fields("probe_outcomes", row))


def score_from(row: Row) -> ProbeScoreRow:
    values = _fields("probe_scores", row)
    return ProbeScoreRow(**{**values, "n": int(values["n"])})


def run_from(row: Row) -> ProbeRunRow:
    return ProbeRunRow(row[0], int(row[1]), int(row[2]), tuple(json.loads(row[3] or "[]")),
                       tuple(json.loads(row[4] or "[]")))
