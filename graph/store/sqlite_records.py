"""Match records and their outcomes on SQLite: the part of ``SqliteStore`` that serves passports and feedback."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import AbstractContextManager

from graph.records import MatchEvent, ModelRecord
from graph.store.base import PORTABLE, FeedbackRow
from graph.store.observations import statements, with_readings
from graph.store.rows import event_from_row, feedback_totals, record_from_json

_NEWEST, _QUALITY = (statements("?", "rowid")[k] for k in ("newest_capable", "quality_capable"))


class SqliteMatchRecords:
    """``Store``'s match-record methods over ``SqliteStore``'s connection."""

    conn: sqlite3.Connection
    lock: threading.RLock

    def _tx(self) -> AbstractContextManager[None]:
        raise NotImplementedError  # SqliteStore's

    def _bump(self, key: str) -> int:
        raise NotImplementedError  # SqliteStore's

    def capability_records(self) -> list[ModelRecord]:
        with self.lock:  # records and readings from one read
            records = [record_from_json(r[0]) for r in self.conn.execute(
                "SELECT record FROM models WHERE id IN (SELECT model_id FROM capabilities) ORDER BY node")]
            return with_readings(records, self.conn.execute(_NEWEST).fetchall(), self.conn.execute(_QUALITY))

    def match_record(self, event_id: str) -> tuple[MatchEvent, FeedbackRow | None] | None:
        row = self.conn.execute("SELECT event_id, query, matched, compared, clicked, ts_ms FROM events "
                                "WHERE event_id = ?", (event_id,)).fetchone()
        if row is None:
            return None
        fb = self.conn.execute(f"SELECT {', '.join(PORTABLE['feedback'])} FROM feedback WHERE event_id = ?",
                               (event_id,)).fetchone()
        return event_from_row(row), (FeedbackRow.from_row(fb) if fb else None)

    def record_feedback(self, row: FeedbackRow) -> tuple[FeedbackRow, bool] | None:
        cols = PORTABLE["feedback"]
        with self.lock, self._tx():
            if self.conn.execute("SELECT 1 FROM events WHERE event_id = ?", (row.event_id,)).fetchone() is None:
                return None
            before = self.conn.total_changes
            self.conn.execute(f"INSERT OR IGNORE INTO feedback ({', '.join(cols)}) VALUES "
                              f"({', '.join('?' * len(cols))})", row.as_row())
            if self.conn.total_changes > before:
                self._bump("feedback_seq")
                return row, True
            old = self.conn.execute(f"SELECT {', '.join(cols)} FROM feedback WHERE event_id = ?",
                                    (row.event_id,)).fetchone()
        return FeedbackRow.from_row(old), False

    def feedback_counts(self) -> dict[str, tuple[int, int]]:
        return feedback_totals(self.conn.execute("SELECT outcome, credited FROM feedback ORDER BY rowid"))

    def outcomes_with(self, model_id: str, limit: int = 100_000) -> list[tuple[str, str, str, str]]:
        return [(r[0], r[1], r[2], r[3]) for r in self.conn.execute(
            "SELECT e.event_id, e.query, COALESCE(f.outcome, ''), COALESCE(f.credited, '') FROM events e "
            "LEFT JOIN feedback f ON f.event_id = e.event_id WHERE ' ' || e.matched || ' ' LIKE ? "
            "ORDER BY e.seq DESC LIMIT ?", (f"% {model_id} %", limit))]
