"""Several writer-capable MatchGraph processes on one store: one leads, the others stand by.

Each candidate (``role=writer`` on PostgreSQL) loads like a reader (the newest publication,
then the event tail) and follows the leader's publications with a ``Follower`` while it
stands by, answering reads. It tries for the store's leadership lock (``LeaderLock``, on
PostgreSQL a session-level advisory lock: ``graph/store/pg_leader.py``) at start and every
``leader_retry_s``. The one that gets it:

1. stops following (the newest publication is already in memory),
2. starts a ``Publisher`` under its new term: the first publication brings the engine to
   the store's head (replaying every event committed since that publication, including any
   the old leader committed but never published) and is saved under the new term, fenced,
3. accepts writes.

A leader checks every ``leader_retry_s`` that it still holds the lock; if its lock session
ended (its database connection dropped) or a write was fenced because a later term began,
it stops writing at once, becomes a standby again and follows the new leader. Writes sent
to a standby answer FAILED_PRECONDITION naming the leader on record, or UNAVAILABLE with a
retry hint while there is none (none elected yet, or the one on record is this process, which
just lost the leadership).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from common.errors import FailedPrecondition, Unavailable, UnfragileError
from graph.config import FollowConfig
from graph.engine import Engine
from graph.follower import Follower
from graph.publisher import Publication, Publisher
from graph.store import Heads, Leader, LeaderLock
from graph.sync import Lag

log = logging.getLogger(__name__)


def _retry_shortly(message: str) -> UnfragileError:
    """No leader to name: the write may succeed here or elsewhere in a moment."""
    return Unavailable(message, retry_after_s=0.5)


class Candidate:
    """One writer-capable process: standby (a ``Follower``) or leader (a ``Publisher``); see the module docstring."""

    def __init__(self, engine: Engine, config: FollowConfig, lock: LeaderLock, address: str,
                 refusal: Callable[[Leader], str]) -> None:
        self.engine = engine
        # a standby re-checks the store at least as often as it tries for the lock, so it stops following promptly
        self.config = config.model_copy(update={"follow_wait_s": min(config.follow_wait_s, config.leader_retry_s)})
        self.lock = lock
        self.address = address
        self.refusal = refusal  # the FAILED_PRECONDITION message of writes sent while standing by
        self.follower: Follower | None = None
        self.publisher: Publisher | None = None
        self.leader = Leader(0, "", 0)  # the leader on record, as last read
        self.on_change: Callable[[bool, int], None] | None = None  # (leading, term), e.g. health and metrics
        self.on_publish: Callable[[Publication], None] | None = None
        self.on_follow: Callable[[Follower], None] | None = None  # a new follower (metrics hooks)
        self._stop = threading.Event()
        self._started = False  # start() ran: a new follower starts following at once
        self.thread = threading.Thread(target=self._loop, name="matchgraph-elect", daemon=True)

    @property
    def leading(self) -> bool:
        return self.publisher is not None

    @property
    def term(self) -> int:
        return self.lock.term if self.leading else self.leader.term

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> None:
        """Load as a standby (the newest publication), then try for the leadership once."""
        self._refuse_writes()  # before loading: a standby's engine writes nothing (no checkpoint either)
        self.follower = self._follower()
        self.follower.load()
        self.try_once()

    def start(self) -> None:
        """Follow (while standing by) and keep trying for the leadership until ``stop``."""
        self._started = True
        if self.follower is not None:
            self.follower.start()
        self.thread.start()

    def stop(self) -> None:
        """Stop electing, following and publishing; the lock is kept until ``release`` (a final checkpoint may
        still be written under this term)."""
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=self.config.leader_retry_s + 15)
        if self.follower is not None:
            self.follower.stop()
        if self.publisher is not None:
            self.publisher.stop()

    def release(self) -> None:
        self.lock.release()

    def _loop(self) -> None:
        while not self._stop.wait(self.config.leader_retry_s):
            try:
                self.try_once()
            except Exception:
                log.exception("leader election step failed; trying again")

    # ------------------------------------------------------------------ election
    def try_once(self) -> None:
        """One election step: a leader checks it still leads; a standby tries for the lock."""
        if self.leading:
            if not self.lock.holding():
                self._demote()
            return
        try:
            term = self.lock.try_acquire()
        except UnfragileError as exc:  # the database is unreachable: stay standby, try again
            log.warning("cannot try for the leadership (%s)", exc.message)
            return
        if term:
            self._promote(term)
        else:
            self._refuse_writes()

    def _refuse_writes(self) -> None:
        try:
            self.leader = self.lock.current()
        except UnfragileError:
            pass  # keep naming the leader read last
        elsewhere = bool(self.leader.address) and self.leader.address != self.address
        self.engine.writes_refused = self.refusal(self.leader if elsewhere else Leader(0, "", 0))
        self.engine.refuse = FailedPrecondition if elsewhere else _retry_shortly

    def _promote(self, term: int) -> None:
        started = time.monotonic()
        if self.follower is not None:
            self.follower.stop()
        publisher = Publisher(self.engine, self.config, term, self.address)
        publisher.on_publish = self.on_publish
        try:
            publisher.start()  # the first publication replays the tail and is saved under the new term
        except Exception as exc:
            self.engine.on_write = None
            log.warning("won term %d but could not publish (%s); standing by again", term,
                        getattr(exc, "message", exc))
            self.lock.release()
            self._stand_by(publisher.published)
            return
        self.publisher = publisher
        self.engine.lag_source = self._writer_lag
        self.leader = Leader(term, self.address, int(time.time() * 1000))
        self.engine.writes_refused, self.engine.refuse = "", FailedPrecondition
        published = publisher.published
        log.info("leading as term %d: caught up to event seq %d and published in %.2f s", term,
                 published.versions.seq if published else self.engine.graph_version(), time.monotonic() - started)
        if self.on_change is not None:
            self.on_change(True, term)

    def _demote(self) -> None:
        term = self.lock.term
        self.engine.writes_refused, self.engine.refuse = self.refusal(Leader(0, "", 0)), _retry_shortly
        publisher, self.publisher = self.publisher, None
        assert publisher is not None
        publisher.stop()
        self.engine.on_write = None
        log.warning("lost the leadership of term %d (the lock session ended or a later term began): writes are "
                    "refused from now on; standing by", term)
        self._stand_by(publisher.published)
        self._refuse_writes()

    def _stand_by(self, published: Publication | None) -> None:
        """Follow the leader's publications from what this process holds now (no reload)."""
        follower = self._follower()
        follower.publication = published.snapshot if published is not None else 0
        follower.seen = Heads(0, 0)  # the first step catches up with whatever was published meanwhile
        self.follower = follower
        if self._started:
            follower.start()
        if self.on_change is not None:
            self.on_change(False, 0)

    def _follower(self) -> Follower:
        follower = Follower(self.engine, self.config)
        if self.on_follow is not None:
            self.on_follow(follower)
        return follower

    def _writer_lag(self) -> Lag:
        published = self.publisher.published if self.publisher is not None else None
        return Lag(store_seq=self.engine.graph_version(), publication=published.snapshot if published else 0)
