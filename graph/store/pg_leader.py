"""Leader election and fencing on PostgreSQL: which writer-capable MatchGraph may write.

**Election.** The leader is whoever holds the session-level advisory lock ``LEADER_LOCK``
(``pg_try_advisory_lock``) on a connection of its own, outside the pool. PostgreSQL
releases the lock when that session ends: at once when the process dies (the kernel
closes its socket: kill -9, OOM) or its connection is closed, and after the TCP keepalive
bound of the session (``tcp_keepalives_*``, set on the lock connection) when its host
vanishes without closing anything. Candidates that do not hold it try again every
``leader_retry_s``.

**Terms and fencing.** On winning the lock a candidate bumps ``leader.term`` and records
its address in the same row, so every term has exactly one holder. Every write
transaction of a fenced store first calls ``matchgraph_fence(term)``, which takes the
leader row ``FOR SHARE`` and raises ``FENCED`` (SQLSTATE UF001) when the term moved on.
Because the check runs inside the write's own transaction and the new leader's term bump
needs that row exclusively, a write of an old leader either commits before the new term
begins (and the new leader, reading after its bump, sees it) or fails: a deposed leader
that comes back (GC pause, network partition, a lock connection that was cut) cannot write.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import psycopg

from common.errors import Unavailable
from graph.store.base import Leader
from graph.store.pg_support import EVENTS_LOCK, FENCED, RETRY_AFTER_S

if TYPE_CHECKING:
    from graph.store.postgres import PgStore

log = logging.getLogger(__name__)
LEADER_LOCK = 0x6D67_6C64  # advisory lock key of the leadership ("mgld")
KEEPALIVE = {"tcp_keepalives_idle": 5, "tcp_keepalives_interval": 2, "tcp_keepalives_count": 3}
KEEPALIVE_BOUND_S = KEEPALIVE["tcp_keepalives_idle"] + KEEPALIVE["tcp_keepalives_interval"] * \
    KEEPALIVE["tcp_keepalives_count"]  # a vanished leader host's session ends within this (server side)

LEADER_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS leader (id INTEGER PRIMARY KEY CHECK (id = 1), term BIGINT NOT NULL,
  address TEXT NOT NULL, since_ms BIGINT NOT NULL);
INSERT INTO leader (id, term, address, since_ms) VALUES (1, 0, '', 0) ON CONFLICT (id) DO NOTHING;
CREATE OR REPLACE FUNCTION matchgraph_fence(expected BIGINT) RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE cur RECORD;
BEGIN
  SELECT term, address INTO cur FROM leader WHERE id = 1 FOR SHARE;
  IF cur.term IS DISTINCT FROM expected THEN
    RAISE EXCEPTION USING ERRCODE = '{FENCED}',
      MESSAGE = format('term %s is over: the leader is %s (term %s)', expected, cur.address, cur.term);
  END IF;
END $$;
CREATE OR REPLACE FUNCTION matchgraph_claim_seq(expected BIGINT) RETURNS BIGINT LANGUAGE plpgsql AS $$
BEGIN
  IF expected IS NOT NULL THEN PERFORM matchgraph_fence(expected); END IF;
  PERFORM pg_advisory_xact_lock({EVENTS_LOCK});
  RETURN (SELECT COALESCE(MAX(seq), 0) FROM events);
END $$;
"""
# The event seq to number a batch from, after the fencing check and under the events lock (held to COMMIT).
CLAIM_SEQ = "SELECT matchgraph_claim_seq(%s)"
FENCE = "SELECT matchgraph_fence(%s)"
LEADER_ROW = "SELECT term, address, since_ms FROM leader WHERE id = 1"


class PgLeaderLock:
    """The leadership lock of one candidate (see the module docstring); not thread-safe: one elector uses it."""

    def __init__(self, store: PgStore, conninfo: str, connect_timeout_s: int, address: str) -> None:
        self.store = store
        self.conninfo = conninfo
        self.connect_timeout_s = connect_timeout_s
        self.address = address
        self.term = 0  # the term won last (0: never leader)
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        store.term = -1  # a candidate never writes unfenced: until it wins, every write fails the check

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed:
            try:
                conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=self.connect_timeout_s,
                                       keepalives=1, keepalives_idle=KEEPALIVE["tcp_keepalives_idle"],
                                       keepalives_interval=KEEPALIVE["tcp_keepalives_interval"],
                                       keepalives_count=KEEPALIVE["tcp_keepalives_count"],
                                       application_name=f"matchgraph leader lock {self.address}"[:63])
                for name, value in KEEPALIVE.items():  # the server side: how soon a vanished host's lock is freed
                    conn.execute(f"SET {name} = {int(value)}")
            except psycopg.Error as exc:
                raise Unavailable(f"cannot reach the MatchGraph database {self.store.place} for the leadership "
                                  f"lock ({str(exc).strip()[:200]})", retry_after_s=RETRY_AFTER_S) from None
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def try_acquire(self) -> int:
        """Take the lock if it is free; returns the new term (every write of the store is fenced by it), or 0."""
        conn = self._connect()
        try:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,)).fetchone()
            if not (row and row[0]):
                return 0
            with conn.transaction():
                got = conn.execute("UPDATE leader SET term = term + 1, address = %s, since_ms = %s WHERE id = 1 "
                                   "RETURNING term", (self.address, int(time.time() * 1000))).fetchone()
        except psycopg.Error as exc:
            self._drop()
            raise Unavailable(f"the leadership lock on {self.store.place} failed ({str(exc).strip()[:200]})",
                              retry_after_s=RETRY_AFTER_S) from None
        assert got is not None
        self.term = int(got[0])
        self.store.term, self.store.fenced = self.term, False
        log.info("won the MatchGraph leadership: term %d (%s)", self.term, self.address)
        return self.term

    def holding(self) -> bool:
        """Whether this candidate still leads: its lock session is alive and no later term began."""
        if self.term == 0 or self._conn is None or self.store.fenced:
            self.release()
            return False
        try:
            row = self._conn.execute(LEADER_ROW).fetchone()
        except psycopg.Error as exc:
            log.warning("the leadership lock connection failed (%s): stepping down", str(exc).strip()[:200])
            self.release()
            return False
        if row is None or int(row[0]) != self.term:
            self.release()
            return False
        return True

    def current(self) -> Leader:
        """The leader on record (term, address, since when): read through the store's pool."""
        return self.store.leader()

    def release(self) -> None:
        """Give the lock up (closing the session frees it); this store's writes fail the fencing check from now on."""
        self.store.term = -1
        if self._conn is not None and self.term:
            log.info("releasing the MatchGraph leadership (term %d)", self.term)
        self._drop()
