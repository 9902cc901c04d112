"""Match records and their outcomes on PostgreSQL: the part of ``PgStore`` that serves passports and feedback."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import psycopg

from graph.records import MatchEvent, ModelRecord
from graph.store.base import PORTABLE, FeedbackRow, Row
from graph.store.observations import statements, with_readings
from graph.store.pg_support import bump
from graph.store.rows import event_from_row, feedback_totals, record_from_json

_NEWEST, _QUALITY = (statements("%s", "rid")[k] for k in ("newest_capable", "quality_capable"))


class PgMatchRecords:
    """``Store``'s match-record methods over ``PgStore``'s pooled connections."""

    def _conn(self) -> AbstractContextManager[psycopg.Connection[Row]]:
        raise NotImplementedError  # PgStore's

    def _wtx(self) -> AbstractContextManager[psycopg.Connection[Row]]:
        raise NotImplementedError  # PgStore's: a write transaction fenced by the leadership term

    def _all(self, sql: str, args: Row = ()) -> list[Any]:
        raise NotImplementedError  # PgStore's

    def capability_records(self) -> list[ModelRecord]:
        with self._conn() as conn, conn.transaction():  # records and readings from one snapshot
            records = [record_from_json(r[0]) for r in conn.execute(
                "SELECT record FROM models WHERE id IN (SELECT model_id FROM capabilities) ORDER BY node")]
            return with_readings(records, conn.execute(_NEWEST).fetchall(), conn.execute(_QUALITY).fetchall())

    def match_record(self, event_id: str) -> tuple[MatchEvent, FeedbackRow | None] | None:
        with self._conn() as conn, conn.transaction():  # the event and its outcome from one snapshot
            row = conn.execute("SELECT event_id, query, matched, compared, clicked, ts_ms FROM events "
                               "WHERE event_id = %s", (event_id,)).fetchone()
            if row is None:
                return None
            fb = conn.execute(f"SELECT {', '.join(PORTABLE['feedback'])} FROM feedback WHERE event_id = %s",
                              (event_id,)).fetchone()
        return event_from_row(row), (FeedbackRow.from_row(fb) if fb else None)

    def record_feedback(self, row: FeedbackRow) -> tuple[FeedbackRow, bool] | None:
        cols = PORTABLE["feedback"]
        with self._wtx() as conn:
            # events are never deleted: once seen here, the insert below can reference it
            if conn.execute("SELECT 1 FROM events WHERE event_id = %s", (row.event_id,)).fetchone() is None:
                return None
            inserted = conn.execute(f"INSERT INTO feedback ({', '.join(cols)}) VALUES "
                                    f"({', '.join(['%s'] * len(cols))}) ON CONFLICT (event_id) DO NOTHING",
                                    row.as_row()).rowcount
            if inserted:
                bump(conn, "feedback_seq")
                return row, True
            old = conn.execute(f"SELECT {', '.join(cols)} FROM feedback WHERE event_id = %s",
                               (row.event_id,)).fetchone()
        assert old is not None
        return FeedbackRow.from_row(old), False

    def feedback_counts(self) -> dict[str, tuple[int, int]]:
        return feedback_totals(self._all("SELECT outcome, credited FROM feedback ORDER BY rid"))

    def outcomes_with(self, model_id: str, limit: int = 100_000) -> list[tuple[str, str, str, str]]:
        return self._all(
            "SELECT e.event_id, e.query, COALESCE(f.outcome, ''), COALESCE(f.credited, '') FROM events e "
            "LEFT JOIN feedback f ON f.event_id = e.event_id WHERE ' ' || e.matched || ' ' LIKE %s "
            "ORDER BY e.seq DESC LIMIT %s", (f"% {model_id} %", limit))
