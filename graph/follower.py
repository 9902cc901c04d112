"""The reader's half of one writer and many readers: follow the writer's published snapshots.

A reader loads the newest publication the way a restart loads the store (newest checkpoint,
then the event tail, here up to the published seq) and adopts the writer's PageRank vector
for exactly that graph. Then it waits for news (``LISTEN`` on PostgreSQL primaries; polling
on SQLite, hot standbys and while LISTEN reconnects) and, for every new publication,
replays the events up to its seq, reloads the catalogue and the probe results if they
changed, and adopts the published PageRank vector. It never writes to the store.

Lag: every wake-up reads the store's newest event seq. ``Lag.seconds`` is how long ago the
reader last knew it served everything committed (the oldest commit it has seen but not yet
served is at most that old); a standby whose replay is behind adds its own delay. Past
``max_staleness_s`` the reader calls its answers stale (they say so; they are still served).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from common.errors import UnfragileError
from graph.config import FollowConfig
from graph.engine import Engine
from graph.publisher import read_publication
from graph.store import Heads
from graph.sync import Lag

log = logging.getLogger(__name__)


class Follower:
    """Keeps a read-only engine at the writer's newest publication and measures how far behind it is."""

    def __init__(self, engine: Engine, config: FollowConfig) -> None:
        self.engine = engine
        self.store = engine.store
        self.config = config
        self.seen = Heads(0, 0)
        self.publication = 0
        self.term, self.leader = 0, ""  # leadership term and leader address of the publication served
        self._pagerank = 0  # snapshot version of the PageRank row adopted last (an unchanged one is not re-adopted)
        self._pending: deque[tuple[float, int]] = deque()  # (when first seen, store seq) not served yet
        self._fresh_at = self._last_check = time.monotonic()
        self._store_seq = 0
        self._replica_delay = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="matchgraph-follow", daemon=True)
        self.on_visible: Callable[[float], None] | None = None  # seconds from a change being seen to served
        self.on_step: Callable[[Lag], None] | None = None  # e.g. metrics
        engine.lag_source = self.lag

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> None:
        """Build the engine from the newest publication (the store's head when nothing was published)."""
        heads = self.store.heads()
        pub, pagerank = read_publication(self.store)
        self.engine.load(pub.versions if pub is not None else None)
        if pub is not None:
            if self.engine.checkpoints.adopt_pagerank(pagerank) and pagerank is not None:
                self._pagerank = pagerank.snapshot
            self.publication = pub.snapshot
            self.term, self.leader = pub.term, pub.leader
        self.seen = heads
        self._saw(time.monotonic(), heads.seq)
        self._settle(time.monotonic())

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=self.config.follow_wait_s + 10)

    # ------------------------------------------------------------------ following
    def catch_up(self) -> bool:
        """Move to the newest publication if it is newer than the one served; returns whether it moved."""
        pub, pagerank = read_publication(self.store)
        if pub is None or pub.snapshot <= self.publication:
            return False
        e = self.engine
        with e.lock:
            if self._stop.is_set():  # stopped meanwhile: this process may be taking over as the leader
                return False
            e.sync.advance(pub.versions)
            fresh_vector = pagerank is not None and pagerank.snapshot != self._pagerank
            if e.graph.version == pub.versions.seq and (e.graph.dirty or fresh_vector) \
                    and e.checkpoints.adopt_pagerank(pagerank):
                self._pagerank = pagerank.snapshot if pagerank is not None else 0
            self.publication = pub.snapshot
            self.term, self.leader = pub.term, pub.leader
        return True

    def step(self) -> None:
        """Wait for news (at most ``follow_wait_s``), follow a new publication, and update the lag."""
        heads = self.store.wait_for_news(self.seen, self.config.follow_wait_s)
        if self._stop.is_set():  # stopped while waiting (e.g. this process takes over as the leader)
            return
        seen_at = time.monotonic()
        self._saw(seen_at, heads.seq)
        if heads.state != self.seen.state:
            self.catch_up()
        self.seen = heads
        self._settle(seen_at, self.store.replica_delay_s())

    def _loop(self) -> None:
        warned = 0.0
        while not self._stop.is_set():
            try:
                self.step()
            except UnfragileError as exc:  # the database is unreachable: keep serving, the lag grows
                if time.monotonic() - warned > 30:
                    log.warning("cannot follow the writer's snapshots (%s); serving the last one", exc.message)
                    warned = time.monotonic()
                self._stop.wait(self.store.poll_interval_s)
            except Exception:
                log.exception("following the writer's snapshots failed; retrying")
                self._stop.wait(self.config.follow_wait_s)

    # ------------------------------------------------------------------ lag
    def _saw(self, seen_at: float, store_seq: int) -> None:
        """The store's newest seq as just read: a commit not served yet starts its notify-to-visible clock."""
        with self._lock:
            self._store_seq = store_seq
            if store_seq > self.engine.graph_version() and (not self._pending or self._pending[-1][1] < store_seq):
                self._pending.append((seen_at, store_seq))

    def _settle(self, checked_at: float, replica_delay: float = 0.0) -> None:
        """After a check (and a catch-up): commits now served are visible; the lag is measured again."""
        served = self.engine.graph_version()
        visible: list[float] = []
        with self._lock:
            self._last_check, self._replica_delay = checked_at, replica_delay
            now = time.monotonic()
            while self._pending and self._pending[0][1] <= served:
                first_seen, _ = self._pending.popleft()
                visible.append(now - first_seen)
                self._fresh_at = max(self._fresh_at, first_seen)
            if not self._pending:
                self._fresh_at = checked_at
        if self.on_visible is not None:
            for seconds in visible:
                self.on_visible(seconds)
        if self.on_step is not None:
            self.on_step(self.lag())

    def lag(self) -> Lag:
        now = time.monotonic()
        served = self.engine.graph_version()
        with self._lock:
            quiet = now - self._last_check  # long quiet: the store could not be asked
            behind = now - self._fresh_at if self._pending or quiet > 2 * self.config.follow_wait_s + 1 else 0.0
            seconds = max(behind, self._replica_delay)
            return Lag(max(0, self._store_seq - served), seconds, seconds > self.config.max_staleness_s,
                       self._store_seq, self.publication)
