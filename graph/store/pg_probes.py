"""Quality probe runs on PostgreSQL: the part of ``PgStore`` that stores and reads them (writes fenced)."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from dataclasses import astuple
from typing import Any

import psycopg

from graph.store import probe_schema as ps
from graph.store.base import Row
from graph.store.probe_rows import ProbeOutcomeRow, ProbeResultRow, ProbeRunRow, ProbeScoreRow
from graph.store.rows import now_ms


class PgProbes:
    """``Store``'s probe methods over ``PgStore``'s pooled connections."""

    def _wtx(self) -> AbstractContextManager[psycopg.Connection[Row]]:
        raise NotImplementedError  # PgStore's: a write transaction fenced by the leadership term

    def _all(self, sql: str, args: Row = ()) -> list[Any]:
        raise NotImplementedError  # PgStore's

    def _one(self, sql: str, args: Row = ()) -> Row | None:
        raise NotImplementedError  # PgStore's

    def _int(self, sql: str, args: Row = ()) -> int:
        raise NotImplementedError  # PgStore's

    def add_probe_run(self, run_id: str, seed: int, prompts: list[str], results: list[ProbeResultRow],
                      outcomes: list[ProbeOutcomeRow], scores: list[ProbeScoreRow] | None = None,
                      skipped: list[str] | None = None) -> None:
        with self._wtx() as conn:
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
        with self._wtx() as conn:
            conn.execute("INSERT INTO meta (key, value) VALUES ('last_probe_failure', %s) ON CONFLICT (key) DO UPDATE "
                         "SET value = EXCLUDED.value", (value,))

    def probe_freshness(self) -> tuple[int, int, str]:
        last_ok = self._int(ps.LAST_MEASURED)
        row = self._one("SELECT value FROM meta WHERE key = 'last_probe_failure'")
        failure: dict[str, int | str] = json.loads(row[0]) if row else {"at_ms": 0, "reason": ""}
        return last_ok, int(failure["at_ms"]), str(failure["reason"])
