"""Bulk copies in and out of PostgreSQL for ``PgStore``: COPY, whole-table reads and replacements, and
event rows appended with their seqs (what ``unfragile graph migrate`` uses)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import psycopg

from graph.store.base import CHANGE_CHANNEL, EVENT_COLUMNS, LOCAL_META, PORTABLE, Row
from graph.store.pg_support import EVENTS_LOCK, IDENTITY, ORDER_BY
from graph.store.rows import chunks


def copy_rows(cur: psycopg.Cursor[Row], table: str, columns: Iterable[str], rows: Iterable[Row]) -> None:
    """``COPY table (columns) FROM STDIN`` of ``rows``."""
    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as cp:
        for row in rows:
            cp.write_row(row)


def read_table(conn: psycopg.Connection[Row], table: str, batch: int) -> Iterator[list[Row]]:
    """The ``PORTABLE`` columns of ``table`` in insertion order, in chunks (run inside a transaction)."""
    cur = conn.cursor(name=f"read_{table}")  # server-side cursor: constant memory
    cur.execute(f"SELECT {', '.join(PORTABLE[table])} FROM {table} ORDER BY {ORDER_BY[table]}")
    while rows := cur.fetchmany(batch):
        yield rows


def replace_table(cur: psycopg.Cursor[Row], table: str, rows: Iterable[Row]) -> None:
    """Every row of ``table`` replaced by ``rows`` (meta keeps the rows that describe this database)."""
    if table == "meta":
        cur.execute("DELETE FROM meta WHERE NOT (key = ANY(%s))", (sorted(LOCAL_META),))
        cur.executemany("INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE "
                        "SET value = EXCLUDED.value", [r for r in rows if r[0] not in LOCAL_META])
        return
    cur.execute(f"DELETE FROM {table}")
    for batch in chunks(rows, 10_000):
        copy_rows(cur, table, PORTABLE[table], batch)
    if table in IDENTITY:
        col = IDENTITY[table]
        cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{col}'), "
                    f"GREATEST((SELECT MAX({col}) FROM {table}), 1), (SELECT COUNT(*) > 0 FROM {table}))")


def append_events(cur: psycopg.Cursor[Row], rows: list[Row]) -> int:
    """Insert full event rows keeping their seqs (stored event ids are skipped); returns rows inserted."""
    cur.execute("CREATE TEMP TABLE events_copy (LIKE events) ON COMMIT DROP")
    copy_rows(cur, "events_copy", EVENT_COLUMNS, rows)
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (EVENTS_LOCK,))
    n = cur.execute("INSERT INTO events SELECT * FROM events_copy ORDER BY seq ON CONFLICT DO NOTHING").rowcount
    if n:
        cur.execute("SELECT pg_notify(%s, (SELECT MAX(seq) FROM events)::text)", (CHANGE_CHANNEL,))
    return n
