"""Bulk copies in and out of PostgreSQL for ``PgStore``: ingest (new events COPYed straight into ``events``,
or staged when some are stored already), COPY, whole-table reads and replacements, and event rows appended
with their seqs (what ``unfragile graph migrate`` uses)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import psycopg

from graph.store.base import CHANGE_CHANNEL, EVENT_COLUMNS, LOCAL_META, PORTABLE, Row
from graph.store.pg_leader import CLAIM_SEQ
from graph.store.pg_support import EVENTS_LOCK, IDENTITY, MOVE, ORDER_BY, STAGE
from graph.store.rows import EventRow, chunks

COPY_EVENTS = "COPY events (seq, event_id, query, matched, compared, clicked, ts_ms) FROM STDIN"
COPY_STAGED = "COPY events_in (ord, event_id, query, matched, compared, clicked, ts_ms) FROM STDIN"


def copy_new_events(conn: psycopg.Connection[Row], rows: list[EventRow], term: int | None) -> int | None:
    """COPY ``rows``, numbered from the head, straight into ``events`` in one transaction of four round trips
    (BEGIN with the fencing check, the events lock and MAX(seq); the COPY; NOTIFY with COMMIT). Returns the seq
    before them, or None (nothing written) when an event id among them is stored already."""
    cur = conn.cursor()
    try:
        cur.execute(f"BEGIN; {CLAIM_SEQ % ('NULL' if term is None else int(term))}")
        cur.nextset()
        top = cur.fetchone()
        base = int(top[0]) if top else 0
        if rows:
            with cur.copy(COPY_EVENTS) as cp:
                for seq, row in enumerate(rows, base + 1):
                    cp.write_row((seq, *row))
            cur.execute(f"SELECT pg_notify('{CHANGE_CHANNEL}', '{base + len(rows)}'); COMMIT")
        else:
            cur.execute("COMMIT")
    except psycopg.errors.UniqueViolation:
        conn.rollback()
        return None
    except BaseException:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        raise
    return base


def stage_new_events(cur: psycopg.Cursor[Row], rows: list[EventRow], term: int | None) -> tuple[int, set[str] | None]:
    """Insert the ``rows`` whose event ids are not stored yet, numbered consecutively, inside the caller's
    transaction; returns (the seq before them, their event ids, or None when all were new)."""
    cur.execute(STAGE)
    with cur.copy(COPY_STAGED) as cp:
        for i, row in enumerate(rows):
            cp.write_row((i, *row))
    top = cur.execute(CLAIM_SEQ, (term,)).fetchone()  # the fencing check and the events lock, held to COMMIT
    base = int(top[0]) if top else 0
    inserted = cur.execute(MOVE, (base,)).rowcount
    if inserted:
        cur.execute("SELECT pg_notify(%s, %s)", (CHANGE_CHANNEL, str(base + inserted)))
    if inserted == len(rows):
        return base, None
    return base, {r[0] for r in cur.execute("SELECT event_id FROM events WHERE seq > %s", (base,))}


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
